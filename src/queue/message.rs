//! What the queue stores about a message: its ID and its envelope.

use crate::smtp::inbound::command::{BodyType, Notify, Ret};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A queue ID: 16 upper-case hex digits, like Exchange's InternalId and
/// the session IDs in protocol logs. High 44 bits: milliseconds since the
/// epoch at process start; low 20 bits: a counter (carried into the time
/// bits when it overflows, so IDs stay unique and increasing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueId(pub u64);

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl QueueId {
    pub fn generate() -> QueueId {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let floor = (now_ms & ((1 << 44) - 1)) << 20;
        // Never go below the wall clock (so restarts do not reuse IDs) and
        // never repeat within the process.
        let mut cur = NEXT_ID.load(Ordering::Relaxed);
        loop {
            let next = cur.max(floor) + 1;
            match NEXT_ID.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return QueueId(next),
                Err(actual) => cur = actual,
            }
        }
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// Where a recipient's copy goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Route {
    /// A local mailbox (its name under `<data_dir>/mail/`).
    Mailbox { name: String, discard: bool },
    /// Another host, through a send connector (not built yet: held).
    Relay { domain: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub route: Route,
    pub notify: Option<Notify>,
    pub orcpt: Option<String>,
}

/// Everything about a message except its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: QueueId,
    /// Seconds since the epoch.
    pub received_at: u64,
    pub connector: String,
    pub client_ip: std::net::IpAddr,
    pub helo: String,
    /// Empty for the null reverse path `<>`.
    pub mail_from: String,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    pub recipients: Vec<Recipient>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_increasing_hex16() {
        let a = QueueId::generate();
        let b = QueueId::generate();
        assert!(b > a);
        assert_eq!(a.to_string().len(), 16);
        assert!(
            a.to_string()
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
    }
}
