//! The durable spool: append-only segment files with group commit.
//!
//! ```text
//! sessions --Append--> [channel] --> journal thread: write batch, fdatasync,
//!                                     then answer every Append in the batch
//! scheduler --mark_done--> [done list] --> taken by the journal thread at
//!                                     its next wake (a commit, or within
//!                                     DONE_MARK_DELAY), appended to .done
//! ```
//!
//! Files under `<queue_dir>`:
//! * `seg-<16 hex>.log`: message records, each
//!   `"GHM1" | len u32le | crc32 u32le | env_len u32le | envelope JSON | message`.
//! * `seg-<16 hex>.done`: fixed 13-byte entries `offset u64le | rcpt u32le | 1`
//!   marking a recipient of the record at `offset` as finished.
//! * `quarantine/`: records that failed their checksum, kept for inspection.
//!
//! Durability: an Append is answered only after `fdatasync` of the segment
//! (and, for a new segment, of the directory), so a 250 is never sent for
//! bytes that are not on stable storage. All sessions waiting at the same
//! moment share one fsync: that is the group commit. A write or sync error
//! fails the whole batch (the session answers 452 4.3.1), truncates the
//! segment back to its last good length and seals it; the next batch goes
//! to a fresh segment, so nothing acknowledged earlier is touched.
//!
//! Done marks are written without waiting for fsync (they are synced at
//! most a second later): losing one after a power cut re-delivers a
//! message, never loses one. They do not wake the journal thread: the
//! scheduler only pushes them onto a shared list, which the thread takes
//! whenever it wakes for a commit, or after at most `DONE_MARK_DELAY`
//! when no commit comes. Under load that saves a futex wake and a context
//! switch per message; it widens the re-delivery window after a crash by
//! at most that delay.
//!
//! A segment whose every message is finished, and which is not the one
//! being written, is deleted together with its `.done` file.

use super::message::Envelope;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const MAGIC: &[u8; 4] = b"GHM1";
const HEADER: usize = 12;
const DONE_ENTRY: usize = 13;
/// Upper bound of bytes gathered into one commit.
const MAX_BATCH_BYTES: usize = 32 << 20;
/// Longest time a done mark waits for the journal thread when no commit
/// wakes it earlier.
const DONE_MARK_DELAY: Duration = Duration::from_millis(100);
/// How often written done marks are synced.
const DONE_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Where a record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
}

/// A storage failure, as the session reports it in its 452.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("queue {op} failed: {source}")]
    Io { op: &'static str, source: io::Error },
    #[error("the queue is shut down")]
    Closed,
}

impl StorageError {
    fn io(op: &'static str) -> impl FnOnce(io::Error) -> StorageError {
        move |source| StorageError::Io { op, source }
    }
}

/// Test seam: makes the next writes or syncs fail as a full disk or a
/// failing device would, without needing a real one.
#[derive(Debug, Default)]
pub struct FaultInjection {
    pub fail_writes: AtomicBool,
    pub fail_syncs: AtomicBool,
}

/// What the group commit achieves: `records / commits` is the mean batch
/// size, i.e. how many messages share one fdatasync.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Successful batches (one write and one fdatasync each).
    pub commits: AtomicU64,
    /// Records acknowledged by those batches.
    pub records: AtomicU64,
}

/// A message found in the spool at start-up.
#[derive(Debug)]
pub struct Recovered {
    pub location: Location,
    pub envelope: Envelope,
    /// Recipient indexes already finished before the restart.
    pub done: HashSet<u32>,
}

/// What start-up found, for the log line an operator reads.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub messages: usize,
    pub pending: usize,
    pub torn_tails: usize,
    pub quarantined: usize,
}

enum Op {
    Append {
        record: Vec<u8>,
        reply: oneshot::Sender<Result<Location, StorageError>>,
    },
    Sync {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the journal thread. Cloning is cheap.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Op>,
    done: Arc<DoneList>,
    commit_stats: Arc<CommitStats>,
    dir: Arc<PathBuf>,
    faults: Arc<FaultInjection>,
}

/// Encodes a record (without its location, which the journal assigns).
pub fn encode(envelope: &Envelope, message: &[u8]) -> Vec<u8> {
    let env = serde_json::to_vec(envelope).expect("envelope serialises");
    let payload_len = 4 + env.len() + message.len();
    let mut rec = Vec::with_capacity(HEADER + payload_len);
    rec.extend_from_slice(MAGIC);
    rec.extend_from_slice(&(payload_len as u32).to_le_bytes());
    rec.extend_from_slice(&[0; 4]);
    rec.extend_from_slice(&(env.len() as u32).to_le_bytes());
    rec.extend_from_slice(&env);
    rec.extend_from_slice(message);
    let crc = crc32fast::hash(&rec[HEADER..]);
    rec[8..12].copy_from_slice(&crc.to_le_bytes());
    rec
}

fn decode_payload(payload: &[u8]) -> Option<(Envelope, &[u8])> {
    let env_len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let env = payload.get(4..4 + env_len)?;
    let envelope = serde_json::from_slice(env).ok()?;
    Some((envelope, &payload[4 + env_len..]))
}

fn segment_path(dir: &Path, seg: u64, ext: &str) -> PathBuf {
    dir.join(format!("seg-{seg:016X}.{ext}"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Opens (creating if needed) the spool in `dir`, recovers what is
    /// there and starts the journal thread.
    pub fn open(
        dir: &Path,
        segment_size: u64,
    ) -> Result<(Journal, Vec<Recovered>, RecoveryReport), StorageError> {
        fs::create_dir_all(dir).map_err(StorageError::io("create directory"))?;
        let (recovered, report, pending, next_seg) =
            recover(dir).map_err(StorageError::io("recovery"))?;
        let faults = Arc::new(FaultInjection::default());
        let (tx, rx) = mpsc::channel();
        let done = Arc::new(DoneList::default());
        let commit_stats = Arc::new(CommitStats::default());
        let mut writer = Writer {
            commit_stats: commit_stats.clone(),
            done_list: done.clone(),
            dir: dir.to_path_buf(),
            segment_size,
            active: None,
            next_seg,
            pending,
            done_files: HashMap::new(),
            done_dirty: false,
            last_done_sync: Instant::now(),
            faults: faults.clone(),
        };
        std::thread::Builder::new()
            .name("gatehouse-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(StorageError::io("start journal thread"))?;
        Ok((
            Journal {
                tx,
                done,
                commit_stats,
                dir: Arc::new(dir.to_path_buf()),
                faults,
            },
            recovered,
            report,
        ))
    }

    /// Appends a record and returns once it is on stable storage.
    pub async fn append(&self, record: Vec<u8>) -> Result<Location, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Append { record, reply })
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Marks recipients finished; `finished` when the whole message is.
    pub fn mark_done(&self, location: Location, recipients: Vec<u32>, finished: bool) {
        self.done.push(DoneMark {
            location,
            recipients,
            finished,
        });
    }

    /// Waits until everything sent before is written and synced.
    pub async fn sync(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Op::Sync { reply }).is_ok() {
            let _ = rx.await;
        }
    }

    pub fn faults(&self) -> &FaultInjection {
        &self.faults
    }

    pub fn commit_stats(&self) -> &CommitStats {
        &self.commit_stats
    }

    /// Reads a message's bytes back (for deliveries after a restart or a
    /// retry). Blocking: call from a blocking thread.
    pub fn read_message(&self, loc: Location) -> io::Result<(Envelope, Vec<u8>)> {
        let mut f = File::open(segment_path(&self.dir, loc.segment, "log"))?;
        f.seek(SeekFrom::Start(loc.offset))?;
        let mut header = [0u8; HEADER];
        f.read_exact(&mut header)?;
        let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let mut payload = vec![0; len];
        f.read_exact(&mut payload)?;
        if &header[..4] != MAGIC || crc32fast::hash(&payload).to_le_bytes() != header[8..12] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "queue record checksum mismatch",
            ));
        }
        let (env, msg) = decode_payload(&payload).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "queue record envelope unreadable",
            )
        })?;
        Ok((env, msg.to_vec()))
    }
}

type PendingCounts = HashMap<u64, usize>;

/// Recipients finished by the scheduler, waiting for the journal thread.
struct DoneMark {
    location: Location,
    recipients: Vec<u32>,
    finished: bool,
}

/// The shared list of done marks (see the module docs for why it is not
/// the channel).
#[derive(Default)]
struct DoneList {
    marks: Mutex<Vec<DoneMark>>,
    /// Whether `marks` may be non-empty; read without the lock to pick the
    /// journal thread's wait.
    pending: AtomicBool,
}

impl DoneList {
    fn push(&self, mark: DoneMark) {
        self.marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(mark);
        self.pending.store(true, Ordering::Release);
    }

    fn take(&self) -> Vec<DoneMark> {
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut *self.marks.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// An append waiting for its commit, with the channel for its answer.
type PendingAppend = (Vec<u8>, oneshot::Sender<Result<Location, StorageError>>);

/// Scans every segment. Returns the unfinished messages, a report, the
/// count of unfinished messages per segment and the next segment number.
fn recover(dir: &Path) -> io::Result<(Vec<Recovered>, RecoveryReport, PendingCounts, u64)> {
    let mut segs: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let hex = name.strip_prefix("seg-")?.strip_suffix(".log")?;
            u64::from_str_radix(hex, 16).ok()
        })
        .collect();
    segs.sort_unstable();
    let mut report = RecoveryReport {
        segments: segs.len(),
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut pending = HashMap::new();
    for &seg in &segs {
        let log_path = segment_path(dir, seg, "log");
        let data = fs::read(&log_path)?;
        let done = read_done(&segment_path(dir, seg, "done"))?;
        let mut off = 0usize;
        let mut unfinished = 0usize;
        while off < data.len() {
            let rest = &data[off..];
            let header_ok = rest.len() >= HEADER && &rest[..4] == MAGIC;
            let len = if header_ok {
                u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize
            } else {
                0
            };
            if !header_ok || rest.len() < HEADER + len {
                if !header_ok && rest.len() >= HEADER {
                    // Garbage that is not a torn append: keep it for an operator.
                    quarantine(dir, seg, off as u64, rest)?;
                    report.quarantined += 1;
                    crate::events::emit(crate::events::QueueRecordQuarantined {
                        file: &log_path.display().to_string(),
                        offset: off,
                        reason: "is not a record (no header); the rest of the segment was skipped",
                    });
                } else {
                    report.torn_tails += 1;
                    crate::events::emit(crate::events::QueueTornTailDiscarded {
                        file: &log_path.display().to_string(),
                        offset: off,
                        bytes: rest.len(),
                    });
                }
                let f = OpenOptions::new().write(true).open(&log_path)?;
                f.set_len(off as u64)?;
                f.sync_all()?;
                break;
            }
            let payload = &rest[HEADER..HEADER + len];
            let rec_len = HEADER + len;
            let crc_ok = crc32fast::hash(payload).to_le_bytes() == rest[8..12];
            match decode_payload(payload).filter(|_| crc_ok) {
                None => {
                    quarantine(dir, seg, off as u64, &rest[..rec_len])?;
                    report.quarantined += 1;
                    crate::events::emit(crate::events::QueueRecordQuarantined {
                        file: &log_path.display().to_string(),
                        offset: off,
                        reason: "failed its checksum",
                    });
                }
                Some((envelope, _)) => {
                    report.messages += 1;
                    let done_here = done.get(&(off as u64)).cloned().unwrap_or_default();
                    let all_done =
                        (0..envelope.recipients.len() as u32).all(|i| done_here.contains(&i));
                    if !all_done {
                        unfinished += 1;
                        out.push(Recovered {
                            location: Location {
                                segment: seg,
                                offset: off as u64,
                            },
                            envelope,
                            done: done_here,
                        });
                    }
                }
            }
            off += rec_len;
        }
        if unfinished == 0 {
            let _ = fs::remove_file(&log_path);
            let _ = fs::remove_file(segment_path(dir, seg, "done"));
        } else {
            pending.insert(seg, unfinished);
        }
    }
    report.pending = out.len();
    let next = segs.last().map_or(1, |s| s + 1);
    Ok((out, report, pending, next))
}

fn read_done(path: &Path) -> io::Result<HashMap<u64, HashSet<u32>>> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    let mut map: HashMap<u64, HashSet<u32>> = HashMap::new();
    // A torn last entry (shorter than 13 bytes) is ignored by chunks_exact.
    for e in data.chunks_exact(DONE_ENTRY) {
        if e[12] == 1 {
            let off = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
            let rcpt = u32::from_le_bytes(e[8..12].try_into().expect("4 bytes"));
            map.entry(off).or_default().insert(rcpt);
        }
    }
    Ok(map)
}

fn quarantine(dir: &Path, seg: u64, off: u64, bytes: &[u8]) -> io::Result<()> {
    let q = dir.join("quarantine");
    fs::create_dir_all(&q)?;
    fs::write(q.join(format!("seg-{seg:016X}-{off}.bad")), bytes)
}

struct Active {
    seg: u64,
    file: File,
    len: u64,
}

struct Writer {
    dir: PathBuf,
    segment_size: u64,
    active: Option<Active>,
    next_seg: u64,
    /// Unfinished messages per segment.
    pending: PendingCounts,
    done_files: HashMap<u64, File>,
    done_dirty: bool,
    last_done_sync: Instant,
    done_list: Arc<DoneList>,
    commit_stats: Arc<CommitStats>,
    faults: Arc<FaultInjection>,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Op>) {
        loop {
            let wait = if self.done_list.pending.load(Ordering::Acquire) {
                DONE_MARK_DELAY
            } else {
                DONE_SYNC_INTERVAL
            };
            let first = match rx.recv_timeout(wait) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut appends = Vec::new();
            let mut syncs = Vec::new();
            let mut bytes = 0usize;
            let mut next = first;
            while let Some(op) = next.take() {
                match op {
                    Op::Append { record, reply } => {
                        bytes += record.len();
                        appends.push((record, reply));
                    }
                    Op::Sync { reply } => syncs.push(reply),
                }
                if bytes < MAX_BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                self.commit(appends);
            }
            // Marks pushed before a Sync was sent are in the list now.
            self.write_done_marks();
            if self.done_dirty
                && (!syncs.is_empty() || self.last_done_sync.elapsed() >= DONE_SYNC_INTERVAL)
            {
                self.sync_done();
            }
            for s in syncs {
                let _ = s.send(());
            }
        }
        self.write_done_marks();
        self.sync_done();
    }

    fn write_done_marks(&mut self) {
        for m in self.done_list.take() {
            self.mark_done(m.location, &m.recipients, m.finished);
        }
    }

    fn open_segment(&mut self) -> io::Result<()> {
        let seg = self.next_seg;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(&self.dir, seg, "log"))?;
        // The new directory entry must be durable before any record in it
        // is acknowledged.
        sync_dir(&self.dir)?;
        self.next_seg += 1;
        self.active = Some(Active { seg, file, len: 0 });
        Ok(())
    }

    fn commit(&mut self, appends: Vec<PendingAppend>) {
        match self.write_batch(&appends) {
            Ok(locs) => {
                self.commit_stats.commits.fetch_add(1, Ordering::Relaxed);
                self.commit_stats
                    .records
                    .fetch_add(locs.len() as u64, Ordering::Relaxed);
                for ((_, reply), loc) in appends.into_iter().zip(locs) {
                    *self.pending.entry(loc.segment).or_default() += 1;
                    let _ = reply.send(Ok(loc));
                }
                self.rotate_if_full();
            }
            Err((op, e)) => {
                crate::events::emit(crate::events::QueueCommitFailed {
                    operation: op,
                    error: &e.to_string(),
                    messages: appends.len(),
                });
                self.seal_after_failure();
                for (_, reply) in appends {
                    let _ = reply.send(Err(StorageError::Io {
                        op,
                        source: io::Error::new(e.kind(), e.to_string()),
                    }));
                }
            }
        }
    }

    fn write_batch(
        &mut self,
        appends: &[PendingAppend],
    ) -> Result<Vec<Location>, (&'static str, io::Error)> {
        if self.active.is_none() {
            self.open_segment().map_err(|e| ("segment creation", e))?;
        }
        let active = self.active.as_mut().expect("just opened");
        let mut buf = Vec::with_capacity(appends.iter().map(|a| a.0.len()).sum());
        let mut locs = Vec::with_capacity(appends.len());
        for (rec, _) in appends {
            locs.push(Location {
                segment: active.seg,
                offset: active.len + buf.len() as u64,
            });
            buf.extend_from_slice(rec);
        }
        if self.faults.fail_writes.load(Ordering::Relaxed) {
            return Err(("write", io::Error::from_raw_os_error(28))); // ENOSPC
        }
        active.file.write_all(&buf).map_err(|e| ("write", e))?;
        if self.faults.fail_syncs.load(Ordering::Relaxed) {
            return Err(("fsync", io::Error::from_raw_os_error(5))); // EIO
        }
        active.file.sync_data().map_err(|e| ("fsync", e))?;
        active.len += buf.len() as u64;
        Ok(locs)
    }

    /// After a failed batch: cut the segment back to its last acknowledged
    /// length and stop writing to it.
    fn seal_after_failure(&mut self) {
        if let Some(active) = self.active.take() {
            if let Err(e) = active
                .file
                .set_len(active.len)
                .and_then(|_| active.file.sync_all())
            {
                tracing::error!(segment = active.seg, error = %e, "could not truncate the failed tail of a queue segment; recovery will discard it as incomplete or deliver it at least once");
            }
            self.maybe_delete(active.seg);
        }
    }

    fn rotate_if_full(&mut self) {
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.len >= self.segment_size)
        {
            let seg = self.active.take().expect("checked").seg;
            self.maybe_delete(seg);
        }
    }

    fn mark_done(&mut self, loc: Location, recipients: &[u32], finished: bool) {
        if !recipients.is_empty() {
            let file = match self.done_files.entry(loc.segment) {
                std::collections::hash_map::Entry::Occupied(o) => Some(o.into_mut()),
                std::collections::hash_map::Entry::Vacant(v) => OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(segment_path(&self.dir, loc.segment, "done"))
                    .map_err(|e| tracing::error!(error = %e, "cannot open queue done-file; the message may be delivered again after a restart"))
                    .ok()
                    .map(|f| v.insert(f)),
            };
            if let Some(f) = file {
                let mut buf = Vec::with_capacity(recipients.len() * DONE_ENTRY);
                for r in recipients {
                    buf.extend_from_slice(&loc.offset.to_le_bytes());
                    buf.extend_from_slice(&r.to_le_bytes());
                    buf.push(1);
                }
                if let Err(e) = f.write_all(&buf) {
                    tracing::error!(error = %e, "cannot write queue done-file; the message may be delivered again after a restart");
                }
                self.done_dirty = true;
            }
        }
        if finished {
            if let Some(n) = self.pending.get_mut(&loc.segment) {
                *n = n.saturating_sub(1);
            }
            self.maybe_delete(loc.segment);
        }
    }

    fn maybe_delete(&mut self, seg: u64) {
        let is_active = self.active.as_ref().is_some_and(|a| a.seg == seg);
        if !is_active && self.pending.get(&seg).copied().unwrap_or(0) == 0 {
            self.pending.remove(&seg);
            self.done_files.remove(&seg);
            let _ = fs::remove_file(segment_path(&self.dir, seg, "log"));
            let _ = fs::remove_file(segment_path(&self.dir, seg, "done"));
        }
    }

    fn sync_done(&mut self) {
        for f in self.done_files.values() {
            let _ = f.sync_data();
        }
        self.done_dirty = false;
        self.last_done_sync = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::message::{QueueId, Recipient, Route};

    fn envelope(n: usize) -> Envelope {
        Envelope {
            id: QueueId::generate(),
            received_at: 0,
            connector: "Default".into(),
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: "c.test".into(),
            mail_from: format!("s{n}@a.test"),
            body: None,
            smtputf8: false,
            ret: None,
            envid: None,
            recipients: vec![
                Recipient {
                    address: "a@b.test".into(),
                    route: Route::Mailbox {
                        name: "m".into(),
                        discard: false,
                    },
                    notify: None,
                    orcpt: None,
                },
                Recipient {
                    address: "c@b.test".into(),
                    route: Route::Mailbox {
                        name: "m".into(),
                        discard: false,
                    },
                    notify: None,
                    orcpt: None,
                },
            ],
        }
    }

    fn write_three(dir: &Path) -> Vec<Location> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (j, rec, _) = Journal::open(dir, 1 << 20).unwrap();
        assert!(rec.is_empty());
        rt.block_on(async {
            let mut v = Vec::new();
            for n in 0..3 {
                v.push(
                    j.append(encode(&envelope(n), format!("message {n}\r\n").as_bytes()))
                        .await
                        .unwrap(),
                );
            }
            j.sync().await;
            v
        })
    }

    #[test]
    fn recovers_unfinished_and_skips_finished_recipients() {
        let dir = tempfile::tempdir().unwrap();
        let locs = write_three(dir.path());
        {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let (j, rec, _) = Journal::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(rec.len(), 3);
            j.mark_done(locs[0], vec![0, 1], true);
            j.mark_done(locs[1], vec![1], false);
            rt.block_on(j.sync());
        }
        let (_, rec, report) = Journal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(report.messages, 3);
        assert_eq!(rec.len(), 2);
        assert_eq!(rec[0].location, locs[1]);
        assert_eq!(rec[0].done, HashSet::from([1]));
        assert_eq!(rec[1].envelope.mail_from, "s2@a.test");
    }

    #[test]
    fn torn_tail_is_discarded_and_the_rest_recovered() {
        let dir = tempfile::tempdir().unwrap();
        write_three(dir.path());
        let seg = segment_path(dir.path(), 1, "log");
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let (_, rec, report) = Journal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rec.len(), 2);
        assert_eq!(report.torn_tails, 1);
        assert_eq!(report.quarantined, 0);
    }

    #[test]
    fn corrupt_record_is_quarantined_never_delivered_half() {
        let dir = tempfile::tempdir().unwrap();
        let locs = write_three(dir.path());
        let seg = segment_path(dir.path(), 1, "log");
        let mut bytes = fs::read(&seg).unwrap();
        // Flip a byte inside the second record's message text.
        let at = locs[2].offset as usize - 4;
        bytes[at] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let (j, rec, report) = Journal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(report.quarantined, 1);
        assert_eq!(
            rec.iter()
                .map(|r| r.envelope.mail_from.as_str())
                .collect::<Vec<_>>(),
            ["s0@a.test", "s2@a.test"]
        );
        assert_eq!(
            fs::read_dir(dir.path().join("quarantine")).unwrap().count(),
            1
        );
        let (_, msg) = j.read_message(rec[1].location).unwrap();
        assert_eq!(msg, b"message 2\r\n");
        // The operator hears of it: QueueRecordQuarantined names the file.
        let seg_name = seg.display().to_string();
        assert!(
            crate::events::recent().iter().any(|e| e.id == 2190
                && e.message.contains(&seg_name)
                && e.message.contains("failed its checksum")),
            "no QueueRecordQuarantined event for {seg_name}"
        );
    }

    #[test]
    fn garbage_in_a_segment_does_not_stop_start_up() {
        let dir = tempfile::tempdir().unwrap();
        write_three(dir.path());
        let seg = segment_path(dir.path(), 1, "log");
        let mut bytes = fs::read(&seg).unwrap();
        bytes.extend_from_slice(&[0x55; 64]);
        fs::write(&seg, &bytes).unwrap();
        let (_, rec, report) = Journal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rec.len(), 3);
        assert_eq!(report.quarantined, 1);
    }

    #[test]
    fn finished_sealed_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // Tiny segment size: every append seals its segment.
        let (j, _, _) = Journal::open(dir.path(), 1).unwrap();
        let loc = rt
            .block_on(j.append(encode(&envelope(0), b"m\r\n")))
            .unwrap();
        j.mark_done(loc, vec![0, 1], true);
        rt.block_on(j.sync());
        assert!(!segment_path(dir.path(), loc.segment, "log").exists());
        assert!(!segment_path(dir.path(), loc.segment, "done").exists());
    }
}
