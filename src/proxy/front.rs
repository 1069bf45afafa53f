//! The front listener: TCP accept, TLS (certificate from the store by
//! SNI, ALPN `h2` then `http/1.1`), then hyper's automatic HTTP/1.1 or
//! HTTP/2 server with the listener's limits, and graceful shutdown.
//!
//! Limits: `max_connections` (a semaphore; beyond it new connections are
//! closed at once); the TLS handshake within `handshake_timeout`; a
//! connection on which no request is in flight and none has started for
//! `idle_timeout` is closed, which bounds both an idle keep-alive
//! connection and a request head trickled in slowly (slowloris), on
//! HTTP/1.1 and HTTP/2 alike, checked by the connection's own tick instead
//! of a timer per request; header block size (`max_buf_size` for
//! HTTP/1.1 answers 431, `max_header_list_size` for HTTP/2), header count
//! (hyper's `max_headers`, and the handler checks HTTP/2 requests too).
//! HTTP/2 connections are pinged every `idle_timeout / 2`.
//!
//! Shutdown: on the server's token, each connection gets
//! `graceful_shutdown` (HTTP/1.1 finishes the request in flight and
//! closes; HTTP/2 sends GOAWAY and lets open streams finish), tracked by
//! the server's task tracker, which waits up to `shutdown_grace`.

use super::handler::{ClientConn, Listener, handle};
use super::sniff::SniffIo;
use crate::shutdown::Shutdown;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// hyper's HTTP/1.1 header count limit when none is set.
const HYPER_MAX_HEADERS: usize = 100;

/// Builds the HTTP server settings of one listener.
pub fn http_builder(cfg: &crate::config::ProxyConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let header_bytes = usize::try_from(cfg.max_header_bytes.0)
        .unwrap_or(usize::MAX)
        .max(8192);
    b.http1()
        // No per-request header timer (a boxed sleep and two timer-wheel
        // updates per request): the connection's own tick closes a
        // connection on which no request has started for `idle_timeout`,
        // however slowly its bytes trickle in (see `Front::run`).
        .header_read_timeout(None)
        .keep_alive(true)
        // One buffer per write, not head and body as separate slices:
        // rustls makes one TLS record per slice, so a vectored write
        // doubles the records (and the client's decryptions) per response.
        .writev(false)
        .max_buf_size(header_bytes);
    // hyper's own limit is 100 headers; naming any count, even 100, makes
    // it fill a fresh array of that many slots for every request head.
    if cfg.max_headers != HYPER_MAX_HEADERS {
        b.http1().max_headers(cfg.max_headers);
    }
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(cfg.idle_timeout.0 / 2)
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// What a front needs besides its socket.
pub struct FrontParts {
    /// Open connections per thread of this listener, and this thread's
    /// index into it (accept balancing).
    pub load: Arc<[std::sync::atomic::AtomicUsize]>,
    pub thread: usize,
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub handler: Arc<Listener>,
    pub http: Arc<auto::Builder<TokioExecutor>>,
    pub limit: Arc<Semaphore>,
    pub handshake_timeout: Duration,
}

/// The body of one proxy thread: a current-thread runtime serving `l`
/// until shutdown, then keeping its connections' tasks alive (they are
/// in the server's session tracker, which the server waits for) until
/// `alive` closes.
pub fn serve_on_thread(
    l: std::net::TcpListener,
    parts: FrontParts,
    shutdown: Shutdown,
    mut alive: tokio::sync::watch::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(listener = %parts.handler.name, "cannot start a proxy thread's runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::from_std(l) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listener = %parts.handler.name, "cannot use the proxy socket: {e}");
                return;
            }
        };
        let front = Front { listener, parts };
        tokio::select! {
            _ = front.run(shutdown) => {}
            _ = alive.changed() => return,
        }
        // Shutting down: the listener is closed; connections finish.
        let _ = alive.changed().await;
    });
}

pub struct Front {
    pub listener: TcpListener,
    pub parts: FrontParts,
}

impl Front {
    pub async fn run(self, shutdown: Shutdown) {
        let Front { listener, parts } = self;
        let FrontParts {
            load,
            thread,
            acceptor,
            handler,
            http,
            limit,
            handshake_timeout,
        } = parts;
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            // Every thread is woken for a new connection; one that already
            // holds more connections than the least loaded thread gives the
            // others a moment to take it (a burst of connects would
            // otherwise all land on whichever thread woke first).
            let mine = load.get(thread).map_or(0, |c| c.load(Relaxed));
            let least = load.iter().map(|c| c.load(Relaxed)).min().unwrap_or(0);
            if mine > least + 1 {
                tokio::select! {
                    _ = shutdown.token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                }
            }
            let (tcp, peer) = tokio::select! {
                _ = shutdown.token.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listener = %handler.name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::debug!(listener = %handler.name, %peer, "connection limit reached");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            let http = http.clone();
            let token = shutdown.token.clone();
            let hs_timeout = handshake_timeout;
            let counted = Counted::new(load.clone(), thread);
            shutdown.sessions.spawn(async move {
                let _permit = permit;
                let _counted = counted;
                let tls = match tokio::time::timeout(hs_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        crate::tls::counters().record_failure(crate::tls::failure_reason(&e));
                        return;
                    }
                    Err(_) => {
                        crate::tls::counters().record_failure("timeout");
                        return;
                    }
                };
                crate::tls::counters()
                    .record_success(&crate::tls::Negotiated::from_connection(tls.get_ref().1));
                let client = Arc::new(ClientConn::new(peer));
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = SniffIo::new(tls, client.both_lengths.clone(), !h2);
                let idle = handler.idle_timeout;
                let watched = client.clone();
                let svc = hyper::service::service_fn(move |req| {
                    handle(handler.clone(), client.clone(), req)
                });
                let conn = http.serve_connection(TokioIo::new(io), svc);
                tokio::pin!(conn);
                // Idle: no request in flight and none started for
                // `idle_timeout`, whether or not bytes trickle in (a head
                // sent a byte at a time never starts a request). A request
                // in flight, such as a quiet RPC channel, is bounded by its
                // own timers instead. Checked every quarter of the timeout
                // against the connection's count of started requests: no
                // clock read or timer per request.
                let tick = (idle / 4).max(std::time::Duration::from_millis(50));
                let mut seen = 0;
                let mut quiet_since = tokio::time::Instant::now();
                let mut cancelled = Cancelled::new(token);
                loop {
                    tokio::select! {
                        // Fixed order: no random draw on every wake-up.
                        biased;
                        _ = conn.as_mut() => break,
                        _ = &mut cancelled => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                            break;
                        }
                        _ = tokio::time::sleep(tick) => {
                            let now = tokio::time::Instant::now();
                            let count = watched.started();
                            if count != seen || watched.in_flight() > 0 {
                                seen = count;
                                quiet_since = now;
                            } else if now.duration_since(quiet_since) >= idle {
                                break;
                            }
                        }
                    }
                }
            });
        }
    }
}

/// One open connection in its thread's count, until dropped.
struct Counted(Arc<[std::sync::atomic::AtomicUsize]>, usize);

impl Counted {
    fn new(load: Arc<[std::sync::atomic::AtomicUsize]>, i: usize) -> Counted {
        if let Some(c) = load.get(i) {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Counted(load, i)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(c) = self.0.get(self.1) {
            c.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Resolves when the server's shutdown token is cancelled. Its first poll
/// registers the connection task with the token through a waker that
/// raises `fired` before waking the task; later polls read that flag (one
/// atomic load) instead of the token's state, which sits behind a mutex
/// (`CancellationToken::is_cancelled` locks it), on every wake of every
/// connection. The task's waker stays valid for the task's whole life.
struct Cancelled {
    token: tokio_util::sync::CancellationToken,
    registered: Option<(
        std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
        Arc<Fired>,
    )>,
}

/// The waker handed to the token: notes the wake, then wakes the task.
struct Fired {
    flag: std::sync::atomic::AtomicBool,
    task: std::task::Waker,
}

impl std::task::Wake for Fired {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, std::sync::atomic::Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl Cancelled {
    fn new(token: tokio_util::sync::CancellationToken) -> Cancelled {
        Cancelled {
            token,
            registered: None,
        }
    }
}

impl std::future::Future for Cancelled {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.get_mut();
        if let Some((_, fired)) = &this.registered
            && !fired.flag.load(std::sync::atomic::Ordering::Acquire)
        {
            return std::task::Poll::Pending;
        }
        // First poll, or the token woke us: (re-)register and look.
        let fired = Arc::new(Fired {
            flag: std::sync::atomic::AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        let waker = std::task::Waker::from(fired.clone());
        let mut fut = match this.registered.take() {
            Some((fut, _)) => fut,
            None => Box::pin(this.token.clone().cancelled_owned()),
        };
        let r = fut
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
        this.registered = Some((fut, fired));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancelled_waits_for_the_token_and_then_resolves() {
        let token = tokio_util::sync::CancellationToken::new();
        let mut c = Cancelled::new(token.clone());
        // Registered and pending across several wakes of the task.
        for _ in 0..3 {
            tokio::select! {
                _ = &mut c => panic!("resolved before the token fired"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            t.cancel();
        });
        tokio::time::timeout(Duration::from_secs(2), &mut c)
            .await
            .expect("resolves once the token fires");
        // A token cancelled before the first poll resolves at once.
        let done = tokio_util::sync::CancellationToken::new();
        done.cancel();
        tokio::time::timeout(Duration::from_millis(100), Cancelled::new(done))
            .await
            .expect("already cancelled");
    }
}
