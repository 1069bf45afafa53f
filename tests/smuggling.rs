//! SMTP smuggling: bare CR/LF in DATA never ends a message, and nothing
//! after them is executed as a command or queued as a second message.

mod common;
use common::*;
use std::time::Duration;

/// Sends `payload` after DATA, then a proper end, and returns the reply to
/// the end of data plus whatever else the server answered.
async fn smuggle(payload: &[u8]) -> (TestServer, Reply) {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>").await;
    c.cmd("RCPT TO:<victim@example.test>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(payload).await;
    // The attack payloads carry their own final <CRLF>.<CRLF>.
    if !payload.ends_with(b"\r\n.\r\n") {
        c.send(b"\r\n.\r\n").await;
    }
    let r = c.reply().await;
    // Nothing else may be pending: NOOP must get the very next reply.
    assert!(
        c.cmd("NOOP").await.starts("250 2.0.0"),
        "a smuggled command produced an extra reply"
    );
    (t, r)
}

const SECOND: &[u8] = b"MAIL FROM:<spoof@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_variants_are_refused_and_nothing_is_queued() {
    let variants: [&[u8]; 5] = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r"];
    for v in variants {
        let mut payload = b"Subject: first\r\n\r\nfirst".to_vec();
        payload.extend_from_slice(v);
        payload.extend_from_slice(SECOND);
        let (t, r) = smuggle(&payload).await;
        assert!(
            r.starts("550 5.6.0"),
            "variant {:?}: {r:?}",
            String::from_utf8_lossy(v)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            read_maildir(&t.mailbox("catchall")).len(),
            0,
            "variant {:?} queued a message",
            String::from_utf8_lossy(v)
        );
        assert_eq!(
            t.server
                .queue
                .stats()
                .accepted
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_lf_in_data_is_refused() {
    let (t, r) = smuggle(b"Subject: x\r\n\r\nline one\nline two").await;
    assert!(r.starts("550 5.6.0"), "{r:?}");
    assert!(r.text.contains("bare LF in line 3"), "{r:?}");
    assert_eq!(read_maildir(&t.mailbox("catchall")).len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_cr_in_data_is_refused() {
    let (t, r) = smuggle(b"Subject: x\r\n\r\nline one\rline two").await;
    assert!(r.starts("550 5.6.0"), "{r:?}");
    assert!(r.text.contains("bare CR"), "{r:?}");
    assert_eq!(read_maildir(&t.mailbox("catchall")).len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn nul_in_data_is_refused() {
    let (_t, r) = smuggle(b"Subject: x\r\n\r\nnul\0here").await;
    assert!(r.starts("550 5.6.0"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_lf_in_bdat_is_refused() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>").await;
    c.cmd("RCPT TO:<victim@example.test>").await;
    c.send(b"BDAT 7 LAST\r\nab\ncd\r\n").await;
    assert!(c.reply().await.starts("550 5.6.0"));
    assert_eq!(read_maildir(&t.mailbox("catchall")).len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_continues_after_a_refused_message() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    c.cmd("MAIL FROM:<a@sender.test>").await;
    c.cmd("RCPT TO:<victim@example.test>").await;
    c.cmd("DATA").await;
    c.send(b"bad\nline\r\n.\r\n").await;
    assert!(c.reply().await.starts("550 5.6.0"));
    let r = c
        .send_message(
            "a@sender.test",
            &["victim@example.test"],
            b"Subject: ok\r\n\r\ngood\r\n",
        )
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    let msgs = wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(body_of(&msgs[0]), b"good\r\n");
}
