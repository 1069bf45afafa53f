//! Outbound relay over real sockets: smart host with pipelining and
//! connection reuse, every TLS level against peers that lack STARTTLS,
//! have a self-signed certificate, a CA chain with the wrong name, a
//! pinned fingerprint; `may` fallback; the TLS memory's downgrade report
//! and enforcement; AUTH; the SmtpSend protocol log; and mail for a
//! relay domain without a send connector staying queued.

#[path = "outbound_support/mod.rs"]
mod support;
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use support::*;

const WAIT: Duration = Duration::from_secs(15);

/// `:<port>` of a sink, as event messages quote its address.
fn port(sink: &Sink) -> String {
    format!(":{}", sink.addr.port())
}

fn smart(addr: std::net::SocketAddr, tls: &str, more: &str) -> String {
    connector(
        "Smart",
        "\"*\"",
        &format!("smart_hosts = [\"{addr}\"]\ntls = \"{tls}\"\n{more}"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn smart_host_relay_pipelines_and_reuses_one_connection() {
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Relay::start(
        "",
        &smart(sink.addr, "none", "max_connections_per_destination = 1"),
    )
    .await;
    for i in 0..5 {
        relay
            .send(
                "sender@example.test",
                &[&format!("user{i}@remote.test")],
                &format!("message {i}"),
            )
            .await;
    }
    let got = sink.wait_for(5, WAIT).await;
    assert_eq!(got.len(), 5, "all five relayed");
    assert_eq!(
        sink.connections.load(Ordering::SeqCst),
        1,
        "one connection reused"
    );
    assert!(
        got.iter().all(|g| g.pipelined),
        "MAIL/RCPT/DATA pipelined: {got:?}"
    );
    assert!(got.iter().all(|g| !g.tls));
    let mut bodies: Vec<String> = got
        .iter()
        .map(|g| String::from_utf8_lossy(&g.data).to_string())
        .collect();
    bodies.sort();
    assert!(bodies[0].contains("\r\n\r\nmessage 0\r\n"), "{}", bodies[0]);
    assert!(
        got[0]
            .mail_line
            .starts_with("MAIL FROM:<sender@example.test>")
    );
    assert!(got[0].mail_line.contains("SIZE="), "{}", got[0].mail_line);
    assert!(
        wait_until(WAIT, || relay.pending() == 0).await,
        "queue drained"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_messages_per_connection_opens_a_new_connection() {
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Relay::start(
        "",
        &smart(
            sink.addr,
            "none",
            "max_connections_per_destination = 1\nmax_messages_per_connection = 2",
        ),
    )
    .await;
    for i in 0..4 {
        relay
            .send("sender@example.test", &[&format!("u{i}@remote.test")], "x")
            .await;
    }
    assert_eq!(sink.wait_for(4, WAIT).await.len(), 4);
    assert!(sink.connections.load(Ordering::SeqCst) >= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn may_without_starttls_sends_in_plaintext_and_logs_it() {
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Relay::start("", &smart(sink.addr, "may", "")).await;
    relay
        .send("sender@example.test", &["u@remote.test"], "plain")
        .await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(!got[0].tls);
    // The SmtpSend protocol log records the decision.
    let dir = relay.dir.path().join("var/log/protocol/SmtpSend");
    assert!(
        wait_until(WAIT, || {
            std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok()).any(|e| {
                        std::fs::read_to_string(e.path())
                            .is_ok_and(|t| t.contains("STARTTLS not offered; sending in plaintext"))
                    })
                })
                .unwrap_or(false)
        })
        .await,
        "SEND log mentions the plaintext decision"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypt_refuses_a_peer_without_starttls_and_keeps_the_message() {
    let since = SystemTime::now();
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Relay::start("first_retry = \"1h\"", &smart(sink.addr, "encrypt", "")).await;
    relay
        .send("sender@example.test", &["u@remote.test"], "secret")
        .await;
    assert!(
        wait_until(WAIT, || !events_since(since, 2003, &port(&sink)).is_empty()).await,
        "OutboundTlsFailed event"
    );
    let ev = events_since(since, 2003, &port(&sink));
    assert!(
        ev.iter().any(|e| e.contains("does not offer STARTTLS")),
        "{ev:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.messages().is_empty(), "nothing sent in plaintext");
    assert_eq!(relay.pending(), 1, "still queued");
}

#[tokio::test(flavor = "multi_thread")]
async fn may_with_a_self_signed_peer_uses_tls() {
    let cert = self_signed("sink.peer.test");
    let sink = Sink::start(SinkOptions {
        tls: Some(cert.server_config()),
        ..Default::default()
    })
    .await;
    let relay = Relay::start("", &smart(sink.addr, "may", "")).await;
    relay
        .send("sender@example.test", &["u@remote.test"], "opportunistic")
        .await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "sent over TLS");
}

#[tokio::test(flavor = "multi_thread")]
async fn may_falls_back_to_plaintext_when_starttls_breaks() {
    let since = SystemTime::now();
    let cert = self_signed("sink.peer.test");
    let opts = SinkOptions {
        tls: Some(cert.server_config()),
        ..Default::default()
    };
    opts.break_starttls.store(true, Ordering::SeqCst);
    let sink = Sink::start(opts).await;
    let relay = Relay::start("", &smart(sink.addr, "may", "")).await;
    relay
        .send("sender@example.test", &["u@remote.test"], "fallback")
        .await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "delivered after the fallback");
    assert!(!got[0].tls);
    assert!(
        sink.connections.load(Ordering::SeqCst) >= 2,
        "a second, plaintext connection"
    );
    assert!(
        !events_since(since, 2004, &port(&sink)).is_empty(),
        "OutboundTlsFallbackPlaintext event"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypt_does_not_fall_back_when_starttls_breaks() {
    let since = SystemTime::now();
    let cert = self_signed("sink.peer.test");
    let opts = SinkOptions {
        tls: Some(cert.server_config()),
        ..Default::default()
    };
    opts.break_starttls.store(true, Ordering::SeqCst);
    let sink = Sink::start(opts).await;
    let relay = Relay::start("first_retry = \"1h\"", &smart(sink.addr, "encrypt", "")).await;
    relay
        .send("sender@example.test", &["u@remote.test"], "x")
        .await;
    assert!(wait_until(WAIT, || !events_since(since, 2003, &port(&sink)).is_empty()).await);
    assert!(sink.messages().is_empty());
    assert_eq!(relay.pending(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_refuses_a_self_signed_peer() {
    let since = SystemTime::now();
    let cert = self_signed("sink.peer.test");
    let sink = Sink::start(SinkOptions {
        tls: Some(cert.server_config()),
        ..Default::default()
    })
    .await;
    let relay = Relay::start("first_retry = \"1h\"", &smart(sink.addr, "verify", "")).await;
    relay
        .send("sender@example.test", &["u@remote.test"], "x")
        .await;
    assert!(wait_until(WAIT, || !events_since(since, 2003, &port(&sink)).is_empty()).await);
    let ev = events_since(since, 2003, &port(&sink)).join("\n");
    assert!(ev.contains("TLS with 127.0.0.1 failed"), "{ev}");
    assert!(ev.to_lowercase().contains("certificate"), "{ev}");
    assert!(sink.messages().is_empty());
    assert_eq!(relay.pending(), 1);
}

/// A CA-signed peer reached by name through the in-test DNS server.
async fn ca_peer(name: &str) -> (TestCa, Sink, DnsServer) {
    let ca = TestCa::new();
    let leaf = ca.issue(name);
    let sink = Sink::start(SinkOptions {
        tls: Some(leaf.server_config()),
        ..Default::default()
    })
    .await;
    let dns = DnsServer::start(Zone::default().a("smarthost.peer.test", "127.0.0.1").mx(
        "remote.test",
        10,
        "smarthost.peer.test",
    ))
    .await;
    (ca, sink, dns)
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_refuses_a_valid_chain_with_the_wrong_name() {
    let since = SystemTime::now();
    let (ca, sink, dns) = ca_peer("other-name.peer.test").await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path());
    let extra = format!(
        "[dns]\nnameservers = [\"{}\"]\n{}",
        dns.addr,
        smart(
            format!("smarthost.peer.test:{}", sink.addr.port())
                .parse()
                .unwrap_or(sink.addr),
            "verify",
            &format!("ca_file = \"{}\"", ca_file.display())
        )
        .replace(
            &sink.addr.to_string(),
            &format!("smarthost.peer.test:{}", sink.addr.port())
        )
    );
    let relay = Relay::start("first_retry = \"1h\"", &extra).await;
    relay
        .send("sender@example.test", &["u@remote.test"], "x")
        .await;
    assert!(wait_until(WAIT, || !events_since(since, 2003, &port(&sink)).is_empty()).await);
    let ev = events_since(since, 2003, &port(&sink)).join("\n");
    assert!(ev.contains("smarthost.peer.test"), "{ev}");
    assert!(ev.contains("not valid for name"), "names the reason: {ev}");
    assert!(sink.messages().is_empty());
}

fn named_smart(sink: &Sink, dns: &DnsServer, tls: &str, more: &str) -> String {
    format!(
        "[dns]\nnameservers = [\"{}\"]\n{}",
        dns.addr,
        connector(
            "Smart",
            "\"*\"",
            &format!(
                "smart_hosts = [\"smarthost.peer.test:{}\"]\ntls = \"{tls}\"\n{more}",
                sink.addr.port()
            )
        )
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_accepts_the_right_name_from_the_test_ca() {
    let (ca, sink, dns) = ca_peer("smarthost.peer.test").await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path());
    let relay = Relay::start(
        "",
        &named_smart(
            &sink,
            &dns,
            "verify",
            &format!("ca_file = \"{}\"", ca_file.display()),
        ),
    )
    .await;
    relay
        .send("sender@example.test", &["u@remote.test"], "verified")
        .await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
}

#[tokio::test(flavor = "multi_thread")]
async fn secure_checks_the_next_hop_domain_or_configured_names() {
    // The certificate names the smart host, not the recipient domain:
    // `secure` with default names refuses it, with tls_names it passes.
    let since = SystemTime::now();
    let (ca, sink, dns) = ca_peer("smarthost.peer.test").await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path());
    let relay = Relay::start(
        "first_retry = \"1h\"",
        &named_smart(
            &sink,
            &dns,
            "secure",
            &format!(
                "ca_file = \"{}\"\ntls_names = [\"relay.peer.test\"]",
                ca_file.display()
            ),
        ),
    )
    .await;
    relay
        .send("sender@example.test", &["u@remote.test"], "x")
        .await;
    assert!(wait_until(WAIT, || !events_since(since, 2003, &port(&sink)).is_empty()).await);
    assert!(sink.messages().is_empty());
    drop(relay);

    let relay = Relay::start(
        "",
        &named_smart(
            &sink,
            &dns,
            "secure",
            &format!(
                "ca_file = \"{}\"\ntls_names = [\"smarthost.peer.test\"]",
                ca_file.display()
            ),
        ),
    )
    .await;
    relay
        .send("sender@example.test", &["u@remote.test"], "secure")
        .await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
}

#[tokio::test(flavor = "multi_thread")]
async fn fingerprint_accepts_the_pinned_certificate_only() {
    let since = SystemTime::now();
    let pinned = self_signed("sink.peer.test");
    let sink = Sink::start(SinkOptions {
        tls: Some(pinned.server_config()),
        ..Default::default()
    })
    .await;
    let other = self_signed("sink.peer.test");
    let relay = Relay::start(
        "first_retry = \"1h\"",
        &smart(
            sink.addr,
            "fingerprint",
            &format!("fingerprints = [\"{}\"]", other.sha256_hex()),
        ),
    )
    .await;
    relay
        .send("sender@example.test", &["u@remote.test"], "x")
        .await;
    assert!(wait_until(WAIT, || !events_since(since, 2003, &port(&sink)).is_empty()).await);
    let ev = events_since(since, 2003, &port(&sink)).join("\n");
    assert!(ev.contains("is not pinned"), "{ev}");
    assert!(sink.messages().is_empty());
    drop(relay);

    let relay = Relay::start(
        "",
        &smart(
            sink.addr,
            "fingerprint",
            &format!("fingerprints = [\"{}\"]", pinned.sha256_hex()),
        ),
    )
    .await;
    relay
        .send("sender@example.test", &["u@remote.test"], "pinned")
        .await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
}

#[tokio::test(flavor = "multi_thread")]
async fn per_domain_override_raises_the_level_for_one_domain() {
    let since = SystemTime::now();
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Relay::start(
        "first_retry = \"1h\"",
        &smart(
            sink.addr,
            "may",
            "[[send_connector.tls_domain]]\ndomain = \"strict.test\"\ntls = \"encrypt\"",
        ),
    )
    .await;
    relay
        .send("sender@example.test", &["a@strict.test"], "x")
        .await;
    relay
        .send("sender@example.test", &["b@loose.test"], "y")
        .await;
    let got = sink.wait_for(1, WAIT).await;
    assert!(wait_until(WAIT, || !events_since(since, 2003, &port(&sink)).is_empty()).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<_> = got.iter().flat_map(|g| g.rcpts.clone()).collect();
    assert_eq!(got, vec!["b@loose.test".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn downgrade_is_reported_then_enforced() {
    let (ca, sink, dns) = ca_peer("smarthost.peer.test").await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path());
    let since = SystemTime::now();
    let relay = Relay::start(
        "",
        &named_smart(
            &sink,
            &dns,
            "may",
            // One message per connection, so the second one needs a new
            // session (a reused TLS session would hide the downgrade).
            &format!(
                "ca_file = \"{}\"\nmax_messages_per_connection = 1",
                ca_file.display()
            ),
        ),
    )
    .await;
    relay
        .send("sender@example.test", &["u@remote.test"], "first")
        .await;
    assert_eq!(sink.wait_for(1, WAIT).await.len(), 1);
    assert!(sink.messages()[0].tls);
    // The peer stops offering STARTTLS (a stripping attacker).
    sink.opts.offer_starttls.store(false, Ordering::SeqCst);
    relay
        .send("sender@example.test", &["u@remote.test"], "second")
        .await;
    assert_eq!(
        sink.wait_for(2, WAIT).await.len(),
        2,
        "reported, not enforced"
    );
    let ev = events_since(since, 2005, "smarthost.peer.test").join("\n");
    assert!(ev.contains("plaintext") && ev.contains("verified"), "{ev}");

    // Same data directory, enforcement on: the memory survives and refuses.
    let data = relay.dir.path().join("var");
    let memory = std::fs::read_to_string(data.join("tls-memory.json")).unwrap();
    assert!(
        memory.contains("\"smarthost.peer.test\": \"verified\""),
        "{memory}"
    );
    let since = SystemTime::now();
    let text = relay_config(
        &data,
        "first_retry = \"1h\"",
        &named_smart(
            &sink,
            &dns,
            "may",
            &format!(
                "ca_file = \"{}\"\nenforce_tls_memory = true",
                ca_file.display()
            ),
        ),
    );
    let keep = relay.dir;
    relay.server.shutdown().await;
    let cfg = gatehouse::config::Config::from_source(&gatehouse::config::ConfigSource {
        name: "t.toml".into(),
        text,
    })
    .unwrap();
    let server = gatehouse::server::start(cfg).await.unwrap();
    let relay2 = Relay {
        dir: keep,
        addr: server.addr("Default").unwrap(),
        server,
    };
    relay2
        .send("sender@example.test", &["u@remote.test"], "third")
        .await;
    assert!(
        wait_until(WAIT, || events_since(since, 2005, "smarthost.peer.test")
            .iter()
            .any(|e| e.contains("refused")))
        .await,
        "enforced downgrade event"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sink.messages().len(),
        2,
        "third message not sent in plaintext"
    );
    assert_eq!(relay2.pending(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_plain_is_sent_over_tls_and_never_logged() {
    let cert = self_signed("sink.peer.test");
    let sink = Sink::start(SinkOptions {
        tls: Some(cert.server_config()),
        auth: Some(("relayuser".into(), "s3cret-pass".into())),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("relay.secret");
    std::fs::write(&auth_file, "relayuser:s3cret-pass\n").unwrap();
    let relay = Relay::start(
        "",
        &smart(
            sink.addr,
            "encrypt",
            &format!("auth_file = \"{}\"", auth_file.display()),
        ),
    )
    .await;
    relay
        .send("sender@example.test", &["u@remote.test"], "authed")
        .await;
    assert_eq!(sink.wait_for(1, WAIT).await.len(), 1);
    assert_eq!(sink.auth_seen.lock().unwrap().len(), 1);
    let log_dir = relay.dir.path().join("var/log/protocol/SmtpSend");
    assert!(
        wait_until(WAIT, || {
            std::fs::read_dir(&log_dir).is_ok_and(|rd| {
                rd.filter_map(|e| e.ok()).any(|e| {
                    std::fs::read_to_string(e.path()).is_ok_and(|t| {
                        t.contains("AUTH PLAIN ****") && t.contains("TLS negotiation succeeded")
                    })
                })
            })
        })
        .await,
        "SEND log has the masked AUTH and the TLS result"
    );
    for e in std::fs::read_dir(&log_dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(!text.contains("s3cret"), "password in the log");
        let token = gatehouse::smtp::outbound::client::base64_encode(b"\0relayuser\0s3cret-pass");
        assert!(!text.contains(&token), "credentials in the log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_domain_without_a_send_connector_stays_queued() {
    let since = SystemTime::now();
    let relay = Relay::start("", "").await;
    relay
        .send("sender@example.test", &["u@nowhere.test"], "held")
        .await;
    assert!(
        wait_until(WAIT, || !events_since(since, 2001, "nowhere.test")
            .is_empty())
        .await
    );
    let ev = events_since(since, 2001, "nowhere.test").join("\n");
    assert!(ev.contains("nowhere.test"), "{ev}");
    assert_eq!(relay.pending(), 1, "kept, never lost");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_and_relay_recipients_of_one_message_both_arrive() {
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Relay::start("", &smart(sink.addr, "none", "")).await;
    relay
        .send(
            "sender@example.test",
            &["local@example.test", "far@remote.test"],
            "both",
        )
        .await;
    assert_eq!(sink.wait_for(1, WAIT).await.len(), 1);
    assert_eq!(wait_maildir(&relay.mailbox(), 1, WAIT).await.len(), 1);
    assert!(wait_until(WAIT, || relay.pending() == 0).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_connection_closed_by_the_peer_is_reopened_at_once() {
    let sink = Sink::start(SinkOptions {
        drop_after: 1,
        ..Default::default()
    })
    .await;
    // With an hour of backoff, only an immediate reconnect delivers #2 in time.
    let relay = Relay::start(
        "first_retry = \"1h\"",
        &smart(sink.addr, "none", "max_connections_per_destination = 1"),
    )
    .await;
    relay
        .send("sender@example.test", &["a@remote.test"], "one")
        .await;
    assert_eq!(sink.wait_for(1, WAIT).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay
        .send("sender@example.test", &["b@remote.test"], "two")
        .await;
    assert_eq!(
        sink.wait_for(2, WAIT).await.len(),
        2,
        "second message after a reconnect"
    );
    assert_eq!(sink.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn chunking_peer_gets_bdat_without_dot_stuffing() {
    let sink = Sink::start(SinkOptions {
        chunking: true,
        ..Default::default()
    })
    .await;
    let relay = Relay::start("", &smart(sink.addr, "none", "")).await;
    relay
        .send(
            "sender@example.test",
            &["u@remote.test"],
            ".leading dot\r\n..two dots",
        )
        .await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].bdat, "sent with BDAT");
    let text = String::from_utf8_lossy(&got[0].data).to_string();
    assert!(
        text.ends_with("\r\n\r\n.leading dot\r\n..two dots\r\n"),
        "byte for byte, not dot-stuffed: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificate_from_the_store_and_source_address_are_used() {
    let server_cert = self_signed("sink.peer.test");
    let sink = Sink::start(SinkOptions {
        tls: Some(server_cert.server_config_requiring_client_cert()),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = gatehouse::certs::CertStore::open(&dir.path().join("var")).unwrap();
    let info = store
        .new_self_signed(
            &["gw.example.test".to_string()],
            gatehouse::certs::KeyKind::EcdsaP256,
            gatehouse::certs::Services::NONE,
        )
        .unwrap();
    let thumb = info.thumbprint().to_string();
    let relay = Relay::start_in(
        dir,
        "",
        &smart(
            sink.addr,
            "encrypt",
            &format!("client_certificate = \"{thumb}\"\nsource_address = \"127.0.0.2\""),
        ),
    )
    .await;
    relay
        .send("sender@example.test", &["u@remote.test"], "mutual")
        .await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
    assert_eq!(*sink.client_certs.lock().unwrap(), vec![thumb]);
    assert!(
        sink.peers
            .lock()
            .unwrap()
            .iter()
            .all(|p| p.ip().to_string() == "127.0.0.2")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_client_certificate_is_a_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = relay_config(
        &dir.path().join("var"),
        "",
        &smart(
            "127.0.0.1:25".parse().unwrap(),
            "may",
            "client_certificate = \"0000000000000000000000000000000000000000\"",
        ),
    );
    let cfg = gatehouse::config::Config::from_source(&gatehouse::config::ConfigSource {
        name: "t.toml".into(),
        text,
    })
    .unwrap();
    let err = match gatehouse::server::start(cfg).await {
        Ok(_) => panic!("started with a missing client certificate"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(
            "client certificate 0000000000000000000000000000000000000000 is not in the store"
        ),
        "{err}"
    );
}

/// The store's CA certificates are trust anchors for `verify`: importing
/// a certificate issued by an internal intermediate CA (chain leaf +
/// intermediate; the store keeps the intermediate, not the root) makes a
/// peer with a certificate from the same intermediate verifiable, with no
/// ca_file.
#[tokio::test(flavor = "multi_thread")]
async fn verify_trusts_the_stores_ca_certificates() {
    let root = TestCa::new();
    let inter = root.intermediate("Gatehouse Test Issuing CA");
    let inter_der =
        rustls::pki_types::CertificateDer::from_pem_slice(inter.pem.as_bytes()).unwrap();
    // The peer serves leaf + intermediate.
    let peer = inter.issue("smarthost.peer.test");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![peer.der.clone(), inter_der.clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(peer.key_der.clone().into()),
        )
        .unwrap();
    let sink = Sink::start(SinkOptions {
        tls: Some(Arc::new(server_config)),
        ..Default::default()
    })
    .await;
    let dns = DnsServer::start(Zone::default().a("smarthost.peer.test", "127.0.0.1")).await;
    // Our own certificate from the same intermediate, imported with its chain.
    let own = inter.issue("gw.example.test");
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("own.pem");
    std::fs::write(
        &pem,
        format!(
            "{}{}-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            own.pem,
            inter.pem,
            gatehouse::auth::base64_encode(&own.key_der)
        ),
    )
    .unwrap();
    let store = gatehouse::certs::CertStore::open(&dir.path().join("var")).unwrap();
    store
        .import(&pem, None)
        .expect("import leaf + intermediate");
    assert_eq!(store.ca_certificates(), vec![inter_der]);
    let relay = Relay::start_in(dir, "", &named_smart(&sink, &dns, "verify", "")).await;
    relay
        .send("sender@example.test", &["u@remote.test"], "store anchor")
        .await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
}
