//! The per-request record of the HttpProxy log (reference section 4.2).
//!
//! `RequestRecord` collects, while a request runs, the columns Exchange's
//! HttpProxy log has (request id, protocol, URL stem, method, client IP,
//! target server, status, backend status, latencies, bytes, anchor
//! mailbox, authentication type, error code).

use hyper::Request;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// One request's columns.
#[derive(Debug, Default)]
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
    pub outstanding: usize,
    pub request_bytes: Arc<AtomicU64>,
    pub response_bytes: Arc<AtomicU64>,
    pub backend_latency: Duration,
    pub total: Duration,
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
            server_host: server_host.to_string(),
            ..Default::default()
        }
    }
}

/// Where finished records go.
#[derive(Clone, Default)]
pub struct ProxyLog {}

impl ProxyLog {
    pub fn disabled() -> ProxyLog {
        ProxyLog {}
    }

    pub fn write(&self, _rec: RequestRecord) {}
}
