//! One request through the proxy:
//!
//! ```text
//! head checks (framing, header count) -> route (prefix) -> body limit
//!   -> anchor mailbox, auth scheme -> backend request (hop-by-hop out,
//!      X-Forwarded-*/Forwarded in, Host kept or rewritten, origin-form URI)
//!   -> connection: pinned (NTLM/Negotiate) | idle | new   [pool]
//!   -> response head (request_timeout; not for RPC channels)
//!   -> response streamed back, the lease returned when it ends   [body]
//! ```
//!
//! Every refusal is a small HTML page with the status, the reason in
//! words and an `X-Gatehouse-Error` code; backend failures also emit an
//! event naming the backend (rate-limited per backend and reason).

use super::backend::{BackendConn, BackendFailure, DrivenBody, FailureReason, Sender};
use super::body::{OnEnd, ProxyBody, StreamError, Streamed, full};
use super::headers::{self, HeadRefusal};
use super::log::{ProxyLog, RequestId, RequestRecord};
use super::pool::{Lease, Pool, Server};
use super::routes::RouteTable;
use crate::events;
use http_body_util::BodyExt;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a request needs to know about its listener.
pub struct Listener {
    pub name: String,
    pub routes: RouteTable,
    pub max_headers: usize,
    pub max_rpc_body_size: u64,
    pub request_timeout: Duration,
    pub channel_idle_timeout: Duration,
    pub idle_timeout: Duration,
    pub log: ProxyLog,
    pub server_host: Arc<str>,
    /// The empty text, shared (log columns not known yet).
    pub none: Arc<str>,
    /// `gatehouse_proxy_requests` for this listener, by status class
    /// (1xx to 5xx), resolved once.
    pub answered: [crate::admin::metrics::Counter; 5],
}

impl Listener {
    pub fn answered_counters(name: &str) -> [crate::admin::metrics::Counter; 5] {
        ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|class| crate::admin::metrics::PROXY_REQUESTS.handle(&[name, class]))
    }

    fn count_answer(&self, status: u16) {
        let i = usize::from((status / 100).clamp(1, 5) - 1);
        if let Some(c) = self.answered.get(i) {
            c.inc();
        }
    }
}

/// Per client connection: who it is and its pinned backend connection.
pub struct ClientConn {
    /// The peer's address as the forwarding headers and the log write it.
    pub addr: headers::ClientAddr,
    /// Set by `sniff` when a raw HTTP/1.1 head had both Content-Length
    /// and Transfer-Encoding (hyper removes the length before we see it).
    pub both_lengths: Arc<std::sync::atomic::AtomicBool>,
    /// Requests whose response has not ended yet.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Requests started on this connection (the idle check's progress).
    started: std::sync::atomic::AtomicU64,
    /// Whether `pin` holds a connection (read without the lock).
    pinned: std::sync::atomic::AtomicBool,
    pin: tokio::sync::Mutex<Option<Pinned>>,
}

struct Pinned {
    pool: String,
    server: Arc<Server>,
    sender: Sender,
}

/// Counts one request in flight on its client connection until dropped.
struct InFlight(Arc<ClientConn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ClientConn {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    pub fn new(peer: SocketAddr) -> ClientConn {
        ClientConn {
            addr: headers::ClientAddr::new(peer.ip()),
            both_lengths: Arc::default(),
            in_flight: Default::default(),
            started: Default::default(),
            pinned: Default::default(),
            pin: tokio::sync::Mutex::new(None),
        }
    }
}

/// Outcome of the attempt to get a backend response.
enum Failure {
    Backend(BackendFailure, Arc<str>),
    NoServer,
    TooLarge(u64),
    ChannelIdle,
}

/// A connection idle for longer than this may have been closed by the
/// backend's keep-alive timer just as it is reused: an idempotent
/// bodiless request sent on it keeps a copy of its head for one retry
/// (RFC 9112 §9.3.1). Connections used more recently skip the copy.
const STALE_AFTER: Duration = Duration::from_secs(1);

pub async fn handle(
    l: Arc<Listener>,
    conn: Arc<ClientConn>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    conn.in_flight.fetch_add(1, Ordering::Relaxed);
    conn.started.fetch_add(1, Ordering::Relaxed);
    let in_flight = InFlight(conn.clone());
    let mut rec = RequestRecord::new(
        RequestId::next(),
        &conn.addr.text,
        &req,
        &l.server_host,
        &l.none,
    );
    let id = HeaderValue::from_bytes(rec.request_id.as_str().as_bytes()).ok();
    let mut resp = match proxy(&l, &conn, req, &mut rec).await {
        Ok(Sent { resp, lease, conn }) => {
            let (mut rparts, rbody) = resp.into_parts();
            let rbody = DrivenBody::new(rbody, conn.map(|c| (c, lease.server.clone())));
            rec.backend_status = rparts.status.as_u16();
            rec.status = rec.backend_status;
            headers::remove_hop_by_hop(&mut rparts.headers);
            l.count_answer(rec.status);
            let finish = Finish {
                _in_flight: in_flight,
                lease,
                rec,
                log: l.log.clone(),
            };
            // Logged by `Finish` when the response body ends.
            let body =
                Streamed::ending(rbody, u64::MAX, l.channel_idle_timeout, Some(finish)).checked();
            Response::from_parts(rparts, Either::Left(body))
        }
        Err(page) => {
            rec.status = page.status().as_u16();
            l.count_answer(rec.status);
            rec.total = rec.started.elapsed();
            l.log.write(&rec);
            page.map(Either::Right)
        }
    };
    if let Some(v) = id {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    Ok(resp)
}

/// What the front sends back: a proxied response's body as it is (no box
/// per response), or a page.
pub type ResponseBody = Either<Streamed<DrivenBody, Finish>, ProxyBody>;

const REQUEST_ID: hyper::header::HeaderName = hyper::header::HeaderName::from_static("request-id");

/// Runs when a proxied response body ends: returns the backend
/// connection (the lease) and writes the log record with the final byte
/// counts and total time.
pub struct Finish {
    _in_flight: InFlight,
    lease: Lease,
    rec: RequestRecord,
    log: ProxyLog,
}

impl OnEnd for Finish {
    fn finish(self, complete: bool, bytes: u64) {
        let Finish {
            _in_flight,
            lease,
            mut rec,
            log,
        } = self;
        drop(lease);
        if !complete && rec.error_code.is_empty() {
            rec.error_code = "ResponseIncomplete";
        }
        rec.response_bytes = bytes;
        rec.total = rec.started.elapsed();
        log.write(&rec);
    }
}

type Page = Response<ProxyBody>;

/// A backend's response head, the lease on its server, and the
/// connection its body drives (`None` for a pinned connection, which
/// has a task of its own).
struct Sent {
    resp: Response<Incoming>,
    lease: Lease,
    conn: Option<BackendConn>,
}

async fn proxy(
    l: &Listener,
    conn: &ClientConn,
    req: Request<Incoming>,
    rec: &mut RequestRecord,
) -> Result<Sent, Page> {
    let mut head = headers::check_request_head(req.headers(), l.max_headers);
    if head.is_ok()
        && req.headers().contains_key(header::TRANSFER_ENCODING)
        && conn.both_lengths.load(Ordering::Relaxed)
    {
        head = Err(HeadRefusal::Framing(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if let Err(r) = head {
        let (status, why, code) = match r {
            HeadRefusal::Framing(why) => (StatusCode::BAD_REQUEST, why, "BadFraming"),
            HeadRefusal::UnknownCoding => (
                StatusCode::NOT_IMPLEMENTED,
                "unsupported transfer coding",
                "UnsupportedTransferCoding",
            ),
            HeadRefusal::TooManyHeaders => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
                "TooManyHeaders",
            ),
        };
        rec.error_code = code;
        // The framing cannot be trusted: close after answering.
        return Err(with_close(page(status, why, code)));
    }
    // A reverse proxy for mail services: no tunnels to arbitrary hosts.
    if req.method() == hyper::Method::CONNECT {
        rec.error_code = "MethodNotAllowed";
        return Err(page(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not proxied",
            "MethodNotAllowed",
        ));
    }
    let Some(route) = l.routes.find(req.uri().path()) else {
        rec.error_code = "NoRoute";
        return Err(page(
            StatusCode::NOT_FOUND,
            "no route for this path",
            "NoRoute",
        ));
    };
    rec.protocol = route.protocol.clone();
    let pool = route.pool.clone();
    let is_rpc = matches!(req.method().as_str(), "RPC_IN_DATA" | "RPC_OUT_DATA");
    let limit = if is_rpc {
        route.max_body_size.max(l.max_rpc_body_size)
    } else {
        route.max_body_size
    };
    if let Some(n) = content_length(req.headers())
        && n > limit
    {
        rec.error_code = "RequestTooLarge";
        return Err(with_close(page(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body of {n} bytes exceeds the limit of {limit} bytes"),
            "RequestTooLarge",
        )));
    }

    let (mut parts, body) = req.into_parts();
    // The client's Host (HTTP/1.1) or :authority (HTTP/2), as a value:
    // a Host header is passed on without a copy.
    let client_host = match parts.headers.remove(header::HOST) {
        Some(h) => Some(h),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    let anchor = headers::anchor_mailbox(
        &parts.headers,
        parts.uri.query(),
        pool.anchor_cookie.as_deref(),
        pool.anchor_query.as_deref(),
    );
    let scheme = headers::auth_scheme(&parts.headers);
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::add_forwarding(&mut parts.headers, &conn.addr, client_host.as_ref());
    // Backends get origin-form (`/path?query`); HTTP/2 requests and
    // absolute-form requests carry a scheme and authority to drop.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/")
            .parse()
            .unwrap_or_default();
    }
    parts.version = Version::HTTP_11;
    let bodiless = hyper::body::Body::is_end_stream(&body);
    let body = if bodiless {
        super::body::empty()
    } else {
        let counter = Arc::new(AtomicU64::new(0));
        rec.request_bytes = Some(counter.clone());
        Streamed::new(body, limit, l.channel_idle_timeout)
            .counted(counter)
            .checked()
            .boxed_unsync()
    };

    let wants_pin = scheme.as_deref().is_some_and(headers::is_connection_auth);
    rec.anchor = anchor;
    rec.auth_type = scheme;
    let backend_started = Instant::now();
    let result = if wants_pin || conn.pinned.load(Ordering::Relaxed) {
        send_pinned(l, conn, &pool, parts, body, client_host, is_rpc, rec).await
    } else {
        send_pooled(l, &pool, parts, body, bodiless, client_host, is_rpc, rec).await
    };
    rec.backend_latency = backend_started.elapsed();
    result.map_err(|failure| failure_page(&pool, failure, rec))
}

/// The page for a request that got no backend response.
fn failure_page(pool: &Pool, failure: Failure, rec: &mut RequestRecord) -> Page {
    match failure {
        Failure::NoServer => {
            rec.error_code = "NoHealthyServer";
            let why = if pool.servers.is_empty() {
                format!("backend pool `{}` has no servers configured", pool.name)
            } else {
                format!("no healthy server in backend pool `{}`", pool.name)
            };
            page(StatusCode::SERVICE_UNAVAILABLE, &why, "NoHealthyServer")
        }
        Failure::TooLarge(n) => {
            rec.error_code = "RequestTooLarge";
            with_close(page(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body exceeds the limit of {n} bytes"),
                "RequestTooLarge",
            ))
        }
        Failure::ChannelIdle => {
            rec.error_code = "ChannelIdleTimeout";
            with_close(page(
                StatusCode::REQUEST_TIMEOUT,
                "no request data within the channel idle timeout",
                "ChannelIdleTimeout",
            ))
        }
        Failure::Backend(f, server) => {
            rec.error_code = f.reason.code();
            rec.generic_errors = format!("{}: {}", f.reason.as_str(), f.detail);
            crate::admin::metrics::PROXY_BACKEND_FAILURES.inc(&[&pool.name, f.reason.as_str()]);
            report_failure(pool, &server, &f);
            rec.target_server = server;
            // The backend could not be reached or used: 502 with the
            // reason (seed 003). A backend that took the request but sent
            // no response head in time: 504, as every gateway answers.
            let status = if f.reason == FailureReason::Timeout && f.after_sending {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            page(
                status,
                &format!(
                    "the backend server could not be used: {}",
                    f.reason.as_str()
                ),
                f.reason.code(),
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_pooled(
    l: &Listener,
    pool: &Arc<Pool>,
    parts: hyper::http::request::Parts,
    body: ProxyBody,
    bodiless: bool,
    client_host: Option<HeaderValue>,
    is_rpc: bool,
    rec: &mut RequestRecord,
) -> Result<Sent, Failure> {
    let server = pool
        .choose(rec.anchor.as_deref())
        .ok_or(Failure::NoServer)?;
    rec.routing_type = if rec.anchor.is_some() {
        "AnchorMailbox"
    } else {
        "LeastOutstanding"
    };
    rec.target_server = server.endpoint.display.clone();
    rec.outstanding = server.outstanding();
    let display = server.endpoint.display.clone();
    let (lease, mut bc, idle_for) = pool
        .lease(server)
        .await
        .map_err(|f| Failure::Backend(f, display.clone()))?;
    // A reused connection may have been closed by the backend in the
    // meantime. A request hyper could not start sending comes back whole
    // and is sent again on a new connection; an idempotent bodiless one
    // on a connection idle long enough to be stale keeps a copy of its
    // head, in case the close is only seen after sending.
    // Nothing of the client's request head is held across the wait
    // (`client_host` is consumed here; a retry copies the backend request
    // itself): its values share the client connection's 8 KiB read
    // buffer, which a long poll would otherwise keep alive.
    let req = backend_request(parts, body, pool, &lease.server, client_host);
    let copy =
        (bodiless && req.method().is_idempotent() && idle_for.is_some_and(|d| d >= STALE_AFTER))
            .then(|| copy_bodiless(&req));
    count_unverified(pool);
    let again = match await_head(l, bc.send(req), is_rpc).await {
        Ok(resp) => {
            return Ok(Sent {
                resp,
                lease,
                conn: Some(bc),
            });
        }
        Err(Retry::Unsent(req)) if idle_for.is_some() => req,
        Err(Retry::Sent(f)) if idle_for.is_some() && is_stale_close(&f) => match copy {
            Some(again) => again,
            None => return Err(with_server(f, &display)),
        },
        Err(r) => return Err(with_server(r.into_failure(), &display)),
    };
    let mut bc = pool
        .connect(&lease.server)
        .await
        .map_err(|f| Failure::Backend(f, display.clone()))?;
    let resp = await_head(l, bc.send(again), is_rpc)
        .await
        .map_err(|f| with_server(f.into_failure(), &display))?;
    Ok(Sent {
        resp,
        lease,
        conn: Some(bc),
    })
}

/// A failure of a request already sent that a stale keep-alive
/// connection explains (closed or reset before any response byte).
fn is_stale_close(f: &Failure) -> bool {
    matches!(f, Failure::Backend(b, _) if b.reason == FailureReason::Protocol && b.stale_close)
}

fn with_server(f: Failure, display: &Arc<str>) -> Failure {
    match f {
        Failure::Backend(b, _) => Failure::Backend(b, display.clone()),
        other => other,
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_pinned(
    l: &Listener,
    conn: &ClientConn,
    pool: &Arc<Pool>,
    parts: hyper::http::request::Parts,
    body: ProxyBody,
    client_host: Option<HeaderValue>,
    is_rpc: bool,
    rec: &mut RequestRecord,
) -> Result<Sent, Failure> {
    let mut pin = conn.pin.lock().await;
    let reusable = pin
        .as_ref()
        .is_some_and(|p| p.pool == pool.name && !p.sender.is_closed() && p.server.is_healthy());
    if !reusable {
        // New pin: the handshake (re)starts on a dedicated connection.
        *pin = None;
        let server = pool
            .choose(rec.anchor.as_deref())
            .ok_or(Failure::NoServer)?;
        let display = server.endpoint.display.clone();
        // Gives back the count `choose` took when dropped.
        let lease = Lease { server };
        let sender = pool
            .connect(&lease.server)
            .await
            .map_err(|f| Failure::Backend(f, display))?
            .detach();
        *pin = Some(Pinned {
            pool: pool.name.clone(),
            server: lease.server.clone(),
            sender,
        });
        conn.pinned.store(true, Ordering::Relaxed);
        drop(lease);
    }
    let Some(p) = pin.as_mut() else {
        return Err(Failure::NoServer);
    };
    let lease = Lease::hold(p.server.clone());
    rec.routing_type = "Pinned";
    rec.target_server = p.server.endpoint.display.clone();
    let display = rec.target_server.clone();
    let req = backend_request(parts, body, pool, &p.server, client_host);
    count_unverified(pool);
    // The previous response on this connection must be complete first;
    // the client's own connection is sequential, so this is short.
    if tokio::time::timeout(l.request_timeout, p.sender.ready())
        .await
        .map_err(|_| {
            Failure::Backend(
                BackendFailure::new(FailureReason::Timeout, "pinned connection busy"),
                display.clone(),
            )
        })?
        .is_err()
    {
        *pin = None;
        conn.pinned.store(false, Ordering::Relaxed);
        return Err(Failure::Backend(
            BackendFailure::new(FailureReason::Protocol, "pinned backend connection closed"),
            display,
        ));
    }
    let fut = p.sender.send_request(req);
    drop(pin);
    let resp = await_head(l, fut, is_rpc)
        .await
        .map_err(|f| with_server(f.into_failure(), &display))?;
    Ok(Sent {
        resp,
        lease,
        conn: None,
    })
}

/// Why no response head came, with the request when hyper never started
/// sending it.
enum Retry {
    Unsent(Request<ProxyBody>),
    Sent(Failure),
}

impl Retry {
    fn into_failure(self) -> Failure {
        match self {
            Retry::Sent(f) => f,
            Retry::Unsent(_) => Failure::Backend(
                BackendFailure::new(FailureReason::Protocol, "backend connection not ready"),
                Arc::from(""),
            ),
        }
    }
}

/// What hyper's two send calls fail with.
trait SendError {
    fn split(self) -> (hyper::Error, Option<Request<ProxyBody>>);
}

impl SendError for hyper::Error {
    fn split(self) -> (hyper::Error, Option<Request<ProxyBody>>) {
        (self, None)
    }
}

impl SendError for hyper::client::conn::TrySendError<Request<ProxyBody>> {
    fn split(mut self) -> (hyper::Error, Option<Request<ProxyBody>>) {
        let req = self.take_message();
        (self.into_error(), req)
    }
}

/// Waits for the response head. RPC channels answer only when they end,
/// so they are bounded by the channel idle timer instead.
async fn await_head<E: SendError>(
    l: &Listener,
    fut: impl std::future::Future<Output = Result<Response<Incoming>, E>>,
    is_rpc: bool,
) -> Result<Response<Incoming>, Retry> {
    let r = if is_rpc {
        fut.await
    } else {
        match tokio::time::timeout(l.request_timeout, fut).await {
            Ok(r) => r,
            Err(_) => {
                let mut f = BackendFailure::new(
                    FailureReason::Timeout,
                    format!("no response head within {:?}", l.request_timeout),
                );
                f.after_sending = true;
                return Err(Retry::Sent(Failure::Backend(f, Arc::from(""))));
            }
        }
    };
    r.map_err(|e| {
        let (e, unsent) = e.split();
        if let Some(req) = unsent {
            return Retry::Unsent(req);
        }
        // The request body's own limit or idle timer ended the send.
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if let Some(se) = s.downcast_ref::<StreamError>() {
                return Retry::Sent(match se {
                    StreamError::TooLarge(n) => Failure::TooLarge(*n),
                    StreamError::Idle(_) => Failure::ChannelIdle,
                });
            }
            src = s.source();
        }
        let mut f = BackendFailure::new(FailureReason::Protocol, e.to_string());
        f.stale_close = e.is_incomplete_message() || e.is_canceled() || is_reset(&e);
        Retry::Sent(Failure::Backend(f, Arc::from("")))
    })
}

/// A connection reset (the backend closed a connection it had unread
/// data on) anywhere in the error's chain.
fn is_reset(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            );
        }
        src = s.source();
    }
    false
}

/// A copy of a bodiless backend request, to send again.
fn copy_bodiless(req: &Request<ProxyBody>) -> Request<ProxyBody> {
    let mut b = Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .version(req.version());
    if let Some(h) = b.headers_mut() {
        *h = req.headers().clone();
    }
    b.body(super::body::empty())
        .unwrap_or_else(|_| Request::new(super::body::empty()))
}

fn backend_request(
    mut parts: hyper::http::request::Parts,
    body: ProxyBody,
    pool: &Pool,
    server: &Server,
    client_host: Option<HeaderValue>,
) -> Request<ProxyBody> {
    let host = if pool.rewrite_host {
        HeaderValue::from_str(&server.endpoint.tls_name).ok()
    } else {
        client_host
    };
    if let Some(v) = host {
        parts.headers.insert(header::HOST, v);
    }
    Request::from_parts(parts, body)
}

fn count_unverified(pool: &Pool) {
    if pool.untrusted_allowed {
        pool.unverified_requests.inc();
    }
}

fn content_length(h: &hyper::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// At most one event per (backend, reason) a minute: a broken backend
/// under load must not flood the log, but is never silent.
fn report_failure(pool: &Pool, server: &str, f: &BackendFailure) {
    static LAST: Mutex<Option<HashMap<(String, FailureReason), Instant>>> = Mutex::new(None);
    {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let map = last.get_or_insert_with(HashMap::new);
        let key = (server.to_string(), f.reason);
        if map
            .get(&key)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(key, Instant::now());
    }
    let thumbprint = f.thumbprint.as_deref().unwrap_or("none");
    if f.reason.is_trust() {
        events::emit(events::ProxyBackendTrustFailure {
            pool: &pool.name,
            backend: server,
            reason: f.reason.as_str(),
            thumbprint,
            detail: &f.detail,
        });
    } else {
        events::emit(events::ProxyBackendUnavailable {
            pool: &pool.name,
            backend: server,
            reason: f.reason.as_str(),
            thumbprint,
            detail: &f.detail,
        });
    }
}

fn with_close(mut p: Page) -> Page {
    p.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    p
}

/// The error page: status, reason in words, error code (also in the
/// `X-Gatehouse-Error` header). Backend names stay out of it: they are
/// internal; the event has them.
pub fn page(status: StatusCode, why: &str, code: &str) -> Page {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><head><title>{title}</title></head><body>\n<h1>{title}</h1>\n<p>{}</p>\n<p>Error code: {code}</p>\n</body></html>\n",
        escape(why)
    );
    let mut r = Response::new(full(html));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(code) {
        h.insert("x-gatehouse-error", v);
    }
    r
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
