//! The per-request record of the HttpProxy log (reference section 4.2).
//!
//! `RequestRecord` collects, while a request runs, the columns Exchange's
//! HttpProxy log has (request id, protocol, URL stem, method, client IP,
//! target server, status, backend status, latencies, bytes, anchor
//! mailbox, authentication type, error code).

use crate::protolog::{EOL, ProtocolLog, push_csv_field};
use hyper::Request;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// One request's columns.
#[derive(Debug)]
pub struct RequestRecord {
    pub request_id: String,
    pub protocol: String,
    pub url_host: String,
    pub url_stem: String,
    pub url_query: String,
    pub method: String,
    pub client_ip: String,
    pub user_agent: String,
    pub server_host: String,
    pub target_server: String,
    pub status: u16,
    pub backend_status: u16,
    pub error_code: String,
    pub anchor: String,
    pub auth_type: String,
    pub client_request_id: String,
    /// `AnchorMailbox`, `LeastOutstanding` or `Pinned`.
    pub routing_type: String,
    pub generic_errors: String,
    pub outstanding: usize,
    pub request_bytes: Arc<AtomicU64>,
    pub response_bytes: Arc<AtomicU64>,
    pub backend_latency: Duration,
    pub total: Duration,
    pub started: Instant,
}

impl Default for RequestRecord {
    fn default() -> Self {
        RequestRecord {
            request_id: String::new(),
            protocol: String::new(),
            url_host: String::new(),
            url_stem: String::new(),
            url_query: String::new(),
            method: String::new(),
            client_ip: String::new(),
            user_agent: String::new(),
            server_host: String::new(),
            target_server: String::new(),
            status: 0,
            backend_status: 0,
            error_code: String::new(),
            anchor: String::new(),
            auth_type: String::new(),
            client_request_id: String::new(),
            routing_type: String::new(),
            generic_errors: String::new(),
            outstanding: 0,
            request_bytes: Arc::default(),
            response_bytes: Arc::default(),
            backend_latency: Duration::ZERO,
            total: Duration::ZERO,
            started: Instant::now(),
        }
    }
}

impl RequestRecord {
    pub fn new<B>(request_id: String, client: IpAddr, req: &Request<B>, server_host: &str) -> Self {
        let header = |n: hyper::header::HeaderName| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let host = {
            let h = header(hyper::header::HOST);
            if h.is_empty() {
                req.uri()
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            } else {
                h
            }
        };
        RequestRecord {
            request_id,
            url_host: host,
            url_stem: req.uri().path().to_string(),
            url_query: req
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default(),
            method: req.method().as_str().to_string(),
            client_ip: client.to_string(),
            user_agent: header(hyper::header::USER_AGENT),
            client_request_id: header(hyper::header::HeaderName::from_static("client-request-id")),
            server_host: server_host.to_string(),
            ..Default::default()
        }
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
    pub fn write(&self, rec: &RequestRecord) {
        if !self.log.is_enabled() {
            return;
        }
        let line = format!(
            "{},{}{EOL}",
            crate::timefmt::iso8601_millis(SystemTime::now()),
            format_record(rec)
        );
        let full = {
            let mut b = self.batch.lock().unwrap_or_else(|e| e.into_inner());
            b.push_str(&line);
            (b.len() >= BATCH_BYTES).then(|| std::mem::take(&mut *b))
        };
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

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// Everything after the DateTime column, in `HTTP_PROXY_FIELDS` order.
pub fn format_record(r: &RequestRecord) -> String {
    let mut out = String::with_capacity(512);
    let mut version = crate::VERSION.split('.');
    let mut v = || version.next().unwrap_or("0").to_string();
    let (major, minor, build) = (v(), v(), v());
    let status = |n: u16| if n == 0 { String::new() } else { n.to_string() };
    let columns: [&str; 73] = [
        &r.request_id,
        &major,
        &minor,
        &build,
        "0",
        &r.client_request_id,
        &r.protocol,
        &r.url_host,
        &r.url_stem,
        "",
        &r.auth_type,
        "",
        "",
        "",
        &r.anchor,
        &r.user_agent,
        &r.client_ip,
        &r.server_host,
        &status(r.status),
        &status(r.backend_status),
        &r.error_code,
        &r.method,
        if r.target_server.is_empty() {
            ""
        } else {
            "Proxy"
        },
        &r.target_server,
        "",
        &r.routing_type,
        "",
        "",
        "",
        "",
        &r.request_bytes.load(Ordering::Relaxed).to_string(),
        &r.response_bytes.load(Ordering::Relaxed).to_string(),
        &r.outstanding.to_string(),
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        &ms(r.backend_latency),
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        &ms(r.total),
        "",
        &r.url_query,
        "",
        "",
        &r.generic_errors,
        "",
        "",
        "",
        "",
        "",
    ];
    for c in columns {
        field(&mut out, c);
    }
    out.pop();
    out
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
        let mut r = RequestRecord::new("id-1".into(), "192.0.2.9".parse().unwrap(), &req, "gh1");
        r.protocol = "RpcHttp".into();
        r.status = 200;
        r.backend_status = 200;
        r.target_server = "mbx1:443".into();
        r.anchor = "MailboxGuid~abc".into();
        r.total = Duration::from_millis(1500);
        let line = format!("2026-11-23T16:00:04.114Z,{}", format_record(&r));
        let names: Vec<&str> = crate::protolog::HTTP_PROXY_FIELDS.split(',').collect();
        let values = crate::protolog::split_csv(&line).expect("parses");
        assert_eq!(values.len(), names.len());
        let get = |n: &str| values[names.iter().position(|x| *x == n).unwrap()].as_str();
        assert_eq!(get("RequestId"), "id-1");
        assert_eq!(get("Protocol"), "RpcHttp");
        assert_eq!(get("UrlStem"), "/rpc/rpcproxy.dll");
        assert_eq!(get("UrlQuery"), "?guid@example.test:6001");
        assert_eq!(get("Method"), "RPC_OUT_DATA");
        assert_eq!(get("UserAgent"), "MSRPC, \"x\"");
        assert_eq!(get("ClientIpAddress"), "192.0.2.9");
        assert_eq!(get("TargetServer"), "mbx1:443");
        assert_eq!(get("HttpStatus"), "200");
        assert_eq!(get("AnchorMailbox"), "MailboxGuid~abc");
        assert_eq!(get("TotalRequestTime"), "1500");
        assert_eq!(get("RoutingStatus"), "");
    }
}
