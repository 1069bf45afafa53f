//! Retry, expiry and DSNs (RFC 3461/3464) end to end: a 5xx gives a
//! failure DSN with the remote reply, 4xx is retried with backoff until a
//! delay DSN and then expiry, NOTIFY=NEVER and null senders get nothing
//! (and a failing DSN is dropped, not looped), RET/ENVID/NOTIFY/ORCPT
//! reach a DSN-capable peer, and an SMTPUTF8 message to a peer without
//! SMTPUTF8 bounces with 5.6.7. DSNs are parsed back with mail-parser.

#[path = "outbound_support/mod.rs"]
mod support;
use mail_parser::{MessageParser, MimeHeaders};
use std::time::{Duration, SystemTime};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn smart(addr: std::net::SocketAddr, more: &str) -> String {
    connector(
        "Smart",
        "\"*\"",
        &format!("smart_hosts = [\"{addr}\"]\ntls = \"none\"\n{more}"),
    )
}

/// (subject, delivery-status text, third part's content type) of a DSN.
fn parse_dsn(msg: &[u8]) -> (String, String, String) {
    let parsed = MessageParser::default().parse(msg).expect("DSN parses");
    let ct = parsed.content_type().expect("content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    assert_eq!(
        parsed.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    let status = parsed
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.ctype() == "message" && c.subtype() == Some("delivery-status"))
        })
        .map(|p| String::from_utf8_lossy(p.contents()).to_string())
        .expect("delivery-status part");
    let third = parsed
        .parts
        .iter()
        .filter_map(|p| p.content_type())
        .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
        .find(|t| t == "message/rfc822" || t == "text/rfc822-headers")
        .unwrap_or_default();
    (parsed.subject().unwrap_or("").to_string(), status, third)
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_failure_sends_a_failure_dsn_with_the_remote_reply() {
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Relay::start("", &smart(sink.addr, "")).await;
    relay
        .send(
            "sender@example.test",
            &["reject-me@remote.test", "ok@remote.test"],
            "half",
        )
        .await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, vec!["ok@remote.test".to_string()]);
    let dsns = wait_maildir(&relay.mailbox(), 1, WAIT).await;
    assert_eq!(dsns.len(), 1);
    let (subject, status, third) = parse_dsn(&dsns[0]);
    assert_eq!(subject, "Undelivered Mail Returned to Sender");
    assert!(
        status.contains("Reporting-MTA: dns; gw.example.test"),
        "{status}"
    );
    assert!(
        status.contains("Final-Recipient: rfc822; reject-me@remote.test"),
        "{status}"
    );
    assert!(
        !status.contains("ok@remote.test"),
        "only the failed recipient"
    );
    assert!(status.contains("Action: failed"), "{status}");
    assert!(status.contains("Status: 5.1.1"), "{status}");
    assert!(status.contains("Remote-MTA: dns; 127.0.0.1"), "{status}");
    assert!(
        status.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user here"),
        "{status}"
    );
    assert_eq!(third, "text/rfc822-headers", "headers only by default");
    let text = String::from_utf8_lossy(&dsns[0]);
    assert!(text.contains("Subject: test"), "original header returned");
    assert!(
        !text.contains("\r\nhalf\r\n"),
        "body not returned without RET=FULL"
    );
    assert!(wait_until(WAIT, || relay.pending() == 0).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn ret_full_envid_and_orcpt_are_honoured() {
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Relay::start("", &smart(sink.addr, "")).await;
    relay
        .send_with(
            "MAIL FROM:<sender@example.test> RET=FULL ENVID=QQ314159",
            &["reject-x@remote.test", "good@remote.test"],
            &[
                " NOTIFY=FAILURE ORCPT=rfc822;orig+40example.test",
                " NOTIFY=SUCCESS,DELAY",
            ],
            "the whole body",
        )
        .await;
    // A DSN-capable peer gets the parameters passed on (RFC 3461 §4).
    let got = sink.wait_for(1, WAIT).await;
    assert!(
        got[0].mail_line.contains("RET=FULL"),
        "{}",
        got[0].mail_line
    );
    assert!(
        got[0].mail_line.contains("ENVID=QQ314159"),
        "{}",
        got[0].mail_line
    );
    assert!(
        got[0].rcpt_lines[0].contains("NOTIFY=SUCCESS,DELAY"),
        "{:?}",
        got[0].rcpt_lines
    );
    let dsns = wait_maildir(&relay.mailbox(), 1, WAIT).await;
    assert_eq!(dsns.len(), 1);
    let (_, status, third) = parse_dsn(&dsns[0]);
    assert!(
        status.contains("Original-Envelope-Id: QQ314159"),
        "{status}"
    );
    assert!(
        status.contains("Original-Recipient: rfc822; orig@example.test"),
        "{status}"
    );
    assert_eq!(third, "message/rfc822");
    assert!(String::from_utf8_lossy(&dsns[0]).contains("the whole body"));
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_never_and_null_sender_get_no_dsn() {
    let since = SystemTime::now();
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Relay::start("", &smart(sink.addr, "")).await;
    relay
        .send_with(
            "MAIL FROM:<sender@example.test>",
            &["reject-a@remote.test"],
            &[" NOTIFY=NEVER"],
            "x",
        )
        .await;
    // A bounce of a bounce: null sender, so the failure ends here.
    relay
        .send_with("MAIL FROM:<>", &["reject-b@remote.test"], &[], "y")
        .await;
    assert!(
        wait_until(WAIT, || relay.pending() == 0).await,
        "both finished"
    );
    assert!(
        wait_until(WAIT, || events_since(since, 2103, "reject-b@remote.test")
            .iter()
            .any(
                |e| e.contains("reject-b@remote.test") && e.contains("null sender")
            ))
        .await,
        "DsnDropped event for the null sender"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(maildir(&relay.mailbox()).is_empty(), "no DSN at all");
}

#[tokio::test(flavor = "multi_thread")]
async fn temporary_failures_retry_then_delay_dsn_then_expire() {
    let since = SystemTime::now();
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Relay::start(
        "first_retry = \"300ms\"\nmax_retry_interval = \"600ms\"\ndelay_dsn_after = \"1s\"\nexpire_after = \"4s\"",
        &smart(sink.addr, ""),
    )
    .await;
    relay
        .send(
            "sender@example.test",
            &["later-expire@remote.test"],
            "patience",
        )
        .await;
    let dsns = wait_maildir(&relay.mailbox(), 2, WAIT).await;
    assert_eq!(dsns.len(), 2, "a delay DSN, then a failure DSN");
    let mut parsed: Vec<_> = dsns.iter().map(|d| parse_dsn(d)).collect();
    parsed.sort_by_key(|p| p.1.contains("Action: failed"));
    let (s0, delay, _) = &parsed[0];
    assert_eq!(s0, "Delayed Mail (still being retried)");
    assert!(delay.contains("Action: delayed"), "{delay}");
    assert!(delay.contains("Status: 4.2.0"), "{delay}");
    assert!(delay.contains("Will-Retry-Until: "), "{delay}");
    let (s1, fail, _) = &parsed[1];
    assert_eq!(s1, "Undelivered Mail Returned to Sender");
    assert!(fail.contains("Action: failed"), "{fail}");
    assert!(fail.contains("delivery time expired"), "{fail}");
    assert!(!fail.contains("Will-Retry-Until"), "{fail}");
    assert!(fail.contains("451 4.2.0 mailbox busy"), "{fail}");
    let tries = sink.rcpt_attempts.lock().unwrap().len();
    assert!(
        (4..=16).contains(&tries),
        "retried with backoff, {tries} tries"
    );
    assert!(
        !events_since(since, 2104, "later-expire@remote.test").is_empty(),
        "MessageExpired event"
    );
    assert!(
        !events_since(since, 2102, "later-expire@remote.test").is_empty(),
        "DelayDsnQueued event"
    );
    assert!(wait_until(WAIT, || relay.pending() == 0).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn delay_dsn_can_be_turned_off() {
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Relay::start(
        "first_retry = \"200ms\"\nmax_retry_interval = \"200ms\"\ndelay_dsn_after = \"200ms\"\ndelay_dsn = false\nexpire_after = \"2s\"",
        &smart(sink.addr, ""),
    )
    .await;
    relay
        .send("sender@example.test", &["later@remote.test"], "x")
        .await;
    let dsns = wait_maildir(&relay.mailbox(), 1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dsns2 = maildir(&relay.mailbox());
    assert_eq!(dsns.len(), 1);
    assert_eq!(dsns2.len(), 1, "only the failure DSN");
    assert!(parse_dsn(&dsns2[0]).1.contains("Action: failed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_a_temporary_failure_delivers() {
    // The peer is down at first: connection refused, retried, then up.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let relay = Relay::start(
        "first_retry = \"300ms\"\nmax_retry_interval = \"300ms\"",
        &smart(target, ""),
    )
    .await;
    let since = SystemTime::now();
    relay
        .send("sender@example.test", &["u@remote.test"], "eventually")
        .await;
    assert!(
        wait_until(WAIT, || !events_since(since, 2002, &format!(":{port}"))
            .is_empty())
        .await
    );
    let sink = Sink::start_on(target, SinkOptions::default()).await;
    assert_eq!(
        sink.wait_for(1, WAIT).await.len(),
        1,
        "delivered on a retry"
    );
    assert!(maildir(&relay.mailbox()).is_empty(), "no DSN");
}

#[tokio::test(flavor = "multi_thread")]
async fn smtputf8_message_to_a_peer_without_smtputf8_bounces_5_6_7() {
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Relay::start("", &smart(sink.addr, "")).await;
    relay
        .send_with(
            "MAIL FROM:<sender@example.test> SMTPUTF8",
            &["usér@remote.test"],
            &[],
            "utf8",
        )
        .await;
    let dsns = wait_maildir(&relay.mailbox(), 1, WAIT).await;
    assert_eq!(dsns.len(), 1);
    let (_, status, _) = parse_dsn(&dsns[0]);
    assert!(status.contains("Status: 5.6.7"), "{status}");
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_operations_list_show_retry_delete_bounce_flush() {
    // A peer that defers everything keeps messages in the queue.
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Relay::start("first_retry = \"1h\"", &smart(sink.addr, "")).await;
    let q = &relay.server.queue;
    for i in 0..3 {
        relay
            .send(
                "sender@example.test",
                &[&format!("later{i}@remote.test")],
                "x",
            )
            .await;
    }
    assert!(
        wait_until(WAIT, || {
            let l = q.list(None);
            l.len() == 3 && l.iter().all(|m| m.recipients[0].state == "deferred")
        })
        .await,
        "three deferred: {:?}",
        q.list(None)
    );
    let list = q.list(Some("remote.test"));
    assert_eq!(list.len(), 3);
    assert!(q.list(Some("other.test")).is_empty());
    let first = &list[0];
    assert_eq!(first.recipients[0].attempts, 1);
    assert!(
        first.recipients[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("451 4.2.0")),
        "{first:?}"
    );
    assert_eq!(q.show(&first.id).unwrap(), *first);
    assert!(matches!(
        q.show("0000000000000000"),
        Err(gatehouse::queue::ops::OpError::NotFound(_))
    ));
    assert!(matches!(
        q.show("xyz"),
        Err(gatehouse::queue::ops::OpError::BadId(_))
    ));

    // retry: one more attempt now instead of in an hour.
    let before = sink.rcpt_attempts.lock().unwrap().len();
    q.retry(&first.id).unwrap();
    assert!(wait_until(WAIT, || sink.rcpt_attempts.lock().unwrap().len() > before).await);
    assert!(
        wait_until(WAIT, || q.show(&first.id).unwrap().recipients[0].attempts
            == 2)
        .await
    );

    // delete: gone, no DSN.
    q.delete(&list[1].id).unwrap();
    assert!(q.show(&list[1].id).is_err());
    // bounce: gone, failure DSN to the sender.
    q.bounce(&list[2].id).await.unwrap();
    assert!(q.show(&list[2].id).is_err());
    let dsns = wait_maildir(&relay.mailbox(), 1, WAIT).await;
    assert_eq!(dsns.len(), 1, "exactly one DSN (for the bounce)");
    let (_, status, _) = parse_dsn(&dsns[0]);
    assert!(status.contains("later2@remote.test"), "{status}");
    assert!(
        status.contains("removed from the queue by an administrator"),
        "{status}"
    );
    assert_eq!(q.list(None).len(), 1);

    // flush tries what is left.
    let before = sink.rcpt_attempts.lock().unwrap().len();
    assert_eq!(q.flush(), 1);
    assert!(wait_until(WAIT, || sink.rcpt_attempts.lock().unwrap().len() > before).await);
    assert_eq!(q.retry_destination("remote.test"), 1);
    assert_eq!(relay.pending(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_attempts_next_try_and_the_delay_dsn_sent() {
    let sink = Sink::start(SinkOptions::default()).await;
    let queue_extra = "first_retry = \"1h\"\ndelay_dsn_after = \"0s\"";
    let extra = smart(sink.addr, "");
    let relay = Relay::start(queue_extra, &extra).await;
    relay
        .send("sender@example.test", &["later-restart@remote.test"], "x")
        .await;
    let q = &relay.server.queue;
    assert!(
        wait_until(WAIT, || q
            .list(None)
            .first()
            .is_some_and(|m| m.recipients[0].attempts == 1))
        .await
    );
    assert_eq!(
        wait_maildir(&relay.mailbox(), 1, WAIT).await.len(),
        1,
        "delay DSN"
    );
    let before = q.list(None)[0].clone();
    tokio::time::sleep(Duration::from_millis(300)).await; // the state line reaches the file
    let Relay { dir, server, .. } = relay;
    server.shutdown().await;

    let relay = Relay::start_in(dir, queue_extra, &extra).await;
    let q = &relay.server.queue;
    let after = q.show(&before.id).expect("recovered");
    assert_eq!(after.recipients[0].state, "deferred");
    assert_eq!(
        after.recipients[0].attempts, 1,
        "attempts survive the restart"
    );
    assert_eq!(after.recipients[0].next_try, before.recipients[0].next_try);
    let tries = sink.rcpt_attempts.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        sink.rcpt_attempts.lock().unwrap().len(),
        tries,
        "no retry storm after the restart: the next try is an hour away"
    );
    // An operator retry still works, and no second delay DSN is sent.
    q.retry(&before.id).unwrap();
    assert!(
        wait_until(WAIT, || q.show(&before.id).unwrap().recipients[0].attempts
            == 2)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(maildir(&relay.mailbox()).len(), 1, "one delay DSN in all");
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_bit_message_to_a_peer_without_8bitmime_bounces_5_6_3() {
    let sink = Sink::start(SinkOptions {
        eightbit: false,
        ..Default::default()
    })
    .await;
    let relay = Relay::start("", &smart(sink.addr, "")).await;
    relay
        .send_with(
            "MAIL FROM:<sender@example.test> BODY=8BITMIME",
            &["a@remote.test"],
            &[],
            "Grüße",
        )
        .await;
    relay
        .send_with(
            "MAIL FROM:<sender@example.test> BODY=8BITMIME",
            &["b@remote.test"],
            &[],
            "plain ascii after all",
        )
        .await;
    let dsns = wait_maildir(&relay.mailbox(), 1, WAIT).await;
    assert_eq!(dsns.len(), 1);
    let (_, status, _) = parse_dsn(&dsns[0]);
    assert!(status.contains("Status: 5.6.3"), "{status}");
    assert!(status.contains("a@remote.test"), "{status}");
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "the 7-bit clean one is sent");
    assert_eq!(got[0].rcpts, vec!["b@remote.test".to_string()]);
    assert!(!got[0].mail_line.contains("BODY="), "{}", got[0].mail_line);
}
