//! The per-request record of the HttpProxy log (reference section 4.2).
//!
//! `RequestRecord` collects, while a request runs, the columns Exchange's
//! HttpProxy log has (request id, protocol, URL stem, method, client IP,
//! target server, status, backend status, latencies, bytes, anchor
//! mailbox, authentication type, error code).

use crate::protolog::{EOL, ProtocolLog, push_csv_field};
use hyper::header::HeaderValue;
use hyper::{Method, Request};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A request id: `tttttttt-pppp-nnnnnnnnnnnn` (time, process, sequence),
/// kept inline so a request costs no allocation for it.
#[derive(Clone, Copy)]
pub struct RequestId([u8; 26]);

impl RequestId {
    pub fn next() -> RequestId {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        // getpid is a system call: once is enough.
        static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let pid = *PID.get_or_init(std::process::id) & 0xffff;
        let mut b = [b'-'; 26];
        let mut hex = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                if let Some(c) = b.get_mut(i) {
                    *c = b"0123456789abcdef"[(v & 0xf) as usize];
                }
                v >>= 4;
            }
        };
        hex(0, 8, t & 0xffff_ffff);
        hex(9, 4, u64::from(pid));
        hex(14, 12, n);
        RequestId(b)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request's columns. The request's own texts are copied into one
/// small buffer (`HeadText`), not kept as references into the request:
/// those share the client connection's 8 KiB read buffer, which a record
/// would keep alive until the response ends (hours for an RPC channel,
/// minutes for a long poll).
#[derive(Debug)]
pub struct RequestRecord {
    pub request_id: RequestId,
    pub protocol: Arc<str>,
    head: HeadText,
    method: Method,
    /// The client's address as text (formatted once per connection).
    pub client_ip: Arc<str>,
    pub server_host: Arc<str>,
    /// Empty until a server is chosen.
    pub target_server: Arc<str>,
    pub status: u16,
    pub backend_status: u16,
    pub error_code: &'static str,
    pub anchor: Option<String>,
    pub auth_type: Option<String>,
    /// `AnchorMailbox`, `LeastOutstanding` or `Pinned`.
    pub routing_type: &'static str,
    pub generic_errors: String,
    pub outstanding: usize,
    /// Request body bytes sent on (only requests with a body count).
    pub request_bytes: Option<Arc<AtomicU64>>,
    pub response_bytes: u64,
    pub backend_latency: Duration,
    pub total: Duration,
    pub started: Instant,
}

impl RequestRecord {
    pub fn new<B>(
        request_id: RequestId,
        client: &Arc<str>,
        req: &Request<B>,
        server_host: &Arc<str>,
        none: &Arc<str>,
    ) -> Self {
        RequestRecord {
            request_id,
            protocol: none.clone(),
            head: HeadText::new(req),
            method: req.method().clone(),
            client_ip: client.clone(),
            server_host: server_host.clone(),
            target_server: none.clone(),
            status: 0,
            backend_status: 0,
            error_code: "",
            anchor: None,
            auth_type: None,
            routing_type: "",
            generic_errors: String::new(),
            outstanding: 0,
            request_bytes: None,
            response_bytes: 0,
            backend_latency: Duration::ZERO,
            total: Duration::ZERO,
            started: Instant::now(),
        }
    }
}

/// The texts of a request head the log writes, in one buffer: the URL
/// host (Host, else the URI's authority), path, query, User-Agent and
/// client-request-id. Header values that are not visible ASCII are
/// written empty, as before.
#[derive(Debug)]
struct HeadText {
    buf: String,
    /// End of each part in `buf`, in the order of `Part`.
    ends: [usize; 5],
    has_query: bool,
}

#[derive(Clone, Copy)]
enum Part {
    Host = 0,
    Path = 1,
    Query = 2,
    UserAgent = 3,
    ClientRequestId = 4,
}

fn text(v: Option<&HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or("")
}

impl HeadText {
    fn new<B>(req: &Request<B>) -> HeadText {
        let h = req.headers();
        let host = match h.get(hyper::header::HOST) {
            Some(v) => text(Some(v)),
            None => req.uri().authority().map(|a| a.as_str()).unwrap_or(""),
        };
        let parts = [
            host,
            req.uri().path(),
            req.uri().query().unwrap_or(""),
            text(h.get(hyper::header::USER_AGENT)),
            text(h.get("client-request-id")),
        ];
        let mut buf = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0; 5];
        for (end, p) in ends.iter_mut().zip(parts) {
            buf.push_str(p);
            *end = buf.len();
        }
        HeadText {
            buf,
            ends,
            has_query: req.uri().query().is_some(),
        }
    }

    fn get(&self, part: Part) -> &str {
        let i = part as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.buf.get(start..self.ends[i]).unwrap_or("")
    }

    fn query(&self) -> Option<&str> {
        self.has_query.then(|| self.get(Part::Query))
    }
}

/// The HttpProxy log: a `protolog` log of kind `HttpProxy` (the same
/// writer thread, rotation and retention as the SMTP protocol logs).
/// Lines are batched (up to `BATCH_BYTES`, or `BATCH_DELAY`) so a busy
/// proxy hands the writer thread one message per batch: waking it per
/// request cost a sixth of the proxy's CPU in the benchmark.
#[derive(Clone)]
pub struct ProxyLog {
    log: ProtocolLog,
    batch: Arc<Mutex<String>>,
}

const BATCH_BYTES: usize = 16 * 1024;
const BATCH_DELAY: Duration = Duration::from_millis(200);

impl ProxyLog {
    /// Needs a Tokio runtime: starts the task that sends a partial batch
    /// after `BATCH_DELAY`; it ends when the last handle is dropped.
    pub fn new(log: ProtocolLog) -> ProxyLog {
        let this = ProxyLog {
            log,
            batch: Arc::new(Mutex::new(String::new())),
        };
        let weak = Arc::downgrade(&this.batch);
        let log = this.log.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(BATCH_DELAY).await;
                let Some(batch) = weak.upgrade() else { return };
                send(&log, &batch);
            }
        });
        this
    }

    pub fn disabled() -> ProxyLog {
        ProxyLog {
            log: ProtocolLog::disabled(),
            batch: Arc::default(),
        }
    }

    /// Queues one finished request (called when its response ended).
    /// The line is formatted into a per-thread buffer, outside the lock.
    pub fn write(&self, rec: &RequestRecord) {
        if !self.log.is_enabled() {
            return;
        }
        thread_local! {
            static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        let full = LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            crate::timefmt::push_iso8601_millis(&mut line, SystemTime::now());
            line.push(',');
            write_record(&mut line, rec);
            line.push_str(EOL);
            let mut b = self.batch.lock().unwrap_or_else(|e| e.into_inner());
            if b.capacity() == 0 {
                b.reserve(BATCH_BYTES + 2048);
            }
            b.push_str(&line);
            (b.len() >= BATCH_BYTES).then(|| std::mem::take(&mut *b))
        });
        if let Some(text) = full {
            self.log.records(text);
        }
    }

    /// Sends the partial batch and waits until the writer has it on disk
    /// (shutdown, tests). Blocks: not for async worker threads in a hot
    /// path.
    pub fn flush(&self) {
        send(&self.log, &self.batch);
        self.log.flush();
    }
}

fn send(log: &ProtocolLog, batch: &Mutex<String>) {
    let text = std::mem::take(&mut *batch.lock().unwrap_or_else(|e| e.into_inner()));
    if !text.is_empty() {
        log.records(text);
    }
}

/// Longest text kept per field, so a line stays far below the writer's
/// buffer whatever the client sent.
const MAX_FIELD: usize = 1024;

fn field(out: &mut String, s: &str) {
    let mut end = s.len().min(MAX_FIELD);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    push_csv_field(out, s.get(..end).unwrap_or(""));
    out.push(',');
}

/// The version columns (major, minor, build, revision), once.
fn version_columns() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let mut version = crate::VERSION.split('.');
        let mut v = || version.next().unwrap_or("0").to_string();
        let (major, minor, build) = (v(), v(), v());
        format!("{major},{minor},{build},0,")
    })
}

/// Everything after the DateTime column, in `HTTP_PROXY_FIELDS` order.
#[cfg(test)]
pub fn format_record(r: &RequestRecord) -> String {
    let mut out = String::with_capacity(512);
    write_record(&mut out, r);
    out
}

/// Appends everything after the DateTime column, in `HTTP_PROXY_FIELDS`
/// order, without a line end.
pub fn write_record(out: &mut String, r: &RequestRecord) {
    let num = |out: &mut String, n: u64| {
        let _ = write!(out, "{n},");
    };
    let status = |out: &mut String, n: u16| {
        if n != 0 {
            let _ = write!(out, "{n}");
        }
        out.push(',');
    };
    let empty = |out: &mut String, n: usize| {
        for _ in 0..n {
            out.push(',');
        }
    };
    field(out, r.request_id.as_str());
    out.push_str(version_columns());
    field(out, r.head.get(Part::ClientRequestId));
    field(out, &r.protocol);
    field(out, r.head.get(Part::Host));
    field(out, r.head.get(Part::Path));
    empty(out, 1); // ProtocolAction
    field(out, r.auth_type.as_deref().unwrap_or(""));
    empty(out, 3); // IsAuthenticated, AuthenticatedUser, Organization
    field(out, r.anchor.as_deref().unwrap_or(""));
    field(out, r.head.get(Part::UserAgent));
    out.push_str(&r.client_ip);
    out.push(',');
    field(out, &r.server_host);
    status(out, r.status);
    status(out, r.backend_status);
    field(out, r.error_code);
    field(out, r.method.as_str());
    field(
        out,
        if r.target_server.is_empty() {
            ""
        } else {
            "Proxy"
        },
    );
    field(out, &r.target_server);
    empty(out, 1); // TargetServerVersion
    field(out, r.routing_type);
    empty(out, 4); // RoutingHint .. ServerLocatorLatency
    num(
        out,
        r.request_bytes
            .as_ref()
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0),
    );
    num(out, r.response_bytes);
    num(out, r.outstanding as u64);
    empty(out, 18); // AuthModulePerfContext .. BackendProcessingLatency
    num(out, r.backend_latency.as_millis() as u64); // BackendRespInitLatency
    empty(out, 10); // BackendRespStreamLatency .. HttpProxyOverhead
    num(out, r.total.as_millis() as u64); // TotalRequestTime
    empty(out, 1); // RouteRefresherLatency
    match r.head.query() {
        // A query is URI text: no control characters; quoted when needed.
        Some(q) if q.len() < MAX_FIELD && q.is_ascii() && !q.contains([',', '"']) => {
            out.push('?');
            out.push_str(q);
            out.push(',');
        }
        Some(q) => field(out, &format!("?{q}")),
        None => out.push(','),
    }
    empty(out, 2); // BackEndGenericInfo, GenericInfo
    field(out, &r.generic_errors);
    empty(out, 4); // EdgeTraceId .. PartitionEndpointLookupLatency
    // RoutingStatus: the last column, no comma after it.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_has_every_column_in_order() {
        let req = hyper::Request::builder()
            .method("RPC_OUT_DATA")
            .uri("/rpc/rpcproxy.dll?guid@example.test:6001")
            .header("host", "mail.example.test")
            .header("user-agent", "MSRPC, \"x\"")
            .body(())
            .unwrap();
        let none: Arc<str> = Arc::from("");
        let id = RequestId::next();
        let mut r = RequestRecord::new(id, &"192.0.2.9".into(), &req, &"gh1".into(), &none);
        r.protocol = "RpcHttp".into();
        r.status = 200;
        r.backend_status = 200;
        r.target_server = "mbx1:443".into();
        r.anchor = Some("MailboxGuid~abc".into());
        r.response_bytes = 4096;
        r.backend_latency = Duration::from_millis(20);
        r.total = Duration::from_millis(1500);
        r.generic_errors = "refused: no, really".into();
        let line = format!("2026-11-23T16:00:04.114Z,{}", format_record(&r));
        let names: Vec<&str> = crate::protolog::HTTP_PROXY_FIELDS.split(',').collect();
        let values = crate::protolog::split_csv(&line).expect("parses");
        assert_eq!(values.len(), names.len());
        let get = |n: &str| values[names.iter().position(|x| *x == n).unwrap()].as_str();
        assert_eq!(get("RequestId"), id.as_str());
        assert_eq!(id.as_str().len(), 26);
        assert_eq!(get("Protocol"), "RpcHttp");
        assert_eq!(get("UrlHost"), "mail.example.test");
        assert_eq!(get("UrlStem"), "/rpc/rpcproxy.dll");
        assert_eq!(get("UrlQuery"), "?guid@example.test:6001");
        assert_eq!(get("Method"), "RPC_OUT_DATA");
        assert_eq!(get("UserAgent"), "MSRPC, \"x\"");
        assert_eq!(get("ClientIpAddress"), "192.0.2.9");
        assert_eq!(get("ServerHostName"), "gh1");
        assert_eq!(get("TargetServer"), "mbx1:443");
        assert_eq!(get("ProxyAction"), "Proxy");
        assert_eq!(get("HttpStatus"), "200");
        assert_eq!(get("BackEndStatus"), "200");
        assert_eq!(get("AnchorMailbox"), "MailboxGuid~abc");
        assert_eq!(get("RequestBytes"), "0");
        assert_eq!(get("ResponseBytes"), "4096");
        assert_eq!(get("BackendRespInitLatency"), "20");
        assert_eq!(get("TotalRequestTime"), "1500");
        assert_eq!(get("GenericErrors"), "refused: no, really");
        assert_eq!(get("RoutingStatus"), "");
        assert_eq!(
            get("MajorVersion"),
            crate::VERSION.split('.').next().unwrap()
        );
        assert_eq!(get("RevisionVersion"), "0");
    }

    #[test]
    fn a_query_with_commas_is_one_quoted_field() {
        let req = hyper::Request::builder()
            .uri("https://mail.example.test/owa/?a=1,2&b=3")
            .body(())
            .unwrap();
        let none: Arc<str> = Arc::from("");
        let r = RequestRecord::new(RequestId::next(), &"::1".into(), &req, &none, &none);
        let line = format!("2026-11-23T16:00:04.114Z,{}", format_record(&r));
        let names: Vec<&str> = crate::protolog::HTTP_PROXY_FIELDS.split(',').collect();
        let values = crate::protolog::split_csv(&line).expect("parses");
        assert_eq!(values.len(), names.len());
        let get = |n: &str| values[names.iter().position(|x| *x == n).unwrap()].as_str();
        assert_eq!(get("UrlQuery"), "?a=1,2&b=3");
        // No Host header: the authority of an absolute URI (HTTP/2).
        assert_eq!(get("UrlHost"), "mail.example.test");
        assert_eq!(get("ClientIpAddress"), "::1");
        assert_eq!(get("Method"), "GET");
    }
}
