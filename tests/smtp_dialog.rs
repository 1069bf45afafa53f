//! Full SMTP dialogs over real sockets: pipelining, BDAT, dot-stuffing.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_transaction_gets_replies_in_order_and_is_delivered() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    // One write holds the whole group (RFC 2920).
    c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<nobody@elsewhere.test>\r\nRCPT TO:<carol@example.test>\r\nDATA\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 250);
    assert!(c.reply().await.starts("550 5.7.1"));
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 354);
    c.send(b"Subject: pipelined\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        .await;
    let queued = c.reply().await;
    assert!(queued.starts("250 2.6.0"), "{queued:?}");
    assert_eq!(c.reply().await.code, 221);
    let msgs = wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;
    // Two recipients in one mailbox: one copy.
    assert_eq!(msgs.len(), 1);
    assert_eq!(body_of(&msgs[0]), b"hello\r\n");
    let id = queued.text.split_whitespace().nth(4).unwrap().to_string();
    let text = String::from_utf8_lossy(&msgs[0]);
    assert!(
        text.starts_with(
            "Return-Path: <a@sender.test>\r\nReceived: from client.example.test ([127.0.0.1])"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("with ESMTP id {id}")),
        "queue id {id} in Received: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bdat_chunks_are_assembled_exactly() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@sender.test> BODY=8BITMIME").await.code,
        250
    );
    assert_eq!(c.cmd("RCPT TO:<bob@example.test>").await.code, 250);
    let part1 = b"Subject: chunks\r\n\r\n.a line with a leading dot\r\n";
    let part2 = "non-ASCII: \u{e9}t\u{e9}\r\n.\r\n".as_bytes();
    c.send(format!("BDAT {}\r\n", part1.len()).as_bytes()).await;
    c.send(part1).await;
    assert!(c.reply().await.starts("250 2.0.0"));
    // Chunk data and the next command in one write.
    let mut w = format!("BDAT {} LAST\r\n", part2.len()).into_bytes();
    w.extend_from_slice(part2);
    w.extend_from_slice(b"NOOP\r\n");
    c.send(&w).await;
    assert!(c.reply().await.starts("250 2.6.0"));
    assert_eq!(c.reply().await.code, 250);
    let msgs = wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;
    let mut expected = b".a line with a leading dot\r\n".to_vec();
    expected.extend_from_slice(part2);
    assert_eq!(
        body_of(&msgs[0]),
        &expected[..],
        "BDAT content is stored without dot processing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bdat_without_transaction_is_consumed_and_refused() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    // The chunk holds text that would be a command if not consumed.
    c.send(b"BDAT 12 LAST\r\nRSET\r\nXXXX\r\nNOOP\r\n").await;
    assert!(c.reply().await.starts("503 5.5.1"));
    assert_eq!(c.reply().await.code, 250, "NOOP after the 12-octet chunk");
}

#[tokio::test(flavor = "multi_thread")]
async fn data_after_bdat_is_refused() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>").await;
    c.cmd("RCPT TO:<bob@example.test>").await;
    c.send(b"BDAT 3\r\nabc").await;
    assert_eq!(c.reply().await.code, 250);
    assert!(c.cmd("DATA").await.starts("503 5.5.1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn dot_stuffing_round_trips_both_ways() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    let body = b"Subject: dots\r\n\r\n.\r\n..\r\n...leading\r\nmiddle . dot\r\n.\r\nend\r\n";
    let r = c
        .send_message("a@sender.test", &["bob@example.test"], body)
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    let msgs = wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;
    assert_eq!(
        body_of(&msgs[0]),
        &b".\r\n..\r\n...leading\r\nmiddle . dot\r\n.\r\nend\r\n"[..]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn helo_vrfy_help_noop_rset_replies() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.addr).await;
    let g = c.reply().await;
    assert!(g.text.starts_with("220 mx.example.test "), "{g:?}");
    assert!(
        c.cmd("MAIL FROM:<a@b.test>").await.starts("503 5.5.1"),
        "MAIL before HELO"
    );
    assert_eq!(c.cmd("HELO client.test").await.code, 250);
    assert!(c.cmd("VRFY bob").await.starts("252 2.5.0"));
    assert!(c.cmd("HELP").await.starts("214 2.0.0"));
    assert!(c.cmd("NOOP").await.starts("250 2.0.0"));
    assert!(c.cmd("RSET").await.starts("250 2.0.0"));
    assert!(c.cmd("FOO").await.starts("500 5.5.1"));
    assert!(c.cmd("QUIT").await.starts("221 2.0.0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ehlo_advertises_the_extensions() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.addr).await;
    c.reply().await;
    let r = c.cmd("EHLO client.test").await;
    for ext in [
        "PIPELINING",
        "SIZE 37748736",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "CHUNKING",
    ] {
        assert!(
            r.text.lines().any(|l| &l[4..] == ext),
            "{ext} missing from {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn smtputf8_address_needs_the_parameter() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    assert!(
        c.cmd("MAIL FROM:<j\u{f6}s\u{e9}@sender.test>")
            .await
            .starts("553 5.6.7")
    );
    assert_eq!(
        c.cmd("MAIL FROM:<j\u{f6}s\u{e9}@sender.test> SMTPUTF8")
            .await
            .code,
        250
    );
    assert_eq!(c.cmd("RCPT TO:<b\u{f6}b@example.test>").await.code, 250);
}

/// Found by fuzzing: a multi-byte character across the fifth byte made
/// the AUTH log redaction slice inside it and kill the session task.
#[tokio::test(flavor = "multi_thread")]
async fn multibyte_text_where_a_verb_ends_gets_a_reply_and_the_session_lives() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    for line in [
        "AUTH\u{e9}PLAIN",
        "RCPT TO\u{5e4}12",
        "MAIL FRO\u{e9}:<a@sender.test>",
    ] {
        let r = c.cmd(line).await;
        assert!((500..=504).contains(&r.code), "{line:?} got {r:?}");
    }
    assert_eq!(c.cmd("NOOP").await.code, 250);
}
