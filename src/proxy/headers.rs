//! Header handling: request framing checks (no smuggling), hop-by-hop
//! removal, forwarding headers, anchor mailbox and authentication scheme.

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};
use std::net::IpAddr;

/// Why a request's framing or head is refused before routing.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadRefusal {
    /// 400: both Content-Length and Transfer-Encoding, several differing
    /// lengths, an unparsable length, or chunked not last.
    Framing(&'static str),
    /// 501: a transfer coding we do not implement (RFC 9112 §6.1).
    UnknownCoding,
    /// 431: too many header fields.
    TooManyHeaders,
}

/// RFC 9112 §6.1 and §6.3: a request with both Content-Length and
/// Transfer-Encoding is a smuggling attempt when it passes through a
/// proxy (the two hops may frame it differently), so it is refused with
/// 400 rather than repaired; so are several Content-Length values that
/// disagree and a Transfer-Encoding whose last coding is not chunked.
pub fn check_request_head(headers: &HeaderMap, max_headers: usize) -> Result<(), HeadRefusal> {
    if headers.len() > max_headers {
        return Err(HeadRefusal::TooManyHeaders);
    }
    let te: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if !te.is_empty() && headers.contains_key(header::CONTENT_LENGTH) {
        return Err(HeadRefusal::Framing(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if let Some(first) = lengths.next() {
        let parse = |v: &HeaderValue| {
            v.to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
        };
        let n = parse(first).ok_or(HeadRefusal::Framing("invalid Content-Length"))?;
        for v in lengths {
            if parse(v) != Some(n) {
                return Err(HeadRefusal::Framing("conflicting Content-Length values"));
            }
        }
    }
    if !te.is_empty() {
        let mut codings = Vec::new();
        for v in te {
            let s = v
                .to_str()
                .map_err(|_| HeadRefusal::Framing("invalid Transfer-Encoding"))?;
            codings.extend(s.split(',').map(|c| c.trim().to_ascii_lowercase()));
        }
        if codings.last().map(String::as_str) != Some("chunked") {
            return Err(HeadRefusal::Framing(
                "Transfer-Encoding does not end in chunked",
            ));
        }
        if codings.len() != 1 {
            return Err(HeadRefusal::UnknownCoding);
        }
    }
    Ok(())
}

/// Hop-by-hop fields (RFC 9110 §7.6.1), always removed, plus those the
/// Connection field names.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "proxy-authorization",
];

pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
}

/// Adds X-Forwarded-For/-Proto/-Host and Forwarded (RFC 7239) for a
/// client at `client` that asked for `host`.
pub fn add_forwarding(headers: &mut HeaderMap, client: IpAddr, host: Option<&str>) {
    let ip = client.to_string();
    let xff = append_list(headers, "x-forwarded-for", ip.clone());
    insert(headers, "x-forwarded-for", &xff);
    insert(headers, "x-forwarded-proto", "https");
    // RFC 7239 §6: IPv6 addresses are quoted and bracketed.
    let node = match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut fwd = format!("for={node};proto=https");
    if let Some(h) = host {
        insert(headers, "x-forwarded-host", h);
        if h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            fwd.push_str(";host=");
            fwd.push_str(h);
        }
    }
    let forwarded = append_list(headers, "forwarded", fwd);
    insert(headers, "forwarded", &forwarded);
}

/// Every line of a list-valued field (several lines form one list, RFC
/// 9110 §5.3) followed by `last`.
fn append_list(headers: &HeaderMap, name: &'static str, last: String) -> String {
    let mut out: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    out.push(&last);
    out.join(", ")
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// The anchor mailbox of a request: `X-AnchorMailbox`, then the pool's
/// cookie, then the pool's query parameter. Bounded to 320 bytes (an
/// address is at most 254).
pub fn anchor_mailbox(
    headers: &HeaderMap,
    query: Option<&str>,
    cookie: Option<&str>,
    param: Option<&str>,
) -> Option<String> {
    let ok = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.len() <= 320).then(|| s.to_string())
    };
    if let Some(v) = headers
        .get("x-anchormailbox")
        .and_then(|v| v.to_str().ok())
        .and_then(ok)
    {
        return Some(v);
    }
    if let Some(name) = cookie {
        for line in headers.get_all(header::COOKIE) {
            let Ok(line) = line.to_str() else { continue };
            for pair in line.split(';') {
                if let Some((k, v)) = pair.split_once('=')
                    && k.trim().eq_ignore_ascii_case(name)
                    && let Some(v) = ok(v)
                {
                    return Some(v);
                }
            }
        }
    }
    if let (Some(name), Some(q)) = (param, query) {
        for pair in q.split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && k.eq_ignore_ascii_case(name)
                && let Some(v) = ok(&percent_decode(v))
            {
                return Some(v);
            }
        }
    }
    None
}

/// Minimal %XX decoding for query values (invalid escapes stay as-is).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if c == b'+' { b' ' } else { c });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The authentication scheme of the request (`Authorization`'s first
/// token), for pinning and the log's AuthenticationType column.
pub fn auth_scheme(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let scheme = v.split_whitespace().next()?;
    (scheme.len() <= 32).then(|| scheme.to_string())
}

/// NTLM and Negotiate authenticate the connection, not the request
/// (MS-NTHT §2, RFC 4559 §4): the handshake's legs must reach the same
/// backend connection.
pub fn is_connection_auth(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case("ntlm") || scheme.eq_ignore_ascii_case("negotiate")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn framing_rules() {
        assert!(check_request_head(&map(&[("content-length", "5")]), 10).is_ok());
        assert_eq!(
            check_request_head(
                &map(&[("content-length", "5"), ("transfer-encoding", "chunked")]),
                10
            ),
            Err(HeadRefusal::Framing(
                "both Content-Length and Transfer-Encoding"
            ))
        );
        assert!(
            check_request_head(
                &map(&[("content-length", "5"), ("content-length", "6")]),
                10
            )
            .is_err()
        );
        assert!(
            check_request_head(
                &map(&[("content-length", "5"), ("content-length", "5")]),
                10
            )
            .is_ok()
        );
        assert!(check_request_head(&map(&[("content-length", "+5")]), 10).is_err());
        assert!(check_request_head(&map(&[("transfer-encoding", "chunked, gzip")]), 10).is_err());
        assert_eq!(
            check_request_head(&map(&[("transfer-encoding", "gzip, chunked")]), 10),
            Err(HeadRefusal::UnknownCoding)
        );
        assert_eq!(
            check_request_head(&map(&[("a", "1"), ("b", "2")]), 1),
            Err(HeadRefusal::TooManyHeaders)
        );
    }

    #[test]
    fn connection_named_headers_are_removed() {
        let mut m = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "2"),
        ]);
        remove_hop_by_hop(&mut m);
        assert_eq!(m.len(), 1);
        assert!(m.contains_key("x-kept"));
    }

    #[test]
    fn anchor_sources_in_order() {
        let m = map(&[("cookie", "a=b; X-AnchorMailbox=bob@example.test")]);
        assert_eq!(
            anchor_mailbox(&m, None, Some("x-anchormailbox"), None).as_deref(),
            Some("bob@example.test")
        );
        assert_eq!(
            anchor_mailbox(
                &HeaderMap::new(),
                Some("x=1&MailboxId=alice%40example.test"),
                None,
                Some("mailboxid")
            )
            .as_deref(),
            Some("alice@example.test")
        );
        let m = map(&[("x-anchormailbox", "carol@example.test")]);
        assert_eq!(
            anchor_mailbox(&m, None, None, None).as_deref(),
            Some("carol@example.test")
        );
    }

    #[test]
    fn forwarded_headers_append() {
        let mut m = map(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "198.51.100.2"),
        ]);
        add_forwarding(&mut m, "::1".parse().unwrap(), Some("mail.example.test"));
        assert_eq!(m["x-forwarded-for"], "192.0.2.1, 198.51.100.2, ::1");
        assert_eq!(
            m["forwarded"],
            "for=\"[::1]\";proto=https;host=mail.example.test"
        );
        assert_eq!(m["x-forwarded-host"], "mail.example.test");
    }
}
