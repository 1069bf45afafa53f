//! The durable queue and the scheduler that drains it.
//!
//! ```text
//! session --submit(envelope, bytes)--> journal (fsync, group commit)
//!        <------------- Ok ----------- then the session sends 250
//!                 |
//!                 v  Job
//!            scheduler --(N blocking workers)--> delivery::maildir
//!                 |                                   |
//!                 +---- mark_done(recipients) <-------+
//! ```
//!
//! Every accepted message is in the journal before the client hears 250;
//! at start-up the journal's unfinished messages become jobs again, so a
//! crash at any instant loses nothing acknowledged (a message delivered
//! just before the crash, whose done mark was not yet written, is
//! delivered a second time: at-least-once, duplicates bounded by the
//! in-flight window).
//!
//! Recipients routed to another host go to `relay` (per-destination
//! queues in `smtp::outbound`, retry, expiry, DSN); with no send connector
//! for their domain they stay queued and are retried, never dropped.

pub mod cli;
pub mod dsn;
pub mod journal;
pub mod message;
pub mod ops;
pub mod relay;
pub mod relay_state;

use crate::delivery::maildir::Maildir;
pub use journal::{FaultInjection, Journal, Location, StorageError};
use message::{Envelope, Route};
pub use relay::{DsnRouter, Outcome, RelayJob, RelaySettings, Tracked};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Counters an operator (and the tests) can read.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub accepted: AtomicU64,
    pub delivered: AtomicU64,
    pub deferred: AtomicU64,
    pub held: AtomicU64,
    /// Messages in the queue that still have unfinished recipients.
    pub pending: AtomicU64,
}

/// Settings the queue needs from the configuration.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    pub queue_dir: PathBuf,
    pub mail_dir: PathBuf,
    pub hostname: String,
    pub segment_size: u64,
    pub delivery_workers: usize,
    pub retry_after: Duration,
    /// Outbound retry, expiry and DSN timing.
    pub relay: RelaySettings,
}

struct Job {
    msg: Arc<Tracked>,
    data: Option<Arc<Vec<u8>>>,
    attempts: u32,
    /// Relay recipients were handed to `relay` (a local retry must not
    /// send them again).
    relay_dispatched: bool,
}

/// What relaying needs besides the journal: the send side and how to
/// route a DSN back to a sender.
pub struct RelayContext {
    pub outbound: Arc<crate::smtp::outbound::Outbound>,
    pub dsn_router: DsnRouter,
}

struct Inner {
    journal: Journal,
    jobs: mpsc::UnboundedSender<Job>,
    stats: QueueStats,
    settings: QueueSettings,
    outbound: Option<Arc<crate::smtp::outbound::Outbound>>,
    dsn_router: Option<DsnRouter>,
    /// Relay recipients' retry state, kept across restarts.
    state_log: relay_state::StateLog,
    /// Messages with unfinished recipients, by ID (for `ops`).
    index: std::sync::Mutex<std::collections::HashMap<message::QueueId, Arc<Tracked>>>,
}

/// Cheap-to-clone handle to the queue.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

/// Whether delivering `job` touches the disk (reading the journal or
/// writing a Maildir), so it must run on a blocking thread.
fn needs_blocking_io(job: &Job) -> bool {
    let done = job.msg.done.lock().unwrap_or_else(|e| e.into_inner());
    job.msg
        .envelope
        .recipients
        .iter()
        .enumerate()
        .any(|(i, r)| {
            !done.contains(&(i as u32)) && matches!(r.route, Route::Mailbox { discard: false, .. })
        })
}

impl Queue {
    /// Opens the journal, recovers unfinished messages and starts the
    /// scheduler. Needs a Tokio runtime.
    pub fn start(settings: QueueSettings) -> Result<Queue, StorageError> {
        Queue::start_with(settings, None)
    }

    /// `start`, with send connectors for relay recipients.
    pub fn start_with(
        settings: QueueSettings,
        relay: Option<RelayContext>,
    ) -> Result<Queue, StorageError> {
        let (journal, recovered, report) =
            Journal::open(&settings.queue_dir, settings.segment_size)?;
        tracing::info!(
            segments = report.segments,
            messages = report.messages,
            pending = report.pending,
            torn_tails = report.torn_tails,
            quarantined = report.quarantined,
            "queue recovered"
        );
        let live: HashSet<(message::QueueId, u32)> = recovered
            .iter()
            .flat_map(|r| {
                (0..r.envelope.recipients.len() as u32)
                    .filter(|i| !r.done.contains(i))
                    .map(|i| (r.envelope.id, i))
            })
            .collect();
        let (state_log, mut restored) = relay_state::StateLog::open(&settings.queue_dir, &live);
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Queue {
            inner: Arc::new(Inner {
                journal,
                jobs: tx,
                stats: QueueStats::default(),
                settings,
                outbound: relay.as_ref().map(|r| r.outbound.clone()),
                dsn_router: relay.map(|r| r.dsn_router),
                index: Default::default(),
                state_log,
            }),
        };
        for r in recovered {
            queue.inner.stats.pending.fetch_add(1, Ordering::Relaxed);
            let id = r.envelope.id;
            let n = r.envelope.recipients.len() as u32;
            let msg = Arc::new(Tracked::new(r.location, Arc::new(r.envelope), r.done));
            for i in 0..n {
                if let Some(st) = restored.remove(&(id, i)) {
                    msg.restore(i, st);
                }
            }
            queue.enqueue(Job {
                msg,
                data: None,
                attempts: 0,
                relay_dispatched: false,
            });
        }
        tokio::spawn(queue.clone().schedule(rx));
        Ok(queue)
    }

    /// Stores a message durably. Returns only once it is on stable
    /// storage; the caller may then send 250.
    pub async fn submit(&self, envelope: Envelope, message: Vec<u8>) -> Result<(), StorageError> {
        let record = journal::encode(&envelope, &message);
        let location = self.inner.journal.append(record).await?;
        self.inner.stats.accepted.fetch_add(1, Ordering::Relaxed);
        self.inner.stats.pending.fetch_add(1, Ordering::Relaxed);
        self.enqueue(Job {
            msg: Arc::new(Tracked::new(location, Arc::new(envelope), HashSet::new())),
            data: Some(Arc::new(message)),
            attempts: 0,
            relay_dispatched: false,
        });
        Ok(())
    }

    pub fn stats(&self) -> &QueueStats {
        &self.inner.stats
    }

    /// Group-commit figures (commits, records), for metrics and the
    /// shutdown summary.
    pub fn commit_stats(&self) -> &journal::CommitStats {
        self.inner.journal.commit_stats()
    }

    /// Test seam for disk-full and fsync-failure tests.
    pub fn faults(&self) -> &FaultInjection {
        self.inner.journal.faults()
    }

    /// Flushes done marks (used at shutdown).
    pub async fn sync(&self) {
        self.inner.journal.sync().await;
    }

    fn enqueue(&self, job: Job) {
        if job.attempts == 0 {
            self.inner
                .index
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(job.msg.envelope.id, job.msg.clone());
        }
        // The receiver lives as long as any Queue handle; a send error only
        // happens during process teardown, when the journal keeps the job.
        let _ = self.inner.jobs.send(job);
    }

    async fn schedule(self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let workers = Arc::new(Semaphore::new(self.inner.settings.delivery_workers.max(1)));
        while let Some(job) = rx.recv().await {
            if !needs_blocking_io(&job) {
                // Nothing to read or write (discard-only, or held): no
                // thread hop for it.
                if let Some(retry) = self.deliver(job) {
                    self.retry_later(retry);
                }
                continue;
            }
            let Ok(permit) = workers.clone().acquire_owned().await else {
                break;
            };
            let queue = self.clone();
            tokio::spawn(async move {
                let q = queue.clone();
                let outcome = tokio::task::spawn_blocking(move || q.deliver(job)).await;
                drop(permit);
                match outcome {
                    Ok(Some(retry)) => queue.retry_later(retry),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "delivery worker failed; the message stays queued and is retried after a restart")
                    }
                }
            });
        }
    }

    fn retry_later(&self, mut job: Job) {
        job.attempts += 1;
        job.data = None; // re-read from the journal; keeps memory flat
        let delay = self.inner.settings.retry_after;
        let queue = self.clone();
        self.inner.stats.deferred.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.enqueue(job);
        });
    }

    /// Delivers what can be delivered now: local recipients here, relay
    /// recipients handed to `relay` (once). Returns the job if some local
    /// recipient failed temporarily and needs a retry.
    fn deliver(&self, mut job: Job) -> Option<Job> {
        let s = &self.inner.settings;
        let msg = job.msg.clone();
        let id = msg.envelope.id;
        let done: HashSet<u32> = msg.done.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // One copy per mailbox, whatever the number of its recipients.
        let mut by_mailbox: BTreeMap<(&str, bool), Vec<u32>> = BTreeMap::new();
        // Relay recipients grouped by domain (one transaction each).
        let mut by_domain: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (i, r) in msg.envelope.recipients.iter().enumerate() {
            let i = i as u32;
            if done.contains(&i) {
                continue;
            }
            match &r.route {
                Route::Mailbox { name, discard } => by_mailbox
                    .entry((name.as_str(), *discard))
                    .or_default()
                    .push(i),
                Route::Relay { domain } => by_domain.entry(domain.as_str()).or_default().push(i),
            }
        }
        if !job.relay_dispatched {
            job.relay_dispatched = true;
            for (domain, rcpts) in by_domain {
                // After a restart, recipients keep their attempt count and
                // wait for their next try (relay_state.rs).
                let (attempts, next_try) = msg.restored_schedule(&rcpts);
                let relay_job = RelayJob {
                    msg: msg.clone(),
                    rcpts,
                    domain: domain.to_string(),
                    data: job.data.clone(),
                    attempts,
                };
                match next_try.and_then(|t| t.duration_since(std::time::SystemTime::now()).ok()) {
                    Some(wait) => {
                        let q = self.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = relay_job.msg.wake.notified() => {}
                            }
                            q.dispatch_relay(relay_job);
                        });
                    }
                    None => self.dispatch_relay(relay_job),
                }
            }
        }
        if by_mailbox.is_empty() {
            return None;
        }
        let need_data = by_mailbox.keys().any(|(_, discard)| !discard);
        let data = match &job.data {
            Some(d) => d.clone(),
            None if !need_data => Arc::new(Vec::new()),
            None => match self.inner.journal.read_message(msg.location) {
                Ok((_, d)) => Arc::new(d),
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "cannot read queued message; will retry");
                    return Some(job);
                }
            },
        };
        let mut delivered = Vec::new();
        let mut failed = false;
        for ((name, discard), rcpts) in by_mailbox {
            let result = if discard {
                Ok(None)
            } else {
                Maildir::open(&s.mail_dir.join(name))
                    .and_then(|md| md.deliver(&msg.envelope.mail_from, &s.hostname, &data))
                    .map(Some)
            };
            match result {
                Ok(path) => {
                    tracing::debug!(queue_id = %id, mailbox = name, path = ?path, "delivered");
                    delivered.extend(rcpts);
                }
                Err(e) => {
                    tracing::warn!(queue_id = %id, mailbox = name, error = %e, attempt = job.attempts + 1, "local delivery failed; will retry");
                    failed = true;
                }
            }
        }
        self.inner
            .stats
            .delivered
            .fetch_add(delivered.len() as u64, Ordering::Relaxed);
        if !delivered.is_empty() {
            self.finish(&msg, delivered);
        }
        failed.then_some(job)
    }
}
