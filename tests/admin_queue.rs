//! `gatehouse queue ...` against a running server, through the admin
//! API's /queue endpoints: list (table and JSON), show, retry, delete,
//! bounce, flush, and the refusals. Mail for `relay.test` waits in the
//! queue because no send connector matches it, which gives messages to
//! act on.

mod common;
use common::*;
use gatehouse::config::Config;
use gatehouse::server::ConfigOrigin;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn gatehouse(config: &Path, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("GATEHOUSE_CONFIG");
    tokio::task::spawn_blocking(move || run_bounded(c, Duration::from_secs(30)))
        .await
        .unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Queues one message for `to` and returns its queue ID.
async fn queue_one(addr: std::net::SocketAddr, from: &str, to: &str) -> String {
    let mut c = Client::greeted(addr).await;
    let r = c
        .send_message(from, &[to], b"Subject: waiting\r\n\r\nbody\r\n")
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    r.text.split_whitespace().nth(4).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_cli_lists_shows_retries_deletes_and_bounces_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let path = dir.path().join("gatehouse.toml");
    let admin = format!("[admin]\nlisten = \"127.0.0.1:{}\"\n", free_port());
    std::fs::write(&path, config_text(&data, "", &admin)).unwrap();
    let (cfg, _) = Config::load(Some(&path)).unwrap();
    let server = gatehouse::server::start_from(cfg, ConfigOrigin::Load(Some(path.clone())))
        .await
        .expect("server starts");
    let smtp = server.addr("Default").unwrap();
    let a = queue_one(smtp, "alice@example.test", "bob@relay.test").await;
    let b = queue_one(smtp, "carol@example.test", "dave@relay.test").await;

    // list: a table with both IDs and the destination.
    let out = gatehouse(&path, &["queue", "list"]).await;
    assert!(out.status.success(), "{out:?}");
    let table = stdout(&out);
    assert!(table.contains(&a) && table.contains(&b), "{table}");
    assert!(table.contains("relay.test"), "{table}");
    assert!(table.contains("2 message(s)"), "{table}");

    // list --json --destination: parseable, filtered.
    let out = gatehouse(
        &path,
        &["queue", "list", "--destination", "relay.test", "--json"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    let out = gatehouse(
        &path,
        &["queue", "list", "--destination", "nowhere.test", "--json"],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0, "{v}");

    // show: the recipient and its state.
    let out = gatehouse(&path, &["queue", "show", &a]).await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("bob@relay.test") && text.contains("alice@example.test"),
        "{text}"
    );

    // retry one, retry a destination, flush.
    let out = gatehouse(&path, &["queue", "retry", &a]).await;
    assert!(
        out.status.success() && stdout(&out).contains("retry scheduled"),
        "{out:?}"
    );
    let out = gatehouse(&path, &["queue", "retry", "--destination", "relay.test"]).await;
    assert!(
        stdout(&out).contains("2 message(s) for relay.test"),
        "{out:?}"
    );
    let out = gatehouse(&path, &["queue", "flush"]).await;
    assert!(out.status.success(), "{out:?}");

    // delete a: gone, no DSN.
    let out = gatehouse(&path, &["queue", "delete", &a]).await;
    assert!(stdout(&out).contains("deleted (no DSN sent)"), "{out:?}");
    let out = gatehouse(&path, &["queue", "show", &a]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no queued message with ID"),
        "{out:?}"
    );

    // bounce b: gone, and carol (local) gets the failure DSN.
    let out = gatehouse(&path, &["queue", "bounce", &b]).await;
    assert!(stdout(&out).contains("failure DSN was queued"), "{out:?}");
    let msgs = wait_for_messages(&data.join("mail/catchall/new"), 1, Duration::from_secs(10)).await;
    let dsn = String::from_utf8_lossy(&msgs[0]);
    assert!(dsn.contains("dave@relay.test"), "{dsn}");
    assert!(dsn.contains("multipart/report"), "{dsn}");

    // Refusals: a bad ID, a bad destination, no admin API.
    let out = gatehouse(&path, &["queue", "show", "nothex"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a queue ID"),
        "{out:?}"
    );
    let out = gatehouse(&path, &["queue", "list", "--destination", "a b&c"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a destination"),
        "{out:?}"
    );
    let no_admin = dir.path().join("no-admin.toml");
    std::fs::write(&no_admin, config_text(&data, "", "")).unwrap();
    let out = gatehouse(&no_admin, &["queue", "list"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no [admin] section"),
        "{out:?}"
    );

    server.shutdown().await;
}
