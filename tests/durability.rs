//! Durability: storage failures give 452 4.3.1 and harm nothing accepted;
//! kill -9 under load loses no acknowledged message.

mod common;
#[path = "torture/mod.rs"]
mod torture;
use common::*;
use std::collections::HashMap;
use std::io::Read;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use torture::{load, spawn_server};

#[tokio::test(flavor = "multi_thread")]
async fn disk_full_gives_452_and_earlier_messages_stay_intact() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    let r = c
        .send_message(
            "a@sender.test",
            &["bob@example.test"],
            b"Subject: before\r\n\r\nbefore\r\n",
        )
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");

    t.server
        .queue
        .faults()
        .fail_writes
        .store(true, Ordering::SeqCst);
    let r = c
        .send_message(
            "a@sender.test",
            &["bob@example.test"],
            b"Subject: during\r\n\r\nduring\r\n",
        )
        .await;
    assert!(r.starts("452 4.3.1"), "{r:?}");
    assert!(r.text.contains("No space left on device"), "{r:?}");

    // The client retries in the same session once space is back.
    t.server
        .queue
        .faults()
        .fail_writes
        .store(false, Ordering::SeqCst);
    let r = c
        .send_message(
            "a@sender.test",
            &["bob@example.test"],
            b"Subject: during\r\n\r\nduring\r\n",
        )
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");

    let msgs = wait_for_messages(&t.mailbox("catchall"), 2, Duration::from_secs(10)).await;
    let mut bodies: Vec<_> = msgs.iter().map(|m| body_of(m).to_vec()).collect();
    bodies.sort();
    assert_eq!(bodies, vec![b"before\r\n".to_vec(), b"during\r\n".to_vec()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn fsync_failure_is_a_failure_not_a_success() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    t.server
        .queue
        .faults()
        .fail_syncs
        .store(true, Ordering::SeqCst);
    let r = c
        .send_message(
            "a@sender.test",
            &["bob@example.test"],
            b"Subject: x\r\n\r\nnot durable\r\n",
        )
        .await;
    assert!(r.starts("452 4.3.1"), "{r:?}");
    t.server
        .queue
        .faults()
        .fail_syncs
        .store(false, Ordering::SeqCst);
    let r = c
        .send_message(
            "a@sender.test",
            &["bob@example.test"],
            b"Subject: x\r\n\r\ndurable\r\n",
        )
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    let msgs = wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let msgs2 = read_maildir(&t.mailbox("catchall"));
    assert_eq!(msgs2.len(), 1, "only the acknowledged message is delivered");
    assert_eq!(body_of(&msgs[0]), b"durable\r\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_delivers_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    // A relay-domain message stays queued (no send connector yet): it must
    // survive a restart too, and a local one is delivered.
    let t = TestServer::start_in(dir, &data, "", "").await;
    let mut c = Client::greeted(t.addr).await;
    assert!(
        c.send_message(
            "a@sender.test",
            &["x@relay.test"],
            b"Subject: held\r\n\r\nheld\r\n"
        )
        .await
        .starts("250 2.6.0")
    );
    drop(c);
    let TestServer { dir, server, .. } = t;
    server.shutdown().await;
    let t = TestServer::start_in(dir, &data, "", "").await;
    assert_eq!(
        t.server.queue.stats().pending.load(Ordering::Relaxed),
        1,
        "held message recovered after restart"
    );
}

// ---------------------------------------------------------------------
// kill -9 under load, against the real binary.

fn tokens_in_maildir(new_dir: &std::path::Path) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in read_maildir(new_dir) {
        let mut text = String::new();
        let _ = m.as_slice().read_to_string(&mut text);
        if let Some(tok) = text.lines().find_map(|l| l.strip_prefix("token: ")) {
            *seen.entry(tok.to_string()).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_message() {
    let rounds: usize = std::env::var("GATEHOUSE_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let cfg = dir.path().join("gatehouse.toml");
    std::fs::write(&cfg, config_text(&data, "max_connections_per_ip = 100", "")).unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for round in 0..rounds {
        let mut p = spawn_server(&cfg);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let run_for = Duration::from_millis(300 + (seed >> 33) % 700);
        let stop = Instant::now() + Duration::from_secs(30);
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let acked = acked.clone();
                let addr = p.addr;
                std::thread::spawn(move || {
                    load(
                        addr,
                        ("load@sender.test", "sink@example.test"),
                        format!("{round}-{i}"),
                        acked,
                        stop,
                    )
                })
            })
            .collect();
        std::thread::sleep(run_for);
        p.child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
        p.child.wait().unwrap();
        for w in workers {
            w.join().unwrap();
        }
        eprintln!(
            "round {round}: killed after {run_for:?}; {} acknowledged so far",
            acked.lock().unwrap().len()
        );
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "load too small to mean anything: {}",
        acked.len()
    );
    // Restart and let recovery deliver everything.
    let mut p = spawn_server(&cfg);
    let new_dir = data.join("mail/catchall/new");
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let seen = tokens_in_maildir(&new_dir);
        if acked.iter().all(|t| seen.contains_key(t)) || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(p.child.id().to_string())
        .status();
    let _ = p.child.wait();
    let lost: Vec<_> = acked.iter().filter(|t| !seen.contains_key(*t)).collect();
    let duplicates: usize = seen.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    eprintln!(
        "kill -9 torture: {rounds} rounds, {} acknowledged, {} delivered distinct, {} lost, {duplicates} duplicate copies",
        acked.len(),
        seen.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged messages lost: {lost:?}");
}
