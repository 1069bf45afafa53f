//! Header handling: request framing checks (no smuggling), hop-by-hop
//! removal, forwarding headers, anchor mailbox and authentication scheme.

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

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
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::PROXY_AUTHORIZATION,
];

pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Tokens that name a field removed anyway (or `close`) need no name
    // of their own: the usual `Connection: keep-alive` costs nothing.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| t.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// A client's address as the forwarding headers and the HttpProxy log
/// write it, formatted once per connection instead of per request. The
/// last request's `Forwarded` value is kept with the host it was made
/// for: on a keep-alive connection the next request usually repeats it.
pub struct ClientAddr {
    pub ip: IpAddr,
    /// The address as text (`192.0.2.7`, `2001:db8::1`).
    pub text: Arc<str>,
    xff: Option<HeaderValue>,
    /// `for=192.0.2.7;proto=https`; IPv6 quoted and bracketed (RFC 7239 §6).
    forwarded_for: Box<str>,
    last: std::sync::Mutex<Option<(Option<HeaderValue>, HeaderValue)>>,
}

impl ClientAddr {
    pub fn new(ip: IpAddr) -> ClientAddr {
        let text: Arc<str> = Arc::from(ip.to_string());
        let forwarded_for = match ip {
            IpAddr::V4(v4) => format!("for={v4};proto=https"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=https"),
        };
        ClientAddr {
            ip,
            xff: HeaderValue::from_str(&text).ok(),
            text,
            forwarded_for: forwarded_for.into_boxed_str(),
            last: std::sync::Mutex::new(None),
        }
    }

    /// This hop's `Forwarded` element: this client, https, and `host`
    /// when it can be carried unquoted.
    fn forwarded_element(&self, host: Option<&HeaderValue>) -> StackText<320> {
        let mut fwd = StackText::<320>::new();
        let _ = fwd.write_str(&self.forwarded_for);
        if let Some(h) = host.filter(|h| carries_unquoted(h)) {
            let _ = write!(fwd, ";host=");
            let _ = fwd.write_str(h.to_str().unwrap_or(""));
        }
        fwd
    }

    /// `Forwarded` for a request without one: the element alone, as the
    /// last request's value when it was for the same host.
    fn forwarded(&self, host: Option<&HeaderValue>) -> Option<HeaderValue> {
        if let Ok(last) = self.last.try_lock()
            && let Some((h, v)) = last.as_ref()
            && h.as_ref() == host
        {
            return Some(v.clone());
        }
        let v = HeaderValue::from_str(self.forwarded_element(host).as_str()).ok()?;
        // The host is kept as a copy: the request's own value shares the
        // connection's read buffer, which a reference held for the life of
        // the connection would keep from being reused.
        let kept = match host {
            Some(h) => HeaderValue::from_bytes(h.as_bytes()).ok().map(Some),
            None => Some(None),
        };
        if let Some(kept) = kept
            && let Ok(mut last) = self.last.try_lock()
        {
            *last = Some((kept, v.clone()));
        }
        Some(v)
    }
}

/// A Host value `Forwarded` can carry without quoting.
fn carries_unquoted(h: &HeaderValue) -> bool {
    h.len() <= 260
        && h.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(b))
}

/// Adds X-Forwarded-For/-Proto/-Host and Forwarded (RFC 7239) for
/// `client` asking for `host`. A request that brought no such fields gets
/// the connection's prepared values (no allocation); one that did gets
/// its lists extended, built on the stack.
pub fn add_forwarding(headers: &mut HeaderMap, client: &ClientAddr, host: Option<&HeaderValue>) {
    let xff = if headers.contains_key(&X_FORWARDED_FOR) {
        append_list(headers, &X_FORWARDED_FOR, &client.text)
    } else {
        client.xff.clone()
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST, h.clone());
    }
    let forwarded = if headers.contains_key(header::FORWARDED) {
        append_list(
            headers,
            &header::FORWARDED,
            client.forwarded_element(host).as_str(),
        )
    } else {
        client.forwarded(host)
    };
    if let Some(v) = forwarded {
        headers.insert(header::FORWARDED, v);
    }
}

/// Every line of a list-valued field (several lines form one list, RFC
/// 9110 §5.3) followed by `last`, as one value.
fn append_list(headers: &HeaderMap, name: &HeaderName, last: &str) -> Option<HeaderValue> {
    if !headers.contains_key(name) {
        return HeaderValue::from_str(last).ok();
    }
    let mut out: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    out.push(last);
    HeaderValue::from_str(&out.join(", ")).ok()
}

/// Text formatted on the stack; what does not fit is cut (the callers'
/// texts are bounded well below `N`).
struct StackText<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    fn new() -> Self {
        StackText {
            buf: [0; N],
            len: 0,
        }
    }
    fn as_str(&self) -> &str {
        self.buf
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }
}

impl<const N: usize> std::fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
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
        add_forwarding(
            &mut m,
            &ClientAddr::new("::1".parse().unwrap()),
            Some(&HeaderValue::from_static("mail.example.test")),
        );
        assert_eq!(m["x-forwarded-for"], "192.0.2.1, 198.51.100.2, ::1");
        assert_eq!(
            m["forwarded"],
            "for=\"[::1]\";proto=https;host=mail.example.test"
        );
        assert_eq!(m["x-forwarded-host"], "mail.example.test");
        assert_eq!(m["x-forwarded-proto"], "https");
    }

    #[test]
    fn forwarded_headers_fresh() {
        let client = ClientAddr::new("192.0.2.7".parse().unwrap());
        let mut m = HeaderMap::new();
        add_forwarding(&mut m, &client, None);
        assert_eq!(m["x-forwarded-for"], "192.0.2.7");
        assert_eq!(m["forwarded"], "for=192.0.2.7;proto=https");
        assert!(!m.contains_key("x-forwarded-host"));
        // A host with characters Forwarded cannot carry unquoted is left
        // out of Forwarded but kept in X-Forwarded-Host.
        let mut m = HeaderMap::new();
        add_forwarding(&mut m, &client, Some(&HeaderValue::from_static("a b")));
        assert_eq!(m["forwarded"], "for=192.0.2.7;proto=https");
        assert_eq!(m["x-forwarded-host"], "a b");
        // The connection's cached value follows the host of each request.
        for host in ["one.example.test", "two.example.test", "two.example.test"] {
            let mut m = HeaderMap::new();
            add_forwarding(&mut m, &client, Some(&HeaderValue::from_static(host)));
            assert_eq!(
                m["forwarded"],
                format!("for=192.0.2.7;proto=https;host={host}")
            );
        }
        let mut m = HeaderMap::new();
        add_forwarding(&mut m, &client, None);
        assert_eq!(m["forwarded"], "for=192.0.2.7;proto=https");
        // The cached host is a copy, not a reference into the request's
        // bytes (those share the connection's read buffer).
        let host =
            HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(b"three.test")).unwrap();
        add_forwarding(&mut HeaderMap::new(), &client, Some(&host));
        let last = client.last.lock().unwrap();
        let kept = last.as_ref().and_then(|(h, _)| h.as_ref()).unwrap();
        assert_eq!(kept, &host);
        assert_ne!(kept.as_bytes().as_ptr(), host.as_bytes().as_ptr());
    }

    #[test]
    fn usual_connection_tokens_cost_no_name() {
        let mut m = map(&[
            ("connection", "keep-alive, Upgrade, TE"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("x-kept", "2"),
        ]);
        remove_hop_by_hop(&mut m);
        assert_eq!(m.len(), 1);
        assert!(m.contains_key("x-kept"));
    }
}
