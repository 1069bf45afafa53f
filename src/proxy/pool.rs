//! Backend pools: servers with weights, health, idle connections, and the
//! choice of a server for a request.
//!
//! Choice (SPEC 2.9):
//! * with an anchor mailbox: weighted rendezvous hashing (highest random
//!   weight, Thaler & Ravishankar 1998) of the lower-cased anchor over the
//!   healthy servers. It is a consistent hash: one user's requests land on
//!   one server, and when a server goes down only its users move (each to
//!   the server that scored second for them), and they move back when it
//!   recovers;
//! * otherwise the healthy server with the fewest outstanding requests
//!   relative to its weight, ties broken round-robin.
//!
//! Health: an optional active check (`GET path`, `interval`, `rise`/`fall`
//! thresholds) per server; servers start healthy so a fresh start does not
//! refuse traffic for `rise` intervals.

use super::backend::{self, BackendConn, BackendFailure, Endpoint};
use super::body::empty;
use crate::config::{BackendPoolConfig, HealthCheckConfig};
use crate::events;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One backend server and its live state.
pub struct Server {
    pub endpoint: Endpoint,
    pub weight: u32,
    healthy: AtomicBool,
    outstanding: AtomicUsize,
    /// Idle connections with the instant each went idle and the proxy
    /// thread whose runtime its socket is registered with: a connection
    /// is only reused on that thread (driven from another one, its I/O
    /// events would wait for the first thread's runtime).
    idle: Mutex<Vec<(BackendConn, Instant, std::thread::ThreadId)>>,
    max_idle: usize,
}

impl Server {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// An idle connection that can take a request now, if any, with how
    /// long it was idle. Closed ones are dropped. The most recently used
    /// first (LIFO): the least likely to have been closed by the
    /// backend's keep-alive timer.
    fn take_idle(&self) -> Option<(BackendConn, Duration)> {
        let me = std::thread::current().id();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(i) = idle.iter().rposition(|(_, _, t)| *t == me) {
            let (mut c, since, _) = idle.remove(i);
            if c.is_ready() {
                return Some((c, since.elapsed()));
            }
        }
        None
    }

    /// Keeps a connection that can take a request at once.
    pub(super) fn push_idle(&self, c: BackendConn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push((c, Instant::now(), std::thread::current().id()));
        }
    }

    /// A connection whose response ended but which has not turned idle
    /// yet (rare: the end was not processed): a small task drives it
    /// until it is ready (bounded), then keeps it.
    pub(super) fn give_back_later(self: &Arc<Self>, mut c: BackendConn) {
        let server = self.clone();
        tokio::spawn(async move {
            let ready = std::future::poll_fn(|cx| {
                if !c.drive(cx) {
                    return std::task::Poll::Ready(false);
                }
                c.sender.poll_ready(cx).map(|r| r.is_ok())
            });
            if let Ok(true) = tokio::time::timeout(Duration::from_secs(5), ready).await {
                server.push_idle(c);
            }
        });
    }
}

/// A pool: servers plus the pool's trust and routing options.
pub struct Pool {
    pub name: String,
    pub servers: Vec<Arc<Server>>,
    /// `None`: plain HTTP to the backends.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub untrusted_allowed: bool,
    /// Requests sent without certificate verification (opt-out counter,
    /// `gatehouse_proxy_unverified_requests` on /metrics).
    pub unverified_requests: crate::admin::metrics::Counter,
    pub rewrite_host: bool,
    pub connect_timeout: Duration,
    pub anchor_cookie: Option<String>,
    pub anchor_query: Option<String>,
    health: Option<HealthCheckConfig>,
    rr: AtomicUsize,
}

/// A server picked for a request: holds one outstanding-request count
/// until dropped (the connection itself goes back to the idle list from
/// its response body, `backend::DrivenBody`).
pub struct Lease {
    pub server: Arc<Server>,
}

impl Lease {
    /// A lease on a connection kept elsewhere (a pinned one): counts one
    /// outstanding request on `server` until dropped.
    pub fn hold(server: Arc<Server>) -> Lease {
        server.outstanding.fetch_add(1, Ordering::Relaxed);
        Lease { server }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.server.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn from_config(
        cfg: &BackendPoolConfig,
        store_cas: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Pool, String> {
        let tls = if cfg.tls {
            Some(backend::client_config(cfg, store_cas)?)
        } else {
            None
        };
        let servers = cfg
            .servers
            .iter()
            .filter_map(|s| {
                Some(Arc::new(Server {
                    endpoint: Endpoint::from_config(s)?,
                    weight: s.weight.max(1),
                    healthy: AtomicBool::new(true),
                    outstanding: AtomicUsize::new(0),
                    idle: Mutex::new(Vec::new()),
                    max_idle: cfg.max_idle_per_server,
                }))
            })
            .collect();
        let untrusted_allowed = cfg.tls && cfg.allow_internal_untrusted_certs;
        if untrusted_allowed {
            events::emit(events::ProxyUntrustedCertsAllowed {
                pool: cfg.name.get_ref(),
            });
        }
        Ok(Pool {
            name: cfg.name.get_ref().clone(),
            servers,
            tls,
            untrusted_allowed,
            unverified_requests: crate::admin::metrics::PROXY_UNVERIFIED_REQUESTS
                .handle(&[cfg.name.get_ref()]),
            rewrite_host: cfg.rewrite_host,
            connect_timeout: cfg.connect_timeout.0,
            anchor_cookie: cfg.anchor_cookie.clone(),
            anchor_query: cfg.anchor_query.clone(),
            health: cfg.health_check.clone(),
            rr: AtomicUsize::new(0),
        })
    }

    /// Picks a healthy server (see the module comment); `None` when no
    /// server is healthy.
    pub fn choose(&self, anchor: Option<&str>) -> Option<Arc<Server>> {
        let healthy = self.servers.iter().filter(|s| s.is_healthy());
        let chosen = match anchor {
            Some(a) => {
                let key = a.to_ascii_lowercase();
                healthy
                    .map(|s| (rendezvous_score(&key, &s.endpoint.display, s.weight), s))
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, s)| s.clone())
            }
            None => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                let n = self.servers.len().max(1);
                let mut best: Option<&Arc<Server>> = None;
                for i in 0..self.servers.len() {
                    let Some(s) = self.servers.get((start + i) % n) else {
                        continue;
                    };
                    if !s.is_healthy() {
                        continue;
                    }
                    // outstanding/weight < best.outstanding/best.weight
                    let better = best.is_none_or(|b| {
                        (s.outstanding() as u64) * u64::from(b.weight)
                            < (b.outstanding() as u64) * u64::from(s.weight)
                    });
                    if better {
                        best = Some(s);
                    }
                }
                best.cloned()
            }
        }?;
        chosen.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(chosen)
    }

    /// A connection to `server` (whose outstanding count `choose` took,
    /// held by the lease): an idle one when available (then with how long
    /// it was idle), else a new one.
    pub async fn lease(
        &self,
        server: Arc<Server>,
    ) -> Result<(Lease, BackendConn, Option<Duration>), BackendFailure> {
        let lease = Lease { server };
        if let Some((c, idle_for)) = lease.server.take_idle() {
            return Ok((lease, c, Some(idle_for)));
        }
        let c = self.connect(&lease.server).await?;
        Ok((lease, c, None))
    }

    pub async fn connect(&self, server: &Server) -> Result<BackendConn, BackendFailure> {
        backend::connect(&server.endpoint, self.tls.as_ref(), self.connect_timeout).await
    }

    /// Runs the active health checks of every server until `stop`.
    pub fn spawn_health_checks(
        self: &Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(hc) = self.health.clone() else {
            return Vec::new();
        };
        self.servers
            .iter()
            .map(|s| {
                let pool = self.clone();
                let server = s.clone();
                let hc = hc.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = pool.health_loop(server, hc) => {}
                    }
                })
            })
            .collect()
    }

    async fn health_loop(&self, server: Arc<Server>, hc: HealthCheckConfig) {
        let (mut ok_run, mut fail_run) = (0u32, 0u32);
        loop {
            let result = tokio::time::timeout(hc.timeout.0, self.probe(&server, &hc.path)).await;
            let outcome = match result {
                Ok(Ok(status)) if status < 400 => Ok(()),
                Ok(Ok(status)) => Err(format!("HTTP status {status}")),
                Ok(Err(f)) => Err(format!("{} ({})", f.reason.as_str(), f.detail)),
                Err(_) => Err(format!("timeout after {:?}", hc.timeout.0)),
            };
            match outcome {
                Ok(()) => {
                    fail_run = 0;
                    ok_run = ok_run.saturating_add(1);
                    if !server.is_healthy() && ok_run >= hc.rise {
                        server.healthy.store(true, Ordering::Relaxed);
                        events::emit(events::ProxyBackendUp {
                            pool: &self.name,
                            backend: &server.endpoint.display,
                        });
                    }
                }
                Err(why) => {
                    ok_run = 0;
                    fail_run = fail_run.saturating_add(1);
                    if server.is_healthy() && fail_run >= hc.fall {
                        server.healthy.store(false, Ordering::Relaxed);
                        // Its idle connections are probably dead too.
                        server
                            .idle
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clear();
                        events::emit(events::ProxyBackendDown {
                            pool: &self.name,
                            backend: &server.endpoint.display,
                            failures: fail_run,
                            path: &hc.path,
                            why: &why.to_string(),
                        });
                    }
                }
            }
            tokio::time::sleep(hc.interval.0).await;
        }
    }

    /// One health probe on a fresh connection; returns the status code.
    async fn probe(&self, server: &Server, path: &str) -> Result<u16, BackendFailure> {
        let mut sender = self.connect(server).await?.detach();
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, server.endpoint.tls_name.as_str())
            .header(hyper::header::USER_AGENT, "Gatehouse-HealthCheck")
            .header(hyper::header::CONNECTION, "close")
            .body(empty())
            .map_err(|e| BackendFailure::new(backend::FailureReason::Protocol, e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| BackendFailure::new(backend::FailureReason::Protocol, e.to_string()))?;
        Ok(resp.status().as_u16())
    }
}

/// Weighted rendezvous score: `-w / ln(u)` with `u` uniform in (0, 1)
/// from a hash of (key, server). The highest score wins; for equal weights
/// this is plain HRW, and a server of weight 2 wins twice as many keys.
fn rendezvous_score(key: &str, server: &str, weight: u32) -> f64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    server.hash(&mut h);
    let x = h.finish();
    // 53 random bits, never 0 and never 1.
    let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_lost_servers_keys() {
        let servers = ["a:1", "b:1", "c:1"];
        fn pick(key: &str, set: &[&'static str]) -> &'static str {
            set.iter()
                .map(|s| (rendezvous_score(key, s, 1), *s))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap()
                .1
        }
        let mut moved = 0;
        let mut counts = std::collections::HashMap::new();
        for i in 0..3000 {
            let key = format!("user{i}@example.test");
            let before = pick(&key, &servers);
            *counts.entry(before).or_insert(0) += 1;
            let after = pick(&key, &["a:1", "c:1"]);
            if before != "b:1" {
                assert_eq!(before, after, "{key} moved although its server stayed");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 800 && moved < 1200, "{moved}");
        assert!(counts.values().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn weight_two_gets_about_twice_the_keys() {
        let mut heavy = 0;
        for i in 0..3000 {
            let key = format!("u{i}");
            if rendezvous_score(&key, "h:1", 2) > rendezvous_score(&key, "l:1", 1) {
                heavy += 1;
            }
        }
        assert!((1800..2200).contains(&heavy), "{heavy}");
    }
}
