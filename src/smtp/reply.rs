//! Every SMTP reply the server sends, in one table.
//!
//! Codes follow RFC 5321 §4.2; enhanced status codes follow RFC 3463 and
//! the IANA registry. Keeping them here (not as literals in the session)
//! lets an operator read, in one place, what a client can be told and why.

use std::fmt::Write as _;

/// One reply: code, optional enhanced status, text (one line per `\n`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: Option<&'static str>,
    pub text: String,
}

impl Reply {
    fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status: Some(status),
            text: text.into(),
        }
    }
    fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status: None,
            text: text.into(),
        }
    }

    /// Whether the client is to blame (counts toward the error limit).
    pub fn is_client_error(&self) -> bool {
        self.code >= 500 || matches!(self.code, 452 if self.status == Some("4.5.3"))
    }

    /// Serialises with CRLF line endings, `-` continuation per §4.2.1.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = self.text.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            let mut s = String::with_capacity(line.len() + 16);
            let _ = write!(s, "{}{}", self.code, sep);
            if let Some(st) = self.status {
                s.push_str(st);
                s.push(' ');
            }
            s.push_str(line);
            s.push_str("\r\n");
            out.extend_from_slice(s.as_bytes());
        }
    }

    // ----- greeting, session -----
    pub fn greeting(fqdn: &str, banner: &str) -> Reply {
        Reply::plain(220, format!("{fqdn} {banner}"))
    }
    pub fn ehlo(lines: Vec<String>) -> Reply {
        Reply::plain(250, lines.join("\n"))
    }
    pub fn helo(fqdn: &str, client: &str) -> Reply {
        Reply::plain(250, format!("{fqdn} Hello {client}"))
    }
    pub fn bye(fqdn: &str) -> Reply {
        Reply::new(
            221,
            "2.0.0",
            format!("{fqdn} Service closing transmission channel"),
        )
    }
    pub fn ok() -> Reply {
        Reply::new(250, "2.0.0", "OK")
    }
    pub fn reset() -> Reply {
        Reply::new(250, "2.0.0", "Reset state")
    }
    pub fn help() -> Reply {
        Reply::new(
            214,
            "2.0.0",
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\nSee README.md of Gatehouse for the server's documentation",
        )
    }
    pub fn vrfy() -> Reply {
        // RFC 5321 §3.5.3: 252 when the server will not verify but accepts.
        Reply::new(
            252,
            "2.5.0",
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    // ----- transaction -----
    pub fn sender_ok() -> Reply {
        Reply::new(250, "2.1.0", "Sender OK")
    }
    pub fn recipient_ok() -> Reply {
        Reply::new(250, "2.1.5", "Recipient OK")
    }
    pub fn start_data() -> Reply {
        Reply::plain(354, "Start mail input; end with <CRLF>.<CRLF>")
    }
    pub fn queued(id: &str, size: usize) -> Reply {
        Reply::new(
            250,
            "2.6.0",
            format!("Queued as {id} ({size} octets); message is on stable storage"),
        )
    }
    pub fn chunk_ok(size: u64) -> Reply {
        Reply::new(250, "2.0.0", format!("{size} octets received"))
    }

    pub fn ready_for_tls() -> Reply {
        Reply::new(220, "2.0.0", "Ready to start TLS")
    }

    // ----- temporary failures -----
    pub fn too_many_connections(fqdn: &str) -> Reply {
        Reply::new(
            421,
            "4.7.0",
            format!("{fqdn} Too many connections, try again later"),
        )
    }
    pub fn too_many_connections_from_ip(fqdn: &str) -> Reply {
        Reply::new(
            421,
            "4.7.0",
            format!("{fqdn} Too many connections from your address, try again later"),
        )
    }
    pub fn too_many_errors(fqdn: &str) -> Reply {
        Reply::new(
            421,
            "4.7.0",
            format!("{fqdn} Too many errors in this session, closing connection"),
        )
    }
    pub fn shutting_down(fqdn: &str) -> Reply {
        Reply::new(
            421,
            "4.3.2",
            format!("{fqdn} Service shutting down, try again later"),
        )
    }
    pub fn timeout(fqdn: &str, phase: &str) -> Reply {
        Reply::new(
            421,
            "4.4.2",
            format!("{fqdn} Timeout waiting for {phase}, closing connection"),
        )
    }
    pub fn session_too_long(fqdn: &str) -> Reply {
        Reply::new(
            421,
            "4.4.2",
            format!("{fqdn} Connection time limit reached, closing connection"),
        )
    }
    pub fn storage_failure(detail: &str) -> Reply {
        Reply::new(
            452,
            "4.3.1",
            format!(
                "Insufficient system storage ({detail}); message not accepted, try again later"
            ),
        )
    }
    pub fn too_many_recipients(max: usize) -> Reply {
        Reply::new(
            452,
            "4.5.3",
            format!(
                "Too many recipients; at most {max} per message, send the rest in another transaction"
            ),
        )
    }

    // ----- permanent failures: syntax and sequence -----
    pub fn line_too_long(max: usize) -> Reply {
        Reply::new(
            500,
            "5.5.2",
            format!("Line too long; command lines are limited to {max} octets"),
        )
    }
    pub fn bad_command_bytes(what: &str) -> Reply {
        Reply::new(
            500,
            "5.5.2",
            format!("Syntax error: {what} in command line"),
        )
    }
    pub fn unknown_command() -> Reply {
        Reply::new(500, "5.5.1", "Command unrecognized")
    }
    pub fn not_implemented(cmd: &str) -> Reply {
        Reply::new(
            502,
            "5.5.1",
            format!("{cmd} not implemented on this connector"),
        )
    }
    pub fn syntax(what: &str) -> Reply {
        Reply::new(501, "5.5.4", format!("Syntax error: {what}"))
    }
    pub fn bad_sender_syntax(what: &str) -> Reply {
        Reply::new(501, "5.1.7", format!("Bad sender address syntax: {what}"))
    }
    pub fn bad_recipient_syntax(what: &str) -> Reply {
        Reply::new(
            501,
            "5.1.3",
            format!("Bad recipient address syntax: {what}"),
        )
    }
    pub fn bad_parameter(what: &str) -> Reply {
        Reply::new(
            555,
            "5.5.4",
            format!("MAIL FROM/RCPT TO parameter not recognized or not implemented: {what}"),
        )
    }
    pub fn tls_required() -> Reply {
        Reply::new(
            530,
            "5.7.0",
            "Must issue a STARTTLS command first; this connector requires TLS",
        )
    }
    pub fn tls_already_active() -> Reply {
        Reply::new(503, "5.5.1", "TLS is already active")
    }
    pub fn auth_required() -> Reply {
        Reply::new(
            530,
            "5.7.0",
            "Authentication required; use AUTH after STARTTLS (RFC 6409)",
        )
    }
    pub fn encryption_required_for_auth() -> Reply {
        Reply::new(
            538,
            "5.7.11",
            "Encryption required for requested authentication mechanism; use STARTTLS first",
        )
    }
    pub fn already_authenticated() -> Reply {
        Reply::new(503, "5.5.1", "Already authenticated")
    }
    pub fn auth_in_transaction() -> Reply {
        Reply::new(
            503,
            "5.5.1",
            "AUTH is not allowed during a mail transaction",
        )
    }
    pub fn auth_cancelled() -> Reply {
        Reply::new(501, "5.7.0", "Authentication cancelled")
    }
    pub fn auth_mechanism_unknown(m: &str) -> Reply {
        Reply::new(
            504,
            "5.5.4",
            format!("Unrecognized authentication mechanism {m}; use PLAIN or LOGIN"),
        )
    }
    pub fn auth_malformed() -> Reply {
        Reply::new(
            501,
            "5.5.2",
            "Cannot decode the authentication response (base64)",
        )
    }
    /// SASL challenge (RFC 4954 §4): base64 text, no enhanced status.
    pub fn auth_challenge(b64: &str) -> Reply {
        Reply::plain(334, b64)
    }
    pub fn auth_ok() -> Reply {
        Reply::new(235, "2.7.0", "Authentication successful")
    }
    /// RFC 4954 §6: 454 4.7.0 is the temporary authentication failure.
    pub fn auth_locked_out(remaining: std::time::Duration) -> Reply {
        let minutes = remaining.as_secs().div_ceil(60).max(1);
        Reply::new(
            454,
            "4.7.0",
            format!(
                "Too many failed authentications from your address; try again in {minutes} minute(s)"
            ),
        )
    }
    pub fn auth_failed() -> Reply {
        Reply::new(535, "5.7.8", "Authentication credentials invalid")
    }
    pub fn need_helo() -> Reply {
        Reply::new(503, "5.5.1", "Send EHLO or HELO first")
    }
    pub fn need_mail() -> Reply {
        Reply::new(503, "5.5.1", "Send MAIL FROM first")
    }
    pub fn nested_mail() -> Reply {
        Reply::new(
            503,
            "5.5.1",
            "Sender already given; send RSET to start over",
        )
    }
    pub fn need_rcpt() -> Reply {
        Reply::new(503, "5.5.1", "No valid recipients; send RCPT TO first")
    }
    pub fn data_after_bdat() -> Reply {
        Reply::new(
            503,
            "5.5.1",
            "DATA cannot follow BDAT in one transaction (RFC 3030)",
        )
    }
    pub fn bdat_failed_earlier() -> Reply {
        Reply::new(
            503,
            "5.5.1",
            "An earlier BDAT chunk of this transaction failed; send RSET",
        )
    }
    pub fn utf8_needs_smtputf8() -> Reply {
        Reply::new(
            553,
            "5.6.7",
            "Non-ASCII address requires the SMTPUTF8 parameter on MAIL FROM (RFC 6531)",
        )
    }

    // ----- permanent failures: policy and content -----
    pub fn size_exceeded(max: u64) -> Reply {
        Reply::new(
            552,
            "5.3.4",
            format!("Message size exceeds the fixed maximum of {max} octets"),
        )
    }
    pub fn relay_denied(domain: &str, ip: &str) -> Reply {
        Reply::new(
            550,
            "5.7.1",
            format!(
                "Relay access denied: {domain} is not an accepted domain here and {ip} is not allowed to relay"
            ),
        )
    }
    pub fn routing_characters() -> Reply {
        Reply::new(
            550,
            "5.7.1",
            "Address refused: %, ! and @ in the local part are source-routing tricks and are not accepted",
        )
    }
    pub fn unknown_user(address: &str) -> Reply {
        Reply::new(
            550,
            "5.1.1",
            format!("{address}: recipient not found in this domain"),
        )
    }
    pub fn bare_line_ending(kind: &str, line: usize) -> Reply {
        Reply::new(
            550,
            "5.6.0",
            format!(
                "Message refused: {kind} in line {line} of the message data; lines must end with CRLF (RFC 5321 §2.3.8). Nothing was queued"
            ),
        )
    }
    pub fn nul_in_data(line: usize) -> Reply {
        Reply::new(
            550,
            "5.6.0",
            format!(
                "Message refused: NUL octet in line {line} of the message data. Nothing was queued"
            ),
        )
    }
    pub fn no_valid_recipients() -> Reply {
        Reply::new(554, "5.5.1", "No valid recipients")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_uses_dash_continuation() {
        let mut out = Vec::new();
        Reply::ehlo(vec![
            "mx.test Hello".into(),
            "SIZE 10".into(),
            "PIPELINING".into(),
        ])
        .write_to(&mut out);
        assert_eq!(
            out,
            b"250-mx.test Hello\r\n250-SIZE 10\r\n250 PIPELINING\r\n"
        );
    }

    #[test]
    fn enhanced_status_class_matches_code() {
        for r in [
            Reply::too_many_recipients(1),
            Reply::relay_denied("a", "b"),
            Reply::storage_failure("x"),
            Reply::size_exceeded(1),
            Reply::line_too_long(1),
            Reply::too_many_errors("f"),
        ] {
            let class = r.status.unwrap().chars().next().unwrap();
            assert_eq!(class, char::from(b'0' + (r.code / 100) as u8), "{r:?}");
        }
    }
}
