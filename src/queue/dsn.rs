//! Delivery status notifications (RFC 3464, in an RFC 6522
//! multipart/report), composed with mail-builder.
//!
//! ```text
//! multipart/report; report-type=delivery-status
//!   text/plain                 what happened, for people
//!   message/delivery-status    per-message and per-recipient fields
//!   text/rfc822-headers        the original header (RET=HDRS or no RET)
//!   | message/rfc822           the whole original (RET=FULL, RFC 3461 §4.3)
//! ```
//!
//! The DSN goes from the null reverse path `<>` (RFC 3461 §6.2), so a DSN
//! that itself fails is never answered with another one.

use super::message::Envelope;
use crate::smtp::inbound::command::Ret;
use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Failure (Action: failed) or delay (Action: delayed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsnKind {
    Failure,
    Delay,
}

impl DsnKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DsnKind::Failure => "failure",
            DsnKind::Delay => "delay",
        }
    }
}

/// One recipient's part of a DSN.
#[derive(Clone, Debug)]
pub struct DsnRecipient {
    pub address: String,
    /// ORCPT as given at RCPT (`rfc822;user@example`, xtext).
    pub orcpt: Option<String>,
    pub status: String,
    pub diagnostic: String,
    pub remote_mta: Option<String>,
}

/// RFC 3461 §4: decodes `+XX` xtext escapes.
fn xtext_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+'
            && let Some(h) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(h, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Keeps a header field value on one line.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(900)
        .collect()
}

/// The original's header block (up to the first empty line).
fn header_of(original: &[u8]) -> &[u8] {
    original
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| &original[..p + 2])
        .unwrap_or(original)
}

/// Builds the DSN message (its bytes, CRLF line ends).
pub fn compose(
    hostname: &str,
    env: &Envelope,
    kind: DsnKind,
    rcpts: &[DsnRecipient],
    original: &[u8],
    retry_until: Option<SystemTime>,
) -> Vec<u8> {
    let now = SystemTime::now();
    let arrival = UNIX_EPOCH + Duration::from_secs(env.received_at);
    let mut human = match kind {
        DsnKind::Failure => format!(
            "This is the mail system at {hostname}.\r\n\r\nYour message could not be delivered to the following recipient(s):\r\n\r\n"
        ),
        DsnKind::Delay => format!(
            "This is the mail system at {hostname}.\r\n\r\nYour message has not been delivered yet to the following recipient(s).\r\nDelivery will go on being attempted; you do not need to resend it.\r\n\r\n"
        ),
    };
    for r in rcpts {
        human.push_str(&format!("  <{}>: {}\r\n", r.address, clean(&r.diagnostic)));
    }
    human.push_str(&format!("\r\nQueue ID: {}\r\n", env.id));

    let mut status = format!("Reporting-MTA: dns; {hostname}\r\n");
    if let Some(envid) = &env.envid {
        status.push_str(&format!(
            "Original-Envelope-Id: {}\r\n",
            clean(&xtext_decode(envid))
        ));
    }
    status.push_str(&format!(
        "Arrival-Date: {}\r\n",
        crate::timefmt::rfc5322(arrival)
    ));
    for r in rcpts {
        status.push_str("\r\n");
        status.push_str(&format!("Final-Recipient: rfc822; {}\r\n", r.address));
        if let Some(o) = &r.orcpt {
            let o = xtext_decode(o);
            let o = match o.split_once(';') {
                Some((t, a)) => format!("{}; {}", t.trim(), a.trim()),
                None => format!("rfc822; {o}"),
            };
            status.push_str(&format!("Original-Recipient: {}\r\n", clean(&o)));
        }
        status.push_str(match kind {
            DsnKind::Failure => "Action: failed\r\n",
            DsnKind::Delay => "Action: delayed\r\n",
        });
        status.push_str(&format!("Status: {}\r\n", r.status));
        if let Some(m) = &r.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {}\r\n", clean(m)));
        }
        status.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n",
            clean(&r.diagnostic)
        ));
        status.push_str(&format!(
            "Last-Attempt-Date: {}\r\n",
            crate::timefmt::rfc5322(now)
        ));
        // RFC 3464 §2.3.9: how long a delayed recipient is still tried.
        if let (DsnKind::Delay, Some(until)) = (kind, retry_until) {
            status.push_str(&format!(
                "Will-Retry-Until: {}\r\n",
                crate::timefmt::rfc5322(until)
            ));
        }
    }

    let original_part = if env.ret == Some(Ret::Full) {
        let mut raw = b"Content-Type: message/rfc822\r\n\r\n".to_vec();
        raw.extend_from_slice(original);
        MimePart::raw(raw)
    } else {
        let mut raw = b"Content-Type: text/rfc822-headers\r\n\r\n".to_vec();
        raw.extend_from_slice(header_of(original));
        MimePart::raw(raw)
    };
    let status_part = MimePart::raw(format!(
        "Content-Type: message/delivery-status\r\n\r\n{status}"
    ));
    let subject = match kind {
        DsnKind::Failure => "Undelivered Mail Returned to Sender",
        DsnKind::Delay => "Delayed Mail (still being retried)",
    };
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    MessageBuilder::new()
        .from((
            "Mail Delivery System".to_string(),
            format!("MAILER-DAEMON@{hostname}"),
        ))
        .to(env.mail_from.clone())
        .subject(subject)
        .date(secs)
        .message_id(format!("{}.{}.dsn@{hostname}", env.id, kind.as_str()))
        // RFC 3834 §5: automatic responses are marked so no one answers them.
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
            vec![
                MimePart::new("text/plain", human),
                status_part,
                original_part,
            ],
        ))
        .write_to_vec()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::message::{QueueId, Recipient, Route};
    use mail_parser::MimeHeaders;

    fn env(ret: Option<Ret>) -> Envelope {
        Envelope {
            id: QueueId(0xABC),
            received_at: 1_700_000_000,
            connector: "Default".into(),
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: "c.test".into(),
            mail_from: "sender@example.test".into(),
            body: None,
            smtputf8: false,
            ret,
            envid: Some("ENV+2B1".into()),
            recipients: vec![Recipient {
                address: "u@remote.test".into(),
                route: Route::Relay {
                    domain: "remote.test".into(),
                },
                notify: None,
                orcpt: Some("rfc822;u+40remote.test".into()),
            }],
        }
    }

    fn rcpt() -> DsnRecipient {
        DsnRecipient {
            address: "u@remote.test".into(),
            orcpt: Some("rfc822;u+40remote.test".into()),
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 no such user".into(),
            remote_mta: Some("mx.remote.test".into()),
        }
    }

    #[test]
    fn failure_dsn_parses_back_with_rfc3464_fields() {
        let original = b"Subject: hello\r\nFrom: sender@example.test\r\n\r\nbody text\r\n";
        let bytes = compose(
            "mx.example.test",
            &env(None),
            DsnKind::Failure,
            &[rcpt()],
            original,
            None,
        );
        let msg = mail_parser::MessageParser::default()
            .parse(&bytes)
            .expect("parses");
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        let ct = msg.content_type().expect("content type");
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("Action: failed\r\n"), "{text}");
        assert!(text.contains("Status: 5.1.1\r\n"), "{text}");
        assert!(
            text.contains("Original-Recipient: rfc822; u@remote.test\r\n"),
            "{text}"
        );
        assert!(text.contains("Original-Envelope-Id: ENV+1\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/rfc822-headers"), "{text}");
        assert!(!text.contains("body text"), "headers only without RET=FULL");
    }

    #[test]
    fn ret_full_returns_the_whole_message() {
        let original = b"Subject: hello\r\n\r\nbody text\r\n";
        let bytes = compose(
            "mx.example.test",
            &env(Some(Ret::Full)),
            DsnKind::Delay,
            &[rcpt()],
            original,
            None,
        );
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("Content-Type: message/rfc822"), "{text}");
        assert!(text.contains("body text"), "{text}");
        assert!(text.contains("Action: delayed"), "{text}");
    }
}
