//! The queue's side of relaying: per-message recipient state, retry with
//! backoff and jitter, expiry, and the DSNs they trigger.
//!
//! ```text
//! Job (from submit or recovery)
//!   |-- local recipients --> maildir (mod.rs)
//!   '-- relay recipients, grouped by destination --> RelayJob
//!         --> smtp::outbound (per-destination queue, connection reuse)
//!         --> Queue::relay_done(job, results)
//!               delivered        -> finish (done mark)
//!               failed (5xx)     -> failure DSN queued durably, then finish
//!               deferred (4xx)   -> [delay DSN] -> sleep backoff -> dispatch again
//!               past expiry      -> failure DSN, then finish
//! ```
//!
//! Crash safety: a recipient is marked finished in the journal only after
//! it was delivered, or after its DSN was itself durably queued (so a
//! crash between the two sends the DSN twice, never zero times). The
//! message record is removed only when every recipient is finished.
//! Attempt counts, next tries and "delay DSN sent" are kept in memory and
//! appended to `relay_state.rs`'s file, so a restart resumes the backoff
//! instead of retrying everything at once (expiry always counts from the
//! arrival time in the journal).

use super::dsn::{self, DsnKind, DsnRecipient};
use super::message::{Envelope, Recipient, Route};
use super::{Journal, Location, Queue, QueueStats};
use crate::events;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Retry, expiry and notification settings.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    pub first_retry: Duration,
    pub max_retry_interval: Duration,
    pub expire_after: Duration,
    /// `None`: no delay DSNs.
    pub delay_dsn_after: Option<Duration>,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            first_retry: Duration::from_secs(300),
            max_retry_interval: Duration::from_secs(3600),
            expire_after: Duration::from_secs(2 * 86_400),
            delay_dsn_after: Some(Duration::from_secs(4 * 3600)),
        }
    }
}

impl RelaySettings {
    /// Wait before try number `attempt + 1` (attempt counts failures so
    /// far, from 1): exponential from `first_retry`, capped, ±10 % jitter
    /// so a crowd of deferred messages does not retry in lock-step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .first_retry
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_retry_interval);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        // A cheap, well-spread fraction in [-0.1, 0.1].
        let frac = f64::from(nanos.wrapping_mul(2_654_435_761) % 2001) / 10_000.0 - 0.1;
        base.mul_f64(1.0 + frac)
    }
}

/// A queued message shared by its local and relay deliveries.
pub struct Tracked {
    pub location: Location,
    pub envelope: Arc<Envelope>,
    /// Recipients finished (delivered, bounced or expired).
    pub done: Mutex<HashSet<u32>>,
    /// Recipients already told about a delay.
    delay_notified: Mutex<HashSet<u32>>,
    /// Relay recipients' retry state, for `Queue::list`/`show`.
    pub retry: Mutex<std::collections::HashMap<u32, RetryState>>,
    /// Wakes a waiting retry early (`Queue::retry`, `flush`).
    pub wake: tokio::sync::Notify,
}

/// Where a deferred recipient stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryState {
    pub attempts: u32,
    pub status: String,
    pub last_error: String,
    pub next_try: SystemTime,
}

impl Tracked {
    pub fn new(location: Location, envelope: Arc<Envelope>, done: HashSet<u32>) -> Tracked {
        Tracked {
            location,
            envelope,
            done: Mutex::new(done),
            delay_notified: Mutex::new(HashSet::new()),
            retry: Mutex::new(std::collections::HashMap::new()),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Seeds a recipient's retry state from `relay_state` at start-up.
    pub fn restore(&self, rcpt: u32, st: super::relay_state::RcptState) {
        if st.delay_notified {
            self.delay_notified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(rcpt);
        }
        self.retry.lock().unwrap_or_else(|e| e.into_inner()).insert(
            rcpt,
            RetryState {
                attempts: st.attempts,
                status: st.status,
                last_error: st.error,
                next_try: UNIX_EPOCH + Duration::from_secs(st.next_try),
            },
        );
    }

    /// The highest attempt count and the earliest next try among `rcpts`
    /// (restored after a restart; `(0, None)` for fresh recipients).
    pub fn restored_schedule(&self, rcpts: &[u32]) -> (u32, Option<SystemTime>) {
        let retry = self.retry.lock().unwrap_or_else(|e| e.into_inner());
        let states: Vec<&RetryState> = rcpts.iter().filter_map(|i| retry.get(i)).collect();
        if states.len() < rcpts.len() {
            return (states.iter().map(|s| s.attempts).max().unwrap_or(0), None);
        }
        (
            states.iter().map(|s| s.attempts).max().unwrap_or(0),
            states.iter().map(|s| s.next_try).min(),
        )
    }

    pub fn is_done(&self, rcpt: u32) -> bool {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&rcpt)
    }

    /// Marks `rcpts` finished (use `Queue::finish`, which also updates
    /// the index of queued messages); writes the done marks and, when this
    /// finishes the message, lets the journal drop it. Returns whether the
    /// message is now finished.
    pub(super) fn finish(&self, journal: &Journal, stats: &QueueStats, rcpts: Vec<u32>) -> bool {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let was_finished = done.len() == self.envelope.recipients.len();
        let new: Vec<u32> = rcpts.into_iter().filter(|r| done.insert(*r)).collect();
        let finished = done.len() == self.envelope.recipients.len();
        if new.is_empty() {
            return finished;
        }
        journal.mark_done(self.location, new, finished);
        if finished && !was_finished {
            stats.pending.fetch_sub(1, Ordering::Relaxed);
        }
        finished
    }
}

/// Recipients of one message for one destination, on their way out.
pub struct RelayJob {
    pub msg: Arc<Tracked>,
    pub rcpts: Vec<u32>,
    pub domain: String,
    pub data: Option<Arc<Vec<u8>>>,
    /// Failed tries so far.
    pub attempts: u32,
}

impl RelayJob {
    pub fn recipients(&self) -> Vec<(u32, &Recipient)> {
        self.rcpts
            .iter()
            .filter_map(|i| {
                self.msg
                    .envelope
                    .recipients
                    .get(*i as usize)
                    .map(|r| (*i, r))
            })
            .collect()
    }
}

/// What happened to one recipient on one try.
#[derive(Clone, Debug)]
pub enum Outcome {
    Delivered,
    /// Temporary failure: status, diagnostic.
    Deferred(String, String),
    /// Permanent failure: status, diagnostic, remote MTA if it answered.
    Failed(String, String, Option<String>),
}

/// How the DSN for a notification is routed (given by the server, which
/// owns the acceptance policy).
pub type DsnRouter = Arc<dyn Fn(&str) -> Option<Route> + Send + Sync>;

impl Queue {
    /// Sends relay recipients out (or holds them if nothing can send).
    pub(super) fn dispatch_relay(&self, job: RelayJob) {
        match &self.inner.outbound {
            Some(out) => out.dispatch(self, job),
            None => {
                if job.attempts == 0 {
                    events::emit(events::NoSendConnector {
                        detail: &format!(
                            "queue {}: no send connector for {}; {} recipient(s) stay queued",
                            job.msg.envelope.id,
                            job.domain,
                            job.rcpts.len()
                        ),
                    });
                    self.inner.stats.held.fetch_add(1, Ordering::Relaxed);
                }
                self.relay_done(
                    job,
                    Vec::new(),
                    Some(("4.4.0".into(), "no send connector for this domain".into())),
                );
            }
        }
    }

    /// Applies one try's results. `rest` covers recipients without a
    /// result of their own (e.g. the connection failed): `Some` defers
    /// them with that status, `None` is only valid when all have one.
    pub fn relay_done(
        &self,
        mut job: RelayJob,
        results: Vec<(u32, Outcome)>,
        rest: Option<(String, String)>,
    ) {
        let q = self.clone();
        tokio::spawn(async move {
            let mut delivered = Vec::new();
            let mut failed = Vec::new();
            let mut deferred: Vec<(u32, String, String)> = Vec::new();
            let mut seen = HashSet::new();
            for (i, o) in results {
                seen.insert(i);
                if job.msg.is_done(i) {
                    continue; // finished meanwhile (deleted or bounced by an operator)
                }
                match o {
                    Outcome::Delivered => delivered.push(i),
                    Outcome::Failed(s, d, m) => failed.push((i, s, d, m)),
                    Outcome::Deferred(s, d) => deferred.push((i, s, d)),
                }
            }
            for i in &job.rcpts {
                if !seen.contains(i) && !job.msg.is_done(*i) {
                    let (s, d) = rest
                        .clone()
                        .unwrap_or_else(|| ("4.0.0".into(), "no result".into()));
                    deferred.push((*i, s, d));
                }
            }
            let stats = &q.inner.stats;
            stats
                .delivered
                .fetch_add(delivered.len() as u64, Ordering::Relaxed);
            if !delivered.is_empty() {
                q.finish(&job.msg, delivered);
            }
            // Expired recipients join the failed ones.
            let age = now_secs().saturating_sub(job.msg.envelope.received_at);
            let expired = age >= q.inner.settings.relay.expire_after.as_secs();
            if expired && !deferred.is_empty() {
                events::emit(events::MessageExpired {
                    detail: &format!(
                        "queue {}: {} undelivered after {}s; last error: {}",
                        job.msg.envelope.id,
                        deferred
                            .iter()
                            .filter_map(|d| job.msg.envelope.recipients.get(d.0 as usize))
                            .map(|r| r.address.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        age,
                        deferred.first().map(|d| d.2.as_str()).unwrap_or("")
                    ),
                });
                for (i, s, d) in deferred.drain(..) {
                    failed.push((
                        i,
                        s,
                        format!("delivery time expired; last error: {d}"),
                        None,
                    ));
                }
            }
            if !failed.is_empty() {
                let ok = q.notify(&job.msg, DsnKind::Failure, &failed).await;
                let ids: Vec<u32> = failed.iter().map(|f| f.0).collect();
                if ok {
                    q.finish(&job.msg, ids);
                } else {
                    // The DSN could not be queued: keep the recipients and
                    // try again later, so no failure goes unreported.
                    for (i, s, d, _) in failed {
                        deferred.push((i, s, d));
                    }
                }
            }
            if deferred.is_empty() {
                return;
            }
            stats.deferred.fetch_add(1, Ordering::Relaxed);
            if let Some(after) = q.inner.settings.relay.delay_dsn_after
                && age >= after.as_secs()
            {
                let fresh: Vec<(u32, String, String, Option<String>)> = {
                    let mut told = job
                        .msg
                        .delay_notified
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    deferred
                        .iter()
                        .filter(|(i, _, _)| told.insert(*i))
                        .map(|(i, s, d)| (*i, s.clone(), d.clone(), None))
                        .collect()
                };
                if !fresh.is_empty() {
                    q.notify(&job.msg, DsnKind::Delay, &fresh).await;
                }
            }
            job.attempts += 1;
            job.rcpts = deferred.iter().map(|d| d.0).collect();
            job.data = None; // re-read from the journal; keeps memory flat
            let mut wait = q.inner.settings.relay.backoff(job.attempts);
            // Do not sleep past the expiry: the last try happens at it.
            let left = q
                .inner
                .settings
                .relay
                .expire_after
                .saturating_sub(Duration::from_secs(age));
            wait = wait.min(left.max(Duration::from_millis(100)));
            {
                let next_try = SystemTime::now() + wait;
                let mut retry = job.msg.retry.lock().unwrap_or_else(|e| e.into_inner());
                let told = job
                    .msg
                    .delay_notified
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                for (i, st, d) in &deferred {
                    retry.insert(
                        *i,
                        RetryState {
                            attempts: job.attempts,
                            status: st.clone(),
                            last_error: d.clone(),
                            next_try,
                        },
                    );
                    q.inner.state_log.record(&super::relay_state::RcptState {
                        id: job.msg.envelope.id.0,
                        rcpt: *i,
                        attempts: job.attempts,
                        next_try: next_try
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs(),
                        delay_notified: told.contains(i),
                        status: st.clone(),
                        error: d.clone(),
                    });
                }
            }
            tracing::info!(queue_id = %job.msg.envelope.id, domain = %job.domain, attempt = job.attempts, retry_in = ?wait, status = %deferred[0].1, error = %deferred[0].2, "relay deferred");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = job.msg.wake.notified() => {}
            }
            job.rcpts.retain(|i| !job.msg.is_done(*i));
            if !job.rcpts.is_empty() {
                q.dispatch_relay(job);
            }
        });
    }

    /// Queues a DSN about `rcpts` to the message's sender. Returns false
    /// only when the DSN could not be made durable (the caller retries);
    /// a DSN that is not wanted (null sender, NOTIFY) or cannot be routed
    /// counts as done.
    pub(crate) async fn notify(
        &self,
        msg: &Tracked,
        kind: DsnKind,
        rcpts: &[(u32, String, String, Option<String>)],
    ) -> bool {
        let env = &msg.envelope;
        let wanted: Vec<DsnRecipient> = rcpts
            .iter()
            .filter_map(|(i, status, diag, mta)| {
                let r = env.recipients.get(*i as usize)?;
                let notify_ok = match (&r.notify, kind) {
                    (None, _) => true, // RFC 3461 §4.1: default is FAILURE (and DELAY at our choice)
                    (Some(n), DsnKind::Failure) => n.failure && !n.never,
                    (Some(n), DsnKind::Delay) => n.delay && !n.never,
                };
                notify_ok.then(|| DsnRecipient {
                    address: r.address.clone(),
                    orcpt: r.orcpt.clone(),
                    status: status.clone(),
                    diagnostic: diag.clone(),
                    remote_mta: mta.clone(),
                })
            })
            .collect();
        if wanted.is_empty() {
            return true;
        }
        if env.mail_from.is_empty() {
            // RFC 5321 §6.1 / RFC 3461 §6.2: never notify a null sender;
            // this is how a failing DSN ends without a loop.
            events::emit(events::DsnDropped {
                detail: &format!(
                    "queue {}: {} to {} failed ({}); the message has a null sender, so no DSN is sent",
                    env.id,
                    if kind == DsnKind::Delay {
                        "delivery delayed"
                    } else {
                        "delivery"
                    },
                    wanted
                        .iter()
                        .map(|r| r.address.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    wanted.first().map(|r| r.diagnostic.as_str()).unwrap_or("")
                ),
            });
            return true;
        }
        let Some(route) = self
            .inner
            .dsn_router
            .as_ref()
            .and_then(|f| f(&env.mail_from))
        else {
            events::emit(events::DsnDropped {
                detail: &format!(
                    "queue {}: no route for the DSN to {}; dropped",
                    env.id, env.mail_from
                ),
            });
            return true;
        };
        let original = match self.read_data(msg.location).await {
            Some(d) => d,
            None => return false,
        };
        let hostname = self.inner.settings.hostname.clone();
        let until = UNIX_EPOCH
            + Duration::from_secs(env.received_at)
            + self.inner.settings.relay.expire_after;
        let bytes = dsn::compose(&hostname, env, kind, &wanted, &original, Some(until));
        let dsn_env = Envelope {
            id: super::message::QueueId::generate(),
            received_at: now_secs(),
            connector: "dsn".into(),
            client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            helo: hostname,
            mail_from: String::new(),
            body: None,
            smtputf8: false,
            ret: None,
            envid: None,
            recipients: vec![Recipient {
                address: env.mail_from.clone(),
                route,
                notify: None,
                orcpt: None,
            }],
        };
        let dsn_id = dsn_env.id;
        match self.submit(dsn_env, bytes).await {
            Ok(()) => {
                let detail = format!(
                    "queue {}: {} DSN {} queued to {} for {}",
                    env.id,
                    kind.as_str(),
                    dsn_id,
                    env.mail_from,
                    wanted
                        .iter()
                        .map(|r| r.address.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                match kind {
                    DsnKind::Failure => events::emit(events::FailureDsnQueued { detail: &detail }),
                    DsnKind::Delay => events::emit(events::DelayDsnQueued { detail: &detail }),
                };
                true
            }
            Err(e) => {
                tracing::error!(queue_id = %env.id, error = %e, "cannot queue the DSN; will retry");
                false
            }
        }
    }

    /// The message bytes, read on a blocking thread.
    pub(crate) async fn read_data(&self, location: Location) -> Option<Arc<Vec<u8>>> {
        let journal = self.inner.journal.clone();
        match tokio::task::spawn_blocking(move || journal.read_message(location)).await {
            Ok(Ok((_, d))) => Some(Arc::new(d)),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read a queued message");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "reader task failed");
                None
            }
        }
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_ten_percent() {
        let s = RelaySettings {
            first_retry: Duration::from_secs(300),
            max_retry_interval: Duration::from_secs(3600),
            ..RelaySettings::default()
        };
        for (attempt, base) in [
            (1, 300.0),
            (2, 600.0),
            (3, 1200.0),
            (4, 2400.0),
            (5, 3600.0),
            (30, 3600.0),
        ] {
            let d = s.backoff(attempt).as_secs_f64();
            assert!(
                d >= base * 0.899 && d <= base * 1.101,
                "attempt {attempt}: {d}"
            );
        }
    }
}
