//! Diagnostic levels and rate limiting observed through the admin API:
//! GET /events before and after PUT /log-level/Tls/Expert, with real
//! failed TLS handshakes. Its own test binary, because levels are
//! process-wide.

mod admin_support;
mod common;

use admin_support::*;
use common::*;
use std::time::Duration;

async fn tls_events(admin: std::net::SocketAddr, token: &str) -> Vec<serde_json::Value> {
    let r = call(admin, "GET", "/events?category=Tls&limit=50", Some(token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str::<Vec<serde_json::Value>>(&r.body)
        .unwrap()
        .into_iter()
        .filter(|e| e["name"] == "TlsHandshakeFailed")
        .collect()
}

/// Waits until the server has counted `n` failed handshakes in total
/// (the counter is independent of event levels); returns the scrape.
async fn wait_failures(admin: std::net::SocketAddr, token: &str, n: f64) -> String {
    let total = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("gatehouse_tls_handshake_failures_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let m = scrape_until(admin, token, |m| total(m) >= n).await;
    assert!(total(&m) >= n, "{m}");
    m
}

#[tokio::test]
async fn tls_level_change_at_runtime_shows_handshake_failures_once_per_window() {
    let t = TestServer::start_with("", "[admin]\nlisten = \"127.0.0.1:0\"\n").await;
    let admin = t.server.admin.unwrap();
    let token = token(&t.data_dir());

    // Default level Low: TlsHandshakeFailed (Medium) is not emitted.
    let r = call(admin, "GET", "/log-level", Some(&token)).await;
    let levels: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(levels["Tls"], "Low", "{}", r.body);
    failed_handshake(t.addr).await;
    wait_failures(admin, &token, 1.0).await;
    assert!(tls_events(admin, &token).await.is_empty());

    // Bad requests name the problem.
    let r = call(admin, "PUT", "/log-level/Tls/Loud", Some(&token)).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("unknown level `Loud`"), "{}", r.body);
    let r = call(admin, "PUT", "/log-level/Nope/Expert", Some(&token)).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("unknown category `Nope`"), "{}", r.body);

    // Expert: the next failure is an event with connector, client, reason.
    let r = call(admin, "PUT", "/log-level/Tls/Expert", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let levels: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(levels["Tls"], "Expert");
    assert_eq!(levels["Certificates"], "Low", "other categories unchanged");
    failed_handshake(t.addr).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let seen = loop {
        let seen = tls_events(admin, &token).await;
        if !seen.is_empty() {
            break seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no TlsHandshakeFailed after raising the level"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let e = &seen[0];
    assert_eq!(e["id"], 1101);
    assert_eq!(e["level"], "Warning");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.starts_with("connector `Default`: TLS handshake with 127.0.0.1 failed: "),
        "{message}"
    );

    // Rate limit (default window 60 s, key connector + reason): more
    // identical failures do not add events.
    // They are counted on /metrics (wait until all four are) ...
    for _ in 0..3 {
        failed_handshake(t.addr).await;
    }
    const COUNT: &str =
        "gatehouse_events_total{id=\"1101\",name=\"TlsHandshakeFailed\",level=\"Warning\"}";
    let m = scrape_until(admin, &token, |m| sample(m, COUNT) >= Some(4.0)).await;
    assert_eq!(sample(&m, COUNT), Some(4.0), "{m}");
    // ... but written once.
    assert_eq!(tls_events(admin, &token).await.len(), 1);

    // Back to Low: filtered again.
    let r = call(admin, "PUT", "/log-level/tls/low", Some(&token)).await;
    assert_eq!(r.status, 200);
    failed_handshake(t.addr).await;
    let m = wait_failures(admin, &token, 6.0).await;
    assert_eq!(sample(&m, COUNT), Some(4.0));
}
