//! Graceful shutdown: one token every task watches, one tracker that
//! knows which sessions are still running.
//!
//! On SIGTERM/SIGINT the token is cancelled: listeners answer new
//! connections with 421 4.3.2, idle sessions are told 421 and closed,
//! sessions inside a transaction finish it. The server waits for the
//! tracker to empty, at most `server.shutdown_grace`.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    pub token: CancellationToken,
    pub sessions: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }
}
