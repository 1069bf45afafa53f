//! The admin API: HTTP/1.1 on a loopback address, bearer token from a
//! file (SPEC 2.11).
//!
//! ```text
//! TcpListener (127.0.0.1:9925) --accept, at most MAX_CONNECTIONS--> hyper http1
//!    route(method, path)
//!      GET  /healthz                  200 while the process runs (no token)
//!      GET  /readyz                   200 / 503 with what is not ready (no token)
//!      GET  /metrics                  Prometheus text (metrics.rs)
//!      GET  /events?limit=N&category=C   last events, JSON, oldest first
//!      GET  /log-level                levels per category, JSON
//!      PUT  /log-level/CATEGORY/LEVEL change one at runtime
//!      POST /reload                   config + certificates; 422 with the errors
//!      /queue...                      queue list/show/retry/delete/bounce/flush (queue.rs)
//!    Backend (implemented by server::Live): readiness, reload, scrape values, the queue
//! ```
//!
//! Request bodies are never read (no route takes one), so a client cannot
//! make the server buffer anything; headers are bounded by hyper and must
//! arrive within `HEADER_TIMEOUT`.

pub mod client;
pub mod metrics;
mod queue;
pub mod token;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const MAX_CONNECTIONS: usize = 32;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the server can take traffic, and if not, why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    pub listeners_bound: bool,
    pub queue_open: bool,
    pub certificates_loaded: bool,
    pub shutting_down: bool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.listeners_bound && self.queue_open && self.certificates_loaded && !self.shutting_down
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    /// Source of the new configuration.
    pub source: String,
    /// What took effect, in words an operator reads.
    pub applied: Vec<String>,
    /// Changed settings that take effect only after a restart.
    pub restart_needed: Vec<String>,
    /// Changes that failed (e.g. an address that cannot be bound); the
    /// part they belong to keeps running as before.
    pub not_applied: Vec<String>,
}

/// What the admin API needs from the running server.
pub trait Backend: metrics::ScrapeSource {
    fn readiness(&self) -> Readiness;
    /// Re-reads the configuration and certificates; `Err` holds the
    /// configuration errors (file:line:col), the old config keeps running.
    fn reload(&self) -> Result<ReloadReport, String>;
    /// The queue the `/queue` endpoints act on.
    fn queue(&self) -> &crate::queue::Queue;
}

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot listen on {addr} for the admin API: {source}\n  = hint: change [admin] listen, or stop the process using the port"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Token(#[from] token::TokenError),
}

struct State {
    token: String,
    backend: Arc<dyn Backend>,
}

/// Binds the admin listener and serves it until the task is aborted.
/// Returns the bound address and the task.
pub async fn start(
    listen: SocketAddr,
    token_file: PathBuf,
    backend: Arc<dyn Backend>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), AdminError> {
    let (token, created) = token::load_or_create(&token_file)?;
    if created {
        crate::events::emit(crate::events::AdminTokenCreated {
            token_file: &token_file.display().to_string(),
        });
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| AdminError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(listen);
    crate::events::emit(crate::events::AdminListening {
        address: addr,
        token_file: &token_file.display().to_string(),
    });
    let state = Arc::new(State { token, backend });
    Ok((addr, tokio::spawn(serve(listener, state))))
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin API: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the limit: close at once rather than queue.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req, peer, &state).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            reply(status, "application/json", body)
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    reply(status, "text/plain; charset=utf-8", body.into())
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| token::matches(token, given.trim()))
}

/// `key=value` from the query string (no percent-decoding: the values
/// we take are numbers and category names).
fn query<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn route(req: Request<Incoming>, peer: SocketAddr, state: &State) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let r = state.backend.readiness();
            let status = if r.ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return json(status, &r);
        }
        _ => {}
    }
    if !authorized(&req, &state.token) {
        crate::events::emit(crate::events::AdminRequestRefused {
            client: peer.ip(),
            path: &path,
        });
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token; send `Authorization: Bearer <content of the token file>`\n",
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    if path == "/queue" || path.starts_with("/queue/") {
        return queue::route(
            &method,
            &path,
            query(&req, "destination"),
            state.backend.queue(),
        )
        .await;
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => {
            // Trait upcasting (Rust 1.86+).
            let source: Arc<dyn metrics::ScrapeSource> = state.backend.clone();
            match metrics::render(source) {
                Ok(body) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
            }
        }
        (&Method::GET, "/events") => {
            let limit = query(&req, "limit")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(100);
            let category = match query(&req, "category") {
                None => None,
                Some(c) => match crate::events::Category::parse(c) {
                    Some(c) => Some(c),
                    None => {
                        return text(StatusCode::BAD_REQUEST, format!("unknown category `{c}`\n"));
                    }
                },
            };
            let mut events: Vec<_> = crate::events::recent()
                .into_iter()
                .filter(|e| category.is_none_or(|c| e.category == c))
                .collect();
            let skip = events.len().saturating_sub(limit);
            events.drain(..skip);
            json(StatusCode::OK, &events)
        }
        (&Method::GET, "/log-level") => json(StatusCode::OK, &levels_json()),
        (&Method::PUT | &Method::POST, p) if p.starts_with("/log-level/") => {
            let rest = &p["/log-level/".len()..];
            let Some((c, l)) = rest.split_once('/') else {
                return text(StatusCode::NOT_FOUND, "use PUT /log-level/CATEGORY/LEVEL\n");
            };
            let Some(category) = crate::events::Category::parse(c) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown category `{c}`; categories: {}\n",
                        crate::events::Category::ALL.map(|c| c.name()).join(", ")
                    ),
                );
            };
            let Some(level) = crate::events::Verbosity::parse(l) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown level `{l}`; levels: Lowest, Low, Medium, High, Expert\n"),
                );
            };
            crate::events::set_level(category, level);
            tracing::info!(
                category = category.name(),
                level = level.name(),
                "diagnostic level changed"
            );
            json(StatusCode::OK, &levels_json())
        }
        (&Method::POST, "/reload") => {
            let backend = state.backend.clone();
            match tokio::task::spawn_blocking(move || backend.reload()).await {
                Ok(Ok(report)) => json(StatusCode::OK, &report),
                Ok(Err(errors)) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({ "refused": true, "errors": errors }),
                ),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "reload task failed\n"),
            }
        }
        (_, "/metrics" | "/events" | "/log-level" | "/reload" | "/healthz" | "/readyz") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, format!("no route {method} {path}\n")),
    }
}

fn levels_json() -> serde_json::Value {
    serde_json::Value::Object(
        crate::events::levels()
            .into_iter()
            .map(|(c, l)| (c.name().to_string(), serde_json::Value::from(l.name())))
            .collect(),
    )
}
