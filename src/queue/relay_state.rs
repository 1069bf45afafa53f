//! Where deferred relay recipients stand, kept across restarts:
//! `<queue_dir>/relay-state.log`, one JSON line per deferred recipient and
//! try (`{"id":…,"rcpt":…,"attempts":…,"next_try":…,"delay_notified":…,
//! "status":…,"error":…}`), the last line for a recipient winning.
//!
//! This is advice, not the truth about delivery: the journal's done marks
//! decide what is still to send. Losing this file (or its last lines in a
//! crash; it is not fsynced) only means the backoff starts over and a
//! delay DSN may be sent twice. It lets a restart keep each recipient's
//! attempt count, next try and "delay DSN sent", so a restart does not
//! retry every deferred message at once.
//!
//! Lines are written by one background thread (no blocking I/O on the
//! async runtime), which also keeps the latest line per recipient in
//! memory and forgets a message once it is finished. At start the file is
//! read (bad or torn lines are skipped) and rewritten with only the
//! recipients still queued; while running, it is rewritten the same way
//! whenever it has grown past twice its live content (and 1 MiB), so it
//! stays proportional to the queue, not to its history.

use super::message::QueueId;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// Longest line read back (a line is a few hundred bytes).
const MAX_LINE: usize = 8192;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RcptState {
    pub id: u64,
    pub rcpt: u32,
    pub attempts: u32,
    /// Seconds since the epoch.
    pub next_try: u64,
    pub delay_notified: bool,
    pub status: String,
    pub error: String,
}

/// Latest line per recipient, by message.
type Latest = HashMap<QueueId, HashMap<u32, String>>;

enum Op {
    Record((QueueId, u32), String),
    Forget(QueueId),
}

/// Appends state lines from a background thread.
#[derive(Clone)]
pub struct StateLog {
    tx: mpsc::Sender<Op>,
}

impl StateLog {
    /// Reads the file, keeps only entries for `live` recipients, rewrites
    /// it, and starts the writer. Errors degrade to "no memory", logged.
    pub fn open(
        dir: &Path,
        live: &HashSet<(QueueId, u32)>,
    ) -> (StateLog, HashMap<(QueueId, u32), RcptState>) {
        let path = dir.join("relay-state.log");
        let mut state = HashMap::new();
        if let Ok(f) = std::fs::File::open(&path) {
            let mut r = std::io::BufReader::new(f);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r
                    .by_ref()
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if let Ok(s) = serde_json::from_slice::<RcptState>(&line) {
                    let key = (QueueId(s.id), s.rcpt);
                    if live.contains(&key) {
                        state.insert(key, s);
                    }
                }
            }
        }
        if let Err(e) = rewrite(&path, &state) {
            tracing::warn!(path = %path.display(), error = %e, "cannot rewrite the relay state file; retry counts restart after a restart");
        }
        let (tx, rx) = mpsc::channel::<Op>();
        let mut latest: Latest = HashMap::new();
        for (k, v) in &state {
            if let Ok(l) = serde_json::to_string(v) {
                latest.entry(k.0).or_default().insert(k.1, l + "\n");
            }
        }
        let spawned = std::thread::Builder::new()
            .name("relay-state".into())
            .spawn(move || writer(path, rx, latest));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the relay state writer");
        }
        (StateLog { tx }, state)
    }

    /// A log that keeps nothing (tests, or when the file cannot be used).
    pub fn disabled() -> StateLog {
        let (tx, _rx) = mpsc::channel();
        StateLog { tx }
    }

    pub fn record(&self, s: &RcptState) {
        if let Ok(mut line) = serde_json::to_string(s) {
            line.push('\n');
            let _ = self.tx.send(Op::Record((QueueId(s.id), s.rcpt), line));
        }
    }

    /// The message is finished: its lines go at the next compaction.
    pub fn forget(&self, id: QueueId) {
        let _ = self.tx.send(Op::Forget(id));
    }
}

fn rewrite(path: &Path, state: &HashMap<(QueueId, u32), RcptState>) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("log.tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for s in state.values() {
            serde_json::to_writer(&mut f, s)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    std::fs::rename(&tmp, path)
}

fn writer(path: PathBuf, rx: mpsc::Receiver<Op>, mut latest: Latest) {
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    };
    let mut file = match open(&path) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the relay state file");
            return;
        }
    };
    let size = |l: &Latest| -> usize { l.values().flat_map(|m| m.values()).map(String::len).sum() };
    let mut written = size(&latest);
    let mut warned = false;
    while let Ok(first) = rx.recv() {
        // Gather what is waiting into one write.
        let mut buf = String::new();
        let mut op = Some(first);
        while let Some(o) = op.take() {
            match o {
                Op::Record((id, rcpt), line) => {
                    buf.push_str(&line);
                    latest.entry(id).or_default().insert(rcpt, line);
                }
                Op::Forget(id) => {
                    latest.remove(&id);
                }
            }
            if buf.len() < 1 << 20 {
                op = rx.try_recv().ok();
            }
        }
        if buf.is_empty() {
            continue;
        }
        written += buf.len();
        if let Err(e) = file.write_all(buf.as_bytes())
            && !warned
        {
            warned = true;
            tracing::warn!(path = %path.display(), error = %e, "cannot write the relay state file");
        }
        let live = size(&latest);
        if written > (1 << 20).max(2 * live) {
            let tmp = path.with_extension("log.tmp");
            let result = std::fs::write(
                &tmp,
                latest
                    .values()
                    .flat_map(|m| m.values())
                    .map(String::as_str)
                    .collect::<String>(),
            )
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| open(&path));
            match result {
                Ok(f) => {
                    file = f;
                    written = live;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot compact the relay state file")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(id: u64, rcpt: u32, attempts: u32) -> RcptState {
        RcptState {
            id,
            rcpt,
            attempts,
            next_try: 1000 + attempts as u64,
            delay_notified: attempts > 1,
            status: "4.2.0".into(),
            error: "busy".into(),
        }
    }

    #[test]
    fn last_line_wins_dead_entries_and_torn_lines_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay-state.log");
        let mut text = String::new();
        for s in [st(1, 0, 1), st(1, 0, 2), st(2, 0, 1)] {
            text.push_str(&serde_json::to_string(&s).unwrap());
            text.push('\n');
        }
        text.push_str("{\"id\":1,\"rcpt\":0,\"attem"); // torn by a crash
        std::fs::write(&path, text).unwrap();
        let live: HashSet<_> = [(QueueId(1), 0)].into_iter().collect();
        let (_log, state) = StateLog::open(dir.path(), &live);
        assert_eq!(state.len(), 1);
        assert_eq!(state[&(QueueId(1), 0)], st(1, 0, 2));
        let rewritten = std::fs::read_to_string(&path).unwrap();
        assert_eq!(rewritten.lines().count(), 1, "compacted: {rewritten}");
    }

    #[test]
    fn the_file_is_compacted_while_running_and_forgets_finished_messages() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = StateLog::open(dir.path(), &HashSet::new());
        let mut s = st(7, 0, 1);
        s.error = "x".repeat(400);
        for n in 0..6000 {
            s.attempts = n;
            log.record(&s);
        }
        log.record(&st(8, 1, 3));
        log.forget(QueueId(8));
        let path = dir.path().join("relay-state.log");
        // 6000 lines of ~500 bytes were written; the file holds the live ones.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.len() < (1 << 20) + 1024 && text.contains("\"attempts\":5999") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not compacted: {} bytes",
                text.len()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop(log);
        let live: HashSet<_> = [(QueueId(7), 0), (QueueId(8), 1)].into_iter().collect();
        let (_log, state) = StateLog::open(dir.path(), &live);
        assert_eq!(state[&(QueueId(7), 0)].attempts, 5999);
    }
}
