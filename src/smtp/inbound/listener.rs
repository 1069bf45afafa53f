//! Accept loops for receive connectors, with connection limits.
//!
//! Each listen address runs one accept loop. A connection over the
//! connector's total or per-IP limit gets `421 4.7.0` and is closed before
//! a session (and its buffers) exists. After shutdown starts, new
//! connections get `421 4.3.2` until the process exits.

use super::session::{ConnectorContext, Session};
use crate::smtp::reply::Reply;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Live connection counts of one connector.
pub struct ConnectionLimits {
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// Releases a per-IP slot when the session ends.
struct IpSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            total: Arc::new(Semaphore::new(max_total)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
        })
    }

    fn take_ip(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            limits: self.clone(),
            ip,
        })
    }
}

/// What a connector's accept loops use; swapped whole by a reload, so
/// the next connection sees the new settings and open sessions keep
/// theirs.
pub struct ListenerState {
    pub ctx: Arc<ConnectorContext>,
    pub limits: Arc<ConnectionLimits>,
}

/// Runs one accept loop until the process ends.
pub async fn accept_loop(listener: TcpListener, slot: Arc<arc_swap::ArcSwap<ListenerState>>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: wait a little rather than spin.
                tracing::warn!(connector = %slot.load().ctx.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = slot.load_full();
        let (ctx, limits) = (&state.ctx, &state.limits);
        if ctx.shutdown.is_shutting_down() {
            refuse(stream, Reply::shutting_down(&ctx.fqdn));
            continue;
        }
        let Ok(total) = limits.total.clone().try_acquire_owned() else {
            crate::events::emit(crate::events::ConnectionLimitReached {
                connector: &ctx.name,
                client: peer.ip(),
                limit: ctx.config.max_connections,
            });
            refuse(stream, Reply::too_many_connections(&ctx.fqdn));
            continue;
        };
        let Some(ip_slot) = ConnectionLimits::take_ip(limits, peer.ip()) else {
            tracing::debug!(connector = %ctx.name, client = %peer, "connection refused: max_connections_per_ip");
            refuse(stream, Reply::too_many_connections_from_ip(&ctx.fqdn));
            continue;
        };
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let session_ctx = ctx.clone();
        ctx.shutdown.sessions.spawn(async move {
            Session::new(session_ctx, stream, peer, local).run().await;
            drop(ip_slot);
            drop(total);
        });
    }
}

/// Sends one reply and closes, without holding up the accept loop.
fn refuse(mut stream: TcpStream, reply: Reply) {
    tokio::spawn(async move {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = stream.write_all(&out).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}
