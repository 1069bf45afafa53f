//! kill -9 while relaying: messages acknowledged with 250 and on their way
//! to a smart host when the process dies are all relayed after a restart
//! (at least once; duplicates only from the in-flight window).

#[path = "outbound_support/mod.rs"]
mod support;
#[path = "torture/mod.rs"]
mod torture;
use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use torture::{load, spawn_server};

fn tokens(sink: &Sink) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for g in sink.messages() {
        let text = String::from_utf8_lossy(&g.data).to_string();
        if let Some(tok) = text.lines().find_map(|l| l.strip_prefix("token: ")) {
            *seen.entry(tok.to_string()).or_insert(0) += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_relaying_loses_no_acknowledged_message() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let cfg = dir.path().join("gatehouse.toml");
    let text = relay_config(
        &data,
        "first_retry = \"1s\"\nmax_retry_interval = \"1s\"",
        &connector(
            "Smart",
            "\"*\"",
            &format!("smart_hosts = [\"{}\"]\ntls = \"none\"", sink.addr),
        ),
    )
    .replace(
        "max_errors = 100",
        "max_errors = 100\nmax_connections_per_ip = 100",
    );
    std::fs::write(&cfg, text).unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let rounds = 3;
    let acked2 = acked.clone();
    let cfg2 = cfg.clone();
    tokio::task::spawn_blocking(move || {
        for round in 0..rounds {
            let mut p = spawn_server(&cfg2);
            let run_for = Duration::from_millis(400 + 250 * round as u64);
            let stop = Instant::now() + Duration::from_secs(30);
            let workers: Vec<_> = (0..6)
                .map(|i| {
                    let acked = acked2.clone();
                    let addr = p.addr;
                    std::thread::spawn(move || {
                        load(
                            addr,
                            ("load@example.test", "sink@remote.test"),
                            format!("{round}-{i}"),
                            acked,
                            stop,
                        )
                    })
                })
                .collect();
            std::thread::sleep(run_for);
            p.child.kill().expect("SIGKILL");
            p.child.wait().unwrap();
            for w in workers {
                w.join().unwrap();
            }
        }
    })
    .await
    .unwrap();
    let acked = acked.lock().unwrap().clone();
    let relayed_before_restart = tokens(&sink).len();
    assert!(acked.len() >= 50, "load too small: {}", acked.len());
    let cfg3 = cfg.clone();
    let mut p = tokio::task::spawn_blocking(move || spawn_server(&cfg3))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let seen = tokens(&sink);
        if acked.iter().all(|t| seen.contains_key(t)) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(p.child.id().to_string())
        .status();
    let _ = p.child.wait();
    let lost: Vec<_> = acked.iter().filter(|t| !seen.contains_key(*t)).collect();
    let duplicates: usize = seen.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    eprintln!(
        "relay kill -9: {rounds} rounds, {} acknowledged, {relayed_before_restart} relayed before the last restart, {} relayed distinct, {} lost, {duplicates} duplicates",
        acked.len(),
        seen.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged messages lost: {lost:?}");
}
