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
//! server-wide settings opened once (data_dir, hostname, shutdown_grace,
//!     [queue], [protocol_log], [auth], [admin]) -> "needs a restart"
//! per receive connector, compared with what runs now:
//!     new ConnectorContext (policy with the new accepted domains and
//!     mailboxes, banner, limits, relay networks, timeouts, role, TLS,
//!     AUTH, FQDN) swapped into the connector's ArcSwap slot: the next
//!     connection uses it, open sessions keep theirs
//!     listen addresses: new ones bound first, dropped ones closed
//!     new connector: bound and started; removed connector: closed
//!     (a connector needing what was not opened at start, e.g. TLS when
//!     no listener had TLS, is left as it was: "needs a restart")
//! [events] -> levels, rate limit, sinks
//! certificates -> store re-read now (the 2 s watcher would too)
//! ```

use crate::admin::metrics::ConnectorMetrics;
use crate::admin::{Readiness, ReloadReport};
use crate::certs::{CertStore, Service};
use crate::config::Config;
use crate::protolog::{LogKind, ProtocolLog};
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
    #[error("{0}\n  = hint: check the [[send_connector]] settings named above")]
    Outbound(#[from] crate::smtp::outbound::OutboundError),
    #[error(
        "cannot open the queue: {0}\n  = hint: check free space and permissions under `server.data_dir`"
    )]
    Queue(#[from] StorageError),
    #[error("{0}")]
    Admin(#[from] crate::admin::AdminError),
    #[error("{0}")]
    Proxy(#[from] crate::proxy::ProxyStartError),
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
    /// The configuration the server was started from: server-wide
    /// settings are compared with it, so a change that needs a restart is
    /// reported until the restart happens.
    started: Config,
    /// The receive connectors as they run now (reload changes them).
    connectors: Mutex<Vec<LiveConnector>>,
    protolog: ProtocolLog,
    users: Option<Arc<crate::auth::LiveUsers>>,
    /// AUTH failures per address, kept across reloads (`[auth]` changes
    /// need a restart).
    auth_lockout: Arc<crate::auth::lockout::AuthLockout>,
    short_host: String,
    certificates: Option<LiveCertificates>,
    queue: Queue,
    shutdown: Shutdown,
    /// One reload at a time.
    reloading: Mutex<()>,
}

/// The certificate set, its store and the (listener, FQDN, service) of
/// every TLS listener.
type LiveCertificates = (
    Arc<CertificateSet>,
    CertStore,
    Vec<(String, String, crate::certs::Service)>,
);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// One running receive connector.
struct LiveConnector {
    name: String,
    /// The settings it runs with.
    config: crate::config::ReceiveConnectorConfig,
    slot: Arc<ArcSwap<ListenerState>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: Arc<ConnectorMetrics>,
    listening: Vec<Listening>,
}

/// One bound address and its accept loop.
struct Listening {
    /// As configured (may have port 0).
    configured: SocketAddr,
    bound: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Listening {
    /// Dropping the accept loop drops its socket: the address is closed.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A started server.
pub struct RunningServer {
    /// The live certificate state (tests and, later, the admin API read it).
    /// `None` when no listener offers TLS.
    pub certificates: Option<Arc<CertificateSet>>,
    /// (connector name, bound address) for every listener, as started;
    /// `live.listeners()` has them after reloads.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The admin API's bound address, when `[admin]` is configured.
    pub admin: Option<SocketAddr>,
    /// (proxy name, bound address) for every `[[proxy]]` listener.
    pub proxy_listeners: Vec<(String, SocketAddr)>,
    /// The proxy's backend pools (tests read their counters).
    pub proxy_pools: Vec<Arc<crate::proxy::Pool>>,
    proxy_log: crate::proxy::ProxyLog,
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

    let policy = Arc::new(AcceptancePolicy::from_config(&cfg));
    let relay = start_outbound(&cfg, &policy)?;
    let queue = Queue::start_with(
        QueueSettings {
            queue_dir: cfg.queue_dir(),
            mail_dir: cfg.mail_dir(),
            hostname: hostname.clone(),
            segment_size: cfg.queue.segment_size.0,
            delivery_workers: cfg.queue.delivery_workers,
            retry_after: cfg.queue.retry_after.0,
            relay: crate::queue::RelaySettings {
                first_retry: cfg.queue.first_retry.0,
                max_retry_interval: cfg.queue.max_retry_interval.0,
                expire_after: cfg.queue.expire_after.0,
                delay_dsn_after: cfg.queue.delay_dsn.then_some(cfg.queue.delay_dsn_after.0),
            },
        },
        Some(relay),
    )?;

    let log_dir = cfg.protocol_log_dir();
    let protolog = if cfg.receive_connector.iter().any(|c| c.protocol_log) {
        cfg.open_protocol_log(LogKind::Receive, "SmtpReceive")
            .map_err(|source| StartError::ProtocolLog {
                path: log_dir.clone(),
                source,
            })?
    } else {
        ProtocolLog::disabled()
    };

    let shutdown = Shutdown::new();
    let auth_lockout = Arc::new(crate::auth::lockout::AuthLockout::new(
        crate::auth::lockout::LockoutPolicy {
            threshold: cfg.auth.lockout_threshold,
            window: cfg.auth.lockout_window.0,
            duration: cfg.auth.lockout_duration.0,
        },
    ));
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
    // Every TLS listener with the service its certificate must be enabled
    // for: the announcements (fallback events) check each against its own.
    let tls_connectors: Vec<(String, String, crate::certs::Service)> = cfg
        .receive_connector
        .iter()
        .filter(|c| c.tls)
        .map(|c| {
            (
                c.name.get_ref().clone(),
                connector_fqdn(c, &hostname),
                crate::certs::Service::Smtp,
            )
        })
        .chain(cfg.proxy.iter().map(|p| {
            (
                p.name.get_ref().clone(),
                p.fqdn
                    .as_ref()
                    .map_or_else(|| hostname.clone(), |f| f.to_string()),
                crate::certs::Service::Https,
            )
        }))
        .collect();
    let tls_state = if tls_connectors.is_empty() {
        None
    } else {
        Some(start_certificates(&data_dir, &hostname, &tls_connectors)?)
    };
    let short_host = hostname
        .split('.')
        .next()
        .unwrap_or(&hostname)
        .to_ascii_uppercase();
    let mut live = Live {
        origin,
        started: cfg.clone(),
        connectors: Mutex::new(Vec::new()),
        protolog: protolog.clone(),
        users,
        auth_lockout,
        short_host,
        certificates: None,
        queue: queue.clone(),
        shutdown: shutdown.clone(),
        reloading: Mutex::new(()),
    };
    let mut accept_tasks = Vec::new();
    let (proxy_listeners, proxy_pools, proxy_log) = match &tls_state {
        Some((certificates, store)) if !cfg.proxy.is_empty() => {
            let cas = store.ca_certificates();
            let proxy =
                crate::proxy::start(&cfg, certificates, &cas, &hostname, &shutdown, bind).await?;
            accept_tasks.extend(proxy.tasks);
            (proxy.listeners, proxy.pools, proxy.log)
        }
        _ => (Vec::new(), Vec::new(), crate::proxy::ProxyLog::disabled()),
    };
    let certificates = tls_state.map(|(certificates, store)| {
        accept_tasks.push(tokio::spawn(certificates.clone().watch(
            store.clone(),
            tls_connectors.clone(),
            Duration::from_secs(2),
        )));
        live.certificates = Some((certificates.clone(), store, tls_connectors));
        certificates
    });
    let mut running = Vec::new();
    for c in &cfg.receive_connector {
        let tls = live.tls_for(c).map_err(StartError::Tls)?;
        let metrics = ConnectorMetrics::new(c.name.get_ref());
        let ctx = live.context(c, policy.clone(), tls.clone(), metrics.clone());
        let limits = ConnectionLimits::new(c.max_connections, c.max_connections_per_ip);
        let slot = Arc::new(ArcSwap::from_pointee(ListenerState { ctx, limits }));
        let mut listening = Vec::new();
        for addr in &c.listen {
            listening.push(listen(*addr.get_ref(), c.name.get_ref(), &slot)?);
        }
        running.push(LiveConnector {
            name: c.name.get_ref().clone(),
            config: c.clone(),
            slot,
            tls,
            metrics,
            listening,
        });
    }
    live.connectors = Mutex::new(running);
    let listeners = live.listeners();
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
        proxy_listeners,
        proxy_pools,
        proxy_log,
        live,
        queue,
        shutdown,
        grace: cfg.server.shutdown_grace.0,
        protolog,
        accept_tasks,
    })
}

impl Live {
    /// (connector name, bound address) for every listener now.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.connectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|c| c.listening.iter().map(|l| (c.name.clone(), l.bound)))
            .collect()
    }

    /// Closes every listener (end of shutdown).
    fn stop_listening(&self) {
        for c in self
            .connectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            c.listening.clear();
        }
    }

    /// The TLS acceptor for connector `c`: `Ok(None)` without TLS; an
    /// error when it wants TLS and no certificate set was opened at start.
    fn tls_for(
        &self,
        c: &crate::config::ReceiveConnectorConfig,
    ) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
        if !c.tls {
            return Ok(None);
        }
        let Some((certificates, _, _)) = &self.certificates else {
            return Err(
                "TLS, and no listener offered TLS at start (the certificate store is not open)"
                    .into(),
            );
        };
        let fqdn = connector_fqdn(c, &self.started.server.hostname.get_ref().to_string());
        let resolver = certificates.resolver(c.name.get_ref(), &fqdn, Service::Smtp);
        let config = crate::tls::server_config(resolver).map_err(|e| e.to_string())?;
        Ok(Some(tokio_rustls::TlsAcceptor::from(config)))
    }

    /// What connector `c` needs that was not opened at start, if anything.
    fn missing_for(&self, c: &crate::config::ReceiveConnectorConfig) -> Option<&'static str> {
        if c.tls && self.certificates.is_none() {
            Some("TLS, and no listener offered TLS at start")
        } else if c.offers_auth() && self.users.is_none() {
            Some("AUTH, and no listener offered AUTH at start")
        } else if c.protocol_log && !self.protolog.is_enabled() {
            Some("the protocol log, and no listener wrote it at start")
        } else {
            None
        }
    }

    /// The context sessions of connector `c` share. Server-wide values
    /// (host name, AUTH delay) come from the configuration the server
    /// started with: changing them needs a restart.
    fn context(
        &self,
        c: &crate::config::ReceiveConnectorConfig,
        policy: Arc<AcceptancePolicy>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        metrics: Arc<ConnectorMetrics>,
    ) -> Arc<ConnectorContext> {
        let cfg = &self.started;
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
            auth_lockout: self.auth_lockout.clone(),
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
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "nothing".to_string()
                    } else {
                        v.join("; ")
                    }
                };
                crate::events::emit(crate::events::ConfigReloaded {
                    source: &r.source,
                    applied: &list(&r.applied),
                    restart_needed: &list(&r.restart_needed),
                    not_applied: &list(&r.not_applied),
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
        let restart = &mut report.restart_needed;
        if new.server.data_dir != old.server.data_dir {
            restart.push("server.data_dir".into());
        }
        if new.server.hostname.get_ref() != old.server.hostname.get_ref() {
            restart.push("server.hostname".into());
        }
        if new.server.shutdown_grace.0 != old.server.shutdown_grace.0 {
            restart.push("server.shutdown_grace".into());
        }
        // These sections hold no positions (`Spanned`), so their Debug
        // text compares values only.
        if format!("{:?}", new.queue) != format!("{:?}", old.queue) {
            restart.push("[queue]".into());
        }
        if format!("{:?}", new.protocol_log) != format!("{:?}", old.protocol_log) {
            restart.push("[protocol_log]".into());
        }
        if format!("{:?}", new.auth) != format!("{:?}", old.auth) {
            restart.push("[auth]".into());
        }
        // Send connectors carry config positions (`Spanned`): compare
        // their Debug text with the spans taken out.
        if without_spans(&format!("{:?}", new.send_connector))
            != without_spans(&format!("{:?}", old.send_connector))
        {
            restart.push("[[send_connector]]".into());
        }
        if format!("{:?}", new.dns) != format!("{:?}", old.dns) {
            restart.push("[dns]".into());
        }
        if without_spans(&format!("{:?}", (&new.proxy, &new.backend_pool)))
            != without_spans(&format!("{:?}", (&old.proxy, &old.backend_pool)))
        {
            restart.push("[[proxy]] / [[backend_pool]]".into());
        }
        let admin_of = |c: &Config| {
            c.admin
                .as_ref()
                .map(|a| (*a.listen.get_ref(), a.token_file.clone()))
        };
        if admin_of(&new) != admin_of(old) {
            restart.push("[admin]".into());
        }
        self.reload_connectors(&new, &mut report);
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

    /// Applies the receive connectors of `new` (see the module comment).
    fn reload_connectors(&self, new: &Config, report: &mut ReloadReport) {
        let policy = Arc::new(AcceptancePolicy::from_config(new));
        report.applied.push(format!(
            "accepted domains ({}) and mailboxes ({})",
            new.accepted_domain.len(),
            new.mailbox.len()
        ));
        let mut connectors = self.connectors.lock().unwrap_or_else(|e| e.into_inner());
        // Removed connectors: closed. Their open sessions finish.
        connectors.retain(|lc| {
            let keep = new
                .receive_connector
                .iter()
                .any(|c| c.name.get_ref() == &lc.name);
            if !keep {
                report.applied.push(format!(
                    "receive connector `{}` removed (no longer listening; open sessions finish)",
                    lc.name
                ));
            }
            keep
        });
        for nc in &new.receive_connector {
            let name = nc.name.get_ref();
            let existing = connectors.iter().position(|lc| &lc.name == name);
            if let Some(missing) = self.missing_for(nc) {
                report
                    .restart_needed
                    .push(format!("receive connector `{name}`: needs {missing}"));
                // Keep it as it runs, with the new domains and mailboxes.
                if let Some(lc) = existing.and_then(|i| connectors.get(i)) {
                    let ctx = self.context(
                        &lc.config,
                        policy.clone(),
                        lc.tls.clone(),
                        lc.metrics.clone(),
                    );
                    let limits = lc.slot.load().limits.clone();
                    lc.slot.store(Arc::new(ListenerState { ctx, limits }));
                }
                continue;
            }
            match existing.and_then(|i| connectors.get_mut(i)) {
                Some(lc) => {
                    if let Err(e) = self.update_connector(lc, nc, policy.clone()) {
                        report.not_applied.push(e);
                    } else {
                        report.applied.push(format!("receive connector `{name}`"));
                    }
                }
                None => match self.add_connector(nc, policy.clone()) {
                    Ok(lc) => {
                        report.applied.push(format!(
                            "receive connector `{name}` added, listening on {}",
                            lc.listening
                                .iter()
                                .map(|l| l.bound.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        connectors.push(lc);
                    }
                    Err(e) => report.not_applied.push(e),
                },
            }
        }
    }

    /// Swaps in the new settings of a running connector and binds or
    /// closes addresses. Nothing changes when a new address cannot be
    /// bound.
    fn update_connector(
        &self,
        lc: &mut LiveConnector,
        nc: &crate::config::ReceiveConnectorConfig,
        policy: Arc<AcceptancePolicy>,
    ) -> Result<(), String> {
        let name = nc.name.get_ref();
        // Same TLS and FQDN: keep the acceptor (and its session cache, so
        // clients keep resuming).
        let tls = if nc.tls == lc.config.tls && nc.fqdn == lc.config.fqdn {
            lc.tls.clone()
        } else {
            self.tls_for(nc)
                .map_err(|e| format!("receive connector `{name}`: {e}"))?
        };
        let wanted: Vec<SocketAddr> = nc.listen.iter().map(|l| *l.get_ref()).collect();
        let mut added = Vec::new();
        for addr in wanted
            .iter()
            .filter(|a| !lc.listening.iter().any(|l| l.configured == **a))
        {
            // On error `added` is dropped: those new sockets close again.
            added.push(listen(*addr, name, &lc.slot).map_err(|e| e.to_string())?);
        }
        let ctx = self.context(nc, policy, tls.clone(), lc.metrics.clone());
        let current = lc.slot.load();
        let limits = if current.ctx.config.max_connections == nc.max_connections
            && current.ctx.config.max_connections_per_ip == nc.max_connections_per_ip
        {
            current.limits.clone()
        } else {
            ConnectionLimits::new(nc.max_connections, nc.max_connections_per_ip)
        };
        lc.slot.store(Arc::new(ListenerState { ctx, limits }));
        lc.listening.retain(|l| wanted.contains(&l.configured));
        lc.listening.extend(added);
        lc.tls = tls;
        lc.config = nc.clone();
        Ok(())
    }

    /// Starts a connector that was not running.
    fn add_connector(
        &self,
        nc: &crate::config::ReceiveConnectorConfig,
        policy: Arc<AcceptancePolicy>,
    ) -> Result<LiveConnector, String> {
        let name = nc.name.get_ref();
        let tls = self
            .tls_for(nc)
            .map_err(|e| format!("receive connector `{name}`: {e}"))?;
        let metrics = ConnectorMetrics::new(name);
        let ctx = self.context(nc, policy, tls.clone(), metrics.clone());
        let limits = ConnectionLimits::new(nc.max_connections, nc.max_connections_per_ip);
        let slot = Arc::new(ArcSwap::from_pointee(ListenerState { ctx, limits }));
        let mut listening = Vec::new();
        for addr in &nc.listen {
            listening.push(listen(*addr.get_ref(), name, &slot).map_err(|e| e.to_string())?);
        }
        Ok(LiveConnector {
            name: name.clone(),
            config: nc.clone(),
            slot,
            tls,
            metrics,
            listening,
        })
    }
}

/// Binds `addr` for `connector` and starts its accept loop.
fn listen(
    addr: SocketAddr,
    connector: &str,
    slot: &Arc<ArcSwap<ListenerState>>,
) -> Result<Listening, StartError> {
    let listener = bind(addr).map_err(|source| StartError::Bind {
        addr,
        connector: connector.to_string(),
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
    Ok(Listening {
        configured: addr,
        bound,
        task: tokio::spawn(accept_loop(listener, slot.clone())),
    })
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
        let wants_tls = self
            .connectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|c| c.config.tls);
        Readiness {
            listeners_bound: !self.listeners().is_empty(),
            queue_open: !self.shutdown.is_shutting_down(),
            certificates_loaded: !wants_tls || self.certificates.is_some(),
            shutting_down: self.shutdown.is_shutting_down(),
        }
    }

    fn reload(&self) -> Result<ReloadReport, String> {
        Live::reload(self)
    }

    fn queue(&self) -> &Queue {
        &self.queue
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

    /// The address of the first listener of proxy `name`.
    pub fn proxy_addr(&self, name: &str) -> Option<SocketAddr> {
        self.proxy_listeners
            .iter()
            .find(|(n, _)| n == name)
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
        self.live.stop_listening();
        self.queue.sync().await;
        self.protolog.flush();
        self.proxy_log.flush();
        let commits = self.queue.commit_stats();
        let (c, r) = (
            commits.commits.load(std::sync::atomic::Ordering::Relaxed),
            commits.records.load(std::sync::atomic::Ordering::Relaxed),
        );
        tracing::info!(
            commits = c,
            messages = r,
            messages_per_fsync = format!("{:.2}", r as f64 / c.max(1) as f64),
            "queue synced; group commit summary"
        );
    }
}

/// Send connectors, the SMTP send protocol log, and how DSNs find their
/// way back to a sender (the acceptance policy decides, as if the sender
/// were a recipient of an authenticated client).
/// Debug text of a configuration value without the `span: a..b` parts
/// of its `Spanned` fields, so an edit elsewhere in the file (which moves
/// positions) is not taken for a change.
fn without_spans(debug: &str) -> String {
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    while let Some(i) = rest.find("span: ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "span: ".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn start_outbound(
    cfg: &Config,
    policy: &Arc<AcceptancePolicy>,
) -> Result<crate::queue::RelayContext, StartError> {
    let log_dir = cfg.protocol_log_dir();
    let protolog = if cfg.send_connector.iter().any(|c| c.protocol_log) {
        cfg.open_protocol_log(LogKind::Send, "SmtpSend")
            .map_err(|source| StartError::ProtocolLog {
                path: log_dir.clone(),
                source,
            })?
    } else {
        ProtocolLog::disabled()
    };
    // The store gives client certificates and extra trust anchors (its CA
    // certificates) to every send connector.
    let store = if !cfg.send_connector.is_empty() {
        Some(CertStore::open(&cfg.server.data_dir).map_err(StartError::Certificates)?)
    } else {
        None
    };
    let outbound = crate::smtp::outbound::Outbound::from_config(cfg, store.as_ref(), protolog)?;
    let policy = policy.clone();
    let dsn_router: crate::queue::DsnRouter = Arc::new(move |sender: &str| {
        let path = crate::smtp::address::parse_path(&format!("<{sender}>"), true).ok()?;
        policy
            .recipient(
                &path,
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                &[],
                true,
            )
            .ok()
            .map(|(_, route)| route)
    });
    Ok(crate::queue::RelayContext {
        outbound: Arc::new(outbound),
        dsn_router,
    })
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
    tls_connectors: &[(String, String, crate::certs::Service)],
) -> Result<(Arc<CertificateSet>, CertStore), StartError> {
    let store = CertStore::open(data_dir).map_err(StartError::Certificates)?;
    if let Some(thumb) = store
        .ensure_default(hostname)
        .map_err(StartError::Certificates)?
    {
        crate::events::emit(crate::events::DefaultCertificateCreated {
            thumbprint: &thumb.to_string(),
            hostname,
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
