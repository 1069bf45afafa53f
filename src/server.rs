//! Wires the parts into a running server: queue, protocol log, receive
//! connectors, the admin API. `main.rs` calls `start` and later
//! `shutdown`; the integration tests do the same in-process, on ephemeral
//! ports.
//!
//! Reload (`Live::reload`: SIGHUP, `gatehouse reload`, POST /reload):
//!
//! ```text
//! Config::load(origin) --errors--> refused, old config keeps running
//!     | ok
//!     v
//! compare with the config the listeners were started from
//!     structural (data_dir, hostname, [queue], [protocol_log], [auth],
//!     [admin], connectors added/removed, a connector's role/listen/tls/
//!     auth/fqdn) -> listed as "needs a restart", not applied
//!     the rest -> per connector a new ConnectorContext (policy with the
//!     new accepted domains and mailboxes, banner, limits, relay
//!     networks, timeouts) swapped into its ArcSwap slot: the next
//!     connection uses it, open sessions keep theirs
//!     [events] -> levels, rate limit, sinks
//!     certificates -> store re-read now (the 2 s watcher would too)
//! ```

use crate::admin::metrics::ConnectorMetrics;
use crate::admin::{Readiness, ReloadReport};
use crate::certs::{CertStore, Service};
use crate::config::Config;
use crate::protolog::{LogKind, ProtocolLog, ProtocolLogConfig};
use crate::queue::{Queue, QueueSettings, StorageError};
use crate::shutdown::Shutdown;
use crate::smtp::inbound::listener::{ConnectionLimits, ListenerState, accept_loop};
use crate::smtp::inbound::policy::AcceptancePolicy;
use crate::smtp::inbound::session::ConnectorContext;
use crate::tls::resolver::CertificateSet;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Why the server could not start, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} for connector `{connector}`: {source}\n  = hint: {hint}")]
    Bind {
        addr: SocketAddr,
        connector: String,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error(
        "cannot create the data directory {path}: {source}\n  = hint: check `server.data_dir` and the permissions of its parent"
    )]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the protocol log in {path}: {source}")]
    ProtocolLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0}\n  = hint: fix or remove the file; manage users with `gatehouse user add|remove|list`"
    )]
    Users(crate::auth::UserError),
    #[error("certificate store: {0}")]
    Certificates(crate::certs::CertError),
    #[error("TLS set-up failed: {0}")]
    Tls(String),
    #[error(
        "cannot open the queue: {0}\n  = hint: check free space and permissions under `server.data_dir`"
    )]
    Queue(#[from] StorageError),
    #[error("{0}")]
    Admin(#[from] crate::admin::AdminError),
}

/// Where a reload finds the configuration again.
#[derive(Clone, Debug)]
pub enum ConfigOrigin {
    /// Started from a `Config` value with no file behind it: reload is
    /// refused.
    Fixed,
    /// `Config::load(path)`: `--config FILE`, else ./gatehouse.toml, else
    /// the embedded default.
    Load(Option<PathBuf>),
}

/// Everything that stays shared after start: what reload rebuilds
/// contexts from and what the admin API reads.
pub struct Live {
    origin: ConfigOrigin,
    /// The configuration the listeners were started from; reloads compare
    /// against it, so a change that needs a restart is reported until the
    /// restart happens.
    started: Config,
    connectors: Vec<LiveConnector>,
    protolog: ProtocolLog,
    users: Option<Arc<crate::auth::LiveUsers>>,
    short_host: String,
    certificates: Option<LiveCertificates>,
    queue: Queue,
    shutdown: Shutdown,
    listeners_bound: bool,
    /// One reload at a time.
    reloading: Mutex<()>,
}

/// The certificate set, its store and the (connector, FQDN) pairs that
/// use TLS.
type LiveCertificates = (Arc<CertificateSet>, CertStore, Vec<(String, String)>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("origin", &self.origin)
            .field("connectors", &self.connectors.len())
            .finish_non_exhaustive()
    }
}

struct LiveConnector {
    name: String,
    slot: Arc<ArcSwap<ListenerState>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: Arc<ConnectorMetrics>,
}

/// A started server.
pub struct RunningServer {
    /// The live certificate state (tests and, later, the admin API read it).
    /// `None` when no listener offers TLS.
    pub certificates: Option<Arc<CertificateSet>>,
    /// (connector name, bound address) for every listener.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The admin API's bound address, when `[admin]` is configured.
    pub admin: Option<SocketAddr>,
    /// Shared state: reload, readiness, metrics.
    pub live: Arc<Live>,
    pub queue: Queue,
    shutdown: Shutdown,
    grace: Duration,
    protolog: ProtocolLog,
    accept_tasks: Vec<JoinHandle<()>>,
}

/// Starts everything the configuration describes. Needs a Tokio runtime.
/// Reload is refused (there is no file to re-read); see `start_from`.
pub async fn start(cfg: Config) -> Result<RunningServer, StartError> {
    start_from(cfg, ConfigOrigin::Fixed).await
}

/// Starts the server; `origin` is where a reload reads the configuration.
pub async fn start_from(cfg: Config, origin: ConfigOrigin) -> Result<RunningServer, StartError> {
    let data_dir = cfg.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    crate::events::configure(&cfg.events, &data_dir);
    // Known label sets exist from the start, so dashboards see zeros
    // rather than missing series.
    for result in ["applied", "refused"] {
        crate::admin::metrics::RELOADS.handle(&[result]);
    }
    let hostname = cfg.server.hostname.get_ref().to_string();

    let queue = Queue::start(QueueSettings {
        queue_dir: cfg.queue_dir(),
        mail_dir: cfg.mail_dir(),
        hostname: hostname.clone(),
        segment_size: cfg.queue.segment_size.0,
        delivery_workers: cfg.queue.delivery_workers,
        retry_after: cfg.queue.retry_after.0,
    })?;

    let log_dir = cfg.protocol_log_dir();
    let protolog = if cfg.receive_connector.iter().any(|c| c.protocol_log) {
        ProtocolLog::open(
            LogKind::Receive,
            ProtocolLogConfig {
                dir: log_dir.join("SmtpReceive"),
                max_file_size: cfg.protocol_log.max_file_size.0,
                max_age: cfg.protocol_log.max_age.0,
                max_dir_size: cfg.protocol_log.max_dir_size.0,
            },
            crate::VERSION,
        )
        .map_err(|source| StartError::ProtocolLog {
            path: log_dir.clone(),
            source,
        })?
    } else {
        ProtocolLog::disabled()
    };

    let shutdown = Shutdown::new();
    let users = if cfg.receive_connector.iter().any(|c| c.offers_auth()) {
        let path = cfg.users_file();
        Some(Arc::new(
            crate::auth::LiveUsers::open(&path).map_err(StartError::Users)?,
        ))
    } else {
        None
    };
    // Certificates, only when a listener offers TLS: the store creates its
    // self-signed default at first start; the set feeds every TLS listener
    // and reloads when the store changes.
    let tls_connectors: Vec<(String, String)> = cfg
        .receive_connector
        .iter()
        .filter(|c| c.tls)
        .map(|c| (c.name.get_ref().clone(), connector_fqdn(c, &hostname)))
        .collect();
    let tls_state = if tls_connectors.is_empty() {
        None
    } else {
        Some(start_certificates(&data_dir, &hostname, &tls_connectors)?)
    };
    let policy = Arc::new(AcceptancePolicy::from_config(&cfg));
    let short_host = hostname
        .split('.')
        .next()
        .unwrap_or(&hostname)
        .to_ascii_uppercase();
    let mut live = Live {
        origin,
        started: cfg.clone(),
        connectors: Vec::new(),
        protolog: protolog.clone(),
        users,
        short_host,
        certificates: None,
        queue: queue.clone(),
        shutdown: shutdown.clone(),
        listeners_bound: false,
        reloading: Mutex::new(()),
    };
    let mut listeners = Vec::new();
    let mut accept_tasks = Vec::new();
    for c in &cfg.receive_connector {
        let name = c.name.get_ref().clone();
        let fqdn = connector_fqdn(c, &hostname);
        let tls = match &tls_state {
            Some((certificates, _)) if c.tls => {
                let resolver = certificates.resolver(&name, &fqdn, Service::Smtp);
                let config = crate::tls::server_config(resolver)
                    .map_err(|e| StartError::Tls(e.to_string()))?;
                Some(tokio_rustls::TlsAcceptor::from(config))
            }
            _ => None,
        };
        let metrics = ConnectorMetrics::new(&name);
        let ctx = live.context(c, &cfg, policy.clone(), tls.clone(), metrics.clone());
        let limits = ConnectionLimits::new(c.max_connections, c.max_connections_per_ip);
        let slot = Arc::new(ArcSwap::from_pointee(ListenerState { ctx, limits }));
        for addr in &c.listen {
            let addr = *addr.get_ref();
            let listener = bind(addr).map_err(|source| StartError::Bind {
                addr,
                connector: name.clone(),
                hint: match source.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        "another process already listens there; stop it or change `listen`"
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        "ports below 1024 need root or CAP_NET_BIND_SERVICE"
                    }
                    std::io::ErrorKind::AddrNotAvailable => {
                        "that IP address is not configured on this host"
                    }
                    _ => "check the `listen` address",
                },
                source,
            })?;
            let bound = listener.local_addr().unwrap_or(addr);
            listeners.push((name.clone(), bound));
            accept_tasks.push(tokio::spawn(accept_loop(listener, slot.clone())));
        }
        live.connectors.push(LiveConnector {
            name,
            slot,
            tls,
            metrics,
        });
    }
    live.listeners_bound = !listeners.is_empty();
    let certificates = tls_state.map(|(certificates, store)| {
        accept_tasks.push(tokio::spawn(certificates.clone().watch(
            store.clone(),
            tls_connectors.clone(),
            Duration::from_secs(2),
        )));
        live.certificates = Some((certificates.clone(), store, tls_connectors));
        certificates
    });
    let live = Arc::new(live);
    let admin = match &cfg.admin {
        Some(a) => {
            let (addr, task) =
                crate::admin::start(*a.listen.get_ref(), cfg.admin_token_file(), live.clone())
                    .await?;
            accept_tasks.push(task);
            Some(addr)
        }
        None => None,
    };
    Ok(RunningServer {
        certificates,
        listeners,
        admin,
        live,
        queue,
        shutdown,
        grace: cfg.server.shutdown_grace.0,
        protolog,
        accept_tasks,
    })
}

impl Live {
    /// The context sessions of connector `c` share.
    fn context(
        &self,
        c: &crate::config::ReceiveConnectorConfig,
        cfg: &Config,
        policy: Arc<AcceptancePolicy>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        metrics: Arc<ConnectorMetrics>,
    ) -> Arc<ConnectorContext> {
        let name = c.name.get_ref().clone();
        Arc::new(ConnectorContext {
            name: name.clone(),
            banner: c
                .banner
                .clone()
                .unwrap_or_else(|| "Gatehouse ESMTP ready".into()),
            connector_id: format!("{}\\{name}", self.short_host),
            fqdn: connector_fqdn(c, &cfg.server.hostname.get_ref().to_string()),
            relay_networks: c.relay_networks(),
            config: c.clone(),
            policy,
            queue: self.queue.clone(),
            protolog: if c.protocol_log {
                self.protolog.clone()
            } else {
                ProtocolLog::disabled()
            },
            shutdown: self.shutdown.clone(),
            tls,
            implicit_tls: *c.role.get_ref() == crate::config::ConnectorRole::Smtps,
            users: self.users.clone().filter(|_| c.offers_auth()),
            auth_failure_delay: cfg.auth.failure_delay.0,
            require_auth: *c.role.get_ref() == crate::config::ConnectorRole::Submission,
            metrics,
        })
    }

    /// Reloads configuration and certificates (see the module comment).
    /// A configuration with errors is refused with them (file:line:col, as
    /// `check-config` prints them) and nothing changes.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.reload_inner();
        match &result {
            Ok(r) => {
                crate::admin::metrics::RELOADS.inc(&["applied"]);
                let none = || "nothing".to_string();
                crate::events::emit(crate::events::ConfigReloaded {
                    source: &r.source,
                    applied: &Some(r.applied.join("; "))
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(none),
                    restart_needed: &Some(r.restart_needed.join("; "))
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(none),
                });
            }
            Err(e) => {
                crate::admin::metrics::RELOADS.inc(&["refused"]);
                crate::events::emit(crate::events::ConfigReloadRefused {
                    source: &self.origin_name(),
                    errors: e,
                });
            }
        }
        result
    }

    fn origin_name(&self) -> String {
        match &self.origin {
            ConfigOrigin::Fixed => "<in-memory configuration>".into(),
            ConfigOrigin::Load(Some(p)) => p.display().to_string(),
            ConfigOrigin::Load(None) => "./gatehouse.toml or the embedded default".into(),
        }
    }

    fn reload_inner(&self) -> Result<ReloadReport, String> {
        let ConfigOrigin::Load(path) = &self.origin else {
            return Err("this server was started from an in-memory configuration; there is no file to reload".into());
        };
        let (new, source) = Config::load(path.as_deref()).map_err(|e| e.to_string())?;
        let old = &self.started;
        let mut report = ReloadReport {
            source: source.name,
            ..Default::default()
        };
        let mut restart = |what: String| report.restart_needed.push(what);
        if new.server.data_dir != old.server.data_dir {
            restart("server.data_dir".into());
        }
        if new.server.hostname.get_ref() != old.server.hostname.get_ref() {
            restart("server.hostname".into());
        }
        if new.server.shutdown_grace.0 != old.server.shutdown_grace.0 {
            restart("server.shutdown_grace".into());
        }
        if format!("{:?}", new.queue) != format!("{:?}", old.queue) {
            restart("[queue]".into());
        }
        if format!("{:?}", new.protocol_log) != format!("{:?}", old.protocol_log) {
            restart("[protocol_log]".into());
        }
        if format!("{:?}", new.auth) != format!("{:?}", old.auth) {
            restart("[auth]".into());
        }
        let admin_of = |c: &Config| {
            c.admin
                .as_ref()
                .map(|a| (*a.listen.get_ref(), a.token_file.clone()))
        };
        if admin_of(&new) != admin_of(old) {
            restart("[admin]".into());
        }
        for c in &new.receive_connector {
            if !old
                .receive_connector
                .iter()
                .any(|o| o.name.get_ref() == c.name.get_ref())
            {
                restart(format!("new receive connector `{}`", c.name.get_ref()));
            }
        }
        for o in &old.receive_connector {
            if !new
                .receive_connector
                .iter()
                .any(|c| c.name.get_ref() == o.name.get_ref())
            {
                restart(format!(
                    "receive connector `{}` removed (it still listens)",
                    o.name.get_ref()
                ));
            }
        }
        let policy = Arc::new(AcceptancePolicy::from_config(&new));
        let mut updated = Vec::new();
        for lc in &self.connectors {
            let Some(oc) = old
                .receive_connector
                .iter()
                .find(|c| c.name.get_ref() == &lc.name)
            else {
                continue;
            };
            let nc = new
                .receive_connector
                .iter()
                .find(|c| c.name.get_ref() == &lc.name);
            let Some(nc) = nc else { continue };
            let listen = |c: &crate::config::ReceiveConnectorConfig| {
                c.listen.iter().map(|l| *l.get_ref()).collect::<Vec<_>>()
            };
            let structural = nc.role.get_ref() != oc.role.get_ref()
                || listen(nc) != listen(oc)
                || nc.tls != oc.tls
                || nc.offers_auth() != oc.offers_auth()
                || nc.fqdn != oc.fqdn
                || nc.protocol_log != oc.protocol_log;
            // A structural change keeps the started connector settings,
            // still with the new domains and mailboxes.
            let use_cfg = if structural {
                report.restart_needed.push(format!(
                    "receive connector `{}`: role, listen, tls, auth, fqdn or protocol_log",
                    lc.name
                ));
                oc
            } else {
                nc
            };
            let ctx = self.context(
                use_cfg,
                old,
                policy.clone(),
                lc.tls.clone(),
                lc.metrics.clone(),
            );
            let current = lc.slot.load();
            let limits = if current.ctx.config.max_connections == use_cfg.max_connections
                && current.ctx.config.max_connections_per_ip == use_cfg.max_connections_per_ip
            {
                current.limits.clone()
            } else {
                ConnectionLimits::new(use_cfg.max_connections, use_cfg.max_connections_per_ip)
            };
            lc.slot.store(Arc::new(ListenerState { ctx, limits }));
            updated.push(lc.name.clone());
        }
        report.applied.push(format!(
            "accepted domains ({}) and mailboxes ({})",
            new.accepted_domain.len(),
            new.mailbox.len()
        ));
        if !updated.is_empty() {
            report.applied.push(format!(
                "receive connector settings (banner, limits, relay networks, timeouts) of {}",
                updated.join(", ")
            ));
        }
        crate::events::configure(&new.events, &old.server.data_dir);
        report
            .applied
            .push("event levels, rate limit and sinks".into());
        if let Some((set, store, connectors)) = &self.certificates {
            let changed = set.reload_if_changed(store);
            if changed {
                set.announce(connectors);
            }
            report.applied.push(if changed {
                "certificates (store re-read)".into()
            } else {
                "certificates (unchanged)".into()
            });
        }
        Ok(report)
    }
}

impl crate::admin::metrics::ScrapeSource for Live {
    fn queue_depth(&self) -> Vec<(&'static str, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.queue.stats();
        vec![
            ("pending", s.pending.load(Relaxed)),
            ("held", s.held.load(Relaxed)),
        ]
    }

    fn deliveries(&self) -> Vec<(&'static str, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.queue.stats();
        vec![
            ("delivered", s.delivered.load(Relaxed)),
            ("deferred", s.deferred.load(Relaxed)),
        ]
    }

    fn certificate_expiry(&self) -> Vec<(String, String, i64)> {
        let Some((set, _, _)) = &self.certificates else {
            return Vec::new();
        };
        let now = std::time::SystemTime::now();
        set.state()
            .infos
            .iter()
            .filter(|c| c.services.smtp || c.services.https)
            .map(|c| {
                let days = match c.not_after.duration_since(now) {
                    Ok(d) => (d.as_secs() / 86_400) as i64,
                    Err(e) => -((e.duration().as_secs() / 86_400) as i64) - 1,
                };
                (c.sha1.clone(), c.subject.clone(), days)
            })
            .collect()
    }
}

impl crate::admin::Backend for Live {
    fn readiness(&self) -> Readiness {
        let wants_tls = self.started.receive_connector.iter().any(|c| c.tls);
        Readiness {
            listeners_bound: self.listeners_bound,
            queue_open: !self.shutdown.is_shutting_down(),
            certificates_loaded: !wants_tls || self.certificates.is_some(),
            shutting_down: self.shutdown.is_shutting_down(),
        }
    }

    fn reload(&self) -> Result<ReloadReport, String> {
        Live::reload(self)
    }
}

impl RunningServer {
    /// The address of the first listener of `connector`.
    pub fn addr(&self, connector: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == connector)
            .map(|(_, a)| *a)
    }

    /// Graceful stop: 421 to new and idle sessions, in-flight transactions
    /// finish (up to the grace period), then the queue and logs are synced.
    pub async fn shutdown(self) {
        self.shutdown.token.cancel();
        self.shutdown.sessions.close();
        if tokio::time::timeout(self.grace, self.shutdown.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "sessions still open at the end of the shutdown grace period; closing them");
        }
        for t in &self.accept_tasks {
            t.abort();
        }
        self.queue.sync().await;
        self.protolog.flush();
    }
}

/// The name a connector announces and looks certificates up by.
fn connector_fqdn(c: &crate::config::ReceiveConnectorConfig, hostname: &str) -> String {
    c.fqdn
        .as_ref()
        .map_or_else(|| hostname.to_string(), |f| f.to_string())
}

/// Opens the certificate store (creating the self-signed default at first
/// start), loads it and announces what an operator must know.
fn start_certificates(
    data_dir: &std::path::Path,
    hostname: &str,
    tls_connectors: &[(String, String)],
) -> Result<(Arc<CertificateSet>, CertStore), StartError> {
    let store = CertStore::open(data_dir).map_err(StartError::Certificates)?;
    if let Some(thumb) = store
        .ensure_default(hostname)
        .map_err(StartError::Certificates)?
    {
        crate::events::emit(crate::events::DefaultCertificateCreated {
            thumbprint: &thumb,
            hostname: &hostname,
        });
    }
    let certificates = CertificateSet::load(&store, hostname).map_err(StartError::Tls)?;
    certificates.announce(tls_connectors);
    Ok((certificates, store))
}

/// Binds a listening socket. IPv6 sockets are v6-only so `0.0.0.0:25` and
/// `[::]:25` can both be configured; SO_REUSEADDR lets a restarted server
/// bind while old connections sit in TIME_WAIT.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}
