//! Configuration: schema, embedded default, validation with file:line:col
//! errors.
//!
//! One TOML file. Unknown keys are errors (`deny_unknown_fields`
//! everywhere) because a misspelt limit that silently falls back to its
//! default is the kind of failure operators find months later. Values are
//! typed (`values`) so a bad size, duration, network or domain is reported
//! at its exact position; cross-field rules (duplicate names, mailboxes for
//! domains that are not accepted, ...) run after parsing and point at the
//! offending value through `toml::Spanned`.
//!
//! `Config::load` picks the source: `--config FILE`, else `./gatehouse.toml`,
//! else the embedded default (`default.toml`).

mod diagnostics;
mod proxy;
pub mod send;
pub mod values;

pub use diagnostics::{ConfigError, ConfigErrors};
pub use proxy::{
    BackendPoolConfig, BackendServerConfig, HealthCheckConfig, ProxyConfig, RouteConfig,
};
pub use send::{DnsConfig, SendConnectorConfig, TlsLevel};
pub use values::{ByteSize, Cidr, DomainName, HumanDuration};

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The embedded default configuration (loopback only, data under ./var).
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Where the configuration text came from; used in error messages.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    /// Shown in errors: a path, or `<embedded default>`.
    pub name: String,
    pub text: String,
}

impl ConfigSource {
    /// Chooses the file per the rule above. `explicit` is `--config`.
    pub fn discover(explicit: Option<&Path>) -> Result<ConfigSource, ConfigErrors> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let local = PathBuf::from("gatehouse.toml");
                local.exists().then_some(local)
            }
        };
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    ConfigErrors::single(ConfigError::without_position(
                        p.display().to_string(),
                        format!("cannot read the configuration file: {e}"),
                        "check the path given to --config and the file's permissions",
                    ))
                })?;
                Ok(ConfigSource {
                    name: p.display().to_string(),
                    text,
                })
            }
            None => Ok(ConfigSource::embedded()),
        }
    }

    pub fn embedded() -> ConfigSource {
        ConfigSource {
            name: "<embedded default>".into(),
            text: DEFAULT_CONFIG.into(),
        }
    }
}

/// The whole validated configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub protocol_log: ProtocolLogSettings,
    #[serde(default)]
    pub receive_connector: Vec<ReceiveConnectorConfig>,
    #[serde(default)]
    pub accepted_domain: Vec<AcceptedDomainConfig>,
    #[serde(default)]
    pub mailbox: Vec<MailboxConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub events: EventsConfig,
    /// The loopback admin API; off when the section is absent.
    pub admin: Option<AdminConfig>,
    /// Outbound routes; none by default (relay mail waits in the queue).
    #[serde(default)]
    pub send_connector: Vec<SendConnectorConfig>,
    #[serde(default)]
    pub dns: DnsConfig,
    /// Client-access HTTPS proxy listeners (`proxy.rs`).
    #[serde(default)]
    pub proxy: Vec<ProxyConfig>,
    #[serde(default)]
    pub backend_pool: Vec<BackendPoolConfig>,
}

/// Event levels, rate limiting and the JSON lines file (SPEC 2.7).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Level of the categories not listed in `levels`.
    #[serde(default = "default_event_level")]
    pub default_level: crate::events::Verbosity,
    /// Per category, e.g. `Tls = "Expert"` (Set-EventLogLevel scale).
    #[serde(default)]
    pub levels: std::collections::BTreeMap<crate::events::Category, crate::events::Verbosity>,
    /// Repeats of the same event inside this window are counted, not
    /// written; "0s" turns rate limiting off.
    #[serde(default = "default_rate_limit_window")]
    pub rate_limit_window: HumanDuration,
    /// Events kept in memory for GET /events.
    #[serde(default = "default_event_history")]
    pub history: usize,
    /// Write events as JSON lines.
    #[serde(default = "default_true")]
    pub jsonl: bool,
    /// Default: `<data_dir>/log/events.jsonl`.
    pub jsonl_path: Option<PathBuf>,
    #[serde(default = "default_log_file_size")]
    pub jsonl_max_file_size: ByteSize,
    /// Rotated files kept besides the live one.
    #[serde(default = "default_jsonl_keep")]
    pub jsonl_keep: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            default_level: default_event_level(),
            levels: Default::default(),
            rate_limit_window: default_rate_limit_window(),
            history: default_event_history(),
            jsonl: true,
            jsonl_path: None,
            jsonl_max_file_size: default_log_file_size(),
            jsonl_keep: default_jsonl_keep(),
        }
    }
}

impl EventsConfig {
    /// The configured level of `c`.
    pub fn level_of(&self, c: crate::events::Category) -> crate::events::Verbosity {
        self.levels.get(&c).copied().unwrap_or(self.default_level)
    }
}

fn default_event_level() -> crate::events::Verbosity {
    crate::events::Verbosity::Low
}
fn default_rate_limit_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_event_history() -> usize {
    1024
}
fn default_jsonl_keep() -> usize {
    5
}

/// The admin API (SPEC 2.11): loopback only, bearer token from a file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<SocketAddr>,
    /// Default: `<data_dir>/admin.token`, created (0600) at first start.
    pub token_file: Option<PathBuf>,
}

fn default_admin_listen() -> Spanned<SocketAddr> {
    Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 9925)))
}

/// SMTP AUTH settings shared by the connectors that offer AUTH.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `name:argon2-hash` lines; default `<data_dir>/users`. Managed with
    /// `gatehouse user add|remove|list`.
    pub users_file: Option<PathBuf>,
    /// Wait before answering a failed AUTH (Exchange: AuthTarpitInterval).
    #[serde(default = "default_auth_failure_delay")]
    pub failure_delay: HumanDuration,
    /// Failed AUTHs from one address (IPv6: one /64), within
    /// `lockout_window`, that refuse its AUTH for `lockout_duration`
    /// (454 4.7.0, no password checked); 0 turns the lockout off.
    #[serde(default = "default_lockout_threshold")]
    pub lockout_threshold: u32,
    #[serde(default = "default_lockout_window")]
    pub lockout_window: HumanDuration,
    #[serde(default = "default_lockout_duration")]
    pub lockout_duration: HumanDuration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users_file: None,
            failure_delay: default_auth_failure_delay(),
            lockout_threshold: default_lockout_threshold(),
            lockout_window: default_lockout_window(),
            lockout_duration: default_lockout_duration(),
        }
    }
}
fn default_lockout_threshold() -> u32 {
    10
}
fn default_lockout_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_lockout_duration() -> HumanDuration {
    HumanDuration(Duration::from_secs(900))
}
fn default_auth_failure_delay() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// FQDN used in the banner, EHLO reply and Received: headers.
    #[serde(default = "system_hostname")]
    pub hostname: Spanned<DomainName>,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: HumanDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: system_hostname(),
            data_dir: default_data_dir(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

fn system_hostname() -> Spanned<DomainName> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|s| s.trim().parse::<DomainName>().ok())
        .unwrap_or_else(|| "localhost".parse().expect("valid literal"));
    Spanned::new(0..0, name)
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./var")
}
fn default_shutdown_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// Queue tuning. Durability is not configurable: every 250 follows an fsync.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Size at which the journal starts a new segment file.
    #[serde(default = "default_segment_size")]
    pub segment_size: ByteSize,
    /// Concurrent local deliveries.
    #[serde(default = "default_delivery_workers")]
    pub delivery_workers: usize,
    /// Wait before retrying a delivery that failed temporarily.
    #[serde(default = "default_retry_after")]
    pub retry_after: HumanDuration,
    /// First outbound retry after a temporary failure (Postfix
    /// minimal_backoff_time 300 s); doubled per try up to
    /// `max_retry_interval`, with ±10 % jitter.
    #[serde(default = "send::default_first_retry")]
    pub first_retry: HumanDuration,
    #[serde(default = "send::default_max_retry")]
    pub max_retry_interval: HumanDuration,
    /// Give up and send a failure DSN (Exchange MessageExpirationTimeout).
    #[serde(default = "send::default_expire")]
    pub expire_after: HumanDuration,
    /// Send a delay DSN once a recipient has waited this long (Exchange
    /// DelayNotificationTimeout 4 h); `delay_dsn = false` turns it off.
    #[serde(default = "send::default_delay_dsn")]
    pub delay_dsn_after: HumanDuration,
    #[serde(default = "default_true")]
    pub delay_dsn: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            segment_size: default_segment_size(),
            delivery_workers: default_delivery_workers(),
            retry_after: default_retry_after(),
            first_retry: send::default_first_retry(),
            max_retry_interval: send::default_max_retry(),
            expire_after: send::default_expire(),
            delay_dsn_after: send::default_delay_dsn(),
            delay_dsn: true,
        }
    }
}
fn default_segment_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_delivery_workers() -> usize {
    16
}
fn default_retry_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

/// Protocol log (Exchange CSV) location and retention. Defaults follow the
/// Exchange transport service: 10 MB files, 30 days, 250 MB per directory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolLogSettings {
    /// Default: `<data_dir>/log/protocol`.
    pub dir: Option<PathBuf>,
    #[serde(default = "default_log_file_size")]
    pub max_file_size: ByteSize,
    #[serde(default = "default_log_age")]
    pub max_age: HumanDuration,
    #[serde(default = "default_log_dir_size")]
    pub max_dir_size: ByteSize,
}

impl Default for ProtocolLogSettings {
    fn default() -> Self {
        ProtocolLogSettings {
            dir: None,
            max_file_size: default_log_file_size(),
            max_age: default_log_age(),
            max_dir_size: default_log_dir_size(),
        }
    }
}
fn default_log_file_size() -> ByteSize {
    ByteSize(10_000_000)
}
fn default_log_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 86_400))
}
fn default_log_dir_size() -> ByteSize {
    ByteSize(250_000_000)
}

/// The job of a receive connector (SPEC 2.1).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorRole {
    /// Port 25 style: STARTTLS offered, anonymous mail for accepted domains.
    Smtp,
    /// Port 587: TLS and AUTH before MAIL.
    Submission,
    /// Port 465: TLS from the first byte.
    Smtps,
}

/// One named SMTP listener with its own limits and policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveConnectorConfig {
    pub name: Spanned<String>,
    pub role: Spanned<ConnectorRole>,
    pub listen: Vec<Spanned<SocketAddr>>,
    /// Name in the banner and EHLO reply; default `server.hostname`.
    pub fqdn: Option<DomainName>,
    /// Text after `220 <fqdn> ` in the greeting.
    pub banner: Option<String>,
    #[serde(default = "default_max_message_size")]
    pub max_message_size: ByteSize,
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Protocol errors before the session is dropped with 421.
    #[serde(default = "default_max_errors")]
    pub max_errors: usize,
    /// Networks that may relay to any domain without authenticating.
    #[serde(default)]
    /// Parsed (and checked) in `validate`, where each element's own span
    /// is known; read them through `relay_networks()`.
    pub relay_networks: Vec<Spanned<String>>,
    /// Wait for the next command (RFC 5321 §4.5.3.2 asks for 5 minutes).
    #[serde(default = "default_command_timeout")]
    pub command_timeout: HumanDuration,
    /// Wait for the next block of message data (RFC 5321: 3 minutes).
    #[serde(default = "default_data_timeout")]
    pub data_timeout: HumanDuration,
    /// Longest a whole session may last (Exchange ConnectionTimeout).
    #[serde(default = "default_connection_timeout")]
    pub connection_timeout: HumanDuration,
    /// Offer STARTTLS (`smtp` role). `smtps` always uses TLS.
    #[serde(default = "default_true")]
    pub tls: bool,
    /// Offer AUTH PLAIN/LOGIN after TLS. Default: on for `submission` and
    /// `smtps`, off for `smtp`.
    pub auth: Option<bool>,
    /// Refuse MAIL (530 5.7.0) until the client has done STARTTLS. Do not
    /// set this on a publicly listed MX (RFC 3207 §4).
    #[serde(default)]
    pub require_tls: bool,
    /// Write this connector's sessions to the SMTP receive protocol log.
    #[serde(default = "default_true")]
    pub protocol_log: bool,
}

fn default_max_message_size() -> ByteSize {
    ByteSize(36 << 20)
}
fn default_max_recipients() -> usize {
    200
}
fn default_max_connections() -> usize {
    5000
}
fn default_max_connections_per_ip() -> usize {
    20
}
fn default_max_errors() -> usize {
    10
}
fn default_command_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_data_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(180))
}
fn default_connection_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_true() -> bool {
    true
}

impl ReceiveConnectorConfig {
    /// Whether this connector offers AUTH (after TLS).
    pub fn offers_auth(&self) -> bool {
        self.auth.unwrap_or(matches!(
            self.role.get_ref(),
            ConnectorRole::Submission | ConnectorRole::Smtps
        ))
    }

    /// The relay networks, parsed. Invalid entries were refused by
    /// `Config::validate`, so none are dropped here in a loaded config.
    pub fn relay_networks(&self) -> Vec<Cidr> {
        self.relay_networks
            .iter()
            .filter_map(|n| n.get_ref().parse().ok())
            .collect()
    }
}

/// Authoritative: we hold the mailboxes. Relay: we accept and pass on.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    Authoritative,
    Relay,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptedDomainConfig {
    pub domain: Spanned<DomainName>,
    #[serde(rename = "type")]
    pub kind: DomainType,
}

/// What happens to mail for a mailbox once it is durably queued.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMethod {
    #[default]
    Maildir,
    /// Accepted durably, then dropped: for benchmarks and sinks.
    Discard,
}

/// A local mailbox: a Maildir under `<data_dir>/mail/<name>/`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxConfig {
    pub name: Spanned<String>,
    /// `user@domain`, or `@domain` for every local part of that domain.
    pub addresses: Vec<Spanned<String>>,
    #[serde(default)]
    pub delivery: DeliveryMethod,
}

impl Config {
    /// Parses and validates `source`, collecting every error found.
    pub fn from_source(source: &ConfigSource) -> Result<Config, ConfigErrors> {
        let cfg: Config = toml::from_str(&source.text)
            .map_err(|e| ConfigErrors::single(ConfigError::from_toml(source, &e)))?;
        let errors = cfg.validate(source);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// `--config FILE`, else ./gatehouse.toml, else the embedded default.
    pub fn load(explicit: Option<&Path>) -> Result<(Config, ConfigSource), ConfigErrors> {
        let source = ConfigSource::discover(explicit)?;
        let cfg = Config::from_source(&source)?;
        Ok((cfg, source))
    }

    fn validate(&self, src: &ConfigSource) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let mut err = |span: std::ops::Range<usize>, msg: String, hint: &str| {
            errs.push(ConfigError::at(src, span, msg, hint));
        };

        if self.receive_connector.is_empty() {
            err(
                0..0,
                "no [[receive_connector]] is configured".into(),
                "add at least one, e.g. [[receive_connector]] name = \"Default\" role = \"smtp\" listen = [\"127.0.0.1:2525\"]",
            );
        }
        let mut names = std::collections::HashSet::new();
        let mut binds = std::collections::HashSet::new();
        for c in &self.receive_connector {
            if c.name.get_ref().trim().is_empty()
                || c.name.get_ref().contains([',', '"', '\n', '\\'])
            {
                err(
                    c.name.span(),
                    format!(
                        "connector name `{}` is empty or contains , \" \\ or a newline",
                        c.name.get_ref()
                    ),
                    "use a plain name such as \"Default\" (it appears in protocol logs)",
                );
            }
            if !names.insert(c.name.get_ref().to_ascii_lowercase()) {
                err(
                    c.name.span(),
                    format!("connector name `{}` is used twice", c.name.get_ref()),
                    "give every [[receive_connector]] its own name",
                );
            }
            if *c.role.get_ref() == ConnectorRole::Smtps && !c.tls {
                err(
                    c.role.span(),
                    format!(
                        "connector `{}` has role \"smtps\" but tls = false",
                        c.name.get_ref()
                    ),
                    "smtps is TLS from the first byte; remove tls = false or use role = \"smtp\"",
                );
            }
            if c.require_tls && !c.tls {
                err(
                    c.name.span(),
                    format!(
                        "connector `{}`: require_tls = true but tls = false",
                        c.name.get_ref()
                    ),
                    "clients could never send mail; enable tls or drop require_tls",
                );
            }
            if *c.role.get_ref() == ConnectorRole::Submission && (!c.tls || c.auth == Some(false)) {
                err(
                    c.role.span(),
                    format!(
                        "connector `{}` has role \"submission\" but TLS or AUTH is turned off",
                        c.name.get_ref()
                    ),
                    "submission needs STARTTLS and AUTH before MAIL (RFC 6409); remove tls = false / auth = false",
                );
            }
            if c.auth == Some(true) && !c.tls {
                err(
                    c.name.span(),
                    format!(
                        "connector `{}`: auth = true but tls = false",
                        c.name.get_ref()
                    ),
                    "AUTH PLAIN and LOGIN are only offered over TLS; enable tls",
                );
            }
            if c.listen.is_empty() {
                err(
                    c.name.span(),
                    format!("connector `{}` has no listen addresses", c.name.get_ref()),
                    "add listen = [\"127.0.0.1:2525\"]",
                );
            }
            for n in &c.relay_networks {
                if let Err(e) = n.get_ref().parse::<Cidr>() {
                    err(
                        n.span(),
                        e,
                        "write a network as \"192.0.2.0/24\", \"2001:db8::/32\" or a single address",
                    );
                }
            }
            for l in &c.listen {
                if l.get_ref().port() != 0 && !binds.insert(*l.get_ref()) {
                    err(
                        l.span(),
                        format!("{} is bound by two connectors", l.get_ref()),
                        "each address:port may belong to one connector",
                    );
                }
            }
            if c.max_message_size.0 < 65_536 {
                err(
                    0..0,
                    format!(
                        "connector `{}`: max_message_size below 64 KiB",
                        c.name.get_ref()
                    ),
                    "RFC 5321 needs room for real messages; Exchange's minimum is 65536 bytes",
                );
            }
            if c.max_recipients < 100 {
                err(
                    c.name.span(),
                    format!(
                        "connector `{}`: max_recipients = {} is below the RFC 5321 minimum of 100",
                        c.name.get_ref(),
                        c.max_recipients
                    ),
                    "RFC 5321 §4.5.3.1.8 requires accepting at least 100 recipients per message",
                );
            }
            if c.max_connections == 0 || c.max_connections_per_ip == 0 || c.max_errors == 0 {
                err(
                    c.name.span(),
                    format!(
                        "connector `{}`: max_connections, max_connections_per_ip and max_errors must be at least 1",
                        c.name.get_ref()
                    ),
                    "remove the key to use the default",
                );
            }
        }

        if let Some(a) = &self.admin
            && !a.listen.get_ref().ip().is_loopback()
        {
            err(
                a.listen.span(),
                format!(
                    "admin API address {} is not a loopback address",
                    a.listen.get_ref()
                ),
                "the admin API can reload the configuration: keep it on 127.0.0.1 or [::1] and reach it over SSH",
            );
        }
        if self.events.history == 0 || self.events.history > 1_000_000 {
            err(
                0..0,
                format!("[events] history = {} is out of range", self.events.history),
                "keep between 1 and 1000000 events in memory (default 1024)",
            );
        }
        if self.events.jsonl_max_file_size.0 < 4096 {
            err(
                0..0,
                "[events] jsonl_max_file_size below 4 KiB".into(),
                "remove the key to use the default (10 MB)",
            );
        }

        send::validate(&self.send_connector, src, &mut errs);
        let mut err = |span: std::ops::Range<usize>, msg: String, hint: &str| {
            errs.push(ConfigError::at(src, span, msg, hint));
        };
        let mut domains = std::collections::HashMap::new();
        for d in &self.accepted_domain {
            if domains.insert(d.domain.get_ref().clone(), d.kind).is_some() {
                err(
                    d.domain.span(),
                    format!("accepted domain `{}` is listed twice", d.domain.get_ref()),
                    "keep one [[accepted_domain]] entry per domain",
                );
            }
        }
        let mut mailbox_names = std::collections::HashSet::new();
        let mut addresses = std::collections::HashSet::new();
        for m in &self.mailbox {
            let name = m.name.get_ref();
            if name.is_empty()
                || name.len() > 64
                || name.starts_with('.')
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                err(
                    m.name.span(),
                    format!("mailbox name `{name}` is not a safe directory name"),
                    "use letters, digits, '.', '_' and '-' (it becomes <data_dir>/mail/<name>)",
                );
            }
            if !mailbox_names.insert(name.clone()) {
                err(
                    m.name.span(),
                    format!("mailbox `{name}` is defined twice"),
                    "merge the two entries",
                );
            }
            for a in &m.addresses {
                let addr = a.get_ref().to_ascii_lowercase();
                let Some((local, domain)) = addr.rsplit_once('@') else {
                    err(
                        a.span(),
                        format!("`{}` is not an address", a.get_ref()),
                        "write user@domain, or @domain for a catch-all",
                    );
                    continue;
                };
                match domain.parse::<DomainName>() {
                    Err(e) => err(
                        a.span(),
                        format!("`{}`: {e}", a.get_ref()),
                        "the part after @ must be a domain name",
                    ),
                    Ok(d) => match domains.get(&d) {
                        Some(DomainType::Authoritative) => {}
                        Some(DomainType::Relay) => err(
                            a.span(),
                            format!(
                                "`{}` belongs to `{d}`, which is a relay domain",
                                a.get_ref()
                            ),
                            "mailboxes need type = \"authoritative\"; change the [[accepted_domain]] entry or remove this address",
                        ),
                        None => err(
                            a.span(),
                            format!(
                                "`{}` belongs to `{d}`, which is not an accepted domain",
                                a.get_ref()
                            ),
                            "add [[accepted_domain]] domain = \"...\" type = \"authoritative\"",
                        ),
                    },
                }
                if local.contains(['@', ' ', '"', '\\', '%', '!']) || local.len() > 64 {
                    err(
                        a.span(),
                        format!("local part of `{}` is not a plain local part", a.get_ref()),
                        "mailbox addresses use plain local parts (letters, digits, . _ + -)",
                    );
                }
                if !addresses.insert(addr.clone()) {
                    err(
                        a.span(),
                        format!("`{}` is mapped to two mailboxes", a.get_ref()),
                        "each address belongs to one mailbox",
                    );
                }
            }
        }
        proxy::validate(&self.proxy, &self.backend_pool, &mut binds, src, &mut errs);
        errs
    }

    /// Where the journal lives.
    pub fn queue_dir(&self) -> PathBuf {
        self.server.data_dir.join("queue")
    }
    /// Where the AUTH users file lives.
    pub fn users_file(&self) -> PathBuf {
        self.auth
            .users_file
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("users"))
    }
    /// Where Maildirs live.
    pub fn mail_dir(&self) -> PathBuf {
        self.server.data_dir.join("mail")
    }
    /// Where the admin API's bearer token lives.
    pub fn admin_token_file(&self) -> PathBuf {
        self.admin
            .as_ref()
            .and_then(|a| a.token_file.clone())
            .unwrap_or_else(|| self.server.data_dir.join("admin.token"))
    }
    /// Where the protocol logs live.
    pub fn protocol_log_dir(&self) -> PathBuf {
        self.protocol_log
            .dir
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("log").join("protocol"))
    }

    /// Opens the protocol log of `kind` in `<protocol log dir>/<sub>`,
    /// with the `[protocol_log]` size and age limits.
    pub fn open_protocol_log(
        &self,
        kind: crate::protolog::LogKind,
        sub: &str,
    ) -> std::io::Result<crate::protolog::ProtocolLog> {
        crate::protolog::ProtocolLog::open(
            kind,
            crate::protolog::ProtocolLogConfig {
                dir: self.protocol_log_dir().join(sub),
                max_file_size: self.protocol_log.max_file_size.0,
                max_age: self.protocol_log.max_age.0,
                max_dir_size: self.protocol_log.max_dir_size.0,
            },
            crate::VERSION,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_source(&ConfigSource {
            name: "t.toml".into(),
            text: text.into(),
        })
    }

    #[test]
    fn embedded_default_is_valid() {
        let cfg = Config::from_source(&ConfigSource::embedded()).expect("default parses");
        assert_eq!(
            cfg.receive_connector[0].listen[0].get_ref().to_string(),
            "127.0.0.1:2525"
        );
        assert!(cfg.receive_connector[0].relay_networks.is_empty());
    }

    #[test]
    fn unknown_key_reports_line_column_and_suggestion() {
        let text = DEFAULT_CONFIG.replace(
            "relay_networks = []",
            "relay_networks = []\nmax_recipient = 5",
        );
        let e = parse(&text).unwrap_err();
        let shown = e.to_string();
        let line = text
            .lines()
            .position(|l| l.starts_with("max_recipient"))
            .unwrap()
            + 1;
        assert!(shown.contains(&format!("t.toml:{line}:1")), "{shown}");
        assert!(shown.contains("unknown field `max_recipient`"), "{shown}");
        assert!(shown.contains("did you mean `max_recipients`"), "{shown}");
    }

    #[test]
    fn bad_value_points_at_the_value() {
        let text =
            DEFAULT_CONFIG.replace("relay_networks = []", "relay_networks = [\"10.0.0.0/40\"]");
        let shown = parse(&text).unwrap_err().to_string();
        assert!(shown.contains("prefix length"), "{shown}");
        let line = text
            .lines()
            .position(|l| l.contains("10.0.0.0/40"))
            .unwrap()
            + 1;
        assert!(shown.contains(&format!("t.toml:{line}:")), "{shown}");
    }

    #[test]
    fn mailbox_for_unaccepted_domain_is_an_error() {
        let text =
            DEFAULT_CONFIG.replace("\"@example.test\"]", "\"@example.test\", \"x@other.test\"]");
        let shown = parse(&text).unwrap_err().to_string();
        assert!(shown.contains("not an accepted domain"), "{shown}");
    }

    #[test]
    fn events_levels_parse_and_unknown_category_is_located() {
        let cfg = parse(&DEFAULT_CONFIG.replace(
            "levels = { Tls = \"Low\" }",
            "levels = { Tls = \"Expert\", Certificates = \"Medium\" }",
        ))
        .unwrap();
        use crate::events::{Category, Verbosity};
        assert_eq!(cfg.events.level_of(Category::Tls), Verbosity::Expert);
        assert_eq!(
            cfg.events.level_of(Category::Certificates),
            Verbosity::Medium
        );
        assert_eq!(cfg.events.level_of(Category::Queue), Verbosity::Low);
        let text =
            DEFAULT_CONFIG.replace("levels = { Tls = \"Low\" }", "levels = { Tsl = \"Low\" }");
        let shown = parse(&text).unwrap_err().to_string();
        let line = text.lines().position(|l| l.contains("Tsl")).unwrap() + 1;
        assert!(shown.contains(&format!("t.toml:{line}:")), "{shown}");
        assert!(shown.contains("Tsl"), "{shown}");
    }

    #[test]
    fn admin_must_listen_on_loopback() {
        let text =
            DEFAULT_CONFIG.replace("listen = \"127.0.0.1:9925\"", "listen = \"0.0.0.0:9925\"");
        let shown = parse(&text).unwrap_err().to_string();
        assert!(shown.contains("is not a loopback address"), "{shown}");
        let cfg = parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(cfg.admin.unwrap().listen.get_ref().port(), 9925);
    }

    #[test]
    fn collects_several_semantic_errors() {
        let text =
            format!("{DEFAULT_CONFIG}\n[[mailbox]]\nname = \"../x\"\naddresses = [\"nobody\"]\n");
        let e = parse(&text).unwrap_err();
        assert!(e.0.len() >= 2, "{e}");
    }
}
