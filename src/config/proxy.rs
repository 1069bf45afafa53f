//! `[[proxy]]` listeners and `[[backend_pool]]`s of the client-access HTTPS
//! proxy (SPEC 2.9, `docs/proxy.md`).
//!
//! A proxy listener owns its routes (`[[proxy.route]]`, path prefixes
//! matched case-insensitively, longest first) and each route names a pool.
//! Pools are shared between listeners: one set of servers, one health
//! state, one trust policy per pool.

use super::values::{ByteSize, HumanDuration};
use super::{ConfigError, ConfigSource};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// One HTTPS listener of the proxy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    pub name: Spanned<String>,
    pub listen: Vec<Spanned<SocketAddr>>,
    /// Name certificates are looked up by when the client sends no SNI;
    /// default `server.hostname`.
    pub fqdn: Option<super::DomainName>,
    /// Largest request head (request line + headers). HTTP/1.1 answers
    /// 431 beyond it, HTTP/2 refuses the stream.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Most header fields in one request (431 beyond).
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Default request body limit of this listener's routes (413 beyond).
    #[serde(default = "default_max_body_size")]
    pub max_body_size: ByteSize,
    /// Body limit for `RPC_IN_DATA`/`RPC_OUT_DATA` (Outlook Anywhere
    /// declares channels of up to 1 GiB).
    #[serde(default = "default_max_rpc_body_size")]
    pub max_rpc_body_size: ByteSize,
    /// How long a kept-alive connection may wait for its next request,
    /// and how long a request head may take to arrive.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// How long the backend may take to answer with a response head.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// An RPC over HTTP channel (or any body) with no data in either
    /// direction for this long is closed.
    #[serde(default = "default_channel_idle_timeout")]
    pub channel_idle_timeout: HumanDuration,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Write the HttpProxy CSV log for this listener.
    #[serde(default = "super::default_true")]
    pub log: bool,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
}

/// A path prefix (an Exchange virtual directory) sent to a pool.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `/owa`, `/mapi`, ...; matched case-insensitively on whole segments.
    pub prefix: Spanned<String>,
    pub pool: Spanned<String>,
    /// Overrides the listener's `max_body_size`.
    pub max_body_size: Option<ByteSize>,
    /// Name in the HttpProxy log's Protocol column; default from the prefix.
    pub protocol: Option<String>,
}

/// A set of backend servers with one trust policy and one health check.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendPoolConfig {
    pub name: Spanned<String>,
    /// HTTPS to the backends (default). `false` is plain HTTP.
    #[serde(default = "super::default_true")]
    pub tls: bool,
    /// Seed 003 / Exchange's AllowInternalUntrustedCerts: turn certificate
    /// verification off for this pool only. Logged at start and counted.
    #[serde(default)]
    pub allow_internal_untrusted_certs: bool,
    /// Extra trusted CA certificates (PEM), on top of the store's CA
    /// certificates and the system roots.
    pub ca_file: Option<PathBuf>,
    /// Trust the operating system's roots (default true).
    #[serde(default = "super::default_true")]
    pub system_roots: bool,
    /// Send the server's `name` as Host instead of the client's Host.
    #[serde(default)]
    pub rewrite_host: bool,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Cookie carrying an anchor mailbox (besides `X-AnchorMailbox`).
    pub anchor_cookie: Option<String>,
    /// Query parameter carrying an anchor mailbox (e.g. `MailboxId`).
    pub anchor_query: Option<String>,
    /// Idle backend connections kept per server.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_server: usize,
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default, rename = "server")]
    pub servers: Vec<BackendServerConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendServerConfig {
    /// `host:port` or `ip:port` to connect to.
    pub address: Spanned<String>,
    /// Name verified in the backend's certificate (and the Host sent when
    /// `rewrite_host`); default: the host part of `address`.
    pub tls_name: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// Active health check: `GET path` every `interval`; a server goes down
/// after `fall` failures in a row and up after `rise` successes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub path: String,
    #[serde(default = "default_hc_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_hc_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_max_header_bytes() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_max_headers() -> usize {
    100
}
fn default_max_body_size() -> ByteSize {
    ByteSize(100 << 20)
}
fn default_max_rpc_body_size() -> ByteSize {
    ByteSize(1 << 30)
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}
fn default_channel_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(900))
}
fn default_max_connections() -> usize {
    10_000
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_max_idle() -> usize {
    64
}
fn default_weight() -> u32 {
    1
}
fn default_hc_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_hc_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

impl BackendServerConfig {
    /// `(host, port)` of `address`; `None` when it is not `host:port`.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let a = self.address.get_ref();
        if let Ok(sa) = a.parse::<SocketAddr>() {
            return Some((sa.ip().to_string(), sa.port()));
        }
        let (host, port) = a.rsplit_once(':')?;
        let port = port.parse().ok()?;
        (!host.is_empty() && !host.contains(['/', ' ', '[', ']'])).then(|| (host.to_string(), port))
    }

    /// The name verified in the certificate.
    pub fn tls_name(&self) -> String {
        self.tls_name.clone().unwrap_or_else(|| {
            self.host_port()
                .map(|(h, _)| h)
                .unwrap_or_else(|| self.address.get_ref().clone())
        })
    }
}

/// Checks the proxy sections; `binds` holds the addresses the receive
/// connectors already use.
pub(super) fn validate(
    proxies: &[ProxyConfig],
    pools: &[BackendPoolConfig],
    binds: &mut std::collections::HashSet<SocketAddr>,
    src: &ConfigSource,
    errs: &mut Vec<ConfigError>,
) {
    let mut err = |span: std::ops::Range<usize>, msg: String, hint: &str| {
        errs.push(ConfigError::at(src, span, msg, hint));
    };
    let mut pool_names = std::collections::HashSet::new();
    for p in pools {
        let name = p.name.get_ref();
        if name.trim().is_empty() || name.contains([',', '"', '\n', '\\']) {
            err(
                p.name.span(),
                format!("pool name `{name}` is empty or contains , \" \\ or a newline"),
                "use a plain name such as \"mailbox\" (it appears in logs)",
            );
        }
        if !pool_names.insert(name.to_ascii_lowercase()) {
            err(
                p.name.span(),
                format!("backend pool `{name}` is defined twice"),
                "give every [[backend_pool]] its own name",
            );
        }
        for s in &p.servers {
            if s.host_port().is_none() {
                err(
                    s.address.span(),
                    format!("`{}` is not host:port", s.address.get_ref()),
                    "write address = \"mbx1.example.test:443\" or \"192.0.2.10:443\"",
                );
            }
            if s.weight == 0 || s.weight > 1000 {
                err(
                    s.address.span(),
                    format!(
                        "server `{}`: weight {} is outside 1..=1000",
                        s.address.get_ref(),
                        s.weight
                    ),
                    "remove the key for weight 1",
                );
            }
        }
        if let Some(h) = &p.health_check
            && (!h.path.starts_with('/') || h.rise == 0 || h.fall == 0)
        {
            err(
                p.name.span(),
                format!(
                    "pool `{name}`: health_check needs a path starting with / and rise, fall >= 1"
                ),
                "e.g. health_check = { path = \"/healthcheck.htm\", interval = \"5s\" }",
            );
        }
    }
    let mut names = std::collections::HashSet::new();
    for p in proxies {
        if !names.insert(p.name.get_ref().to_ascii_lowercase()) {
            err(
                p.name.span(),
                format!("proxy name `{}` is used twice", p.name.get_ref()),
                "give every [[proxy]] its own name",
            );
        }
        if p.listen.is_empty() {
            err(
                p.name.span(),
                format!("proxy `{}` has no listen addresses", p.name.get_ref()),
                "add listen = [\"127.0.0.1:8443\"]",
            );
        }
        for l in &p.listen {
            if l.get_ref().port() != 0 && !binds.insert(*l.get_ref()) {
                err(
                    l.span(),
                    format!("{} is bound twice", l.get_ref()),
                    "each address:port may belong to one listener",
                );
            }
        }
        if p.max_header_bytes.0 < 8192 || p.max_headers == 0 || p.max_connections == 0 {
            err(
                p.name.span(),
                format!(
                    "proxy `{}`: max_header_bytes must be at least 8 KiB, max_headers and max_connections at least 1",
                    p.name.get_ref()
                ),
                "remove the keys to use the defaults (64 KiB, 100, 10000)",
            );
        }
        for r in &p.routes {
            if !r.prefix.get_ref().starts_with('/') {
                err(
                    r.prefix.span(),
                    format!(
                        "route prefix `{}` does not start with /",
                        r.prefix.get_ref()
                    ),
                    "write prefix = \"/owa\"",
                );
            }
            if !pool_names.contains(&r.pool.get_ref().to_ascii_lowercase()) {
                err(
                    r.pool.span(),
                    format!("route to unknown pool `{}`", r.pool.get_ref()),
                    "add a [[backend_pool]] with that name or fix the spelling",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigSource, DEFAULT_CONFIG};

    fn parse(extra: &str) -> Result<Config, String> {
        Config::from_source(&ConfigSource {
            name: "t.toml".into(),
            text: format!("{DEFAULT_CONFIG}\n{extra}"),
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn default_has_a_proxy_on_8443_routing_to_an_empty_pool() {
        let cfg = parse("").unwrap();
        assert_eq!(
            cfg.proxy[0].listen[0].get_ref().to_string(),
            "127.0.0.1:8443"
        );
        assert!(
            cfg.proxy[0]
                .routes
                .iter()
                .any(|r| r.prefix.get_ref() == "/rpc")
        );
        assert!(cfg.backend_pool[0].servers.is_empty());
    }

    #[test]
    fn route_to_unknown_pool_and_bad_server_point_at_the_value() {
        let text = "[[proxy]]\nname = \"P2\"\nlisten = [\"127.0.0.1:0\"]\n[[proxy.route]]\nprefix = \"/owa\"\npool = \"nope\"\n[[backend_pool]]\nname = \"b\"\n[[backend_pool.server]]\naddress = \"no-port\"\n";
        let e = parse(text).unwrap_err();
        let lines = DEFAULT_CONFIG.lines().count() + 1;
        assert!(e.contains("route to unknown pool `nope`"), "{e}");
        assert!(e.contains(&format!("t.toml:{}:", lines + 6)), "{e}");
        assert!(e.contains("`no-port` is not host:port"), "{e}");
    }

    #[test]
    fn unknown_proxy_key_is_an_error() {
        let e = parse("[[proxy]]\nname = \"P2\"\nlisten = []\nmax_header = 5\n").unwrap_err();
        assert!(e.contains("unknown field `max_header`"), "{e}");
    }
}
