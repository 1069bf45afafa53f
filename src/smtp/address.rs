//! Mail paths: `Reverse-path`, `Forward-path` and `Mailbox` of RFC 5321
//! §4.1.2, parsed strictly.
//!
//! Source routes (`<@a,@b:user@c>`) are accepted syntactically and ignored,
//! as §4.1.2 asks; the route is dropped so policy decides on the final
//! mailbox only. The relay tricks that depend on a later hop re-parsing the
//! local part (`%`, `!`, quoted `@`) are detected here (`has_routing_chars`)
//! and refused by the acceptance policy.

use crate::config::values::validate_domain;
use std::fmt;

/// The domain part of a mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A DNS name, lower-cased.
    Name(String),
    /// `[192.0.2.1]` or `[IPv6:...]`, kept as written (without brackets).
    Literal(String),
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Literal(l) => write!(f, "[{l}]"),
        }
    }
}

/// `local@domain`. The local part is kept as written (quoted form
/// included) because it is case-sensitive by RFC 5321 §2.4.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    pub local: String,
    pub domain: Domain,
}

impl Mailbox {
    /// Whether the local part holds characters that older MTAs interpret as
    /// routing: `%` (percent hack), `!` (bang path) or an `@` (quoted).
    pub fn has_routing_chars(&self) -> bool {
        self.local.contains(['%', '!', '@'])
    }

    /// Lower-case `local@domain` for table lookups.
    pub fn lookup_key(&self) -> String {
        format!("{}@{}", self.local.to_lowercase(), self.domain)
    }

    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || matches!(&self.domain, Domain::Name(n) if !n.is_ascii())
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// Why a path was refused; the text goes into the 501 reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the address must be enclosed in <>")]
    MissingBrackets,
    #[error("missing @domain")]
    MissingDomain,
    #[error("empty local part")]
    EmptyLocal,
    #[error("local part longer than 64 octets")]
    LocalTooLong,
    #[error("path longer than 256 octets")]
    PathTooLong,
    #[error("invalid character {0:?} in local part")]
    BadLocalChar(char),
    #[error("unterminated quoted local part")]
    Unterminated,
    #[error("invalid domain: {0}")]
    BadDomain(String),
    #[error("invalid address literal [{0}]")]
    BadLiteral(String),
    #[error("invalid source route")]
    BadRoute,
    #[error("non-ASCII address without SMTPUTF8")]
    NeedsUtf8,
}

/// Parsed `<...>`: null reverse path, the special `<Postmaster>`, or a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Path {
    Null,
    Postmaster,
    Mailbox(Mailbox),
}

fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (utf8 && !c.is_ascii() && !c.is_control())
}

/// Parses a whole `<path>`. `utf8` allows RFC 6531 UTF-8 addresses.
pub fn parse_path(s: &str, utf8: bool) -> Result<Path, PathError> {
    let inner = s
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .ok_or(PathError::MissingBrackets)?;
    if inner.len() > 256 {
        return Err(PathError::PathTooLong);
    }
    if inner.is_empty() {
        return Ok(Path::Null);
    }
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok(Path::Postmaster);
    }
    // A-d-l ":" : drop `@one,@two:` after checking each hop is a domain.
    let rest = if inner.starts_with('@') {
        let (route, rest) = inner.split_once(':').ok_or(PathError::BadRoute)?;
        for hop in route.split(',') {
            let d = hop.strip_prefix('@').ok_or(PathError::BadRoute)?;
            parse_domain(d, utf8).map_err(|_| PathError::BadRoute)?;
        }
        rest
    } else {
        inner
    };
    parse_mailbox(rest, utf8).map(Path::Mailbox)
}

/// Parses `local@domain` (no brackets).
pub fn parse_mailbox(s: &str, utf8: bool) -> Result<Mailbox, PathError> {
    if !utf8 && !s.is_ascii() {
        return Err(PathError::NeedsUtf8);
    }
    let (local, domain) = if let Some(q) = s.strip_prefix('"') {
        // Quoted-string: qtextSMTP or quoted-pairSMTP until the closing quote.
        let mut chars = q.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, p)) if (' '..='~').contains(&p) => {}
                    _ => return Err(PathError::Unterminated),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c if (' '..='~').contains(&c) || (utf8 && !c.is_ascii() && !c.is_control()) => {}
                c => return Err(PathError::BadLocalChar(c)),
            }
        }
        let end = end.ok_or(PathError::Unterminated)?;
        let local = &s[..end + 2];
        let rest = &s[end + 2..];
        let domain = rest.strip_prefix('@').ok_or(PathError::MissingDomain)?;
        (local, domain)
    } else {
        let (local, domain) = s.rsplit_once('@').ok_or(PathError::MissingDomain)?;
        if local.is_empty() {
            return Err(PathError::EmptyLocal);
        }
        // Dot-string: atoms separated by single dots.
        for atom in local.split('.') {
            if atom.is_empty() {
                return Err(PathError::BadLocalChar('.'));
            }
            if let Some(c) = atom.chars().find(|c| !is_atext(*c, utf8)) {
                return Err(PathError::BadLocalChar(c));
            }
        }
        (local, domain)
    };
    if local.len() > 64 {
        return Err(PathError::LocalTooLong);
    }
    Ok(Mailbox {
        local: local.to_string(),
        domain: parse_domain(domain, utf8)?,
    })
}

fn parse_domain(d: &str, utf8: bool) -> Result<Domain, PathError> {
    if let Some(lit) = d.strip_prefix('[') {
        let lit = lit
            .strip_suffix(']')
            .ok_or_else(|| PathError::BadLiteral(d.into()))?;
        let ok = if let Some(v6) = lit
            .strip_prefix("IPv6:")
            .or_else(|| lit.strip_prefix("ipv6:"))
        {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            lit.parse::<std::net::Ipv4Addr>().is_ok()
        };
        return if ok {
            Ok(Domain::Literal(lit.to_string()))
        } else {
            Err(PathError::BadLiteral(lit.into()))
        };
    }
    if utf8 && !d.is_ascii() {
        // U-labels: check structure, leave IDNA conversion to delivery.
        if d.is_empty()
            || d.split('.').any(|l| l.is_empty() || l.len() > 63)
            || d.contains(|c: char| {
                c.is_whitespace() || c.is_control() || "@[]<>\\\",;:".contains(c)
            })
        {
            return Err(PathError::BadDomain(d.into()));
        }
        return Ok(Domain::Name(d.to_lowercase()));
    }
    validate_domain(d).map_err(PathError::BadDomain)?;
    Ok(Domain::Name(d.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Mailbox {
        match parse_path(s, false).unwrap() {
            Path::Mailbox(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_and_special_paths() {
        assert_eq!(parse_path("<>", false), Ok(Path::Null));
        assert_eq!(parse_path("<PostMaster>", false), Ok(Path::Postmaster));
        let m = mb("<Alice.Smith@Example.TEST>");
        assert_eq!(m.local, "Alice.Smith");
        assert_eq!(m.domain, Domain::Name("example.test".into()));
    }

    #[test]
    fn source_route_is_dropped() {
        let m = mb("<@relay.test,@hop.test:bob@far.test>");
        assert_eq!(m.to_string(), "bob@far.test");
        assert!(parse_path("<@relay.test:>", false).is_err());
    }

    #[test]
    fn relay_tricks_are_visible_or_refused() {
        assert!(mb("<bob%far.test@example.test>").has_routing_chars());
        assert!(mb("<far.test!bob@example.test>").has_routing_chars());
        assert!(mb("<\"bob@far.test\"@example.test>").has_routing_chars());
        assert_eq!(
            parse_path("<bob@far.test@example.test>", false),
            Err(PathError::BadLocalChar('@'))
        );
        assert!(parse_path("<bob@example.test.>", false).is_err());
        assert!(parse_path("bob@example.test", false).is_err());
        assert!(parse_path("<bob..x@example.test>", false).is_err());
        assert!(parse_path("<bob@[300.1.1.1]>", false).is_err());
        assert_eq!(
            mb("<bob@[192.0.2.1]>").domain,
            Domain::Literal("192.0.2.1".into())
        );
        assert_eq!(
            mb("<bob@[IPv6:::1]>").domain,
            Domain::Literal("IPv6:::1".into())
        );
    }

    #[test]
    fn utf8_needs_smtputf8() {
        assert_eq!(
            parse_path("<jösé@example.test>", false),
            Err(PathError::NeedsUtf8)
        );
        assert!(parse_path("<jösé@example.test>", true).is_ok());
    }
}
