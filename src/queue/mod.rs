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
//! Recipients routed to a relay domain wait here until send connectors
//! exist; they are kept, never dropped.

pub mod journal;
pub mod message;

use crate::delivery::maildir::Maildir;
pub use journal::{FaultInjection, Journal, Location, StorageError};
use message::{Envelope, Route};
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
}

struct Job {
    location: Location,
    envelope: Arc<Envelope>,
    data: Option<Arc<Vec<u8>>>,
    done: HashSet<u32>,
    attempts: u32,
}

struct Inner {
    journal: Journal,
    jobs: mpsc::UnboundedSender<Job>,
    stats: QueueStats,
    settings: QueueSettings,
}

/// Cheap-to-clone handle to the queue.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

/// Whether delivering `job` touches the disk (reading the journal or
/// writing a Maildir), so it must run on a blocking thread.
fn needs_blocking_io(job: &Job) -> bool {
    let pending_local = job.envelope.recipients.iter().enumerate().any(|(i, r)| {
        !job.done.contains(&(i as u32)) && matches!(r.route, Route::Mailbox { discard: false, .. })
    });
    pending_local || job.data.is_none()
}

impl Queue {
    /// Opens the journal, recovers unfinished messages and starts the
    /// scheduler. Needs a Tokio runtime.
    pub fn start(settings: QueueSettings) -> Result<Queue, StorageError> {
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
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Queue {
            inner: Arc::new(Inner {
                journal,
                jobs: tx,
                stats: QueueStats::default(),
                settings,
            }),
        };
        for r in recovered {
            queue.inner.stats.pending.fetch_add(1, Ordering::Relaxed);
            queue.enqueue(Job {
                location: r.location,
                envelope: Arc::new(r.envelope),
                data: None,
                done: r.done,
                attempts: 0,
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
            location,
            envelope: Arc::new(envelope),
            data: Some(Arc::new(message)),
            done: HashSet::new(),
            attempts: 0,
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

    /// Delivers what can be delivered now. Returns the job if some local
    /// recipient failed temporarily and needs a retry.
    fn deliver(&self, mut job: Job) -> Option<Job> {
        let s = &self.inner.settings;
        let id = job.envelope.id;
        let data = match &job.data {
            Some(d) => d.clone(),
            None => match self.inner.journal.read_message(job.location) {
                Ok((_, d)) => Arc::new(d),
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "cannot read queued message; will retry");
                    return Some(job);
                }
            },
        };
        // One copy per mailbox, whatever the number of its recipients.
        let mut by_mailbox: BTreeMap<(&str, bool), Vec<u32>> = BTreeMap::new();
        let mut held = 0;
        for (i, r) in job.envelope.recipients.iter().enumerate() {
            let i = i as u32;
            if job.done.contains(&i) {
                continue;
            }
            match &r.route {
                Route::Mailbox { name, discard } => by_mailbox
                    .entry((name.as_str(), *discard))
                    .or_default()
                    .push(i),
                Route::Relay { domain } => {
                    held += 1;
                    if job.attempts == 0 {
                        tracing::warn!(queue_id = %id, recipient = %r.address, domain = %domain, "recipient held in the queue: no send connector is configured for relay domains yet");
                    }
                }
            }
        }
        let mut delivered = Vec::new();
        let mut failed = false;
        for ((name, discard), rcpts) in by_mailbox {
            let result = if discard {
                Ok(None)
            } else {
                Maildir::open(&s.mail_dir.join(name))
                    .and_then(|md| md.deliver(&job.envelope.mail_from, &s.hostname, &data))
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
        job.done.extend(delivered.iter().copied());
        let finished = job.done.len() == job.envelope.recipients.len();
        if !delivered.is_empty() || finished {
            self.inner
                .journal
                .mark_done(job.location, delivered, finished);
        }
        if finished {
            self.inner.stats.pending.fetch_sub(1, Ordering::Relaxed);
        } else if held > 0 && !failed && job.attempts == 0 {
            self.inner.stats.held.fetch_add(1, Ordering::Relaxed);
        }
        failed.then_some(job)
    }
}
