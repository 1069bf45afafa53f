//! Which send connector serves a domain (Exchange address spaces).
//!
//! Patterns: `example.test` (that domain), `*.example.test` (the domain and
//! its subdomains), `*` (everything). The most specific match wins: an
//! exact domain beats any wildcard, a longer wildcard suffix beats a
//! shorter one, and `*` comes last. Validation refuses the same pattern on
//! two connectors, so there are no ties.

use std::net::IpAddr;

/// A smart host: name or IP literal, and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmartHost {
    pub host: String,
    pub ip: Option<IpAddr>,
    pub port: u16,
}

/// `host`, `host:port`, `[ip]` or `[ip]:port`; a bare IPv4 address is
/// taken as a literal too.
pub fn parse_smart_host(s: &str, default_port: u16) -> Option<SmartHost> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: IpAddr = ip.parse().ok()?;
        let port = match after {
            "" => default_port,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return Some(SmartHost {
            host: ip.to_string(),
            ip: Some(ip),
            port,
        });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (s, default_port),
    };
    if port == 0 {
        return None;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SmartHost {
            host: ip.to_string(),
            ip: Some(ip),
            port,
        });
    }
    crate::config::values::validate_domain(host).ok()?;
    Some(SmartHost {
        host: host.to_ascii_lowercase(),
        ip: None,
        port,
    })
}

/// How specific `pattern` is for `domain`, or `None` when it does not
/// match. Larger is more specific.
pub fn specificity(pattern: &str, domain: &str) -> Option<(u8, usize)> {
    let domain = domain.trim_end_matches('.');
    if pattern == "*" {
        return Some((0, 0));
    }
    if let Some(suffix) = pattern.strip_prefix("*.") {
        let matches = domain.eq_ignore_ascii_case(suffix)
            || (domain.len() > suffix.len()
                && domain
                    .get(domain.len() - suffix.len()..)
                    .is_some_and(|t| t.eq_ignore_ascii_case(suffix))
                && domain.as_bytes().get(domain.len() - suffix.len() - 1) == Some(&b'.'));
        return matches.then_some((1, suffix.len()));
    }
    domain
        .eq_ignore_ascii_case(pattern)
        .then_some((2, pattern.len()))
}

/// Index of the connector whose address spaces match `domain` best.
pub fn select<'a>(
    connectors: impl IntoIterator<Item = (usize, &'a [String])>,
    domain: &str,
) -> Option<usize> {
    connectors
        .into_iter()
        .filter_map(|(i, spaces)| {
            spaces
                .iter()
                .filter_map(|p| specificity(p, domain))
                .max()
                .map(|s| (s, i))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_address_space_wins() {
        let all = vec!["*".to_string()];
        let sub = vec!["*.example.test".to_string()];
        let exact = vec!["mail.example.test".to_string()];
        let set = || {
            vec![
                (0, all.as_slice()),
                (1, sub.as_slice()),
                (2, exact.as_slice()),
            ]
        };
        assert_eq!(select(set(), "mail.example.test"), Some(2));
        assert_eq!(select(set(), "x.example.test"), Some(1));
        assert_eq!(select(set(), "example.test"), Some(1));
        assert_eq!(select(set(), "badexample.test"), Some(0));
        assert_eq!(select(vec![(1, sub.as_slice())], "other.test"), None);
    }

    #[test]
    fn smart_host_forms() {
        assert_eq!(
            parse_smart_host("relay.example.test:587", 25),
            Some(SmartHost {
                host: "relay.example.test".into(),
                ip: None,
                port: 587
            })
        );
        assert_eq!(parse_smart_host("[::1]:2525", 25).unwrap().port, 2525);
        assert_eq!(
            parse_smart_host("127.0.0.1", 26).unwrap().ip,
            Some("127.0.0.1".parse().unwrap())
        );
        assert!(parse_smart_host("bad host:25", 25).is_none());
        assert!(parse_smart_host("h.test:0", 25).is_none());
        assert!(parse_smart_host("h.test:99999", 25).is_none());
    }
}
