//! The client-access HTTPS proxy (SPEC 2.9, issue 7, `docs/proxy.md`).
//!
//! ```text
//! client --TLS (store cert, service https, SNI)--> front (h1/h2, limits)
//!   -> handler: framing checks, route by path prefix -> pool
//!        -> server: pinned (NTLM/Negotiate) | anchor hash | least outstanding
//!        -> backend connection (idle or new; TLS verified: backend)
//!   <- response streamed back (body), the connection returned at its end
//! ```
//!
//! Threads: each listen address is served by one `Front` per CPU, each
//! on its own current-thread runtime, all accepting from one socket; a
//! request stays on its thread from accept to the last byte.
//!
//! Types: `Front` (one per listen address and thread) accepts and serves
//! connections; `Listener` (one per `[[proxy]]`) holds the `RouteTable`
//! and limits; `Pool` (one per `[[backend_pool]]`, shared by listeners)
//! holds `Server`s with health, outstanding counts and idle connections,
//! and the pool's rustls client config; `BackendConn` is one backend
//! connection driven by the request using it (`DrivenBody` drives it
//! while the response streams and returns it to the idle list at the
//! end); `ClientConn` holds a client
//! connection's pinned backend connection; `Streamed` bodies carry limits,
//! idle timers and the end hook that releases the `Lease` (the server's
//! outstanding-request count) and writes the log record.
//!
//! Module map: `front` listener and HTTP server, `routes` prefix table,
//! `pool` servers/health/affinity, `backend` connections and trust,
//! `body` streaming (RPC channels), `headers` header rules, `sniff` the
//! raw-head Content-Length + Transfer-Encoding detector, `handler` the
//! request path, `log` the per-request record.

mod backend;
mod body;
mod front;
mod handler;
pub mod headers;
mod log;
mod pool;
mod routes;
pub mod sniff;

pub use backend::FailureReason;
pub use log::ProxyLog;
pub use pool::Pool;

use crate::certs::Service;
use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::tls::resolver::CertificateSet;
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// The running proxy listeners and pools.
pub struct RunningProxy {
    /// (proxy name, bound address).
    pub listeners: Vec<(String, SocketAddr)>,
    pub pools: Vec<Arc<Pool>>,
    pub tasks: Vec<JoinHandle<()>>,
    /// The HttpProxy log (flushed at shutdown).
    pub log: ProxyLog,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyStartError {
    #[error("cannot listen on {addr} for proxy `{proxy}`: {source}\n  = hint: {hint}")]
    Bind {
        addr: SocketAddr,
        proxy: String,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("backend pool set-up failed: {0}")]
    Pool(String),
    #[error("TLS set-up failed for proxy `{0}`: {1}")]
    Tls(String, String),
    #[error("cannot start the proxy's threads: {0}")]
    Thread(std::io::Error),
    #[error("cannot open the HttpProxy log in {path}: {source}")]
    Log {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Starts every `[[proxy]]` listener and the pools' health checks.
pub async fn start(
    cfg: &Config,
    certificates: &Arc<CertificateSet>,
    store_cas: &[CertificateDer<'static>],
    hostname: &str,
    shutdown: &Shutdown,
    bind: impl Fn(SocketAddr) -> std::io::Result<tokio::net::TcpListener>,
) -> Result<RunningProxy, ProxyStartError> {
    let mut pools = HashMap::new();
    let mut all_pools = Vec::new();
    let mut tasks = Vec::new();
    for p in &cfg.backend_pool {
        let pool = Arc::new(Pool::from_config(p, store_cas).map_err(ProxyStartError::Pool)?);
        tasks.extend(pool.spawn_health_checks(shutdown.token.clone()));
        pools.insert(p.name.get_ref().to_ascii_lowercase(), pool.clone());
        all_pools.push(pool);
    }
    // One HttpProxy log for every listener that logs, next to the SMTP
    // protocol logs and with their size and age limits.
    let http_log = if cfg.proxy.iter().any(|p| p.log) {
        let dir = cfg.protocol_log_dir().join("HttpProxy");
        let log = cfg
            .open_protocol_log(crate::protolog::LogKind::HttpProxy, "HttpProxy")
            .map_err(|source| ProxyStartError::Log { path: dir, source })?;
        Some(ProxyLog::new(log))
    } else {
        None
    };
    let mut listeners = Vec::new();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (alive_tx, alive_rx) = tokio::sync::watch::channel(());
    for p in &cfg.proxy {
        let name = p.name.get_ref().clone();
        let fqdn = p
            .fqdn
            .as_ref()
            .map_or_else(|| hostname.to_string(), |f| f.to_string());
        let resolver = certificates.resolver(&name, &fqdn, Service::Https);
        let base = crate::tls::server_config(resolver)
            .map_err(|e| ProxyStartError::Tls(name.clone(), e.to_string()))?;
        let mut tls = (*base).clone();
        // RFC 7301: h2 preferred, HTTP/1.1 for clients without it.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let routes = p
            .routes
            .iter()
            .filter_map(|r| {
                Some(routes::Route {
                    prefix: r.prefix.get_ref().clone(),
                    pool: pools.get(&r.pool.get_ref().to_ascii_lowercase())?.clone(),
                    max_body_size: r.max_body_size.unwrap_or(p.max_body_size).0,
                    protocol: r
                        .protocol
                        .clone()
                        .unwrap_or_else(|| routes::protocol_name(r.prefix.get_ref()))
                        .into(),
                })
            })
            .collect();
        let handler = Arc::new(handler::Listener {
            name: name.clone(),
            routes: routes::RouteTable::new(routes),
            max_headers: p.max_headers,
            max_rpc_body_size: p.max_rpc_body_size.0,
            request_timeout: p.request_timeout.0,
            channel_idle_timeout: p.channel_idle_timeout.0,
            idle_timeout: p.idle_timeout.0,
            log: match &http_log {
                Some(h) if p.log => h.clone(),
                _ => ProxyLog::disabled(),
            },
            server_host: hostname.into(),
            none: Arc::from(""),
            answered: handler::Listener::answered_counters(&name),
        });
        let http = Arc::new(front::http_builder(p));
        let limit = Arc::new(tokio::sync::Semaphore::new(p.max_connections));
        for addr in &p.listen {
            let addr = *addr.get_ref();
            let listener = bind(addr).map_err(|source| ProxyStartError::Bind {
                addr,
                proxy: name.clone(),
                hint: match source.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        "another process already listens there; stop it or change `listen`"
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        "ports below 1024 need root or CAP_NET_BIND_SERVICE"
                    }
                    _ => "check the `listen` address",
                },
                source,
            })?;
            listeners.push((name.clone(), listener.local_addr().unwrap_or(addr)));
            // One front per thread, each on its own current-thread runtime
            // with its own epoll, all accepting from the one socket (like
            // nginx's workers): a request never crosses threads, and no
            // thread waits for another to hand it work.
            let shared = listener.into_std().map_err(ProxyStartError::Thread)?;
            let load: Arc<[std::sync::atomic::AtomicUsize]> =
                (0..threads).map(|_| Default::default()).collect();
            for i in 0..threads {
                let l = shared.try_clone().map_err(ProxyStartError::Thread)?;
                let front = front::FrontParts {
                    load: load.clone(),
                    thread: i,
                    acceptor: acceptor.clone(),
                    handler: handler.clone(),
                    http: http.clone(),
                    limit: limit.clone(),
                    handshake_timeout: p.idle_timeout.0.min(std::time::Duration::from_secs(30)),
                };
                let shutdown = shutdown.clone();
                let alive = alive_rx.clone();
                std::thread::Builder::new()
                    .name(format!("proxy-{i}"))
                    .spawn(move || front::serve_on_thread(l, front, shutdown, alive))
                    .map_err(ProxyStartError::Thread)?;
            }
        }
    }
    // The proxy threads run until this task ends: when the server aborts
    // its accept tasks at the end of shutdown, or when the runtime that
    // started them goes away (a test that never shut its server down).
    tasks.push(tokio::spawn(async move {
        let _alive = alive_tx;
        std::future::pending::<()>().await
    }));
    Ok(RunningProxy {
        listeners,
        pools: all_pools,
        tasks,
        log: http_log.unwrap_or_else(ProxyLog::disabled),
    })
}
