//! Every bound of a receive connector, over real sockets: command line
//! length, bytes in command lines, message size (SIZE, DATA, BDAT),
//! recipients, protocol errors, timeouts, connection limits, many
//! concurrent sessions, and graceful shutdown.

mod common;
use common::*;
use gatehouse::smtp::inbound::session::MAX_COMMAND_LINE;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::RwLock;

/// The memory test measures the process's RSS; it runs alone (write lock),
/// every other test of this file shares the read lock so none of them
/// allocates while it measures.
static MEMORY: RwLock<()> = RwLock::const_new(());

const SMALL_LIMIT: &str = "max_message_size = \"64KiB\"";
const LIMIT: usize = 65_536;

/// A `NOOP` command line of exactly `len` octets (CRLF not counted).
fn noop_line(len: usize) -> Vec<u8> {
    let mut l = b"NOOP ".to_vec();
    l.resize(len, b'x');
    l
}

/// `n` octets of message text in CRLF lines of at most 78 octets.
fn text_body(n: usize) -> Vec<u8> {
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    while body.len() < n {
        let left = n - body.len();
        let line = left.clamp(3, 78) - 2;
        body.extend(std::iter::repeat_n(b'a', line));
        body.extend_from_slice(b"\r\n");
    }
    body
}

// ----- command lines -----

#[tokio::test(flavor = "multi_thread")]
async fn over_long_command_line_gets_500_5_5_2_and_session_continues() {
    let _g = MEMORY.read().await;
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    let mut line = noop_line(MAX_COMMAND_LINE + 1);
    line.extend_from_slice(b"\r\n");
    c.send(&line).await;
    let r = c.reply().await;
    assert!(r.starts("500 5.5.2"), "{r:?}");
    assert!(
        r.text
            .contains(&format!("limited to {MAX_COMMAND_LINE} octets")),
        "{r:?}"
    );
    assert!(
        c.cmd("NOOP").await.starts("250 2.0.0"),
        "the session goes on after an over-long line"
    );
    // The transaction still works too.
    let r = c
        .send_message(
            "a@sender.test",
            &["bob@example.test"],
            b"Subject: after\r\n\r\nafter\r\n",
        )
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    let msgs = wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(body_of(&msgs[0]), b"after\r\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn command_line_of_exactly_the_maximum_is_accepted() {
    let _g = MEMORY.read().await;
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    let mut line = noop_line(MAX_COMMAND_LINE);
    line.extend_from_slice(b"\r\n");
    c.send(&line).await;
    let r = c.reply().await;
    assert!(
        r.starts("250 2.0.0"),
        "a {MAX_COMMAND_LINE}-octet line is legal: {r:?}"
    );
}

/// The same legal line as above, but its LF arrives in a later TCP segment
/// than its CR: the reader sees MAX+1 octets without an LF and throws the
/// line away as over-long.
#[tokio::test(flavor = "multi_thread")]
async fn command_line_of_exactly_the_maximum_is_accepted_when_its_lf_arrives_late() {
    let _g = MEMORY.read().await;
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    let mut line = noop_line(MAX_COMMAND_LINE);
    line.push(b'\r');
    c.send(&line).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send(b"\n").await;
    let r = c.reply().await;
    assert!(
        r.starts("250 2.0.0"),
        "a {MAX_COMMAND_LINE}-octet line is legal however it is segmented: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_kilobyte_line_without_lf_is_discarded_and_answered_once_the_lf_arrives() {
    let _g = MEMORY.read().await;
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    // 100 KB in 10 writes, no LF; the tail looks like a command and must
    // not be executed.
    let chunk = vec![b'A'; 10_000];
    for _ in 0..10 {
        c.send(&chunk).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.send(b" QUIT").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(b"\r\n").await;
    let r = c.reply().await;
    assert!(r.starts("500 5.5.2"), "{r:?}");
    assert!(
        c.cmd("NOOP").await.starts("250 2.0.0"),
        "exactly one reply for the long line, session alive"
    );
    assert!(c.cmd("QUIT").await.starts("221 2.0.0"));
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_line_without_lf_keeps_server_memory_bounded() {
    let _g = MEMORY.write().await;
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    let chunk = vec![b'B'; 64 * 1024];
    // Warm up allocator and socket buffers before the baseline.
    for _ in 0..16 {
        c.send(&chunk).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = rss_bytes();
    const FLOOD: usize = 32 << 20;
    for _ in 0..FLOOD / chunk.len() {
        c.send(&chunk).await;
    }
    // write_all returned, so at most the loopback socket buffers (a few
    // MB) are still unread; the server has read well over 20 MB.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_bytes();
    let grown = after.saturating_sub(before);
    assert!(
        grown < 8 << 20,
        "RSS grew by {} KiB while a 32 MiB line without LF was sent",
        grown / 1024
    );
    c.send(b"\r\n").await;
    assert!(c.reply().await.starts("500 5.5.2"));
    assert!(c.cmd("NOOP").await.starts("250 2.0.0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_nul_and_invalid_utf8_in_commands_get_500_5_5_2() {
    let _g = MEMORY.read().await;
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    let cases: [(&[u8], &str); 7] = [
        (b"NOOP\0", "NUL octet"),
        (b"MAIL FROM:<a\0@sender.test>", "NUL octet"),
        (b"NOOP \x1b[2J", "control character 0x1B"),
        (b"NOOP \x7f", "control character 0x7F"),
        (b"NO\rOP", "bare CR"),
        (b"NOOP \xff\xfe", "invalid UTF-8"),
        (b"EHLO \xc0\xaf.test", "invalid UTF-8"),
    ];
    for (line, what) in cases {
        let mut l = line.to_vec();
        l.extend_from_slice(b"\r\n");
        c.send(&l).await;
        let r = c.reply().await;
        assert!(
            r.starts("500 5.5.2"),
            "{:?}: {r:?}",
            String::from_utf8_lossy(line)
        );
        assert!(
            r.text.contains(what),
            "{:?}: {r:?} should name {what}",
            String::from_utf8_lossy(line)
        );
    }
    // A tab is not a control character for this purpose.
    assert!(c.cmd("NOOP some\targument").await.starts("250 2.0.0"));
    // Nothing of the refused MAIL line opened a transaction.
    assert!(
        c.cmd("RCPT TO:<bob@example.test>")
            .await
            .starts("503 5.5.1")
    );
}

// ----- message size -----

#[tokio::test(flavor = "multi_thread")]
async fn size_parameter_above_the_limit_gets_552_5_3_4() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with(SMALL_LIMIT, "").await;
    let mut c = Client::greeted(t.addr).await;
    let ehlo = c.cmd("EHLO client.example.test").await;
    assert!(
        ehlo.text.lines().any(|l| l == format!("250-SIZE {LIMIT}")),
        "{ehlo:?}"
    );
    let r = c
        .cmd(&format!("MAIL FROM:<a@sender.test> SIZE={}", LIMIT + 1))
        .await;
    assert!(r.starts("552 5.3.4"), "{r:?}");
    assert!(
        r.text.contains(&format!("maximum of {LIMIT} octets")),
        "{r:?}"
    );
    // No transaction was opened.
    assert!(
        c.cmd("RCPT TO:<bob@example.test>")
            .await
            .starts("503 5.5.1")
    );
    // SIZE equal to the limit is fine.
    assert!(
        c.cmd(&format!("MAIL FROM:<a@sender.test> SIZE={LIMIT}"))
            .await
            .starts("250 2.1.0")
    );
    assert_eq!(count(&t.server.queue.stats().accepted), 0);
}

/// RFC 1870 §4: `size-value ::= 1*20DIGIT`. A 20-digit value is legal
/// syntax (it may exceed u64) and is certainly over the limit.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_digit_size_parameter_gets_552_5_3_4() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with(SMALL_LIMIT, "").await;
    let mut c = Client::greeted(t.addr).await;
    let r = c
        .cmd("MAIL FROM:<a@sender.test> SIZE=99999999999999999999")
        .await;
    assert!(r.starts("552 5.3.4"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn data_body_over_the_limit_gets_552_5_3_4_and_nothing_is_queued() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with(SMALL_LIMIT, "").await;
    let mut c = Client::greeted(t.addr).await;
    let big = text_body(LIMIT + 4096);
    let r = c
        .send_message("a@sender.test", &["bob@example.test"], &big)
        .await;
    assert!(r.starts("552 5.3.4"), "{r:?}");
    assert_eq!(count(&t.server.queue.stats().accepted), 0);
    // The whole oversized body was consumed: the next transaction works.
    let r = c
        .send_message(
            "a@sender.test",
            &["bob@example.test"],
            b"Subject: small\r\n\r\nsmall\r\n",
        )
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    assert_eq!(count(&t.server.queue.stats().accepted), 1);
    let msgs = wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let msgs2 = read_maildir(&t.mailbox("catchall"));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs2.len(), 1, "only the small message reached the Maildir");
    assert_eq!(body_of(&msgs2[0]), b"small\r\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn data_body_of_exactly_the_limit_is_accepted() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with(SMALL_LIMIT, "").await;
    let mut c = Client::greeted(t.addr).await;
    let body = text_body(LIMIT);
    assert_eq!(body.len(), LIMIT);
    let r = c
        .send_message("a@sender.test", &["bob@example.test"], &body)
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    let msgs = wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(body_of(&msgs[0]), &body[b"Subject: big\r\n\r\n".len()..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bdat_over_the_limit_gets_552_5_3_4_and_later_chunks_are_consumed() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with(SMALL_LIMIT, "").await;
    let mut c = Client::greeted(t.addr).await;
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts("250 2.1.0"));
    assert!(
        c.cmd("RCPT TO:<bob@example.test>")
            .await
            .starts("250 2.1.5")
    );
    // Two chunks: the first fits, the second takes the total over.
    let first = text_body(40_000);
    c.send(format!("BDAT {}\r\n", first.len()).as_bytes()).await;
    c.send(&first).await;
    assert!(c.reply().await.starts("250 2.0.0"));
    let second = text_body(40_000);
    c.send(format!("BDAT {}\r\n", second.len()).as_bytes())
        .await;
    c.send(&second).await;
    let r = c.reply().await;
    assert!(r.starts("552 5.3.4"), "{r:?}");
    // A client that goes on anyway: its chunk, made of command lines, is
    // read as data and not executed.
    let third = b"RSET\r\nMAIL FROM:<x@sender.test>\r\nQUIT\r\n";
    let mut w = format!("BDAT {} LAST\r\n", third.len()).into_bytes();
    w.extend_from_slice(third);
    w.extend_from_slice(b"NOOP\r\n");
    c.send(&w).await;
    let r = c.reply().await;
    assert!(r.starts("503 5.5.1"), "chunk after a failed one: {r:?}");
    assert!(
        c.reply().await.starts("250 2.0.0"),
        "NOOP after the consumed chunk"
    );
    assert_eq!(count(&t.server.queue.stats().accepted), 0);
    // The transaction is over; a new one works.
    let r = c
        .send_message(
            "a@sender.test",
            &["bob@example.test"],
            b"Subject: ok\r\n\r\nok\r\n",
        )
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    let msgs = wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(body_of(&msgs[0]), b"ok\r\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn single_bdat_last_chunk_over_the_limit_gets_552_5_3_4_and_is_consumed() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with(SMALL_LIMIT, "").await;
    let mut c = Client::greeted(t.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>").await;
    c.cmd("RCPT TO:<bob@example.test>").await;
    let mut big = text_body(LIMIT + 1);
    // Command-looking text inside the refused chunk.
    big.extend_from_slice(b"QUIT\r\n");
    let mut w = format!("BDAT {} LAST\r\n", big.len()).into_bytes();
    w.extend_from_slice(&big);
    c.send(&w).await;
    assert!(c.reply().await.starts("552 5.3.4"));
    assert!(c.cmd("NOOP").await.starts("250 2.0.0"));
    // LAST ended the transaction.
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts("250 2.1.0"));
    assert_eq!(count(&t.server.queue.stats().accepted), 0);
}

// ----- recipients and errors -----

#[tokio::test(flavor = "multi_thread")]
async fn recipient_101_gets_452_4_5_3_and_the_first_100_get_the_message_once() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with("max_recipients = 100", "").await;
    let mut c = Client::greeted(t.addr).await;
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts("250 2.1.0"));
    // One pipelined group of 101 RCPTs.
    let mut w = Vec::new();
    for i in 1..=101 {
        w.extend_from_slice(format!("RCPT TO:<user{i}@example.test>\r\n").as_bytes());
    }
    c.send(&w).await;
    for i in 1..=100 {
        let r = c.reply().await;
        assert!(r.starts("250 2.1.5"), "RCPT {i}: {r:?}");
    }
    let r = c.reply().await;
    assert!(r.starts("452 4.5.3"), "RCPT 101: {r:?}");
    assert!(r.text.contains("at most 100"), "{r:?}");
    let r = c.cmd("DATA").await;
    assert_eq!(r.code, 354);
    c.send(b"Subject: many\r\n\r\nto a hundred\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    let stats = t.server.queue.stats();
    assert_eq!(count(&stats.accepted), 1);
    assert!(
        wait_until(Duration::from_secs(10), || count(&stats.delivered) == 100).await,
        "100 recipients delivered, not 101"
    );
    let msgs = read_maildir(&t.mailbox("catchall"));
    assert_eq!(msgs.len(), 1, "100 recipients of one mailbox: one copy");
    assert_eq!(body_of(&msgs[0]), b"to a hundred\r\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count(&stats.delivered), 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn third_bad_command_with_max_errors_3_gets_421_4_7_0_and_close() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with("max_errors = 3", "").await;
    let mut c = Client::greeted(t.addr).await;
    assert!(c.cmd("FOO").await.starts("500 5.5.1"));
    assert!(
        c.cmd("RCPT TO:<bob@example.test>")
            .await
            .starts("503 5.5.1")
    );
    assert!(
        c.cmd("NOOP").await.starts("250 2.0.0"),
        "a good command does not count"
    );
    let r = c.cmd("BAR").await;
    assert!(
        r.starts("500 5.5.1"),
        "the third error is answered itself: {r:?}"
    );
    let r = c.reply().await;
    assert!(r.starts("421 4.7.0"), "{r:?}");
    assert!(r.text.contains("Too many errors"), "{r:?}");
    assert!(c.is_closed().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_commands_after_the_error_limit_are_not_executed() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with("max_errors = 3", "").await;
    let mut c = Client::greeted(t.addr).await;
    c.send(b"FOO\r\nFOO\r\nFOO\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nx\r\n.\r\n").await;
    for _ in 0..3 {
        assert!(c.reply().await.starts("500 5.5.1"));
    }
    assert!(c.reply().await.starts("421 4.7.0"));
    assert!(c.is_closed().await);
    assert_eq!(count(&t.server.queue.stats().accepted), 0);
}

// ----- timeouts -----

#[tokio::test(flavor = "multi_thread")]
async fn idle_client_gets_421_4_4_2_after_the_command_timeout_and_is_closed() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with("command_timeout = \"1s\"", "").await;
    let mut c = Client::greeted(t.addr).await;
    let start = Instant::now();
    let r = c.reply().await;
    let waited = start.elapsed();
    assert!(r.starts("421 4.4.2"), "{r:?}");
    assert!(r.text.contains("Timeout waiting for a command"), "{r:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "timed out after {waited:?}"
    );
    assert!(c.is_closed().await);
}

/// Slowloris: a command trickled one byte at a time, each byte well within
/// the timeout, must still arrive whole within `command_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn trickled_command_line_gets_421_4_4_2_when_the_whole_line_exceeds_the_command_timeout() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with("command_timeout = \"1s\"", "").await;
    let mut c = Client::greeted(t.addr).await;
    let start = Instant::now();
    let mut timed_out = None;
    // 20 bytes at 300 ms each: 6 s if never cut off.
    for b in b"NOOP trickle-trickle".iter() {
        if c.reader.get_mut().write_all(&[*b]).await.is_err() {
            break;
        }
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), c.reply()).await {
            timed_out = Some(r);
            break;
        }
    }
    let r = timed_out.expect("the server ended the trickled line");
    let waited = start.elapsed();
    assert!(r.starts("421 4.4.2"), "{r:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "cut off after {waited:?}"
    );
    assert!(c.is_closed().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_data_gets_421_4_4_2_after_the_data_timeout_and_nothing_is_queued() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with("data_timeout = \"1s\"", "").await;
    let mut c = Client::greeted(t.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>").await;
    c.cmd("RCPT TO:<bob@example.test>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: stalled\r\n\r\nhalf a message\r\n").await;
    let start = Instant::now();
    let r = c.reply().await;
    let waited = start.elapsed();
    assert!(r.starts("421 4.4.2"), "{r:?}");
    assert!(r.text.contains("Timeout waiting for message data"), "{r:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "timed out after {waited:?}"
    );
    assert!(c.is_closed().await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(&t.server.queue.stats().accepted), 0);
    assert!(read_maildir(&t.mailbox("catchall")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_bdat_chunk_gets_421_4_4_2_after_the_data_timeout() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with("data_timeout = \"1s\"", "").await;
    let mut c = Client::greeted(t.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>").await;
    c.cmd("RCPT TO:<bob@example.test>").await;
    c.send(b"BDAT 100 LAST\r\nonly part of it").await;
    let r = c.reply().await;
    assert!(r.starts("421 4.4.2"), "{r:?}");
    assert!(r.text.contains("BDAT chunk data"), "{r:?}");
    assert!(c.is_closed().await);
    assert_eq!(count(&t.server.queue.stats().accepted), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_session_gets_421_4_4_2_at_the_connection_timeout() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with("connection_timeout = \"2s\"", "").await;
    let mut c = Client::greeted(t.addr).await;
    let start = Instant::now();
    let mut last = None;
    for _ in 0..40 {
        let r = c.cmd("NOOP").await;
        if r.code != 250 {
            last = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = last.expect("the session ended within 40 NOOPs");
    assert!(r.starts("421 4.4.2"), "{r:?}");
    assert!(r.text.contains("Connection time limit reached"), "{r:?}");
    let lasted = start.elapsed();
    assert!(
        lasted >= Duration::from_millis(1500) && lasted < Duration::from_secs(6),
        "{lasted:?}"
    );
    assert!(c.is_closed().await);
}

// ----- connection limits -----

/// Connects until a 220 greeting arrives (bounded): the slot of a session
/// that just closed is released right after its socket, so the very next
/// connect may still race it.
async fn connect_until_greeted(addr: std::net::SocketAddr) -> (Client, Reply) {
    let mut last = None;
    for _ in 0..50 {
        let mut c = Client::connect(addr).await;
        let r = c.reply().await;
        if r.code == 220 {
            return (c, r);
        }
        last = Some(r);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no 220 within 50 attempts; last reply {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn third_connection_over_max_connections_2_gets_421_4_7_0_until_one_closes() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with("max_connections = 2", "").await;
    let mut a = Client::connect(t.addr).await;
    assert_eq!(a.reply().await.code, 220);
    let mut b = Client::connect(t.addr).await;
    assert_eq!(b.reply().await.code, 220);
    let mut third = Client::connect(t.addr).await;
    let r = third.reply().await;
    assert!(r.starts("421 4.7.0"), "{r:?}");
    assert!(
        r.text.contains("Too many connections, try again later"),
        "{r:?}"
    );
    assert!(!r.text.contains("from your address"), "{r:?}");
    assert!(third.is_closed().await);
    // The two sessions are unaffected.
    assert!(a.cmd("NOOP").await.starts("250 2.0.0"));
    assert!(b.cmd("NOOP").await.starts("250 2.0.0"));
    // One leaves; a new connection is served.
    assert!(a.cmd("QUIT").await.starts("221 2.0.0"));
    assert!(a.is_closed().await);
    let (mut d, _) = connect_until_greeted(t.addr).await;
    assert_eq!(d.cmd("EHLO client.example.test").await.code, 250);
    // And the limit still holds with b and d open.
    let mut e = Client::connect(t.addr).await;
    assert!(e.reply().await.starts("421 4.7.0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn second_connection_over_max_connections_per_ip_1_gets_421_4_7_0_until_the_first_closes() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with("max_connections_per_ip = 1", "").await;
    let mut a = Client::connect(t.addr).await;
    assert_eq!(a.reply().await.code, 220);
    let mut second = Client::connect(t.addr).await;
    let r = second.reply().await;
    assert!(r.starts("421 4.7.0"), "{r:?}");
    assert!(
        r.text.contains("Too many connections from your address"),
        "{r:?}"
    );
    assert!(second.is_closed().await);
    assert!(a.cmd("NOOP").await.starts("250 2.0.0"));
    drop(a); // the client just goes away, without QUIT
    let (mut c, _) = connect_until_greeted(t.addr).await;
    assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
}

/// A connection flood from one address: the per-address limit holds
/// (every connection over it gets 421 4.7.0 and is closed), and a client
/// from another address is greeted and delivers meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn connection_flood_from_one_address_leaves_the_server_responsive_to_another() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with("max_connections_per_ip = 20\nmax_connections = 100", "").await;
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..120 {
        let mut c = Client::connect(t.addr).await;
        let r = c.reply().await;
        if r.code == 220 {
            held.push(c);
        } else {
            assert!(r.starts("421 4.7.0"), "{r:?}");
            assert!(c.is_closed().await);
            refused += 1;
        }
    }
    assert_eq!(held.len(), 20, "per-address limit");
    assert_eq!(refused, 100);
    // A fresh client from 127.0.0.2 (all of 127/8 is loopback).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = sock.connect(t.addr).await.unwrap();
    let mut fresh = Client::over(stream);
    let start = Instant::now();
    assert_eq!(fresh.reply().await.code, 220);
    assert_eq!(fresh.cmd("EHLO fresh.example.test").await.code, 250);
    let r = fresh
        .send_message(
            "a@sender.test",
            &["bob@example.test"],
            b"Subject: fresh\r\n\r\nok\r\n",
        )
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The held sessions still work.
    for c in held.iter_mut().take(3) {
        assert!(c.cmd("NOOP").await.starts("250 2.0.0"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_concurrent_sessions_each_deliver_their_own_message_exactly_once() {
    let _g = MEMORY.read().await;
    let t = TestServer::start_with("max_connections_per_ip = 200", "").await;
    const N: usize = 100;
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut tasks = Vec::new();
    for i in 0..N {
        let addr = t.addr;
        let token = format!("token-{run}-{i:03}-end");
        tasks.push(tokio::spawn(async move {
            let mut c = Client::greeted(addr).await;
            let body = format!("Subject: session {i}\r\n\r\n{token}\r\n");
            let r = c
                .send_message(
                    &format!("s{i}@sender.test"),
                    &[&format!("rcpt{i}@example.test")],
                    body.as_bytes(),
                )
                .await;
            let bye = c.cmd("QUIT").await;
            (r, bye)
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let (r, bye) = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("session finished")
            .expect("no panic");
        assert!(r.starts("250 2.6.0"), "session {i}: {r:?}");
        assert!(bye.starts("221 2.0.0"), "session {i}: {bye:?}");
    }
    assert_eq!(count(&t.server.queue.stats().accepted), N as u64);
    let msgs = wait_for_messages(&t.mailbox("catchall"), N, Duration::from_secs(20)).await;
    assert_eq!(msgs.len(), N);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &msgs {
        let body = String::from_utf8_lossy(body_of(m)).to_string();
        let tokens: Vec<&str> = body
            .split_whitespace()
            .filter(|w| w.starts_with("token-"))
            .collect();
        assert_eq!(tokens.len(), 1, "one token per message: {body:?}");
        *seen.entry(tokens[0].to_string()).or_default() += 1;
    }
    for i in 0..N {
        let token = format!("token-{run}-{i:03}-end");
        assert_eq!(seen.get(&token), Some(&1), "{token} delivered exactly once");
    }
    assert_eq!(seen.len(), N);
}

// ----- graceful shutdown -----

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_tells_an_idle_session_421_4_3_2() {
    let _g = MEMORY.read().await;
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    let TestServer {
        dir: _dir,
        server,
        addr: _,
    } = t;
    let stopping = tokio::spawn(server.shutdown());
    let r = c.reply().await;
    assert!(r.starts("421 4.3.2"), "{r:?}");
    assert!(r.text.contains("Service shutting down"), "{r:?}");
    assert!(c.is_closed().await);
    tokio::time::timeout(Duration::from_secs(4), stopping)
        .await
        .expect("shutdown does not wait for the grace period")
        .expect("no panic");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_a_session_in_data_finish_its_message() {
    let _g = MEMORY.read().await;
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts("250 2.1.0"));
    assert!(
        c.cmd("RCPT TO:<bob@example.test>")
            .await
            .starts("250 2.1.5")
    );
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: in flight\r\n\r\npart one\r\n").await;
    let TestServer { dir, server, addr } = t;
    let queue = server.queue.clone();
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Shutdown has started: a newcomer is turned away.
    let mut late = Client::connect(addr).await;
    let r = late.reply().await;
    assert!(r.starts("421 4.3.2"), "{r:?}");
    assert!(late.is_closed().await);
    // The message in flight is completed and acknowledged.
    c.send(b"part two\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    // Then the now idle session is closed.
    let r = c.reply().await;
    assert!(r.starts("421 4.3.2"), "{r:?}");
    assert!(c.is_closed().await);
    tokio::time::timeout(Duration::from_secs(4), stopping)
        .await
        .expect("shutdown finished")
        .expect("no panic");
    assert_eq!(count(&queue.stats().accepted), 1);
    let msgs = wait_for_messages(
        &dir.path().join("var/mail/catchall/new"),
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(body_of(&msgs[0]), b"part one\r\npart two\r\n");
}
