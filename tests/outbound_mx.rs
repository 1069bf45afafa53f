//! MX routing against an in-test authoritative DNS server on 127.0.0.1:
//! preference order with fallback to the next host, implicit MX (A/AAAA
//! of the domain), null MX (RFC 7505) and NXDOMAIN bouncing at once with
//! a failure DSN, a temporary DNS failure keeping the message queued.

#[path = "outbound_support/mod.rs"]
mod support;
use mail_parser::{MessageParser, MimeHeaders};
use std::time::{Duration, SystemTime};
use support::*;

const WAIT: Duration = Duration::from_secs(15);

fn mx_connector(dns: &DnsServer, port: u16) -> String {
    format!(
        "[dns]\nnameservers = [\"{}\"]\n{}",
        dns.addr,
        connector(
            "Internet",
            "\"*\"",
            &format!("port = {port}\ntls = \"may\"")
        )
    )
}

/// The delivery-status part of a DSN, parsed.
fn dsn_status(msg: &[u8]) -> String {
    let parsed = MessageParser::default().parse(msg).expect("DSN parses");
    let ct = parsed.content_type().expect("content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let part = parsed
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.ctype() == "message" && c.subtype() == Some("delivery-status"))
        })
        .expect("a message/delivery-status part");
    String::from_utf8_lossy(part.contents()).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn lowest_preference_first_then_fallback_to_the_next_mx() {
    let sink = Sink::start(SinkOptions::default()).await;
    // 127.0.0.2 has nothing listening on the sink's port: refused.
    let dns = DnsServer::start(
        Zone::default()
            .mx("remote.test", 10, "mx1.remote.test")
            .mx("remote.test", 20, "mx2.remote.test")
            .a("mx1.remote.test", "127.0.0.2")
            .a("mx2.remote.test", "127.0.0.1"),
    )
    .await;
    let relay = Relay::start("", &mx_connector(&dns, sink.addr.port())).await;
    relay
        .send("sender@example.test", &["u@remote.test"], "via mx2")
        .await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "delivered through the second MX");
    assert_eq!(got[0].rcpts, vec!["u@remote.test".to_string()]);
    assert!(wait_until(WAIT, || relay.pending() == 0).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn mx_preference_is_honoured_when_both_work() {
    let good = Sink::start(SinkOptions::default()).await;
    // Same port on 127.0.0.3 is a second sink for the less preferred MX.
    let other = Sink::start_on(
        format!("127.0.0.3:{}", good.addr.port()).parse().unwrap(),
        SinkOptions::default(),
    )
    .await;
    let dns = DnsServer::start(
        Zone::default()
            .mx("remote.test", 50, "backup.remote.test")
            .mx("remote.test", 5, "primary.remote.test")
            .a("backup.remote.test", "127.0.0.3")
            .a("primary.remote.test", "127.0.0.1"),
    )
    .await;
    let relay = Relay::start("", &mx_connector(&dns, good.addr.port())).await;
    relay
        .send("sender@example.test", &["u@remote.test"], "primary")
        .await;
    assert_eq!(good.wait_for(1, WAIT).await.len(), 1);
    assert!(other.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_mx_uses_the_domains_own_address() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dns = DnsServer::start(Zone::default().a("implicit.test", "127.0.0.1")).await;
    let relay = Relay::start("", &mx_connector(&dns, sink.addr.port())).await;
    relay
        .send("sender@example.test", &["u@implicit.test"], "implicit")
        .await;
    assert_eq!(sink.wait_for(1, WAIT).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn null_mx_bounces_at_once_with_5_1_10() {
    let since = SystemTime::now();
    let dns = DnsServer::start(Zone::default().mx("nomail.test", 0, ".")).await;
    let relay = Relay::start("", &mx_connector(&dns, 25)).await;
    relay
        .send("sender@example.test", &["u@nomail.test"], "nowhere")
        .await;
    let dsns = wait_maildir(&relay.mailbox(), 1, WAIT).await;
    assert_eq!(dsns.len(), 1, "failure DSN to the local sender");
    let status = dsn_status(&dsns[0]);
    assert!(status.contains("Action: failed"), "{status}");
    assert!(status.contains("Status: 5.1.10"), "{status}");
    assert!(
        status.contains("Final-Recipient: rfc822; u@nomail.test"),
        "{status}"
    );
    assert!(status.contains("null MX"), "{status}");
    assert!(
        wait_until(WAIT, || relay.pending() == 0).await,
        "original removed"
    );
    assert!(!events_since(since, 2101, "u@nomail.test").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn nxdomain_bounces_at_once_with_5_1_2() {
    let dns = DnsServer::start(Zone::default().a("exists.test", "127.0.0.1")).await;
    let relay = Relay::start("", &mx_connector(&dns, 25)).await;
    relay
        .send("sender@example.test", &["u@missing.test"], "x")
        .await;
    let dsns = wait_maildir(&relay.mailbox(), 1, WAIT).await;
    assert_eq!(dsns.len(), 1);
    let status = dsn_status(&dsns[0]);
    assert!(status.contains("Status: 5.1.2"), "{status}");
    assert!(status.contains("does not exist"), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_dns_defers_and_keeps_the_message() {
    let since = SystemTime::now();
    // A port where no DNS server answers: every lookup times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        "[dns]\nnameservers = [\"{}\"]\n{}",
        silent.local_addr().unwrap(),
        connector("Internet", "\"*\"", "")
    );
    let relay = Relay::start("first_retry = \"1h\"", &extra).await;
    relay
        .send("sender@example.test", &["u@remote.test"], "x")
        .await;
    assert!(
        wait_until(Duration::from_secs(40), || !events_since(
            since,
            2006,
            "remote.test"
        )
        .is_empty())
        .await,
        "OutboundDnsFailure event"
    );
    assert_eq!(relay.pending(), 1);
    assert!(
        maildir(&relay.mailbox()).is_empty(),
        "no DSN for a temporary failure"
    );
}

/// `secure` over MX: a CA-signed certificate for an MX host inside the
/// recipient domain passes; one for a host outside it does not, even
/// though it matches the MX host name DNS gave.
#[tokio::test(flavor = "multi_thread")]
async fn secure_over_mx_accepts_hosts_inside_the_domain_only() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path());
    let inside = Sink::start(SinkOptions {
        tls: Some(ca.issue("mx.inside.test").server_config()),
        ..Default::default()
    })
    .await;
    let outside = Sink::start_on(
        format!("127.0.0.5:{}", inside.addr.port()).parse().unwrap(),
        SinkOptions {
            tls: Some(ca.issue("mx.hoster.test").server_config()),
            ..Default::default()
        },
    )
    .await;
    let dns = DnsServer::start(
        Zone::default()
            .mx("inside.test", 10, "mx.inside.test")
            .a("mx.inside.test", "127.0.0.1")
            .mx("outside.test", 10, "mx.hoster.test")
            .a("mx.hoster.test", "127.0.0.5"),
    )
    .await;
    let extra = format!(
        "[dns]\nnameservers = [\"{}\"]\n{}",
        dns.addr,
        connector(
            "Internet",
            "\"*\"",
            &format!(
                "port = {}\ntls = \"secure\"\nca_file = \"{}\"",
                inside.addr.port(),
                ca_file.display()
            )
        )
    );
    let since = SystemTime::now();
    let relay = Relay::start("first_retry = \"1h\"", &extra).await;
    relay
        .send("sender@example.test", &["a@inside.test"], "in")
        .await;
    relay
        .send("sender@example.test", &["b@outside.test"], "out")
        .await;
    assert_eq!(inside.wait_for(1, WAIT).await.len(), 1);
    assert!(
        wait_until(WAIT, || !events_since(since, 2003, "mx.hoster.test")
            .is_empty())
        .await,
        "TLS failure for the host outside the domain"
    );
    assert!(outside.messages().is_empty());
}

/// A 4xx to MAIL from the preferred MX is that host's trouble: the next MX
/// gets the message at once, no retry wait (the schedule here is 1 h).
#[tokio::test(flavor = "multi_thread")]
async fn a_4xx_to_mail_from_the_first_mx_moves_on_to_the_next_one() {
    let good = Sink::start(SinkOptions::default()).await;
    let port = good.addr.port();
    let busy = Sink::start_on(
        format!("127.0.0.2:{port}").parse().unwrap(),
        SinkOptions {
            defer_mail: true,
            ..Default::default()
        },
    )
    .await;
    let dns = DnsServer::start(
        Zone::default()
            .mx("remote.test", 10, "mx1.remote.test")
            .mx("remote.test", 20, "mx2.remote.test")
            .a("mx1.remote.test", "127.0.0.2")
            .a("mx2.remote.test", "127.0.0.1"),
    )
    .await;
    let relay = Relay::start("first_retry = \"1h\"", &mx_connector(&dns, port)).await;
    relay
        .send("sender@example.test", &["u@remote.test"], "past a busy mx")
        .await;
    let got = good.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "delivered through the second MX");
    assert!(busy.messages().is_empty());
    assert!(wait_until(WAIT, || relay.pending() == 0).await);
}
