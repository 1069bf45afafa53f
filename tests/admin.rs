//! The admin API: token file and authorization, health and readiness,
//! /metrics scraped after real SMTP and TLS traffic (names and label sets
//! snapshot-tested), /events.

mod admin_support;
mod common;

use admin_support::*;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

#[tokio::test]
async fn token_file_is_0600_and_guards_everything_but_health() {
    let t = TestServer::start_with("", ADMIN).await;
    let admin = t.server.admin.expect("admin API started");
    assert!(admin.ip().is_loopback());
    let path = t.data_dir().join("admin.token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = token(&t.data_dir());
    assert_eq!(token.len(), 64);

    let r = call(admin, "GET", "/healthz", None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = call(admin, "GET", "/readyz", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ready: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(ready["listeners_bound"], true);
    assert_eq!(ready["queue_open"], true);
    assert_eq!(ready["certificates_loaded"], true);

    for path in ["/metrics", "/events", "/log-level"] {
        let r = call(admin, "GET", path, None).await;
        assert_eq!(r.status, 401, "{path} without a token");
        let r = call(admin, "GET", path, Some("0123456789abcdef0123")).await;
        assert_eq!(r.status, 401, "{path} with a wrong token");
        let r = call(admin, "GET", path, Some(&token)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let r = call(admin, "POST", "/reload", None).await;
    assert_eq!(r.status, 401);
    let r = call(admin, "GET", "/no-such-route", Some(&token)).await;
    assert_eq!(r.status, 404);
    let r = call(admin, "DELETE", "/metrics", Some(&token)).await;
    assert_eq!(r.status, 405);

    // The refusals are events (AdminRequestRefused), visible on /events.
    let r = call(admin, "GET", "/events?category=Admin", Some(&token)).await;
    let events: Vec<serde_json::Value> = serde_json::from_str(&r.body).unwrap();
    assert!(
        events.iter().any(|e| e["name"] == "AdminRequestRefused"),
        "{}",
        r.body
    );

    // A server started from a Config value cannot reload: said so, 422.
    let r = call(admin, "POST", "/reload", Some(&token)).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("in-memory configuration"), "{}", r.body);

    // The token survives a restart: the file is reused, not replaced.
    let TestServer { server, dir, .. } = t;
    server.shutdown().await;
    let data = dir.path().join("var");
    let t2 = TestServer::start_in(dir, &data, "", ADMIN).await;
    assert_eq!(token_from(&t2), token);
}

fn token_from(t: &TestServer) -> String {
    token(&t.data_dir())
}

#[tokio::test]
async fn metrics_after_smtp_and_tls_traffic() {
    let t = TestServer::start_with("", ADMIN).await;
    let admin = t.server.admin.unwrap();
    let token = token(&t.data_dir());

    // One accepted message, one refused recipient (relay denied), one
    // good and one failed TLS handshake.
    let mut c = Client::greeted(t.addr).await;
    let r = c
        .send_message(
            "a@client.test",
            &["user@example.test"],
            b"Subject: m\r\n\r\nhi\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let mut c = Client::greeted(t.addr).await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@client.test>").await;
    let r = c.cmd("RCPT TO:<x@elsewhere.test>").await;
    assert!(r.starts("550 5.7.1"), "{r:?}");
    good_handshake(t.addr).await;
    failed_handshake(t.addr).await;
    wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;

    let m = scrape_until(admin, &token, |m| {
        sample(m, "gatehouse_tls_handshake_failures_total{reason=").is_some()
            && sample(m, "gatehouse_deliveries_total{result=\"delivered\"}").unwrap_or(0.0) >= 1.0
    })
    .await;
    assert!(m.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    let at_least = |prefix: &str, n: f64| {
        let v = sample(&m, prefix).unwrap_or_else(|| panic!("no sample {prefix} in\n{m}"));
        assert!(v >= n, "{prefix} = {v}, expected >= {n}");
    };
    at_least("gatehouse_smtp_sessions_total{connector=\"Default\"}", 4.0);
    at_least(
        "gatehouse_smtp_messages_accepted_total{connector=\"Default\"}",
        1.0,
    );
    at_least(
        "gatehouse_smtp_rejections_total{connector=\"Default\",class=\"5xx\",status=\"5.7.1\"}",
        1.0,
    );
    at_least("gatehouse_tls_handshakes_total{version=\"TLSv1_3\"", 1.0);
    at_least("gatehouse_tls_handshake_failures_total{reason=", 1.0);
    at_least("gatehouse_deliveries_total{result=\"delivered\"}", 1.0);
    at_least(
        "gatehouse_events_total{id=\"1001\",name=\"DefaultCertificateCreated\",level=\"Information\"}",
        1.0,
    );
    assert!(
        sample(&m, "gatehouse_queue_messages{state=\"pending\"}").is_some(),
        "{m}"
    );
    // The default certificate: valid for about a year or more.
    let days = sample(&m, "gatehouse_certificate_expiry_days{thumbprint=").expect("expiry gauge");
    assert!(days > 300.0, "{days}");

    insta::assert_snapshot!(
        "metric_names_and_label_sets",
        names_and_label_sets(&m).join("\n")
    );
}

/// Reads what the server sends until it closes (bounded).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused_not_buffered() {
    let t = TestServer::start_with("", ADMIN).await;
    let admin = t.server.admin.unwrap();
    let reply = raw_exchange(admin, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // Headers beyond the 64 KiB buffer: refused (431), connection closed.
    let mut big = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..2000 {
        big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(60)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let reply = raw_exchange(admin, &big).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    // Still serving.
    let r = call(admin, "GET", "/healthz", None).await;
    assert_eq!(r.status, 200);
}
