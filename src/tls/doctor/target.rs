//! What to probe: `smtp://HOST[:PORT]` (STARTTLS, RFC 3207),
//! `smtps://HOST[:PORT]` (implicit TLS, RFC 8314) or `https://HOST[:PORT]`.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// How TLS starts on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain SMTP, then STARTTLS.
    Smtp,
    /// TLS from the first byte, SMTP inside.
    Smtps,
    /// TLS from the first byte, HTTP inside.
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Smtp => "smtp",
            Scheme::Smtps => "smtps",
            Scheme::Https => "https",
        }
    }

    /// IANA default ports (25, 465 per RFC 8314, 443).
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Smtp => 25,
            Scheme::Smtps => 465,
            Scheme::Https => 443,
        }
    }
}

/// A parsed probe target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub scheme: Scheme,
    /// Host name or IP address, without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

impl Target {
    /// `host:port` with IPv6 brackets, for connecting.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the host is an IP literal (then no SNI is sent and no name
    /// is checked unless `--expect-name` says which).
    pub fn host_is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

/// Why a target string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error(
        "{0:?}: give a URL like smtp://mx.example.com:25, smtps://mx.example.com:465 or https://mail.example.com"
    )]
    NoScheme(String),
    #[error(
        "{scheme:?} is not a probe scheme: use smtp:// (STARTTLS), smtps:// (implicit TLS) or https://"
    )]
    UnknownScheme { scheme: String },
    #[error("{0:?} has no host name")]
    NoHost(String),
    #[error("{0:?}: the host is not a valid name or IP address")]
    BadHost(String),
    #[error("{port:?} is not a port number (1-65535)")]
    BadPort { port: String },
    #[error("{0:?}: only scheme://host:port is probed; remove the path, query or user part")]
    Extra(String),
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(input: &str) -> Result<Target, TargetError> {
        let s = input.trim();
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| TargetError::NoScheme(input.to_string()))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "smtp" => Scheme::Smtp,
            "smtps" => Scheme::Smtps,
            "https" => Scheme::Https,
            _ => {
                return Err(TargetError::UnknownScheme {
                    scheme: scheme.to_string(),
                });
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(TargetError::Extra(input.to_string()));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| TargetError::BadHost(input.to_string()))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(TargetError::BadHost(input.to_string()));
            }
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(TargetError::BadHost(input.to_string())),
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(TargetError::NoHost(input.to_string()));
        }
        let valid_name = host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid_name && host.parse::<std::net::IpAddr>().is_err() {
            return Err(TargetError::BadHost(input.to_string()));
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(TargetError::BadPort {
                        port: p.to_string(),
                    });
                }
            },
        };
        Ok(Target { scheme, host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t: Target = "smtp://mx.example.test:2525".parse().unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port),
            (Scheme::Smtp, "mx.example.test", 2525)
        );
        let t: Target = "smtps://127.0.0.1".parse().unwrap();
        assert_eq!(t.port, 465);
        let t: Target = "https://[::1]:8443/".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8443));
        assert_eq!(t.authority(), "[::1]:8443");
    }

    #[test]
    fn refuses_bad_targets() {
        assert!(matches!(
            "mx.example.test:25".parse::<Target>(),
            Err(TargetError::NoScheme(_))
        ));
        assert!(matches!(
            "imap://x.test".parse::<Target>(),
            Err(TargetError::UnknownScheme { .. })
        ));
        assert!(matches!(
            "smtp://x.test:0".parse::<Target>(),
            Err(TargetError::BadPort { .. })
        ));
        assert!(matches!(
            "smtp://x.test:99999".parse::<Target>(),
            Err(TargetError::BadPort { .. })
        ));
        assert!(matches!(
            "smtp://:25".parse::<Target>(),
            Err(TargetError::NoHost(_))
        ));
        assert!(matches!(
            "https://x.test/owa".parse::<Target>(),
            Err(TargetError::Extra(_))
        ));
        assert!(matches!(
            "smtp://bad_host!:25".parse::<Target>(),
            Err(TargetError::BadHost(_))
        ));
        assert!(matches!(
            "smtp://[zz]:25".parse::<Target>(),
            Err(TargetError::BadHost(_))
        ));
    }
}
