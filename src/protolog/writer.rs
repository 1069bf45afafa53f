//! The background writer: owns the open log file, formats lines, rotates
//! and prunes files. Runs on its own `std::thread`, so nothing here ever
//! runs on the async runtime or inside an SMTP session.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{
    Counters, Event, Line, LogKind, MAX_FIELD_BYTES, Msg, ProtocolLogConfig, QUEUE_BYTES,
    QUEUE_LINES, next_session_id,
};
use crate::timefmt::{civil_from_days, iso8601_millis, push_iso8601_millis};

/// How long written lines may sit in the buffer, and how long to wait
/// before retrying to create a file after a failure.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long the writer sleeps between batches while lines keep coming
/// (see `Writer::run`); also the most a flush request waits under load.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// Capacity of the `BufWriter`. It must hold the longest possible line:
/// with lines shorter than the buffer, `BufWriter` accepts a line whole or
/// not at all and keeps unflushed bytes in order after an I/O error, so a
/// disk-full episode can lose lines but never leaves half a line joined to
/// the next one.
const BUF_CAPACITY: usize = 64 * 1024;

/// Longest line: three free-text fields (connector, data, context), each
/// truncated to `MAX_FIELD_BYTES` + "...", every byte a doubled quote, plus
/// quotes, separators, date, ids and two IPv6 endpoints with scope ids.
const MAX_LINE_BYTES: usize = 3 * (2 * (MAX_FIELD_BYTES + 3) + 2) + 512;
const _: () = assert!(MAX_LINE_BYTES < BUF_CAPACITY);

// Lines end in CRLF (`super::EOL`) like Exchange's own files, which is
// what Windows-side parsers expect; CSV readers on every platform accept it.
use super::EOL;

/// One log file being written.
struct Current {
    path: PathBuf,
    out: BufWriter<File>,
    /// UTC day (days since 1970-01-01) in the file name.
    day: i64,
    /// Bytes accepted for this file (header + lines), flushed or not.
    len: u64,
    /// False while the file holds only its header: a line longer than
    /// `max_file_size` then goes into this file instead of rotating forever.
    has_records: bool,
}

/// One file of this kind found in the directory.
struct Found {
    path: PathBuf,
    date: u32,
    instance: u32,
    len: u64,
    modified: Option<SystemTime>,
}

/// State of the writer thread.
pub(super) struct Writer {
    kind: LogKind,
    cfg: ProtocolLogConfig,
    version: String,
    counters: Arc<Counters>,
    current: Option<Current>,
    /// An I/O error was reported and no write has succeeded since: the
    /// warning is logged once per episode, not once per line.
    failing: bool,
    /// Bytes sit in the buffer that have not been flushed.
    dirty: bool,
    last_flush: Instant,
    /// After a failed file creation, no new attempt before this instant.
    retry_open_at: Option<Instant>,
    /// The writer's own session for "lines dropped" notices.
    notice_session: u64,
    notice_seq: u32,
    notice_connector: Arc<str>,
    /// Reused formatting buffer.
    buf: String,
}

impl Writer {
    /// Creates the directory and the first file (so configuration errors
    /// surface at startup), then prunes old files.
    pub(super) fn open(
        kind: LogKind,
        cfg: ProtocolLogConfig,
        software_version: &str,
        counters: Arc<Counters>,
        now: SystemTime,
    ) -> io::Result<Writer> {
        fs::create_dir_all(&cfg.dir)?;
        let version = software_version
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let mut w = Writer {
            kind,
            cfg,
            version,
            counters,
            current: None,
            failing: false,
            dirty: false,
            last_flush: Instant::now(),
            retry_open_at: None,
            notice_session: next_session_id(),
            notice_seq: 0,
            notice_connector: Arc::from(""),
            buf: String::with_capacity(512),
        };
        w.current = Some(w.create_file(day_of(now))?);
        w.enforce_retention();
        Ok(w)
    }

    /// The thread body: write lines as they come, flush at least once a
    /// second, acknowledge flush requests, and finish on shutdown.
    ///
    /// While lines keep coming, the thread does not wait on the channel:
    /// it sleeps [`BATCH_PAUSE`] and then takes everything queued. A
    /// sender only wakes a receiver that is blocked in `recv`, so under
    /// load the sessions never pay for a futex wake and a context switch
    /// per line (measured: about a third of the server's context switches
    /// on the accept benchmark). When a pause finds nothing, the thread
    /// blocks again, so an idle server costs nothing.
    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        let mut busy = false;
        loop {
            let wait = if self.dirty {
                FLUSH_INTERVAL.saturating_sub(self.last_flush.elapsed())
            } else {
                FLUSH_INTERVAL
            };
            let next = if busy {
                std::thread::sleep(BATCH_PAUSE.min(wait));
                match rx.try_recv() {
                    Ok(msg) => Ok(msg),
                    Err(TryRecvError::Empty) => {
                        busy = false;
                        Err(RecvTimeoutError::Timeout)
                    }
                    Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                }
            } else {
                rx.recv_timeout(wait)
            };
            let mut next = Some(next);
            while let Some(msg) = next.take() {
                match msg {
                    Ok(Msg::Line(line)) => {
                        busy = true;
                        self.counters.release(line.cost);
                        self.report_drops(false);
                        if !self.write_record(&line) {
                            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Msg::Flush(ack)) => {
                        self.report_drops(true);
                        self.flush();
                        let _ = ack.send(());
                    }
                    Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                        self.report_drops(true);
                        self.flush();
                        return;
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        self.report_drops(true);
                        break;
                    }
                }
                next = match rx.try_recv() {
                    Ok(msg) => Some(Ok(msg)),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => Some(Err(RecvTimeoutError::Disconnected)),
                };
            }
            if self.dirty && self.last_flush.elapsed() >= FLUSH_INTERVAL {
                self.flush();
            }
        }
    }

    /// Writes "N protocol log lines dropped" once the queue has drained to
    /// half (or unconditionally when `force`, i.e. the queue is idle).
    fn report_drops(&mut self, force: bool) {
        let c = &self.counters;
        if c.dropped.load(Ordering::Relaxed) == 0 {
            return;
        }
        if !force
            && (c.queued_lines.load(Ordering::Relaxed) > QUEUE_LINES / 2
                || c.queued_bytes.load(Ordering::Relaxed) > QUEUE_BYTES / 2)
        {
            return;
        }
        c.overloaded.store(false, Ordering::Relaxed);
        let n = c.dropped.swap(0, Ordering::Relaxed);
        if n == 0 {
            return;
        }
        let notice = Line {
            time: SystemTime::now(),
            connector: Arc::clone(&self.notice_connector),
            session: self.notice_session,
            seq: self.notice_seq,
            endpoints: None,
            event: if self.kind == LogKind::HttpProxy {
                Event::Comment
            } else {
                Event::Info
            },
            data: format!("{n} protocol log lines dropped"),
            context: String::new(),
            cost: 0,
        };
        if self.write_record(&notice) {
            self.notice_seq = self.notice_seq.wrapping_add(1);
        } else {
            // Not written: keep the count for the next report.
            self.counters.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Formats and buffers one line, rotating first when needed. Returns
    /// false when the line was lost to an I/O error.
    pub(super) fn write_record(&mut self, line: &Line) -> bool {
        format_line(&mut self.buf, line);
        let len = self.buf.len() as u64;
        let line_day = day_of(line.time);
        let new_day = match &self.current {
            None => Some(line_day),
            // A line stamped just before midnight that arrives after the
            // first line of the new day stays in the new day's file.
            Some(cur) if line_day > cur.day => Some(line_day),
            Some(cur) if cur.has_records && cur.len + len > self.cfg.max_file_size => Some(cur.day),
            Some(_) => None,
        };
        if let Some(day) = new_day
            && !self.rotate(day)
        {
            return false;
        }
        let Some(cur) = self.current.as_mut() else {
            return false;
        };
        match cur.out.write_all(self.buf.as_bytes()) {
            Ok(()) => {
                cur.len += len;
                cur.has_records = true;
                self.dirty = true;
                true
            }
            Err(e) => {
                let path = cur.path.clone();
                self.report_error("cannot write protocol log", &path, &e);
                false
            }
        }
    }

    /// Closes the current file and opens the next one for `day`.
    fn rotate(&mut self, day: i64) -> bool {
        if let Some(mut old) = self.current.take() {
            if let Err(e) = old.out.flush() {
                self.report_error("cannot write protocol log", &old.path, &e);
            }
            self.dirty = false;
        }
        if self.retry_open_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        match self.create_file(day) {
            Ok(cur) => {
                self.retry_open_at = None;
                self.current = Some(cur);
                self.recovered();
                self.enforce_retention();
                true
            }
            Err(e) => {
                self.retry_open_at = Some(Instant::now() + FLUSH_INTERVAL);
                let dir = self.cfg.dir.clone();
                self.report_error("cannot create protocol log file", &dir, &e);
                false
            }
        }
    }

    /// Creates the next free `PREFIXyyyymmdd-n.LOG` for `day` (never an
    /// existing file) and writes the header block to it.
    fn create_file(&self, day: i64) -> io::Result<Current> {
        fs::create_dir_all(&self.cfg.dir)?;
        let date = yyyymmdd(day);
        let mut instance = scan(&self.cfg.dir, self.kind)?
            .iter()
            .filter(|f| f.date == date)
            .map(|f| f.instance)
            .max()
            .unwrap_or(0);
        // Another process may create files in the same directory; skip
        // names taken since the scan. Bounded so a broken directory cannot
        // spin this thread.
        for _ in 0..1000 {
            instance = instance.saturating_add(1);
            let path = self.cfg.dir.join(file_name(self.kind, date, instance));
            let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            let header = self.header(SystemTime::now());
            if let Err(e) = file.write_all(header.as_bytes()) {
                // Do not leave a headerless file behind; the next attempt
                // reuses the name.
                drop(file);
                let _ = fs::remove_file(&path);
                return Err(e);
            }
            return Ok(Current {
                path,
                out: BufWriter::with_capacity(BUF_CAPACITY, file),
                day,
                len: header.len() as u64,
                has_records: false,
            });
        }
        Err(io::Error::other("no free protocol log file name"))
    }

    fn header(&self, now: SystemTime) -> String {
        format!(
            "#Software: Gatehouse{EOL}#Version: {}{EOL}#Log-type: {}{EOL}#Date: {}{EOL}#Fields: {}{EOL}",
            self.version,
            self.kind.log_type(),
            iso8601_millis(now),
            self.kind.fields(),
        )
    }

    /// Circular logging: delete the oldest files of this kind while the
    /// kind's total size exceeds `max_dir_size`, then those older than
    /// `max_age`. The file being written is never deleted, and neither is
    /// any file whose name is not exactly ours.
    fn enforce_retention(&mut self) {
        let mut files = match scan(&self.cfg.dir, self.kind) {
            Ok(f) => f,
            Err(e) => {
                let dir = self.cfg.dir.clone();
                self.report_error("cannot list protocol log directory", &dir, &e);
                return;
            }
        };
        files.sort_by_key(|f| (f.date, f.instance));
        let current = self.current.as_ref().map(|c| c.path.clone());
        let is_current = |f: &Found| current.as_deref() == Some(f.path.as_path());
        let mut total: u64 = files.iter().map(|f| f.len).sum();
        let mut deleted = vec![false; files.len()];
        for (i, f) in files.iter().enumerate() {
            if total <= self.cfg.max_dir_size {
                break;
            }
            if is_current(f) {
                continue;
            }
            if remove(&f.path) {
                total = total.saturating_sub(f.len);
                deleted[i] = true;
            }
        }
        if self.cfg.max_age.is_zero() {
            return;
        }
        let Some(cutoff) = SystemTime::now().checked_sub(self.cfg.max_age) else {
            return;
        };
        for (i, f) in files.iter().enumerate() {
            if !deleted[i] && !is_current(f) && f.modified.is_some_and(|m| m < cutoff) {
                remove(&f.path);
            }
        }
    }

    /// Hands buffered lines to the OS.
    pub(super) fn flush(&mut self) {
        self.last_flush = Instant::now();
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let had_data = !cur.out.buffer().is_empty();
        match cur.out.flush() {
            Ok(()) => {
                self.dirty = false;
                if had_data {
                    self.recovered();
                }
            }
            Err(e) => {
                let path = cur.path.clone();
                self.report_error("cannot write protocol log", &path, &e);
            }
        }
    }

    fn report_error(&mut self, what: &str, path: &Path, e: &io::Error) {
        if !self.failing {
            self.failing = true;
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "{what}; protocol log lines may be lost until writing succeeds again"
            );
        }
    }

    fn recovered(&mut self) {
        if self.failing {
            self.failing = false;
            tracing::info!(dir = %self.cfg.dir.display(), "protocol log writing recovered");
        }
    }
}

fn remove(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete old protocol log file");
            false
        }
    }
}

/// Files of `kind` in `dir`, recognised strictly by name.
fn scan(dir: &Path, kind: LogKind) -> io::Result<Vec<Found>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some((date, instance)) = name.to_str().and_then(|n| parse_file_name(kind, n)) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        found.push(Found {
            path: entry.path(),
            date,
            instance,
            len: meta.len(),
            modified: meta.modified().ok(),
        });
    }
    Ok(found)
}

/// `RECV20261123-4.LOG` -> (20261123, 4).
pub(super) fn parse_file_name(kind: LogKind, name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix(kind.file_prefix())?;
    let rest = rest.strip_suffix(".LOG")?;
    let (date, instance) = rest.split_once('-')?;
    let digits = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    if date.len() != 8 || !digits(date, 8) || !digits(instance, 9) {
        return None;
    }
    Some((date.parse().ok()?, instance.parse().ok()?))
}

pub(super) fn file_name(kind: LogKind, date: u32, instance: u32) -> String {
    format!("{}{date:08}-{instance}.LOG", kind.file_prefix())
}

/// UTC days since 1970-01-01.
pub(super) fn day_of(t: SystemTime) -> i64 {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    (secs / 86_400) as i64
}

/// The UTC date of `day` as the number yyyymmdd (sorts like the date).
pub(super) fn yyyymmdd(day: i64) -> u32 {
    let (y, m, d) = civil_from_days(day);
    (y.clamp(0, 9999) as u32) * 10_000 + m * 100 + d
}

/// One CSV record with CRLF into `out`.
pub(super) fn format_line(out: &mut String, line: &Line) {
    out.clear();
    match line.event {
        Event::Record => {
            out.push_str(&line.data);
            return;
        }
        Event::Comment => {
            out.push('#');
            push_field(out, &line.data);
            out.push_str(EOL);
            return;
        }
        _ => {}
    }
    push_iso8601_millis(out, line.time);
    out.push(',');
    push_field(out, &line.connector);
    let _ = write!(out, ",{:016X},{},", line.session, line.seq);
    match line.endpoints {
        // SocketAddr's Display gives `1.2.3.4:25` and `[::1]:25`: no commas.
        Some((local, remote)) => {
            let _ = write!(out, "{local},{remote},");
        }
        None => out.push_str(",,"),
    }
    out.push(line.event.as_char());
    out.push(',');
    push_field(out, &line.data);
    out.push(',');
    push_field(out, &line.context);
    out.push_str(EOL);
}

/// Appends one free-text field. Control characters (CR and LF included)
/// and Unicode line/paragraph separators become spaces first, so one event
/// is always one physical line; then RFC 4180 quoting applies when the text
/// holds a comma or a double quote.
pub(super) fn push_field(out: &mut String, s: &str) {
    // Fast path: nothing to quote or replace (U+2028/U+2029 start with
    // 0xE2; any byte >= 0x80 takes the careful path, as do C1 controls).
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b',' && b != b'"')
    {
        out.push_str(s);
        return;
    }
    let quote = s.contains([',', '"']);
    if quote {
        out.push('"');
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\"\""),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => out.push(' '),
            c => out.push(c),
        }
    }
    if quote {
        out.push('"');
    }
}
