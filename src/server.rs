//! Wires the parts into a running server: queue, protocol log, receive
//! connectors. `main.rs` calls `start` and later `shutdown`; the
//! integration tests do the same in-process, on ephemeral ports.

use crate::certs::{CertStore, Service};
use crate::config::Config;
use crate::protolog::{LogKind, ProtocolLog, ProtocolLogConfig};
use crate::queue::{Queue, QueueSettings, StorageError};
use crate::shutdown::Shutdown;
use crate::smtp::inbound::listener::{ConnectionLimits, accept_loop};
use crate::smtp::inbound::policy::AcceptancePolicy;
use crate::smtp::inbound::session::ConnectorContext;
use crate::tls::resolver::CertificateSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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
    Proxy(#[from] crate::proxy::ProxyStartError),
}

/// A started server.
pub struct RunningServer {
    /// The live certificate state (tests and, later, the admin API read it).
    /// `None` when no listener offers TLS.
    pub certificates: Option<Arc<CertificateSet>>,
    /// (connector name, bound address) for every listener.
    pub listeners: Vec<(String, SocketAddr)>,
    /// (proxy name, bound address) for every `[[proxy]]` listener.
    pub proxy_listeners: Vec<(String, SocketAddr)>,
    /// The proxy's backend pools (tests read their counters).
    pub proxy_pools: Vec<Arc<crate::proxy::Pool>>,
    pub queue: Queue,
    shutdown: Shutdown,
    grace: Duration,
    protolog: ProtocolLog,
    proxy_log: crate::proxy::ProxyLog,
    accept_tasks: Vec<JoinHandle<()>>,
}

/// Starts everything the configuration describes. Needs a Tokio runtime.
pub async fn start(cfg: Config) -> Result<RunningServer, StartError> {
    let data_dir = cfg.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
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
    // The proxy listeners count as TLS listeners.
    let tls_connectors: Vec<(String, String)> = cfg
        .receive_connector
        .iter()
        .filter(|c| c.tls)
        .map(|c| (c.name.get_ref().clone(), connector_fqdn(c, &hostname)))
        .chain(cfg.proxy.iter().map(|p| {
            (
                p.name.get_ref().clone(),
                p.fqdn
                    .as_ref()
                    .map_or_else(|| hostname.clone(), |f| f.to_string()),
            )
        }))
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
        let ctx = Arc::new(ConnectorContext {
            name: name.clone(),
            banner: c
                .banner
                .clone()
                .unwrap_or_else(|| "Gatehouse ESMTP ready".into()),
            connector_id: format!("{short_host}\\{name}"),
            fqdn,
            relay_networks: c.relay_networks(),
            config: c.clone(),
            policy: policy.clone(),
            queue: queue.clone(),
            protolog: if c.protocol_log {
                protolog.clone()
            } else {
                ProtocolLog::disabled()
            },
            shutdown: shutdown.clone(),
            tls,
            implicit_tls: *c.role.get_ref() == crate::config::ConnectorRole::Smtps,
            users: users.clone().filter(|_| c.offers_auth()),
            auth_failure_delay: cfg.auth.failure_delay.0,
            require_auth: *c.role.get_ref() == crate::config::ConnectorRole::Submission,
        });
        let limits = ConnectionLimits::new(c.max_connections, c.max_connections_per_ip);
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
            accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                ctx.clone(),
                limits.clone(),
            )));
        }
    }
    let (proxy_listeners, proxy_pools, proxy_log) = match &tls_state {
        Some((certificates, store)) if !cfg.proxy.is_empty() => {
            let cas = crate::proxy::store_ca_certificates(store);
            let proxy =
                crate::proxy::start(&cfg, certificates, &cas, &hostname, &shutdown, bind).await?;
            accept_tasks.extend(proxy.tasks);
            (proxy.listeners, proxy.pools, proxy.log)
        }
        _ => (Vec::new(), Vec::new(), crate::proxy::ProxyLog::disabled()),
    };
    let certificates = tls_state.map(|(certificates, store)| {
        accept_tasks.push(tokio::spawn(certificates.clone().watch(
            store,
            tls_connectors,
            Duration::from_secs(2),
        )));
        certificates
    });
    Ok(RunningServer {
        certificates,
        listeners,
        proxy_listeners,
        proxy_pools,
        proxy_log,
        queue,
        shutdown,
        grace: cfg.server.shutdown_grace.0,
        protolog,
        accept_tasks,
    })
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
        self.queue.sync().await;
        self.protolog.flush();
        self.proxy_log.flush();
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
        crate::events::emit(
            &crate::events::DEFAULT_CERTIFICATE_CREATED,
            format!(
                "created the self-signed default certificate {thumb} for {hostname}, enabled for smtp and https"
            ),
        );
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
