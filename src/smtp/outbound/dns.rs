//! Next-hop resolution for MX routing (RFC 5321 §5.1) with hickory.
//!
//! `mx_targets(domain)`:
//! * MX records sorted by preference (ties keep the resolver's order),
//!   each exchange resolved to its A/AAAA addresses;
//! * no MX record but the name exists: the domain itself is the implicit
//!   MX (§5.1, "implicit MX");
//! * a single MX with exchange `.`: null MX (RFC 7505 §3), a permanent
//!   failure with 5.1.10;
//! * NXDOMAIN: permanent failure 5.1.2 (bad destination system);
//! * anything else (timeouts, SERVFAIL): temporary, 4.4.3.

use crate::config::DnsConfig;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use std::net::IpAddr;
use std::time::Duration;

/// Upper bound of MX hosts tried for one domain (Postfix smtp_mx_address_limit is 5 addresses; we count hosts).
const MAX_MX_HOSTS: usize = 10;

/// One host to try, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The MX host name (or smart host name): TLS `verify` checks it.
    pub host: String,
    pub addrs: Vec<IpAddr>,
}

/// Why a domain has no usable next hop.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsFailure {
    #[error("{domain} does not accept mail (null MX, RFC 7505)")]
    NullMx { domain: String },
    #[error("{domain} does not exist (NXDOMAIN)")]
    NoSuchDomain { domain: String },
    #[error("DNS lookup for {name} failed temporarily: {reason}")]
    Temporary { name: String, reason: String },
}

impl DnsFailure {
    pub fn is_permanent(&self) -> bool {
        !matches!(self, DnsFailure::Temporary { .. })
    }
    /// RFC 3463 / RFC 7505 enhanced status for the DSN.
    pub fn status(&self) -> &'static str {
        match self {
            DnsFailure::NullMx { .. } => "5.1.10",
            DnsFailure::NoSuchDomain { .. } => "5.1.2",
            DnsFailure::Temporary { .. } => "4.4.3",
        }
    }
}

/// A shared resolver (cheap to clone).
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// Uses `cfg.nameservers` (UDP and TCP, any port) or /etc/resolv.conf.
    pub fn new(cfg: &DnsConfig) -> Result<Dns, String> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(5);
        opts.attempts = 2;
        let builder = if cfg.nameservers.is_empty() {
            let mut b = TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))?;
            *b.options_mut() = opts;
            b
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|sa| {
                    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                    for c in &mut ns.connections {
                        c.port = sa.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
            .with_options(opts)
        };
        let resolver = builder.build().map_err(|e| e.to_string())?;
        Ok(Dns { resolver })
    }

    /// The hosts to try for `domain`, best first.
    pub async fn mx_targets(&self, domain: &str) -> Result<Vec<Target>, DnsFailure> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let mut exchanges: Vec<(u16, String)> = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_nx_domain() => {
                return Err(DnsFailure::NoSuchDomain {
                    domain: domain.to_string(),
                });
            }
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => {
                return Err(DnsFailure::Temporary {
                    name: domain.to_string(),
                    reason: e.to_string(),
                });
            }
        };
        if exchanges.len() == 1 && exchanges.iter().all(|(_, h)| h == "." || h.is_empty()) {
            return Err(DnsFailure::NullMx {
                domain: domain.to_string(),
            });
        }
        // RFC 7505 §4.3: a null MX next to real ones is a misconfiguration;
        // ignore the "." entry and use the rest.
        exchanges.retain(|(_, h)| h != "." && !h.is_empty());
        if exchanges.is_empty() {
            // RFC 5321 §5.1: no MX, the domain itself is the host.
            let addrs = self.addresses(domain).await?;
            return Ok(vec![Target {
                host: domain.to_string(),
                addrs,
            }]);
        }
        // RFC 5321 §5.1: hosts of equal preference are tried in random
        // order, so load spreads across them.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos() as u64;
        exchanges.sort_by_key(|(p, h)| {
            let mix = h.bytes().fold(seed ^ 0x9E37_79B9_7F4A_7C15, |a, b| {
                (a ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
            });
            (*p, mix)
        });
        exchanges.truncate(MAX_MX_HOSTS);
        let mut targets = Vec::new();
        let mut last_err = None;
        for (_, host) in exchanges {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            match self.addresses(&host).await {
                Ok(addrs) => targets.push(Target { host, addrs }),
                Err(e) => last_err = Some(e),
            }
        }
        if targets.is_empty() {
            // An MX host that does not resolve is not a permanent
            // failure of the domain (the zone may be mid-change).
            return Err(match last_err {
                Some(DnsFailure::Temporary { name, reason }) => {
                    DnsFailure::Temporary { name, reason }
                }
                Some(e) => DnsFailure::Temporary {
                    name: domain.to_string(),
                    reason: format!("no MX host resolves: {e}"),
                },
                None => DnsFailure::Temporary {
                    name: domain.to_string(),
                    reason: "no MX host resolves".into(),
                },
            });
        }
        Ok(targets)
    }

    /// A and AAAA addresses of `host`.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsFailure> {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(l) => {
                let addrs: Vec<IpAddr> = l.iter().collect();
                if addrs.is_empty() {
                    Err(DnsFailure::Temporary {
                        name: host.to_string(),
                        reason: "no A or AAAA record".into(),
                    })
                } else {
                    Ok(addrs)
                }
            }
            Err(e) if e.is_nx_domain() => Err(DnsFailure::NoSuchDomain {
                domain: host.to_string(),
            }),
            Err(e) if e.is_no_records_found() => Err(DnsFailure::NoSuchDomain {
                domain: host.to_string(),
            }),
            Err(e) => Err(DnsFailure::Temporary {
                name: host.to_string(),
                reason: e.to_string(),
            }),
        }
    }
}
