//! Outbound SMTP: send connectors, next-hop resolution, client sessions
//! with TLS levels, per-destination queues with connection reuse.
//!
//! ```text
//! queue::relay ──RelayJob──> Outbound::dispatch
//!                              │ route.rs: most specific address space → SendConnector
//!                              │ destination key = connector + next hop (domain, or the
//!                              │   smart hosts) + TLS policy
//!                              v
//!                   Destination { jobs channel, ≤ max_connections_per_destination workers }
//!                              │ worker: next job → (re)use an open Session
//!                              │   open: dns.rs (MX by preference / implicit A/AAAA /
//!                              │   null MX) or smart hosts → client.rs (EHLO, STARTTLS at
//!                              │   the TLS level, AUTH) → memory.rs (downgrade check)
//!                              │   send: pipelined MAIL/RCPT/DATA, ≤ max_messages_per_connection
//!                              v
//!                   Queue::relay_done(job, per-recipient outcomes)
//! ```
//!
//! A destination whose every host failed fails all jobs waiting for it at
//! that moment with the same temporary error (Postfix's "dead
//! destination"), so one unreachable domain costs one round of connection
//! attempts, not one per message. Permanent DNS answers (NXDOMAIN, null
//! MX) fail the recipients at once.

pub mod client;
pub mod dns;
pub mod memory;
pub mod route;
pub mod tls;

use crate::config::{Config, SendConnectorConfig, TlsLevel};
use crate::events;
use crate::protolog::ProtocolLog;
use crate::queue::{Outcome, Queue, RelayJob};
use client::{RcptResult, Session, SessionError, SessionSetup};
use dns::{Dns, DnsFailure, Target};
use memory::TlsMemory;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tls::{TlsContext, TlsPolicy};
use tokio::sync::mpsc;

/// How long an idle reusable connection waits for the next message.
const IDLE_REUSE: Duration = Duration::from_secs(2);
/// Addresses tried per delivery attempt, across all hosts.
const MAX_ADDRESSES: usize = 10;

/// Why outbound delivery could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("send connector `{connector}`: {reason}")]
    Connector { connector: String, reason: String },
    #[error("DNS resolver: {0}")]
    Dns(String),
}

/// A configured send connector, ready to use.
pub struct SendConnector {
    pub cfg: SendConnectorConfig,
    pub spaces: Vec<String>,
    pub smart_hosts: Vec<route::SmartHost>,
    pub tls: TlsContext,
    pub credentials: Option<(String, String)>,
    pub helo: String,
    pub connector_id: String,
}

impl SendConnector {
    /// The TLS policy for mail to `domain` (per-domain override first).
    fn policy(&self, domain: &str) -> TlsPolicy {
        let pins = |v: &[String]| {
            v.iter()
                .filter_map(|f| crate::config::send::parse_fingerprint(f))
                .collect::<Vec<_>>()
        };
        if let Some(o) = self
            .cfg
            .tls_domain
            .iter()
            .find(|o| o.domain.as_str().eq_ignore_ascii_case(domain))
        {
            let mut p = pins(&o.fingerprints);
            if p.is_empty() {
                p = pins(&self.cfg.fingerprints);
            }
            return TlsPolicy {
                level: o.tls,
                names: if o.tls_names.is_empty() {
                    self.cfg.tls_names.clone()
                } else {
                    o.tls_names.clone()
                },
                pins: p,
            };
        }
        TlsPolicy {
            level: self.cfg.tls,
            names: self.cfg.tls_names.clone(),
            pins: pins(&self.cfg.fingerprints),
        }
    }
}

/// One next hop with its own queue and connection pool.
struct Destination {
    key: String,
    connector: Arc<SendConnector>,
    /// The domain for MX routing; for smart hosts, the first domain seen
    /// (used for `secure` names and the TLS memory).
    domain: String,
    policy: TlsPolicy,
    tx: mpsc::UnboundedSender<RelayJob>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<RelayJob>>,
    active: AtomicUsize,
}

/// The outbound side: connectors, resolver, TLS memory, destinations.
pub struct Outbound {
    connectors: Vec<Arc<SendConnector>>,
    dns: Option<Dns>,
    memory: TlsMemory,
    protolog: ProtocolLog,
    destinations: Mutex<HashMap<String, Arc<Destination>>>,
}

impl Outbound {
    /// Builds the connectors of `cfg`. `store` provides client
    /// certificates by thumbprint.
    pub fn from_config(
        cfg: &Config,
        store: Option<&crate::certs::CertStore>,
        protolog: ProtocolLog,
    ) -> Result<Outbound, OutboundError> {
        let hostname = cfg.server.hostname.get_ref().to_string();
        let short_host = hostname
            .split('.')
            .next()
            .unwrap_or(&hostname)
            .to_ascii_uppercase();
        let mut loaded = None;
        let mut connectors = Vec::new();
        let store_cas = store.map(|s| s.ca_certificates()).unwrap_or_default();
        for c in &cfg.send_connector {
            let name = c.name.get_ref().clone();
            let fail = |reason: String| OutboundError::Connector {
                connector: name.clone(),
                reason,
            };
            let client_cert = match &c.client_certificate {
                None => None,
                Some(thumb) => {
                    let store = store.ok_or_else(|| {
                        fail(
                            "client_certificate is set but the certificate store is not open"
                                .into(),
                        )
                    })?;
                    let report = loaded.get_or_insert_with(|| store.load());
                    let found = report
                        .usable
                        .iter()
                        .find(|l| l.info.thumbprint().as_str().eq_ignore_ascii_case(thumb))
                        .ok_or_else(|| {
                            fail(format!(
                                "client certificate {thumb} is not in the store or not usable; `gatehouse cert list` shows the thumbprints"
                            ))
                        })?;
                    Some(found.certified_key.clone())
                }
            };
            let credentials = match &c.auth_file {
                None => None,
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .map_err(|e| fail(format!("cannot read auth_file {}: {e}", p.display())))?;
                    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                    let (u, pw) = line.trim_end().split_once(':').ok_or_else(|| {
                        fail(format!(
                            "auth_file {} must hold one `user:password` line",
                            p.display()
                        ))
                    })?;
                    Some((u.to_string(), pw.to_string()))
                }
            };
            let tls =
                TlsContext::new(c.ca_file.as_deref(), &store_cas, client_cert).map_err(fail)?;
            connectors.push(Arc::new(SendConnector {
                spaces: c
                    .address_spaces
                    .iter()
                    .map(|a| a.get_ref().to_ascii_lowercase())
                    .collect(),
                smart_hosts: c
                    .smart_hosts
                    .iter()
                    .filter_map(|h| route::parse_smart_host(h.get_ref(), c.port))
                    .collect(),
                tls,
                credentials,
                helo: c
                    .helo
                    .as_ref()
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| hostname.clone()),
                connector_id: format!("{short_host}\\{name}"),
                cfg: c.clone(),
            }));
        }
        let needs_dns = connectors
            .iter()
            .any(|c| c.smart_hosts.is_empty() || c.smart_hosts.iter().any(|h| h.ip.is_none()));
        let dns = if needs_dns {
            Some(Dns::new(&cfg.dns).map_err(OutboundError::Dns)?)
        } else {
            None
        };
        Ok(Outbound {
            connectors,
            dns,
            memory: TlsMemory::open(Some(cfg.server.data_dir.join("tls-memory.json"))),
            protolog,
            destinations: Mutex::new(HashMap::new()),
        })
    }

    /// The per-domain TLS memory (tests and the admin API read it).
    pub fn tls_memory(&self) -> &TlsMemory {
        &self.memory
    }

    /// Routes `job` to its destination queue, starting a worker when the
    /// destination has fewer than its connection limit.
    pub fn dispatch(self: &Arc<Self>, queue: &Queue, job: RelayJob) {
        let spaces = self
            .connectors
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.spaces.as_slice()));
        let Some(idx) = route::select(spaces, &job.domain) else {
            if job.attempts == 0 {
                queue.stats().held.fetch_add(1, Ordering::Relaxed);
                events::emit(events::NoSendConnector {
                    detail: &format!(
                        "queue {}: no send connector's address_spaces match {}; {} recipient(s) stay queued",
                        job.msg.envelope.id,
                        job.domain,
                        job.rcpts.len()
                    ),
                });
            }
            queue.relay_done(
                job,
                Vec::new(),
                Some(("4.4.0".into(), "no send connector for this domain".into())),
            );
            return;
        };
        let Some(connector) = self.connectors.get(idx).cloned() else {
            return;
        };
        let policy = connector.policy(&job.domain);
        let hop = if connector.smart_hosts.is_empty() {
            job.domain.to_ascii_lowercase()
        } else {
            "smarthost".into()
        };
        let key = format!(
            "{}|{}|{:?}",
            connector.cfg.name.get_ref(),
            hop,
            policy.level
        );
        let dest = {
            let mut map = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.clone())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    Arc::new(Destination {
                        key,
                        domain: if connector.smart_hosts.is_empty() {
                            job.domain.to_ascii_lowercase()
                        } else {
                            connector
                                .smart_hosts
                                .first()
                                .map(|h| h.host.clone())
                                .unwrap_or_default()
                        },
                        connector: connector.clone(),
                        policy,
                        tx,
                        rx: tokio::sync::Mutex::new(rx),
                        active: AtomicUsize::new(0),
                    })
                })
                .clone()
        };
        if dest.tx.send(job).is_err() {
            return;
        }
        let max = dest.connector.cfg.max_connections_per_destination.max(1);
        let mut cur = dest.active.load(Ordering::Relaxed);
        while cur < max {
            match dest
                .active
                .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    tokio::spawn(worker(self.clone(), dest.clone(), queue.clone()));
                    break;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// The hosts to try for `dest`.
    async fn targets(&self, dest: &Destination) -> Result<Vec<(String, SocketAddr)>, DnsFailure> {
        let port = dest.connector.cfg.port;
        let mut out = Vec::new();
        if dest.connector.smart_hosts.is_empty() {
            let dns = self.dns.as_ref().ok_or_else(|| DnsFailure::Temporary {
                name: dest.domain.clone(),
                reason: "no resolver".into(),
            })?;
            // An address literal `[192.0.2.1]` needs no lookup (RFC 5321 §4.1.3).
            let targets: Vec<Target> = if dest.domain.starts_with('[') {
                vec![Target {
                    host: dest.domain.clone(),
                    addrs: dns.addresses(&dest.domain).await?,
                }]
            } else {
                dns.mx_targets(&dest.domain).await?
            };
            for t in targets {
                for a in t.addrs {
                    out.push((t.host.clone(), SocketAddr::new(a, port)));
                }
            }
        } else {
            let mut last = None;
            for h in &dest.connector.smart_hosts {
                match (h.ip, &self.dns) {
                    (Some(ip), _) => out.push((h.host.clone(), SocketAddr::new(ip, h.port))),
                    (None, Some(dns)) => match dns.addresses(&h.host).await {
                        Ok(addrs) => out.extend(
                            addrs
                                .into_iter()
                                .map(|a| (h.host.clone(), SocketAddr::new(a, h.port))),
                        ),
                        Err(e) => last = Some(e),
                    },
                    (None, None) => {}
                }
            }
            if out.is_empty() {
                return Err(match last {
                    Some(DnsFailure::Temporary { name, reason }) => {
                        DnsFailure::Temporary { name, reason }
                    }
                    Some(e) => DnsFailure::Temporary {
                        name: dest.domain.clone(),
                        reason: format!("smart host does not resolve: {e}"),
                    },
                    None => DnsFailure::Temporary {
                        name: dest.domain.clone(),
                        reason: "no smart host resolves".into(),
                    },
                });
            }
        }
        out.truncate(MAX_ADDRESSES);
        Ok(out)
    }

    /// Opens a session to the first host that works. `Err` carries the
    /// error of the last host tried.
    async fn open(&self, dest: &Destination, domain: &str) -> Result<Session, OpenError> {
        self.open_skipping(dest, domain, &[]).await
    }

    /// `open`, leaving out the addresses in `skip` (hosts that already
    /// deferred this transaction).
    async fn open_skipping(
        &self,
        dest: &Destination,
        domain: &str,
        skip: &[SocketAddr],
    ) -> Result<Session, OpenError> {
        let targets = self.targets(dest).await.map_err(OpenError::Dns)?;
        let c = &dest.connector;
        let mut last: Option<SessionError> = None;
        for (host, addr) in targets.into_iter().filter(|(_, a)| !skip.contains(a)) {
            let mut plaintext_only = false;
            // `secure` checks the next hop: the recipient domain for MX
            // routing, the smart host's name for a smart host.
            let next_hop = if c.smart_hosts.is_empty() {
                domain
            } else {
                host.as_str()
            };
            loop {
                let setup = SessionSetup {
                    helo: &c.helo,
                    host: &host,
                    domain: next_hop,
                    policy: &dest.policy,
                    tls: &c.tls,
                    plaintext_only,
                    credentials: c.credentials.as_ref(),
                    timeout: c.cfg.command_timeout.0,
                };
                let log = if c.cfg.protocol_log {
                    self.protolog.clone()
                } else {
                    ProtocolLog::disabled()
                };
                match Session::open(
                    addr,
                    c.cfg.source_address,
                    c.cfg.connect_timeout.0,
                    &log,
                    &c.connector_id,
                    &setup,
                )
                .await
                {
                    Ok(s) => match self.check_memory(dest, s) {
                        Ok(s) => return Ok(s),
                        Err(e) => {
                            last = Some(e);
                            break;
                        }
                    },
                    // RFC 7435 / SPEC: `may` falls back to plaintext when
                    // STARTTLS fails before any mail data was sent.
                    Err(SessionError::TlsFailed { host: h, reason })
                        if dest.policy.level == TlsLevel::May && !plaintext_only =>
                    {
                        events::emit(events::OutboundTlsFallbackPlaintext {
                            detail: &format!(
                                "connector {}: STARTTLS with {h} ({addr}) failed ({reason}); retrying in plaintext (TLS level may)",
                                c.cfg.name.get_ref()
                            ),
                        });
                        plaintext_only = true;
                    }
                    Err(e) => {
                        if matches!(
                            e,
                            SessionError::TlsFailed { .. } | SessionError::TlsNotOffered { .. }
                        ) {
                            events::emit(events::OutboundTlsFailed {
                                detail: &format!(
                                    "connector {}: {addr}: {e} (TLS level {})",
                                    c.cfg.name.get_ref(),
                                    dest.policy.level.as_str()
                                ),
                            });
                        }
                        tracing::info!(destination = %dest.key, %addr, error = %e, "host failed; trying the next one");
                        last = Some(e);
                        break;
                    }
                }
            }
        }
        Err(OpenError::Session(last))
    }

    /// The TLS memory: report (and with enforcement, refuse) a session
    /// below the best protection seen for this destination.
    fn check_memory(&self, dest: &Destination, mut s: Session) -> Result<Session, SessionError> {
        let Some(best) = self.memory.record(&dest.domain, s.protection) else {
            return Ok(s);
        };
        events::emit(events::OutboundTlsDowngrade {
            detail: &format!(
                "{}: session with {} is {} but {} was seen {} before{}",
                dest.connector.cfg.name.get_ref(),
                s.host,
                s.protection.as_str(),
                dest.domain,
                best.as_str(),
                if dest.connector.cfg.enforce_tls_memory {
                    "; refused (enforce_tls_memory)"
                } else {
                    ""
                }
            ),
        });
        s.log.info(
            &format!("seen={};best={}", s.protection.as_str(), best.as_str()),
            "TLS downgrade",
        );
        if dest.connector.cfg.enforce_tls_memory {
            let e = SessionError::Downgrade {
                host: s.host.clone(),
                domain: dest.domain.clone(),
                seen: s.protection.as_str(),
                best: best.as_str(),
            };
            s.abandon(&e.to_string());
            return Err(e);
        }
        Ok(s)
    }
}

enum OpenError {
    Dns(DnsFailure),
    Session(Option<SessionError>),
}

/// Takes the next job: waits up to `idle` when a session is open (so it
/// can be reused), otherwise only takes what is already waiting.
async fn next_job(dest: &Destination, idle: Option<Duration>) -> Option<RelayJob> {
    let mut rx = dest.rx.lock().await;
    match idle {
        None => rx.try_recv().ok(),
        Some(d) => tokio::time::timeout(d, rx.recv()).await.ok().flatten(),
    }
}

/// Fails every job waiting for `dest` now with the same outcome.
async fn drain(dest: &Destination, queue: &Queue, status: &str, diag: &str, permanent: bool) {
    loop {
        let job = { dest.rx.lock().await.try_recv().ok() };
        let Some(job) = job else { break };
        finish_all(queue, job, status, diag, permanent, None);
    }
}

fn finish_all(
    queue: &Queue,
    job: RelayJob,
    status: &str,
    diag: &str,
    permanent: bool,
    mta: Option<String>,
) {
    if permanent {
        let results = job
            .rcpts
            .iter()
            .map(|i| (*i, Outcome::Failed(status.into(), diag.into(), mta.clone())))
            .collect();
        queue.relay_done(job, results, None);
    } else {
        queue.relay_done(job, Vec::new(), Some((status.into(), diag.into())));
    }
}

/// One connection's life: take jobs for `dest`, send them over one
/// session (reconnecting after max_messages_per_connection), stop when
/// idle.
async fn worker(out: Arc<Outbound>, dest: Arc<Destination>, queue: Queue) {
    loop {
        serve(&out, &dest, &queue).await;
        dest.active.fetch_sub(1, Ordering::AcqRel);
        // A job may have arrived between the last look and the decrement;
        // make sure someone serves it.
        let waiting = { !dest.rx.lock().await.is_empty() };
        if !waiting {
            return;
        }
        let max = dest.connector.cfg.max_connections_per_destination.max(1);
        if dest.active.fetch_add(1, Ordering::AcqRel) >= max {
            dest.active.fetch_sub(1, Ordering::AcqRel);
            return;
        }
    }
}

async fn serve(out: &Arc<Outbound>, dest: &Arc<Destination>, queue: &Queue) {
    let mut session: Option<Session> = None;
    loop {
        let idle = session.as_ref().map(|_| IDLE_REUSE);
        let Some(mut job) = next_job(dest, idle).await else {
            break;
        };
        // An operator may have deleted or bounced recipients meanwhile.
        job.rcpts.retain(|i| !job.msg.is_done(*i));
        if job.rcpts.is_empty() {
            continue;
        }
        if job.data.is_none() {
            job.data = queue.read_data(job.msg.location).await;
        }
        let Some(data) = job.data.clone() else {
            finish_all(
                queue,
                job,
                "4.3.0",
                "cannot read the queued message",
                false,
                None,
            );
            continue;
        };
        let mut s = match session.take() {
            Some(s) => s,
            None => match out.open(dest, &job.domain).await {
                Ok(s) => s,
                Err(OpenError::Dns(e)) => {
                    events::emit(events::OutboundDnsFailure {
                        detail: &format!("{}: {e}", dest.key),
                    });
                    let permanent = e.is_permanent();
                    let diag = e.to_string();
                    finish_all(queue, job, e.status(), &diag, permanent, None);
                    drain(dest, queue, e.status(), &diag, permanent).await;
                    continue;
                }
                Err(OpenError::Session(e)) => {
                    let (status, diag, permanent) = match &e {
                        // A 5xx greeting or EHLO from the last host is
                        // still only that host's opinion: retry later.
                        Some(e) => (e.status(), e.to_string(), false),
                        None => (
                            "4.4.1".to_string(),
                            "no host to connect to".to_string(),
                            false,
                        ),
                    };
                    let status = match status.strip_prefix('5') {
                        Some(rest) => format!("4{rest}"),
                        None => status,
                    };
                    events::emit(events::OutboundConnectionFailed {
                        detail: &format!("{}: {diag}", dest.key),
                    });
                    finish_all(queue, job, &status, &diag, permanent, None);
                    drain(dest, queue, &status, &diag, permanent).await;
                    continue;
                }
            },
        };
        let rcpts = job.recipients();
        let reused = s.messages > 0;
        let mut result = s.send(&job.msg.envelope, &rcpts, &data).await;
        // A reused connection the peer closed while idle fails at the
        // first command, before anything of this message was accepted:
        // open a fresh one and try once more instead of deferring.
        if reused
            && let Err(
                SessionError::Io { stage: "MAIL", .. }
                | SessionError::Timeout { stage: "MAIL", .. },
            ) = &result
        {
            s.abandon("connection closed while idle; reconnecting");
            match out.open(dest, &job.domain).await {
                Ok(fresh) => {
                    s = fresh;
                    result = s.send(&job.msg.envelope, &rcpts, &data).await;
                }
                Err(_) => {
                    finish_all(
                        queue,
                        job,
                        "4.4.1",
                        "connection lost and reconnect failed",
                        false,
                        None,
                    );
                    continue;
                }
            }
        }
        // A 4xx for the whole transaction (MAIL refused, or every RCPT
        // deferred) is this host's trouble, not the destination's: try the
        // next MX or smart host now, as Postfix does, before deferring.
        let mut tried = vec![s.addr];
        while let Ok(results) = &result
            && !results.is_empty()
            && results
                .iter()
                .all(|(_, r)| matches!(r, RcptResult::Deferred(..)))
        {
            let Ok(next) = out.open_skipping(dest, &job.domain, &tried).await else {
                break;
            };
            let why = results
                .iter()
                .find_map(|(_, r)| match r {
                    RcptResult::Deferred(st, d) => Some(format!("{st} {d}")),
                    _ => None,
                })
                .unwrap_or_default();
            tracing::info!(destination = %dest.key, host = %s.host, next = %next.host, reason = %why, "transaction deferred; trying the next host");
            s.quit().await;
            s = next;
            tried.push(s.addr);
            result = s.send(&job.msg.envelope, &rcpts, &data).await;
        }
        match result {
            Ok(results) => {
                let mta = s.host.clone();
                let outcomes = results
                    .into_iter()
                    .map(|(i, r)| {
                        (
                            i,
                            match r {
                                RcptResult::Delivered(_) => Outcome::Delivered,
                                RcptResult::Deferred(st, d) => Outcome::Deferred(st, d),
                                RcptResult::Failed(st, d) => {
                                    Outcome::Failed(st, d, Some(mta.clone()))
                                }
                            },
                        )
                    })
                    .collect();
                queue.relay_done(job, outcomes, None);
                if s.messages >= dest.connector.cfg.max_messages_per_connection {
                    s.quit().await;
                } else {
                    session = Some(s);
                }
            }
            Err(e) => {
                let diag = e.to_string();
                s.abandon(&diag);
                finish_all(queue, job, &e.status(), &diag, false, None);
            }
        }
    }
    if let Some(s) = session {
        s.quit().await;
    }
}
