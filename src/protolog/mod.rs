//! SMTP protocol log, in the Microsoft Exchange protocol-log CSV format.
//!
//! Operators and incident responders already have parsers, SIEM rules and
//! habits for Exchange's `SmtpReceive` / `SmtpSend` protocol logs, so we
//! write the same format (shared/reference/exchange-tls.md §4.1) rather
//! than invent one. This module owns everything about those files: the
//! format, file naming, rotation, retention and the writer thread.
//!
//! # Format
//!
//! ```text
//! #Software: Gatehouse
//! #Version: 0.1.0
//! #Log-type: SMTP Receive Protocol Log
//! #Date: 2026-11-23T16:00:04.113Z
//! #Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data,context
//! 2026-11-23T16:00:04.114Z,GATEHOUSE\Default,08D54162A04116F2,0,127.0.0.1:2525,127.0.0.1:50312,+,,
//! ```
//!
//! Times are UTC with milliseconds. The session id is 16 upper-case hex
//! digits, unique within the process and across restarts (start time in
//! ms shifted left 20 bits, plus a process-wide counter). Sequence numbers
//! count from 0 per session. Events: `+` connect, `-` disconnect, `>` sent
//! by us, `<` received from the peer, `*` information. Free text (data,
//! context, connector id) is cut to 4096 bytes plus `...`, has control
//! characters replaced by spaces so one event is always one line, and is
//! quoted per RFC 4180 when it holds a comma or a double quote. Lines end
//! in CRLF, as Exchange's do. [`parse_line`] reads the format back.
//!
//! # Files
//!
//! `RECVyyyymmdd-n.LOG` / `SENDyyyymmdd-n.LOG` (UTC date, n from 1) in the
//! configured directory. A new file, with its own header block, starts when
//! the UTC date changes or when the next line would take the file past
//! `max_file_size`. Opening a log always starts a new file numbered after
//! the highest existing one for the day, so nothing is overwritten or
//! appended to. After every new file, the oldest files of the same kind are
//! deleted while the kind's total exceeds `max_dir_size`, and files older
//! than `max_age` are deleted (Exchange's circular logging); the file being
//! written is never deleted.
//!
//! # Why a background writer
//!
//! Sessions run on the async runtime; a write to a slow or full disk must
//! not stall them. Each call only timestamps the event and pushes it onto a
//! channel; one `std::thread` per [`ProtocolLog`] formats, writes through a
//! `BufWriter`, flushes at least once a second, rotates and prunes. The
//! queue is bounded (65,536 lines, 32 MiB of text): when it is full, lines
//! are dropped and counted, and a `*` line "N protocol log lines dropped"
//! is written once it drains. I/O errors are reported once per episode with
//! `tracing::warn!`; the writer keeps trying and never panics.

mod writer;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines queued for the writer before new lines are dropped.
const QUEUE_LINES: usize = 65_536;
/// Bytes (text plus per-line overhead) queued before new lines are dropped,
/// so a flood of long lines cannot take unbounded memory either.
const QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// Longest free-text field kept, in bytes, before `...` is appended.
const MAX_FIELD_BYTES: usize = 4096;
/// The `#Fields:` header value, also the column order of every line.
const FIELDS: &str = "date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data,context";
/// The `#Fields:` of the HttpProxy log (exchange-tls.md §4.2, from an
/// Exchange 2016 CU log): the proxy fills the columns it knows and leaves
/// the others empty, so parsers that index by position still line up.
pub const HTTP_PROXY_FIELDS: &str = "DateTime,RequestId,MajorVersion,MinorVersion,BuildVersion,RevisionVersion,ClientRequestId,Protocol,UrlHost,UrlStem,ProtocolAction,AuthenticationType,IsAuthenticated,AuthenticatedUser,Organization,AnchorMailbox,UserAgent,ClientIpAddress,ServerHostName,HttpStatus,BackEndStatus,ErrorCode,Method,ProxyAction,TargetServer,TargetServerVersion,RoutingType,RoutingHint,BackEndCookie,ServerLocatorHost,ServerLocatorLatency,RequestBytes,ResponseBytes,TargetOutstandingRequests,AuthModulePerfContext,HttpPipelineLatency,CalculateTargetBackEndLatency,GlsLatencyBreakup,TotalGlsLatency,AccountForestLatencyBreakup,TotalAccountForestLatency,ResourceForestLatencyBreakup,TotalResourceForestLatency,ADLatency,SharedCacheLatencyBreakup,TotalSharedCacheLatency,ActivityContextLifeTime,ModuleToHandlerSwitchingLatency,ClientReqStreamLatency,BackendReqInitLatency,BackendReqStreamLatency,BackendProcessingLatency,BackendRespInitLatency,BackendRespStreamLatency,ClientRespStreamLatency,KerberosAuthHeaderLatency,HandlerCompletionLatency,RequestHandlerLatency,HandlerToModuleSwitchingLatency,ProxyTime,CoreLatency,RoutingLatency,HttpProxyOverhead,TotalRequestTime,RouteRefresherLatency,UrlQuery,BackEndGenericInfo,GenericInfo,GenericErrors,EdgeTraceId,DatabaseGuid,UserADObjectGuid,PartitionEndpointLookupLatency,RoutingStatus";

/// Which of Exchange's two protocol logs a [`ProtocolLog`] writes: it picks
/// the file prefix (`RECV`/`SEND`) and the `#Log-type:` header, and keeps
/// the two kinds' retention separate even in one directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// Inbound SMTP (`RECV…LOG`, "SMTP Receive Protocol Log").
    Receive,
    /// Outbound SMTP (`SEND…LOG`, "SMTP Send Protocol Log").
    Send,
    /// The proxy's per-request log (`HttpProxy_…LOG`, "HttpProxy Logs");
    /// its lines come pre-formatted through [`ProtocolLog::record`].
    HttpProxy,
}

impl LogKind {
    fn file_prefix(self) -> &'static str {
        match self {
            LogKind::Receive => "RECV",
            LogKind::HttpProxy => "HttpProxy_",
            LogKind::Send => "SEND",
        }
    }

    fn log_type(self) -> &'static str {
        match self {
            LogKind::Receive => "SMTP Receive Protocol Log",
            LogKind::Send => "SMTP Send Protocol Log",
            LogKind::HttpProxy => "HttpProxy Logs",
        }
    }

    fn fields(self) -> &'static str {
        match self {
            LogKind::HttpProxy => HTTP_PROXY_FIELDS,
            LogKind::Receive | LogKind::Send => FIELDS,
        }
    }
}

/// Where the log goes and how much of it to keep; the same knobs as
/// Exchange's `*ProtocolLogPath`, `*ProtocolLogMaxFileSize`,
/// `*ProtocolLogMaxAge` and `*ProtocolLogMaxDirectorySize` (Exchange's hub
/// defaults: 10 MB, 30 days, 250 MB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolLogConfig {
    /// Directory for the files; created if missing.
    pub dir: PathBuf,
    /// A new file starts when the next line would take the current one past
    /// this many bytes (a single longer line still gets written, alone).
    pub max_file_size: u64,
    /// Files last modified longer ago than this are deleted.
    /// `Duration::ZERO` turns age-based deletion off, as `00:00:00` does in
    /// Exchange.
    pub max_age: Duration,
    /// The oldest files of this kind are deleted while all of this kind's
    /// files together exceed this many bytes. `u64::MAX` means no limit.
    pub max_dir_size: u64,
}

/// Handle to one protocol log (one kind, one directory, one writer
/// thread). Cloning is cheap (an `Arc`), so every listener and session can
/// hold one; the writer finishes, flushing everything, when the last
/// handle, including every [`SessionLog`], is dropped.
#[derive(Clone)]
pub struct ProtocolLog {
    shared: Option<Arc<Shared>>,
}

impl fmt::Debug for ProtocolLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtocolLog")
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

impl ProtocolLog {
    /// Opens a log: creates the directory and a new file (so a bad path or
    /// permission fails here, at startup, not silently later), prunes old
    /// files, and starts the writer thread. `software_version` goes into
    /// the `#Version:` header.
    pub fn open(
        kind: LogKind,
        cfg: ProtocolLogConfig,
        software_version: &str,
    ) -> io::Result<ProtocolLog> {
        let counters = Arc::new(Counters::default());
        let writer = writer::Writer::open(
            kind,
            cfg,
            software_version,
            Arc::clone(&counters),
            SystemTime::now(),
        )?;
        let (tx, rx) = mpsc::channel();
        let name = match kind {
            LogKind::Receive => "protolog-recv",
            LogKind::Send => "protolog-send",
            LogKind::HttpProxy => "protolog-http",
        };
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || writer.run(rx))?;
        Ok(ProtocolLog {
            shared: Some(Arc::new(Shared {
                tx,
                counters,
                thread: Some(thread),
            })),
        })
    }

    /// A log that writes nothing, for connectors with protocol logging off:
    /// callers keep one code path, and every call is a no-op that allocates
    /// nothing.
    pub fn disabled() -> ProtocolLog {
        ProtocolLog { shared: None }
    }

    /// Whether lines go anywhere; lets callers skip building expensive data
    /// strings for a disabled log.
    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Starts logging one SMTP connection. The session gets a fresh id
    /// (also on a disabled log, so other logs can quote it) and sequence
    /// numbers from 0.
    pub fn session(&self, connector_id: &str, local: SocketAddr, remote: SocketAddr) -> SessionLog {
        let id = next_session_id();
        SessionLog {
            id,
            hex: hex16(id),
            seq: 0,
            live: self.shared.as_ref().map(|shared| Live {
                shared: Arc::clone(shared),
                connector: Arc::from(truncated(connector_id)),
                local,
                remote,
            }),
        }
    }

    /// Queues pre-formatted records of a log whose lines are not SMTP
    /// events (the HttpProxy log): `lines` holds whole lines, each ending
    /// in CRLF, fields escaped with [`push_csv_field`], at most 16 KiB
    /// plus one line (a batch, so a busy proxy wakes the writer once per
    /// batch rather than once per request).
    pub fn records(&self, lines: String) {
        if let Some(shared) = &self.shared {
            shared.submit(Line {
                time: SystemTime::now(),
                connector: Arc::from(""),
                session: 0,
                seq: 0,
                endpoints: None,
                event: Event::Record,
                data: lines,
                context: String::new(),
                cost: 0,
            });
        }
    }

    /// Blocks until every line queued before the call is written and
    /// flushed to the OS (not fsynced). For tests, shutdown, and anyone
    /// about to read the file; do not call it on an async worker thread.
    pub fn flush(&self) {
        if let Some(shared) = &self.shared {
            let (ack_tx, ack_rx) = mpsc::sync_channel(1);
            if shared.tx.send(Msg::Flush(ack_tx)).is_ok() {
                let _ = ack_rx.recv();
            }
        }
    }
}

/// The log of one SMTP connection. Owns the session id and the next
/// sequence number, so a session logs without any locking; every method
/// only timestamps the event and queues it, never waiting for the disk.
pub struct SessionLog {
    id: u64,
    hex: [u8; 16],
    seq: u32,
    live: Option<Live>,
}

struct Live {
    shared: Arc<Shared>,
    connector: Arc<str>,
    local: SocketAddr,
    remote: SocketAddr,
}

impl fmt::Debug for SessionLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLog")
            .field("session_id", &self.session_id())
            .field("next_sequence_number", &self.seq)
            .field("enabled", &self.live.is_some())
            .finish()
    }
}

impl SessionLog {
    /// The session id as written in the log (16 upper-case hex digits), for
    /// Received headers, tracing and other logs to refer to this session.
    pub fn session_id(&self) -> &str {
        std::str::from_utf8(&self.hex).unwrap_or_default()
    }

    /// Whether lines go anywhere; lets callers skip building expensive data
    /// strings for a disabled log.
    pub fn is_enabled(&self) -> bool {
        self.live.is_some()
    }

    /// `+`: the connection was accepted (receive) or opened (send).
    pub fn connect(&mut self) {
        self.log(Event::Connect, "", "");
    }

    /// `-`: the connection is closed.
    pub fn disconnect(&mut self) {
        self.log(Event::Disconnect, "", "");
    }

    /// `>`: a line we sent, without CRLF. For a multi-line reply, call once
    /// per line.
    pub fn sent(&mut self, data: &str) {
        self.log(Event::Sent, data, "");
    }

    /// `<`: a line the peer sent (a command line), without CRLF.
    pub fn received(&mut self, data: &str) {
        self.log(Event::Received, data, "");
    }

    /// `*`: information (TLS result, certificate, policy decision); in
    /// Exchange's style `data` holds values and `context` what they mean.
    pub fn info(&mut self, data: &str, context: &str) {
        self.log(Event::Info, data, context);
    }

    fn log(&mut self, event: Event, data: &str, context: &str) {
        let Some(live) = &self.live else {
            return;
        };
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        live.shared.submit(Line {
            time: SystemTime::now(),
            connector: Arc::clone(&live.connector),
            session: self.id,
            seq,
            endpoints: Some((live.local, live.remote)),
            event,
            data: truncated(data),
            context: truncated(context),
            cost: 0,
        });
    }
}

/// One parsed log line: what [`parse_line`] returns, so tests and tools can
/// check every field without their own CSV code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `2026-11-23T16:00:04.114Z`.
    pub date_time: String,
    /// The connector name given to [`ProtocolLog::session`].
    pub connector_id: String,
    /// 16 upper-case hex digits.
    pub session_id: String,
    /// 0, 1, 2, … within the session.
    pub sequence_number: u32,
    /// `ip:port` (`[v6]:port`); empty on the writer's own notices.
    pub local_endpoint: String,
    /// `ip:port` (`[v6]:port`); empty on the writer's own notices.
    pub remote_endpoint: String,
    /// One of `+ - > < *`.
    pub event: char,
    /// Unquoted data text.
    pub data: String,
    /// Unquoted context text.
    pub context: String,
}

/// Parses one line of our protocol log (with or without its line ending),
/// undoing the CSV quoting. `None` for header (`#…`) lines and anything
/// that is not a well-formed record: nine fields, a numeric sequence
/// number and a known event.
pub fn parse_line(line: &str) -> Option<Record> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.starts_with('#') {
        return None;
    }
    let fields = split_csv(line)?;
    let [
        date_time,
        connector_id,
        session_id,
        sequence_number,
        local_endpoint,
        remote_endpoint,
        event,
        data,
        context,
    ]: [String; 9] = fields.try_into().ok()?;
    if !sequence_number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut chars = event.chars();
    let event = match (chars.next(), chars.next()) {
        (Some(c @ ('+' | '-' | '>' | '<' | '*')), None) => c,
        _ => return None,
    };
    Some(Record {
        date_time,
        connector_id,
        session_id,
        sequence_number: sequence_number.parse().ok()?,
        local_endpoint,
        remote_endpoint,
        event,
        data,
        context,
    })
}

/// RFC 4180 fields of one line; `None` on a stray or unterminated quote.
/// Also reads HttpProxy log lines (`HTTP_PROXY_FIELDS` order).
pub fn split_csv(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::with_capacity(9);
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => break,
                    c => field.push(c),
                }
            }
            fields.push(field);
            match chars.next() {
                None => return Some(fields),
                Some(',') => {}
                Some(_) => return None,
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Some(fields);
                    }
                    Some(',') => break,
                    Some('"') => return None,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Connect,
    Disconnect,
    Sent,
    Received,
    Info,
    /// Pre-formatted lines (`ProtocolLog::records`).
    Record,
    /// A `#` comment line (writer notices in logs without an info event).
    Comment,
}

impl Event {
    fn as_char(self) -> char {
        match self {
            Event::Connect => '+',
            Event::Disconnect => '-',
            Event::Sent => '>',
            Event::Received => '<',
            Event::Info | Event::Record | Event::Comment => '*',
        }
    }
}

/// One event on its way to the writer; formatted there, off the session.
struct Line {
    time: SystemTime,
    connector: Arc<str>,
    session: u64,
    seq: u32,
    /// `None` only for the writer's own notices.
    endpoints: Option<(SocketAddr, SocketAddr)>,
    event: Event,
    data: String,
    context: String,
    /// Bytes charged against `QUEUE_BYTES` while queued.
    cost: usize,
}

enum Msg {
    Line(Line),
    Flush(SyncSender<()>),
    Shutdown,
}

/// Queue accounting shared by the handles and the writer thread.
#[derive(Default)]
struct Counters {
    queued_lines: AtomicUsize,
    queued_bytes: AtomicUsize,
    /// Lines lost (queue full or I/O error) not yet reported in the log.
    dropped: AtomicU64,
    /// A "queue full" warning went out and the queue has not drained since.
    overloaded: AtomicBool,
}

impl Counters {
    fn release(&self, cost: usize) {
        self.queued_lines.fetch_sub(1, Ordering::Relaxed);
        self.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
    }
}

/// What every handle shares; dropping the last one stops the writer.
struct Shared {
    /// Unbounded on its own: the bound is enforced with `Counters`, so that
    /// flush and shutdown messages can always be queued without blocking.
    tx: Sender<Msg>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl Shared {
    fn submit(&self, mut line: Line) {
        let c = &self.counters;
        line.cost = std::mem::size_of::<Msg>() + line.data.capacity() + line.context.capacity();
        let lines = c.queued_lines.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = c.queued_bytes.fetch_add(line.cost, Ordering::Relaxed) + line.cost;
        if lines > QUEUE_LINES || bytes > QUEUE_BYTES {
            c.release(line.cost);
            self.note_drop();
            return;
        }
        if let Err(mpsc::SendError(Msg::Line(line))) = self.tx.send(Msg::Line(line)) {
            c.release(line.cost);
            self.note_drop();
        }
    }

    fn note_drop(&self) {
        let c = &self.counters;
        c.dropped.fetch_add(1, Ordering::Relaxed);
        if !c.overloaded.swap(true, Ordering::Relaxed) {
            tracing::warn!("protocol log queue full; dropping lines until the writer catches up");
        }
    }
}

impl Drop for Shared {
    /// Finishes the log: the writer drains the queue, flushes and exits.
    /// Joining makes a clean shutdown lose nothing; it waits only for lines
    /// already queued.
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The line ending of every protocol log file (CRLF, as Exchange's).
pub const EOL: &str = "\r\n";

/// Appends one CSV field with the protocol log's escaping (control
/// characters become spaces, RFC 4180 quoting when needed).
pub fn push_csv_field(out: &mut String, s: &str) {
    writer::push_field(out, s);
}

/// A session id unique within the process (counter) and across restarts:
/// the base is the process start time in ms shifted left 20 bits, so ids
/// could only repeat after a restart if the previous process had opened
/// over a million sessions per millisecond of its lifetime.
fn next_session_id() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        ms << 20
    });
    base.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn hex16(id: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((id >> (60 - 4 * i)) & 0xF) as usize];
    }
    out
}

/// `s` cut to `MAX_FIELD_BYTES` at a char boundary, with `...` when cut.
fn truncated(s: &str) -> String {
    if s.len() <= MAX_FIELD_BYTES {
        return s.to_owned();
    }
    let cut = s.floor_char_boundary(MAX_FIELD_BYTES);
    let mut out = String::with_capacity(cut + 3);
    out.push_str(&s[..cut]);
    out.push_str("...");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::fs;
    use std::path::Path;
    use std::time::Instant;

    const FIELDS_HEADER: &str = "#Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data,context";

    fn cfg(dir: &Path) -> ProtocolLogConfig {
        ProtocolLogConfig {
            dir: dir.to_path_buf(),
            max_file_size: 10 * 1024 * 1024,
            max_age: Duration::from_secs(30 * 86_400),
            max_dir_size: 250 * 1024 * 1024,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    /// (date, instance, path) of the files of `kind`, oldest first.
    fn log_files(dir: &Path, kind: LogKind) -> Vec<(u32, u32, PathBuf)> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .expect("read_dir")
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let (date, n) = writer::parse_file_name(kind, &name)?;
                Some((date, n, e.path()))
            })
            .collect();
        files.sort();
        files
    }

    /// Header lines and parsed records of one file. Also checks that every
    /// line ends in CRLF and that no CR or LF occurs anywhere else.
    fn read_log(path: &Path) -> (Vec<String>, Vec<Record>) {
        let text = fs::read_to_string(path).expect("read log");
        assert!(text.ends_with("\r\n"), "{path:?} does not end in CRLF");
        let body = &text[..text.len() - 2];
        let mut header = Vec::new();
        let mut records = Vec::new();
        for line in body.split("\r\n") {
            assert!(!line.contains(['\r', '\n']), "stray line break in {line:?}");
            if line.starts_with('#') {
                assert!(records.is_empty(), "header line after records: {line:?}");
                header.push(line.to_owned());
            } else {
                records.push(parse_line(line).unwrap_or_else(|| panic!("unparsable: {line:?}")));
            }
        }
        (header, records)
    }

    fn assert_header(header: &[String], kind: LogKind, version: &str) {
        assert_eq!(header.len(), 5, "{header:?}");
        assert_eq!(header[0], "#Software: Gatehouse");
        assert_eq!(header[1], format!("#Version: {version}"));
        assert_eq!(header[2], format!("#Log-type: {}", kind.log_type()));
        let date = header[3].strip_prefix("#Date: ").expect("#Date");
        assert!(is_iso_millis(date), "{date:?}");
        assert_eq!(header[4], FIELDS_HEADER);
    }

    /// `yyyy-mm-ddThh:mm:ss.mmmZ`, checked without a regex.
    fn is_iso_millis(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 24
            && b.iter().enumerate().all(|(i, &c)| match i {
                4 | 7 => c == b'-',
                10 => c == b'T',
                13 | 16 => c == b':',
                19 => c == b'.',
                23 => c == b'Z',
                _ => c.is_ascii_digit(),
            })
    }

    fn is_upper_hex16(s: &str) -> bool {
        s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
    }

    fn all_records(dir: &Path, kind: LogKind) -> Vec<Record> {
        log_files(dir, kind)
            .iter()
            .flat_map(|(_, _, p)| read_log(p).1)
            .collect()
    }

    fn line_at(time: SystemTime, seq: u32, data: &str) -> Line {
        Line {
            time,
            connector: Arc::from("T\\Default"),
            session: 0x0123_4567_89AB_CDEF,
            seq,
            endpoints: Some((addr("10.0.0.1:25"), addr("10.0.0.2:40000"))),
            event: Event::Received,
            data: data.to_owned(),
            context: String::new(),
            cost: 0,
        }
    }

    #[test]
    fn writes_header_and_every_field_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let log = ProtocolLog::open(LogKind::Receive, cfg(dir.path()), "1.2.3").unwrap();
        let mut s = log.session(
            "GATEHOUSE\\Default",
            addr("127.0.0.1:2525"),
            addr("[::1]:50312"),
        );
        s.connect();
        s.sent("220 gatehouse ESMTP ready");
        s.received("EHLO client.example");
        s.received("MAIL FROM:<\"odd,local\"@example.com>");
        s.info("a \"quoted\", value", "Context, with comma");
        s.received("injected\r\nRCPT TO:<x@example.com>\x00end\ttab");
        s.disconnect();
        log.flush();

        let files = log_files(dir.path(), LogKind::Receive);
        assert_eq!(files.len(), 1);
        let (date, instance, path) = &files[0];
        assert_eq!(*instance, 1);
        let (header, records) = read_log(path);
        assert_header(&header, LogKind::Receive, "1.2.3");
        // The file name carries the UTC date of the file's creation.
        let header_date: String = header[3][7..17].chars().filter(|c| *c != '-').collect();
        assert_eq!(header_date, date.to_string());

        let raw = fs::read_to_string(path).unwrap();
        assert!(
            raw.contains(r#",*,"a ""quoted"", value","Context, with comma""#),
            "{raw}"
        );

        let expected: [(char, &str, &str); 7] = [
            ('+', "", ""),
            ('>', "220 gatehouse ESMTP ready", ""),
            ('<', "EHLO client.example", ""),
            ('<', "MAIL FROM:<\"odd,local\"@example.com>", ""),
            ('*', "a \"quoted\", value", "Context, with comma"),
            ('<', "injected  RCPT TO:<x@example.com> end tab", ""),
            ('-', "", ""),
        ];
        assert_eq!(records.len(), expected.len());
        assert!(is_upper_hex16(s.session_id()), "{}", s.session_id());
        let mut last_time = String::new();
        for (i, (r, (event, data, context))) in records.iter().zip(expected).enumerate() {
            assert!(is_iso_millis(&r.date_time), "{:?}", r.date_time);
            assert!(r.date_time >= last_time, "time went backwards");
            last_time.clone_from(&r.date_time);
            assert_eq!(r.connector_id, "GATEHOUSE\\Default");
            assert_eq!(r.session_id, s.session_id());
            assert_eq!(r.sequence_number, i as u32);
            assert_eq!(r.local_endpoint, "127.0.0.1:2525");
            assert_eq!(r.remote_endpoint, "[::1]:50312");
            assert_eq!(r.event, event);
            assert_eq!(r.data, data);
            assert_eq!(r.context, context);
        }
    }

    #[test]
    fn interleaved_sessions_keep_separate_ids_and_sequence_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let log = ProtocolLog::open(LogKind::Receive, cfg(dir.path()), "v").unwrap();
        let local = addr("192.0.2.1:25");
        let mut a = log.session("H\\Default", local, addr("198.51.100.1:1111"));
        let mut b = log.session("H\\Default", local, addr("198.51.100.2:2222"));
        assert_ne!(a.session_id(), b.session_id());
        a.connect();
        b.connect();
        a.received("EHLO a");
        b.received("EHLO b");
        b.sent("250 ok");
        a.disconnect();
        b.disconnect();
        log.flush();

        let mut by_session: HashMap<String, Vec<Record>> = HashMap::new();
        for r in all_records(dir.path(), LogKind::Receive) {
            by_session.entry(r.session_id.clone()).or_default().push(r);
        }
        assert_eq!(by_session.len(), 2);
        let ra = &by_session[a.session_id()];
        let rb = &by_session[b.session_id()];
        assert_eq!(
            ra.iter().map(|r| r.sequence_number).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(
            rb.iter().map(|r| r.sequence_number).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert!(ra.iter().all(|r| r.remote_endpoint == "198.51.100.1:1111"));
        assert!(rb.iter().all(|r| r.remote_endpoint == "198.51.100.2:2222"));
        assert_eq!(ra.iter().map(|r| r.event).collect::<String>(), "+<-");
        assert_eq!(rb.iter().map(|r| r.event).collect::<String>(), "+<>-");
    }

    #[test]
    fn rotates_when_file_would_exceed_max_size() {
        let dir = tempfile::tempdir().unwrap();
        let config = ProtocolLogConfig {
            max_file_size: 1024,
            ..cfg(dir.path())
        };
        let log = ProtocolLog::open(LogKind::Receive, config, "v").unwrap();
        let mut s = log.session("H\\Default", addr("127.0.0.1:25"), addr("127.0.0.1:5000"));
        for i in 0..40 {
            s.received(&format!(
                "RCPT TO:<user-{i:02}@example.com> padding padding"
            ));
        }
        log.flush();

        let files = log_files(dir.path(), LogKind::Receive);
        assert!(files.len() >= 3, "{files:?}");
        let instances: Vec<u32> = files.iter().map(|f| f.1).collect();
        assert_eq!(instances, (1..=files.len() as u32).collect::<Vec<_>>());
        let mut seqs = Vec::new();
        for (_, _, path) in &files {
            assert!(
                fs::metadata(path).unwrap().len() <= 1024,
                "{path:?} too big"
            );
            let (header, records) = read_log(path);
            assert_header(&header, LogKind::Receive, "v");
            seqs.extend(records.iter().map(|r| r.sequence_number));
        }
        assert_eq!(seqs, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn a_line_longer_than_max_file_size_is_written_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = ProtocolLogConfig {
            max_file_size: 400,
            ..cfg(dir.path())
        };
        let log = ProtocolLog::open(LogKind::Receive, config, "v").unwrap();
        let mut s = log.session("H\\Default", addr("127.0.0.1:25"), addr("127.0.0.1:5000"));
        s.connect();
        s.received(&"x".repeat(1000));
        s.disconnect();
        log.flush();

        let files = log_files(dir.path(), LogKind::Receive);
        let per_file: Vec<String> = files
            .iter()
            .map(|(_, _, p)| read_log(p).1.iter().map(|r| r.event).collect())
            .collect();
        assert_eq!(per_file, ["+", "<", "-"]);
    }

    #[test]
    fn retention_deletes_oldest_files_beyond_max_dir_size() {
        let dir = tempfile::tempdir().unwrap();
        let config = ProtocolLogConfig {
            max_file_size: 1024,
            max_dir_size: 3000,
            ..cfg(dir.path())
        };
        let log = ProtocolLog::open(LogKind::Receive, config, "v").unwrap();
        let mut s = log.session("H\\Default", addr("127.0.0.1:25"), addr("127.0.0.1:5000"));
        for i in 0..100 {
            s.received(&format!(
                "RCPT TO:<user-{i:03}@example.com> padding padding"
            ));
        }
        log.flush();

        let files = log_files(dir.path(), LogKind::Receive);
        let instances: Vec<u32> = files.iter().map(|f| f.1).collect();
        assert!(instances[0] > 1, "oldest file kept: {instances:?}");
        // What is left is the newest run of files, without gaps.
        let first = instances[0];
        assert_eq!(
            instances,
            (first..first + files.len() as u32).collect::<Vec<_>>()
        );
        // At the last rotation the total, new file included, was within the
        // limit; only the file being written has grown since.
        let older: u64 = files[..files.len() - 1]
            .iter()
            .map(|(_, _, p)| fs::metadata(p).unwrap().len())
            .sum();
        assert!(older <= 3000, "{older}");
        // The newest lines are all kept.
        let records = all_records(dir.path(), LogKind::Receive);
        assert_eq!(records.last().unwrap().sequence_number, 99);
        let seqs: Vec<u32> = records.iter().map(|r| r.sequence_number).collect();
        assert_eq!(seqs, (seqs[0]..100).collect::<Vec<_>>());
    }

    #[test]
    fn restart_continues_numbering_after_highest_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = ProtocolLog::open(LogKind::Receive, cfg(dir.path()), "v").unwrap();
        log.session("H\\Default", addr("127.0.0.1:25"), addr("127.0.0.1:5000"))
            .connect();
        drop(log);
        let files = log_files(dir.path(), LogKind::Receive);
        assert_eq!(files.len(), 1);
        let (date, _, first) = &files[0];
        let first_text = fs::read_to_string(first).unwrap();
        let stranger = dir
            .path()
            .join(writer::file_name(LogKind::Receive, *date, 7));
        fs::write(&stranger, "keep me").unwrap();

        let log = ProtocolLog::open(LogKind::Receive, cfg(dir.path()), "v").unwrap();
        log.session("H\\Default", addr("127.0.0.1:25"), addr("127.0.0.1:5001"))
            .connect();
        drop(log);
        let instances: Vec<u32> = log_files(dir.path(), LogKind::Receive)
            .iter()
            .map(|f| f.1)
            .collect();
        assert_eq!(instances, [1, 7, 8]);
        assert_eq!(fs::read_to_string(first).unwrap(), first_text);
        assert_eq!(fs::read_to_string(&stranger).unwrap(), "keep me");

        // The send log numbers its own files in the same directory.
        drop(ProtocolLog::open(LogKind::Send, cfg(dir.path()), "v").unwrap());
        let send: Vec<u32> = log_files(dir.path(), LogKind::Send)
            .iter()
            .map(|f| f.1)
            .collect();
        assert_eq!(send, [1]);
    }

    fn make_old(path: &Path) {
        let f = fs::File::create(path).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(1_577_836_800))
            .unwrap(); // 2020-01-01
    }

    #[test]
    fn deletes_files_older_than_max_age_but_no_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "RECV20200101-1.LOG",
            "SEND20200101-1.LOG",
            "notes.txt",
            "RECV20200101-1.LOG.bak",
            "recv20200101-2.log",
        ];
        for name in names {
            make_old(&dir.path().join(name));
        }
        let config = ProtocolLogConfig {
            max_age: Duration::from_secs(86_400),
            ..cfg(dir.path())
        };
        let log = ProtocolLog::open(LogKind::Receive, config, "v").unwrap();
        drop(log);
        assert!(!dir.path().join(names[0]).exists());
        for name in &names[1..] {
            assert!(dir.path().join(name).exists(), "{name} deleted");
        }
        assert_eq!(log_files(dir.path(), LogKind::Receive).len(), 1);
    }

    #[test]
    fn zero_max_age_keeps_old_files() {
        let dir = tempfile::tempdir().unwrap();
        make_old(&dir.path().join("RECV20200101-1.LOG"));
        let config = ProtocolLogConfig {
            max_age: Duration::ZERO,
            ..cfg(dir.path())
        };
        drop(ProtocolLog::open(LogKind::Receive, config, "v").unwrap());
        assert!(dir.path().join("RECV20200101-1.LOG").exists());
    }

    #[test]
    fn starts_new_file_when_utc_date_changes() {
        let dir = tempfile::tempdir().unwrap();
        // 2026-11-23T23:59:59.900Z and 2026-11-24T00:00:00.100Z.
        let before = UNIX_EPOCH + Duration::from_millis(1_795_478_399_900);
        let after = UNIX_EPOCH + Duration::from_millis(1_795_478_400_100);
        let counters = Arc::new(Counters::default());
        let mut w =
            writer::Writer::open(LogKind::Receive, cfg(dir.path()), "v", counters, before).unwrap();
        assert!(w.write_record(&line_at(before, 0, "last of the 23rd")));
        assert!(w.write_record(&line_at(after, 1, "first of the 24th")));
        // Stamped before midnight but arriving late: stays in the new file.
        assert!(w.write_record(&line_at(before, 2, "late")));
        w.flush();

        let files = log_files(dir.path(), LogKind::Receive);
        let names: Vec<_> = files.iter().map(|(d, n, _)| (*d, *n)).collect();
        assert_eq!(names, [(20261123, 1), (20261124, 1)]);
        let (h1, r1) = read_log(&files[0].2);
        let (h2, r2) = read_log(&files[1].2);
        assert_header(&h1, LogKind::Receive, "v");
        assert_header(&h2, LogKind::Receive, "v");
        assert_eq!(
            r1.iter().map(|r| r.data.as_str()).collect::<Vec<_>>(),
            ["last of the 23rd"]
        );
        assert_eq!(r1[0].date_time, "2026-11-23T23:59:59.900Z");
        assert_eq!(
            r2.iter().map(|r| r.data.as_str()).collect::<Vec<_>>(),
            ["first of the 24th", "late"]
        );
        assert_eq!(r2[0].date_time, "2026-11-24T00:00:00.100Z");
        assert_eq!(r2[0].session_id, "0123456789ABCDEF");
    }

    #[test]
    fn truncates_long_data_and_context_at_a_char_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let log = ProtocolLog::open(LogKind::Receive, cfg(dir.path()), "v").unwrap();
        let mut s = log.session("H\\Default", addr("127.0.0.1:25"), addr("127.0.0.1:5000"));
        // "a" then two-byte chars: byte 4096 falls inside a char.
        let long = format!("a{}", "é".repeat(3000));
        s.info(&long, &long);
        s.received(&"b".repeat(4096));
        log.flush();
        let records = all_records(dir.path(), LogKind::Receive);
        let cut = format!("a{}...", "é".repeat(2047));
        assert_eq!(records[0].data, cut);
        assert_eq!(records[0].context, cut);
        assert_eq!(
            records[1].data,
            "b".repeat(4096),
            "exactly 4096 bytes is kept whole"
        );
    }

    #[test]
    fn full_queue_drops_lines_and_reports_the_count_when_it_drains() {
        let dir = tempfile::tempdir().unwrap();
        let log = ProtocolLog::open(LogKind::Receive, cfg(dir.path()), "v").unwrap();
        let counters = Arc::clone(&log.shared.as_ref().unwrap().counters);
        let mut s = log.session("H\\Default", addr("127.0.0.1:25"), addr("127.0.0.1:5000"));
        s.connect();
        log.flush();
        // Pretend the writer is QUEUE_LINES behind.
        counters
            .queued_lines
            .fetch_add(QUEUE_LINES, Ordering::Relaxed);
        s.received("lost 1");
        s.received("lost 2");
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 2);
        assert!(counters.overloaded.load(Ordering::Relaxed));
        counters
            .queued_lines
            .fetch_sub(QUEUE_LINES, Ordering::Relaxed);
        s.received("kept");
        log.flush();

        let records = all_records(dir.path(), LogKind::Receive);
        let summary: Vec<(char, u32, &str)> = records
            .iter()
            .map(|r| (r.event, r.sequence_number, r.data.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ('+', 0, ""),
                ('*', 0, "2 protocol log lines dropped"),
                ('<', 3, "kept")
            ]
        );
        let notice = &records[1];
        assert!(is_upper_hex16(&notice.session_id));
        assert_ne!(notice.session_id, s.session_id());
        assert_eq!(
            (
                notice.local_endpoint.as_str(),
                notice.remote_endpoint.as_str()
            ),
            ("", "")
        );
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
        assert!(!counters.overloaded.load(Ordering::Relaxed));
        assert_eq!(counters.queued_lines.load(Ordering::Relaxed), 0);
        assert_eq!(counters.queued_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn disabled_log_writes_nothing() {
        let log = ProtocolLog::disabled();
        assert!(!log.is_enabled());
        let mut s = log.session("H\\Default", addr("127.0.0.1:25"), addr("127.0.0.1:5000"));
        assert!(!s.is_enabled());
        assert!(s.live.is_none());
        s.connect();
        s.received("EHLO x");
        s.sent("250 ok");
        s.info("d", "c");
        s.disconnect();
        log.flush();
        assert_eq!(s.seq, 0, "a disabled session keeps no per-line state");
        assert!(
            is_upper_hex16(s.session_id()),
            "ids still exist for other logs to quote"
        );
    }

    #[test]
    fn flushes_within_about_a_second_without_explicit_flush() {
        let dir = tempfile::tempdir().unwrap();
        let log = ProtocolLog::open(LogKind::Receive, cfg(dir.path()), "v").unwrap();
        let mut s = log.session("H\\Default", addr("127.0.0.1:25"), addr("127.0.0.1:5000"));
        s.connect();
        let path = log_files(dir.path(), LogKind::Receive)[0].2.clone();
        let start = Instant::now();
        while read_log(&path).1.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "line never flushed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(log);
    }

    #[test]
    fn dropping_the_last_handle_flushes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let log = ProtocolLog::open(LogKind::Receive, cfg(dir.path()), "v").unwrap();
        let mut s = log.session("H\\Default", addr("127.0.0.1:25"), addr("127.0.0.1:5000"));
        let clone = log.clone();
        drop(log);
        s.connect();
        drop(clone);
        s.disconnect(); // the session is the last handle now
        drop(s);
        let events: String = all_records(dir.path(), LogKind::Receive)
            .iter()
            .map(|r| r.event)
            .collect();
        assert_eq!(events, "+-");
    }

    #[test]
    fn session_ids_are_unique_and_sixteen_upper_hex_digits() {
        let enabled_dir = tempfile::tempdir().unwrap();
        let enabled = ProtocolLog::open(LogKind::Send, cfg(enabled_dir.path()), "v").unwrap();
        let disabled = ProtocolLog::disabled();
        let local = addr("127.0.0.1:25");
        let mut seen = HashSet::new();
        for i in 0..5000 {
            let log = if i % 2 == 0 { &enabled } else { &disabled };
            let s = log.session("H\\Default", local, local);
            assert!(is_upper_hex16(s.session_id()), "{}", s.session_id());
            assert!(seen.insert(s.session_id().to_owned()), "duplicate id");
        }
        assert_eq!(hex16(0x08D5_4162_A041_16F2), *b"08D54162A04116F2");
    }

    #[test]
    fn send_log_uses_send_prefix_and_log_type() {
        let dir = tempfile::tempdir().unwrap();
        let log = ProtocolLog::open(LogKind::Send, cfg(dir.path()), "0.1.0").unwrap();
        let mut s = log.session(
            "Intra-Organization SMTP Send Connector",
            addr("[2001:db8::1]:41000"),
            addr("[2001:db8::2]:25"),
        );
        s.connect();
        log.flush();
        assert!(log_files(dir.path(), LogKind::Receive).is_empty());
        let files = log_files(dir.path(), LogKind::Send);
        assert_eq!(files.len(), 1);
        let name = files[0].2.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            name.starts_with("SEND") && name.ends_with("-1.LOG"),
            "{name}"
        );
        let (header, records) = read_log(&files[0].2);
        assert_header(&header, LogKind::Send, "0.1.0");
        assert_eq!(records[0].local_endpoint, "[2001:db8::1]:41000");
        assert_eq!(records[0].remote_endpoint, "[2001:db8::2]:25");
        assert_eq!(
            records[0].connector_id,
            "Intra-Organization SMTP Send Connector"
        );
    }

    #[test]
    fn open_fails_when_dir_is_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, "x").unwrap();
        assert!(ProtocolLog::open(LogKind::Receive, cfg(&file), "v").is_err());
    }

    #[test]
    fn quoting_round_trips_and_control_characters_become_spaces() {
        let cases = [
            ("", ""),
            ("plain", "plain"),
            (",", ","),
            ("\"", "\""),
            ("\"\"", "\"\""),
            ("a,\"b\",c", "a,\"b\",c"),
            ("trailing,", "trailing,"),
            (
                "cr\rlf\nnul\0del\u{7f}nel\u{85}ls\u{2028}",
                "cr lf nul del nel ls ",
            ),
            ("ünïcödé, ok", "ünïcödé, ok"),
        ];
        let mut out = String::new();
        for (input, expected) in cases {
            let mut line = line_at(UNIX_EPOCH, 5, input);
            line.context = input.to_owned();
            writer::format_line(&mut out, &line);
            assert_eq!(out.matches("\r\n").count(), 1);
            let r = parse_line(&out).unwrap_or_else(|| panic!("{out:?}"));
            assert_eq!(r.data, expected, "{input:?}");
            assert_eq!(r.context, expected, "{input:?}");
            assert_eq!(r.date_time, "1970-01-01T00:00:00.000Z");
            assert_eq!(r.sequence_number, 5);
        }
    }

    #[test]
    fn parse_line_rejects_headers_and_malformed_lines() {
        let good = "2026-11-23T16:00:04.114Z,GATEHOUSE\\Default,08D54162A04116F2,0,127.0.0.1:2525,127.0.0.1:50312,+,,";
        let r = parse_line(good).unwrap();
        assert_eq!(r.session_id, "08D54162A04116F2");
        assert_eq!(r.event, '+');
        assert_eq!(parse_line(&format!("{good}\r\n")), Some(r));
        for bad in [
            "#Software: Gatehouse",
            "",
            "a,b,c",
            "2026-11-23T16:00:04.114Z,c,ID,0,l,r,+,,,",
            "2026-11-23T16:00:04.114Z,c,ID,x,l,r,+,,",
            "2026-11-23T16:00:04.114Z,c,ID,-1,l,r,+,,",
            "2026-11-23T16:00:04.114Z,c,ID,0,l,r,?,,",
            "2026-11-23T16:00:04.114Z,c,ID,0,l,r,++,,",
            "2026-11-23T16:00:04.114Z,c,ID,0,l,r,+,\"unterminated,",
            "2026-11-23T16:00:04.114Z,c,ID,0,l,r,+,\"x\"y,",
            "2026-11-23T16:00:04.114Z,c,ID,0,l,r,+,x\"y,",
        ] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }
}
