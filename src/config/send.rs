//! Send connectors (`[[send_connector]]`), the resolver (`[dns]`) and the
//! retry/expiry/DSN knobs of `[queue]` that outbound delivery reads.
//!
//! Kept in its own file so the shared `config/mod.rs` only gains the two
//! fields and one validation call. Names follow Exchange's
//! New-SendConnector (AddressSpaces, SmartHosts, SourceIPAddress,
//! MaxConcurrentConnections...) and Postfix's TLS security levels.

use super::{ConfigError, ConfigSource, DomainName, HumanDuration};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// TLS security level of a send connector or a per-domain override, as
/// Postfix names them (`smtp_tls_security_level`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum TlsLevel {
    /// Never STARTTLS.
    None,
    /// Opportunistic: STARTTLS when offered, plaintext otherwise (RFC 3207 §4).
    May,
    /// Mandatory TLS, certificate not checked.
    Encrypt,
    /// Chain and name checked against the MX host or smart host name.
    Verify,
    /// Chain and name checked against the next-hop domain (or `tls_names`).
    Secure,
    /// The peer's leaf certificate must match a pinned SHA-256 thumbprint.
    Fingerprint,
}

impl TlsLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsLevel::None => "none",
            TlsLevel::May => "may",
            TlsLevel::Encrypt => "encrypt",
            TlsLevel::Verify => "verify",
            TlsLevel::Secure => "secure",
            TlsLevel::Fingerprint => "fingerprint",
        }
    }
}

/// `[[send_connector.tls_domain]]`: a stricter (or looser) level for one
/// destination domain.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsDomainOverride {
    pub domain: DomainName,
    pub tls: TlsLevel,
    /// For `secure`: names accepted instead of the domain itself.
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// For `fingerprint`: SHA-256 hex thumbprints (colons allowed).
    #[serde(default)]
    pub fingerprints: Vec<String>,
}

/// One outbound route.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendConnectorConfig {
    pub name: Spanned<String>,
    /// Domain patterns this connector serves: `example.test`,
    /// `*.example.test` (subdomains and the domain), `*` (everything).
    /// The most specific match across all connectors wins.
    pub address_spaces: Vec<Spanned<String>>,
    /// `host`, `host:port` or `[ip]:port`. Empty: look up MX records.
    #[serde(default)]
    pub smart_hosts: Vec<Spanned<String>>,
    /// Port for MX hosts and smart hosts given without one.
    #[serde(default = "default_port")]
    pub port: u16,
    /// File with one `user:password` line for AUTH PLAIN (smart hosts).
    /// The password is never logged.
    pub auth_file: Option<PathBuf>,
    /// SHA-1 thumbprint of a store certificate to present when the peer
    /// asks for one (mutual TLS).
    pub client_certificate: Option<String>,
    /// Local address to connect from.
    pub source_address: Option<IpAddr>,
    #[serde(default = "default_max_connections")]
    pub max_connections_per_destination: usize,
    #[serde(default = "default_max_messages")]
    pub max_messages_per_connection: usize,
    #[serde(default = "default_tls")]
    pub tls: TlsLevel,
    /// For `secure`: names accepted instead of the next-hop domain.
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// For `fingerprint`: SHA-256 hex thumbprints of accepted leaves.
    #[serde(default)]
    pub fingerprints: Vec<String>,
    /// Extra trust anchors (PEM) besides webpki-roots.
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_domain: Vec<TlsDomainOverride>,
    /// Refuse to deliver below the best TLS level seen for a domain
    /// (chasquid's domaininfo); off: a downgrade is only reported.
    #[serde(default)]
    pub enforce_tls_memory: bool,
    /// Name in EHLO; default `server.hostname`.
    pub helo: Option<DomainName>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Wait for each reply (RFC 5321 §4.5.3.2 suggests 5 minutes; 10
    /// minutes after the final dot).
    #[serde(default = "default_command_timeout")]
    pub command_timeout: HumanDuration,
    /// Write sessions to the SMTP send protocol log.
    #[serde(default = "default_true")]
    pub protocol_log: bool,
}

fn default_port() -> u16 {
    25
}
fn default_max_connections() -> usize {
    20
}
fn default_max_messages() -> usize {
    100
}
fn default_tls() -> TlsLevel {
    TlsLevel::May
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_command_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_true() -> bool {
    true
}

/// `[dns]`: where MX and address lookups go.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `ip:port` of recursive resolvers; empty: /etc/resolv.conf.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
}

pub(super) fn default_first_retry() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
pub(super) fn default_max_retry() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
pub(super) fn default_expire() -> HumanDuration {
    HumanDuration(Duration::from_secs(2 * 86_400))
}
pub(super) fn default_delay_dsn() -> HumanDuration {
    HumanDuration(Duration::from_secs(4 * 3600))
}

/// Whether `s` is a valid address-space pattern.
fn check_pattern(s: &str) -> Result<(), String> {
    if s == "*" {
        return Ok(());
    }
    let d = s.strip_prefix("*.").unwrap_or(s);
    super::values::validate_domain(d)
}

/// Whether `s` is 32 bytes of hex (colons allowed).
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub(super) fn validate(
    connectors: &[SendConnectorConfig],
    src: &ConfigSource,
    errs: &mut Vec<ConfigError>,
) {
    let mut names = std::collections::HashSet::new();
    let mut spaces = std::collections::HashMap::new();
    for c in connectors {
        let mut err = |span: std::ops::Range<usize>, msg: String, hint: &str| {
            errs.push(ConfigError::at(src, span, msg, hint));
        };
        let name = c.name.get_ref();
        if name.trim().is_empty() || name.contains([',', '"', '\n', '\\']) {
            err(
                c.name.span(),
                format!("send connector name `{name}` is empty or contains , \" \\ or a newline"),
                "use a plain name such as \"Internet\" (it appears in protocol logs)",
            );
        }
        if !names.insert(name.to_ascii_lowercase()) {
            err(
                c.name.span(),
                format!("send connector name `{name}` is used twice"),
                "give every [[send_connector]] its own name",
            );
        }
        if c.address_spaces.is_empty() {
            err(
                c.name.span(),
                format!("send connector `{name}` has no address_spaces"),
                "add address_spaces = [\"*\"] for all domains, or the domains it serves",
            );
        }
        for a in &c.address_spaces {
            let p = a.get_ref().to_ascii_lowercase();
            if let Err(e) = check_pattern(&p) {
                err(
                    a.span(),
                    format!("address space `{}`: {e}", a.get_ref()),
                    "write a domain, *.domain or *",
                );
            } else if let Some(other) = spaces.insert(p.clone(), name.clone()) {
                err(
                    a.span(),
                    format!("address space `{p}` is served by `{other}` and `{name}`"),
                    "each address space belongs to one send connector",
                );
            }
        }
        for h in &c.smart_hosts {
            if crate::smtp::outbound::route::parse_smart_host(h.get_ref(), c.port).is_none() {
                err(
                    h.span(),
                    format!(
                        "smart host `{}` is not host, host:port or [ip]:port",
                        h.get_ref()
                    ),
                    "e.g. \"relay.example.test\", \"relay.example.test:587\" or \"[192.0.2.1]:25\"",
                );
            }
        }
        if c.max_connections_per_destination == 0 || c.max_messages_per_connection == 0 {
            err(
                c.name.span(),
                format!(
                    "send connector `{name}`: max_connections_per_destination and max_messages_per_connection must be at least 1"
                ),
                "remove the key to use the default",
            );
        }
        let fps = c
            .fingerprints
            .iter()
            .chain(c.tls_domain.iter().flat_map(|d| d.fingerprints.iter()));
        for f in fps {
            if parse_fingerprint(f).is_none() {
                err(
                    c.name.span(),
                    format!(
                        "send connector `{name}`: fingerprint `{f}` is not a SHA-256 thumbprint"
                    ),
                    "64 hex digits, colons allowed (openssl x509 -noout -fingerprint -sha256)",
                );
            }
        }
        let pins_missing = (c.tls == TlsLevel::Fingerprint && c.fingerprints.is_empty())
            || c.tls_domain.iter().any(|d| {
                d.tls == TlsLevel::Fingerprint
                    && d.fingerprints.is_empty()
                    && c.fingerprints.is_empty()
            });
        if pins_missing {
            err(
                c.name.span(),
                format!("send connector `{name}`: tls = \"fingerprint\" without fingerprints"),
                "add fingerprints = [\"<sha256 hex>\"]",
            );
        }
        if c.smart_hosts.is_empty() && c.auth_file.is_some() {
            err(
                c.name.span(),
                format!("send connector `{name}`: auth_file is set but there are no smart hosts"),
                "AUTH credentials are only sent to smart hosts; add smart_hosts or remove auth_file",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigSource, DEFAULT_CONFIG, TlsLevel};

    fn parse(extra: &str) -> Result<Config, String> {
        let text = format!("{DEFAULT_CONFIG}\n{extra}");
        Config::from_source(&ConfigSource {
            name: "t.toml".into(),
            text,
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn embedded_default_has_no_send_connector_and_defaults_are_postfix_like() {
        let cfg = parse("").unwrap();
        assert!(cfg.send_connector.is_empty());
        assert_eq!(cfg.queue.first_retry.0.as_secs(), 300);
        assert_eq!(cfg.queue.max_retry_interval.0.as_secs(), 3600);
        assert_eq!(cfg.queue.expire_after.0.as_secs(), 2 * 86_400);
        assert_eq!(cfg.queue.delay_dsn_after.0.as_secs(), 4 * 3600);
    }

    #[test]
    fn a_full_connector_parses() {
        let cfg = parse(
            "[[send_connector]]\nname = \"Out\"\naddress_spaces = [\"*\", \"*.example.net\"]\nsmart_hosts = [\"relay.example.net:587\", \"[192.0.2.1]\"]\ntls = \"fingerprint\"\nfingerprints = [\"AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\"]\n[[send_connector.tls_domain]]\ndomain = \"bank.example\"\ntls = \"secure\"\n",
        )
        .unwrap();
        let c = &cfg.send_connector[0];
        assert_eq!(c.tls, TlsLevel::Fingerprint);
        assert_eq!(c.tls_domain[0].tls, TlsLevel::Secure);
        assert_eq!(c.max_connections_per_destination, 20);
    }

    #[test]
    fn bad_values_are_reported_with_their_position() {
        let extra = "[[send_connector]]\nname = \"Out\"\naddress_spaces = [\"exa mple\"]\nsmart_hosts = [\"host:99999\"]\n";
        let e = parse(extra).unwrap_err();
        let base = DEFAULT_CONFIG.lines().count() + 1;
        assert!(e.contains(&format!("t.toml:{}:", base + 3)), "{e}");
        assert!(e.contains("address space `exa mple`"), "{e}");
        assert!(e.contains(&format!("t.toml:{}:", base + 4)), "{e}");
        assert!(e.contains("smart host `host:99999`"), "{e}");
    }

    #[test]
    fn duplicate_space_unknown_level_and_missing_pins_are_errors() {
        let e = parse("[[send_connector]]\nname = \"A\"\naddress_spaces = [\"*\"]\n[[send_connector]]\nname = \"B\"\naddress_spaces = [\"*\"]\ntls = \"fingerprint\"\n").unwrap_err();
        assert!(
            e.contains("address space `*` is served by `A` and `B`"),
            "{e}"
        );
        assert!(e.contains("without fingerprints"), "{e}");
        let e = parse(
            "[[send_connector]]\nname = \"A\"\naddress_spaces = [\"*\"]\ntls = \"opportunistic\"\n",
        )
        .unwrap_err();
        assert!(e.contains("unknown variant `opportunistic`"), "{e}");
    }
}
