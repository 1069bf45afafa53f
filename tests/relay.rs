//! Relay control over real sockets: the classic open-relay tricks are all
//! refused by the default policy (no `relay_networks`), relay domains and
//! relay networks are accepted and held in the queue, unknown users of a
//! domain without catch-all get 550 5.1.1, and `<postmaster>` works.

mod common;
use common::*;
use std::time::Duration;

/// Refused RCPTs count as errors; the trick list needs more than the
/// default 10.
const MANY_ERRORS: &str = "max_errors = 100";

/// One session: MAIL, then `RCPT TO:<addr>` must get `expected`; then DATA
/// must find no valid recipient, and nothing may have been queued.
async fn assert_rcpt_refused(addr: &str, expected: &str) {
    let t = TestServer::start_with(MANY_ERRORS, "").await;
    let mut c = Client::greeted(t.addr).await;
    assert!(
        c.cmd("MAIL FROM:<spammer@sender.test>")
            .await
            .starts("250 2.1.0")
    );
    let r = c.cmd(&format!("RCPT TO:<{addr}>")).await;
    assert!(
        r.starts(expected),
        "RCPT TO:<{addr}> expected {expected}: {r:?}"
    );
    let r = c.cmd("DATA").await;
    assert!(
        r.starts("554 5.5.1"),
        "DATA without valid recipients: {r:?}"
    );
    assert_eq!(
        count(&t.server.queue.stats().accepted),
        0,
        "{addr} queued something"
    );
    assert_eq!(count(&t.server.queue.stats().pending), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_domain_is_refused_with_550_5_7_1() {
    assert_rcpt_refused("user@elsewhere.test", "550 5.7.1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_denied_reply_names_the_domain_and_the_client_ip() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>").await;
    let r = c.cmd("RCPT TO:<user@elsewhere.test>").await;
    assert!(r.starts("550 5.7.1"), "{r:?}");
    assert!(
        r.text.contains("elsewhere.test is not an accepted domain"),
        "{r:?}"
    );
    assert!(
        r.text.contains("127.0.0.1 is not allowed to relay"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn subdomain_of_an_accepted_domain_is_refused_with_550_5_7_1() {
    assert_rcpt_refused("user@sub.example.test", "550 5.7.1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn percent_hack_is_refused_with_550_5_7_1() {
    assert_rcpt_refused("user%elsewhere.test@example.test", "550 5.7.1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bang_path_is_refused_with_550_5_7_1() {
    assert_rcpt_refused("elsewhere.test!user@example.test", "550 5.7.1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn source_route_to_a_foreign_mailbox_is_refused_with_550_5_7_1() {
    // The route is dropped (RFC 5321 §4.1.2); what is left is foreign.
    assert_rcpt_refused("@example.test:user@elsewhere.test", "550 5.7.1").await;
    assert_rcpt_refused("@example.test,@relay.test:user@elsewhere.test", "550 5.7.1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn quoted_local_part_with_at_sign_is_refused_with_550_5_7_1() {
    assert_rcpt_refused("\"user@elsewhere.test\"@example.test", "550 5.7.1").await;
    assert_rcpt_refused("\"user\\@elsewhere.test\"@example.test", "550 5.7.1").await;
    assert_rcpt_refused("\"user%elsewhere.test\"@example.test", "550 5.7.1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_at_signs_are_refused_with_501_5_1_3() {
    assert_rcpt_refused("user@elsewhere.test@example.test", "501 5.1.3").await;
    assert_rcpt_refused("user@example.test@elsewhere.test", "501 5.1.3").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn trailing_dot_domain_is_refused_with_501_5_1_3() {
    assert_rcpt_refused("user@elsewhere.test.", "501 5.1.3").await;
    assert_rcpt_refused("user@example.test.", "501 5.1.3").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn percent_in_the_domain_is_refused_with_501_5_1_3() {
    assert_rcpt_refused("user@elsewhere.test%example.test", "501 5.1.3").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv4_literal_is_refused_with_550_5_7_1() {
    assert_rcpt_refused("user@[127.0.0.1]", "550 5.7.1").await;
    assert_rcpt_refused("user@[192.0.2.1]", "550 5.7.1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv6_literal_is_refused_with_550_5_7_1() {
    assert_rcpt_refused("user@[IPv6:::1]", "550 5.7.1").await;
    assert_rcpt_refused("user@[ipv6:2001:db8::1]", "550 5.7.1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_ip_literal_is_refused_with_501_5_1_3() {
    assert_rcpt_refused("user@[300.0.0.1]", "501 5.1.3").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_case_foreign_domain_is_refused_with_550_5_7_1() {
    assert_rcpt_refused("USER@ELSEWHERE.TEST", "550 5.7.1").await;
    assert_rcpt_refused("User@ElseWhere.Test", "550 5.7.1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_relay_trick_in_one_session_is_refused_and_nothing_is_queued() {
    let t = TestServer::start_with(MANY_ERRORS, "").await;
    let mut c = Client::greeted(t.addr).await;
    let tricks = [
        ("user@elsewhere.test", "550 5.7.1"),
        ("user%elsewhere.test@example.test", "550 5.7.1"),
        ("elsewhere.test!user@example.test", "550 5.7.1"),
        ("@example.test:user@elsewhere.test", "550 5.7.1"),
        ("\"user@elsewhere.test\"@example.test", "550 5.7.1"),
        ("user@elsewhere.test@example.test", "501 5.1.3"),
        ("user@elsewhere.test.", "501 5.1.3"),
        ("user@[127.0.0.1]", "550 5.7.1"),
        ("user@[IPv6:::1]", "550 5.7.1"),
        ("USER@ELSEWHERE.TEST", "550 5.7.1"),
    ];
    assert!(
        c.cmd("MAIL FROM:<spammer@sender.test>")
            .await
            .starts("250 2.1.0")
    );
    for (addr, expected) in tricks {
        let r = c.cmd(&format!("RCPT TO:<{addr}>")).await;
        assert!(
            r.starts(expected),
            "RCPT TO:<{addr}> expected {expected}: {r:?}"
        );
    }
    assert!(c.cmd("DATA").await.starts("554 5.5.1"));
    // BDAT cannot sneak past either.
    c.send(b"BDAT 5 LAST\r\nhello").await;
    assert!(c.reply().await.starts("554 5.5.1"));
    assert!(c.cmd("QUIT").await.starts("221 2.0.0"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count(&t.server.queue.stats().accepted), 0);
    assert!(read_maildir(&t.mailbox("catchall")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn source_route_to_a_local_mailbox_is_delivered_locally() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    let r = c
        .send_message(
            "a@sender.test",
            &["@elsewhere.test:bob@example.test"],
            b"Subject: routed\r\n\r\nrouted\r\n",
        )
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    let msgs = wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 1);
    assert!(
        String::from_utf8_lossy(&msgs[0]).contains("for <bob@example.test>"),
        "the route is dropped"
    );
}

// ----- what is accepted -----

#[tokio::test(flavor = "multi_thread")]
async fn relay_domain_is_accepted_and_held_in_the_queue() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts("250 2.1.0"));
    assert!(c.cmd("RCPT TO:<user@relay.test>").await.starts("250 2.1.5"));
    assert!(
        c.cmd("RCPT TO:<Other@RELAY.TEST>")
            .await
            .starts("250 2.1.5")
    );
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: onward\r\n\r\nfor the relay domain\r\n.\r\n")
        .await;
    let r = c.reply().await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    let stats = t.server.queue.stats();
    assert_eq!(count(&stats.accepted), 1);
    assert!(
        wait_until(Duration::from_secs(10), || count(&stats.held) >= 1).await,
        "message held: {stats:?}"
    );
    assert_eq!(count(&stats.pending), 1, "kept in the queue, not dropped");
    assert_eq!(count(&stats.delivered), 0);
    assert!(
        read_maildir(&t.mailbox("catchall")).is_empty(),
        "nothing reaches a local Maildir"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_domain_and_local_recipients_in_one_message_split_correctly() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    let r = c
        .send_message(
            "a@sender.test",
            &["user@relay.test", "bob@example.test"],
            b"Subject: both\r\n\r\nboth\r\n",
        )
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    let msgs = wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 1, "the local recipient is delivered");
    let stats = t.server.queue.stats();
    assert!(
        wait_until(Duration::from_secs(10), || count(&stats.held) >= 1).await,
        "{stats:?}"
    );
    assert_eq!(count(&stats.delivered), 1);
    assert_eq!(count(&stats.pending), 1, "the relay recipient stays queued");
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_network_may_send_to_a_foreign_domain() {
    let t = TestServer::start_with("relay_networks = [\"127.0.0.0/8\"]", "").await;
    let mut c = Client::greeted(t.addr).await;
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts("250 2.1.0"));
    assert!(
        c.cmd("RCPT TO:<user@elsewhere.test>")
            .await
            .starts("250 2.1.5")
    );
    assert!(
        c.cmd("RCPT TO:<user@[192.0.2.1]>")
            .await
            .starts("250 2.1.5")
    );
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: relayed\r\n\r\nrelayed\r\n.\r\n").await;
    assert!(c.reply().await.starts("250 2.6.0"));
    let stats = t.server.queue.stats();
    assert_eq!(count(&stats.accepted), 1);
    assert!(
        wait_until(Duration::from_secs(10), || count(&stats.held) >= 1).await,
        "{stats:?}"
    );
    assert_eq!(count(&stats.pending), 1);
    assert!(read_maildir(&t.mailbox("catchall")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_network_still_cannot_use_routing_tricks() {
    let t = TestServer::start_with("relay_networks = [\"127.0.0.0/8\"]", "").await;
    let mut c = Client::greeted(t.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>").await;
    for addr in [
        "user%elsewhere.test@example.test",
        "elsewhere.test!user@example.test",
        "\"user@elsewhere.test\"@example.test",
    ] {
        let r = c.cmd(&format!("RCPT TO:<{addr}>")).await;
        assert!(r.starts("550 5.7.1"), "{addr}: {r:?}");
        assert!(r.text.contains("source-routing"), "{addr}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_network_that_does_not_contain_the_client_grants_nothing() {
    let t = TestServer::start_with("relay_networks = [\"10.0.0.0/8\", \"::1/128\"]", "").await;
    let mut c = Client::greeted(t.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>").await;
    assert!(
        c.cmd("RCPT TO:<user@elsewhere.test>")
            .await
            .starts("550 5.7.1")
    );
    assert!(c.cmd("RCPT TO:<user@[10.1.2.3]>").await.starts("550 5.7.1"));
    assert!(c.cmd("DATA").await.starts("554 5.5.1"));
    assert_eq!(count(&t.server.queue.stats().accepted), 0);
}

const STRICT: &str = r#"
[[accepted_domain]]
domain = "strict.test"
type = "authoritative"

[[mailbox]]
name = "alice"
addresses = ["alice@strict.test"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn unknown_user_without_catch_all_gets_550_5_1_1() {
    let t = TestServer::start_with("", STRICT).await;
    let mut c = Client::greeted(t.addr).await;
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts("250 2.1.0"));
    let r = c.cmd("RCPT TO:<bob@strict.test>").await;
    assert!(r.starts("550 5.1.1"), "{r:?}");
    assert!(
        r.text.contains("bob@strict.test: recipient not found"),
        "{r:?}"
    );
    assert!(c.cmd("DATA").await.starts("554 5.5.1"));
    assert_eq!(count(&t.server.queue.stats().accepted), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn known_user_without_catch_all_is_delivered_to_its_mailbox() {
    let t = TestServer::start_with("", STRICT).await;
    let mut c = Client::greeted(t.addr).await;
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts("250 2.1.0"));
    assert!(
        c.cmd("RCPT TO:<nobody@strict.test>")
            .await
            .starts("550 5.1.1")
    );
    assert!(
        c.cmd("RCPT TO:<alice@strict.test>")
            .await
            .starts("250 2.1.5")
    );
    assert!(
        c.cmd("RCPT TO:<Alice@Strict.Test>")
            .await
            .starts("250 2.1.5"),
        "address lookup ignores case"
    );
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: hi alice\r\n\r\nhi\r\n.\r\n").await;
    assert!(c.reply().await.starts("250 2.6.0"));
    let msgs = wait_for_messages(&t.mailbox("alice"), 1, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 1, "two spellings of one mailbox: one copy");
    assert_eq!(body_of(&msgs[0]), b"hi\r\n");
    assert!(read_maildir(&t.mailbox("catchall")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_postmaster_is_accepted_and_delivered_to_the_mailbox_that_catches_it() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    assert!(c.cmd("MAIL FROM:<>").await.starts("250 2.1.0"));
    assert!(c.cmd("RCPT TO:<postmaster>").await.starts("250 2.1.5"));
    assert!(
        c.cmd("RCPT TO:<PostMaster>").await.starts("250 2.1.5"),
        "case-insensitive (RFC 5321 §4.1.1.3)"
    );
    assert!(
        c.cmd("RCPT TO:<postmaster@example.test>")
            .await
            .starts("250 2.1.5")
    );
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: to postmaster\r\n\r\nabuse report\r\n.\r\n")
        .await;
    assert!(c.reply().await.starts("250 2.6.0"));
    let msgs = wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 1);
    assert!(
        msgs[0].starts_with(b"Return-Path: <>\r\n"),
        "{:?}",
        String::from_utf8_lossy(&msgs[0])
    );
    assert_eq!(body_of(&msgs[0]), b"abuse report\r\n");
}
