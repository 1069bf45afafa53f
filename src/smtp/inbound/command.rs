//! SMTP command lines (RFC 5321 §4.1.1) and their ESMTP parameters
//! (SIZE RFC 1870, BODY RFC 6152, SMTPUTF8 RFC 6531, DSN RFC 3461).
//!
//! The input is one line without its CRLF, already checked for length,
//! UTF-8 and control characters by the session's line reader. Parsing is
//! pure, so it is property-tested without sockets.

use crate::smtp::address::{Path, PathError, parse_path};
use crate::smtp::reply::Reply;

/// `BODY=` of RFC 6152 / RFC 3030. BINARYMIME is not offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

/// `RET=` of RFC 3461 §4.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ret {
    Full,
    Hdrs,
}

/// `NOTIFY=` of RFC 3461 §4.1: NEVER, or any of SUCCESS/FAILURE/DELAY.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailFrom {
    pub path: Path,
    pub size: Option<u64>,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcptTo {
    pub path: Path,
    pub notify: Option<Notify>,
    /// `ORCPT=addr-type;xtext`, kept encoded as received.
    pub orcpt: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

/// Parses one command line. `utf8_tx` is whether the current transaction
/// was opened with SMTPUTF8 (needed to accept UTF-8 in RCPT TO).
pub fn parse(line: &str, utf8_tx: bool) -> Result<Command, Reply> {
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let no_args = |cmd: Command| {
        if rest.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(Reply::syntax(&format!(
                "{} takes no arguments",
                verb.to_ascii_uppercase()
            )))
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" | "HELO" => {
            let name = rest.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(Reply::syntax(&format!(
                    "{} needs exactly one argument, your host name",
                    verb.to_ascii_uppercase()
                )));
            }
            Ok(if verb.eq_ignore_ascii_case("EHLO") {
                Command::Ehlo(name.into())
            } else {
                Command::Helo(name.into())
            })
        }
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest, utf8_tx),
        "DATA" => no_args(Command::Data),
        "BDAT" => parse_bdat(rest),
        "RSET" => no_args(Command::Rset),
        // NOOP and HELP may carry an argument, which is ignored (§4.1.1.9).
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => {
            let mut it = rest.split(' ').filter(|s| !s.is_empty());
            let mechanism = it
                .next()
                .ok_or_else(|| Reply::syntax("AUTH needs a mechanism"))?
                .to_ascii_uppercase();
            let initial = it.next().map(str::to_string);
            if it.next().is_some() {
                return Err(Reply::syntax("AUTH <mechanism> [initial-response]"));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        _ => Err(Reply::unknown_command()),
    }
}

/// Splits `FROM:<path> params` (keyword already matched case-insensitively).
/// A space after the colon is tolerated: many clients send it.
fn split_path<'a>(rest: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    // `get` rather than indexing: the line is client text and a multi-byte
    // character may straddle the keyword's length (found by fuzzing).
    let after = match rest.get(..keyword.len()) {
        Some(k) if k.eq_ignore_ascii_case(keyword) => &rest[keyword.len()..],
        _ => return None,
    };
    let after = after.trim_start_matches(' ');
    if !after.starts_with('<') {
        return Some((after.split(' ').next().unwrap_or(""), ""));
    }
    // The path ends at the first '>' outside a quoted local part.
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in after.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => {
                let params = &after[i + 1..];
                if !params.is_empty() && !params.starts_with(' ') {
                    return Some((after, ""));
                }
                return Some((&after[..=i], params.trim()));
            }
            _ => {}
        }
    }
    Some((after, ""))
}

fn params(s: &str) -> impl Iterator<Item = (String, Option<&str>)> {
    s.split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
            None => (p.to_ascii_uppercase(), None),
        })
}

/// RFC 3461 §4: xtext is printable ASCII except `+` and `=`, with `+XX`
/// hex escapes.
fn valid_xtext(v: &str) -> bool {
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                if !(b.get(i + 1).is_some_and(|c| c.is_ascii_hexdigit())
                    && b.get(i + 2).is_some_and(|c| c.is_ascii_hexdigit()))
                {
                    return false;
                }
                i += 3;
            }
            b'!'..=b'~' if b[i] != b'=' => i += 1,
            _ => return false,
        }
    }
    !v.is_empty()
}

fn path_error_mail(e: PathError) -> Reply {
    match e {
        PathError::NeedsUtf8 => Reply::utf8_needs_smtputf8(),
        e => Reply::bad_sender_syntax(&e.to_string()),
    }
}

fn parse_mail(rest: &str) -> Result<Command, Reply> {
    let (path, ps) =
        split_path(rest, "FROM:").ok_or_else(|| Reply::syntax("use MAIL FROM:<address>"))?;
    let mut m = MailFrom {
        path: Path::Null,
        size: None,
        body: None,
        smtputf8: false,
        ret: None,
        envid: None,
    };
    let mut seen = std::collections::HashSet::new();
    for (k, v) in params(ps) {
        if !seen.insert(k.clone()) {
            return Err(Reply::syntax(&format!("parameter {k} given twice")));
        }
        match (k.as_str(), v) {
            ("SIZE", Some(v)) => {
                // RFC 1870 allows up to 20 digits, more than u64 holds:
                // such a size is simply over any limit.
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Reply::syntax("SIZE must be 1 to 20 digits (RFC 1870)"));
                }
                m.size = Some(v.parse().unwrap_or(u64::MAX))
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {
                m.body = Some(BodyType::SevenBit)
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                m.body = Some(BodyType::EightBitMime)
            }
            ("SMTPUTF8", None) => m.smtputf8 = true,
            // RFC 4954 §5: accepted and not used (we do not trust another
            // hop's authentication claims).
            ("AUTH", Some(v)) if v.len() <= 500 => {}
            ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => m.ret = Some(Ret::Full),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => m.ret = Some(Ret::Hdrs),
            ("ENVID", Some(v)) if v.len() <= 100 && valid_xtext(v) => m.envid = Some(v.to_string()),
            (k, _) => return Err(Reply::bad_parameter(k)),
        }
    }
    m.path = parse_path(path, m.smtputf8).map_err(path_error_mail)?;
    Ok(Command::Mail(m))
}

fn parse_rcpt(rest: &str, utf8_tx: bool) -> Result<Command, Reply> {
    let (path, ps) =
        split_path(rest, "TO:").ok_or_else(|| Reply::syntax("use RCPT TO:<address>"))?;
    let path = parse_path(path, utf8_tx).map_err(|e| match e {
        PathError::NeedsUtf8 => Reply::utf8_needs_smtputf8(),
        e => Reply::bad_recipient_syntax(&e.to_string()),
    })?;
    if path == Path::Null {
        return Err(Reply::bad_recipient_syntax(
            "the null path <> is not a recipient",
        ));
    }
    let mut r = RcptTo {
        path,
        notify: None,
        orcpt: None,
    };
    let mut seen = std::collections::HashSet::new();
    for (k, v) in params(ps) {
        if !seen.insert(k.clone()) {
            return Err(Reply::syntax(&format!("parameter {k} given twice")));
        }
        match (k.as_str(), v) {
            ("NOTIFY", Some(v)) => {
                let mut n = Notify::default();
                for item in v.split(',') {
                    match item.to_ascii_uppercase().as_str() {
                        "NEVER" => n.never = true,
                        "SUCCESS" => n.success = true,
                        "FAILURE" => n.failure = true,
                        "DELAY" => n.delay = true,
                        _ => {
                            return Err(Reply::syntax(
                                "NOTIFY takes NEVER or SUCCESS,FAILURE,DELAY",
                            ));
                        }
                    }
                }
                if n.never && (n.success || n.failure || n.delay) {
                    return Err(Reply::syntax(
                        "NOTIFY=NEVER cannot be combined with other values",
                    ));
                }
                r.notify = Some(n);
            }
            ("ORCPT", Some(v)) => {
                let (kind, addr) = v
                    .split_once(';')
                    .ok_or_else(|| Reply::syntax("ORCPT must be addr-type;xtext"))?;
                if kind.is_empty() || v.len() > 500 || !valid_xtext(addr) {
                    return Err(Reply::syntax("ORCPT must be addr-type;xtext"));
                }
                r.orcpt = Some(v.to_string());
            }
            (k, _) => return Err(Reply::bad_parameter(k)),
        }
    }
    Ok(Command::Rcpt(r))
}

fn parse_bdat(rest: &str) -> Result<Command, Reply> {
    let mut it = rest.split(' ').filter(|s| !s.is_empty());
    let size = it
        .next()
        .and_then(|s| {
            if s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 18 {
                s.parse().ok()
            } else {
                None
            }
        })
        .ok_or_else(|| Reply::syntax("BDAT needs a chunk size in octets"))?;
    let last = match it.next() {
        None => false,
        Some(s) if s.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(Reply::syntax("BDAT <size> [LAST]")),
    };
    if it.next().is_some() {
        return Err(Reply::syntax("BDAT <size> [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mail_with_all_parameters() {
        let Command::Mail(m) = parse(
            "mail from:<a@b.test> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=QQ+2B1",
            false,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(m.size, Some(1000));
        assert_eq!(m.body, Some(BodyType::EightBitMime));
        assert_eq!(m.ret, Some(Ret::Hdrs));
        assert_eq!(m.envid.as_deref(), Some("QQ+2B1"));
    }

    #[test]
    fn space_after_colon_is_tolerated() {
        assert!(matches!(
            parse("MAIL FROM: <a@b.test>", false),
            Ok(Command::Mail(_))
        ));
    }

    #[test]
    fn malformed_paths_get_501() {
        for line in [
            "MAIL FROM:a@b.test",
            "MAIL FROM:<a@>",
            "MAIL FROM:<@b.test>",
            "RCPT TO:<a b@c.test>",
            "RCPT TO:<>",
            "RCPT TO:<x@y.test>garbage",
        ] {
            let e = parse(line, false).unwrap_err();
            assert_eq!(e.code, 501, "{line}: {e:?}");
        }
        assert_eq!(
            parse("MAIL FROM:<a@>", false).unwrap_err().status,
            Some("5.1.7")
        );
        assert_eq!(
            parse("RCPT TO:<a@>", false).unwrap_err().status,
            Some("5.1.3")
        );
    }

    #[test]
    fn unknown_parameter_gets_555() {
        assert_eq!(
            parse("MAIL FROM:<a@b.test> FOO=1", false).unwrap_err().code,
            555
        );
        assert_eq!(
            parse("RCPT TO:<a@b.test> BAR", false).unwrap_err().code,
            555
        );
    }

    #[test]
    fn rcpt_dsn_parameters() {
        let Command::Rcpt(r) = parse(
            "RCPT TO:<a@b.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b.test",
            false,
        )
        .unwrap() else {
            panic!()
        };
        assert!(r.notify.unwrap().success && r.notify.unwrap().failure);
        assert_eq!(
            parse("RCPT TO:<a@b.test> NOTIFY=NEVER,SUCCESS", false)
                .unwrap_err()
                .code,
            501
        );
    }

    #[test]
    fn bdat_forms() {
        assert_eq!(
            parse("BDAT 100 LAST", false),
            Ok(Command::Bdat {
                size: 100,
                last: true
            })
        );
        assert_eq!(
            parse("BDAT 0", false),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
        assert!(parse("BDAT -1", false).is_err());
        assert!(parse("BDAT 1 LAST x", false).is_err());
    }

    proptest! {
        /// Arbitrary input never panics and always yields a command or a
        /// reply with a 5xx code and an enhanced status.
        #[test]
        fn parser_is_total(line in "\\PC{0,300}") {
            match parse(&line, true) {
                Ok(_) => {}
                Err(r) => { prop_assert!(r.code >= 500); prop_assert!(r.status.is_some()); }
            }
        }

        /// Any syntactically valid mailbox round-trips through MAIL FROM.
        #[test]
        fn valid_mailboxes_round_trip(local in "[a-zA-Z0-9!#$&'*+/=?^_`{|}~-]{1,20}(\\.[a-z0-9]{1,8}){0,2}",
                                      domain in "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z]{2,6}){1,3}") {
            let line = format!("MAIL FROM:<{local}@{domain}>");
            let Ok(Command::Mail(m)) = parse(&line, false) else { return Err(TestCaseError::fail(line)); };
            let Path::Mailbox(mb) = m.path else { return Err(TestCaseError::fail("not a mailbox")); };
            prop_assert_eq!(mb.to_string(), format!("{local}@{domain}"));
        }
    }

    /// Found by fuzz/smtp_command: a multi-byte character where `TO:` or
    /// `FROM:` should be made the keyword check slice inside it and panic.
    #[test]
    fn multibyte_character_in_place_of_the_keyword_is_a_syntax_error() {
        for line in [
            "RCPT TO\u{5e4}12Nl [110.1]",
            "RCPT T\u{e9}:<a@example.test>",
            "MAIL FRO\u{e9}:<a@example.test>",
            "MAIL \u{1f600}",
            "RCPT \u{e9}",
        ] {
            for utf8 in [false, true] {
                let reply = parse(line, utf8).expect_err(line);
                assert_eq!(reply.code, 501, "{line}");
            }
        }
    }

    proptest! {
        #[test]
        fn any_text_after_a_verb_gets_a_command_or_a_reply(verb in "(MAIL|RCPT|EHLO|HELO|AUTH|BDAT|VRFY) ?", rest in any::<String>()) {
            let line = format!("{verb}{rest}");
            let _ = parse(&line, false);
            let _ = parse(&line, true);
        }
    }
}
