//! Operator events with stable IDs.
//!
//! This is the seed of the event catalog (issue 6): every event the code
//! emits is one `EventDef` constant here, with a numeric ID, a symbolic
//! name, a category, a level and the Exchange event an administrator would
//! know. Emitting goes through `emit`, which logs through `tracing` with
//! the ID and name as fields and keeps the last events in memory (tests
//! and, later, the admin API's `/events` read them).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    Certificates,
    Tls,
    Proxy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Information,
}

/// One catalog entry.
#[derive(Debug)]
pub struct EventDef {
    pub id: u32,
    pub name: &'static str,
    pub category: Category,
    pub level: Level,
    /// The familiar MSExchangeTransport event, when there is one.
    pub exchange_id: Option<u32>,
    /// What happened, why it matters and what to do.
    pub action: &'static str,
}

pub const DEFAULT_CERTIFICATE_CREATED: EventDef = EventDef {
    id: 1001,
    name: "DefaultCertificateCreated",
    category: Category::Certificates,
    level: Level::Information,
    exchange_id: None,
    action: "A self-signed default certificate was created for SMTP and HTTPS at first start. Import a CA-issued certificate for the host name and enable it for smtp and https.",
};

pub const CERTIFICATE_FALLBACK: EventDef = EventDef {
    id: 1024,
    name: "CertificateFallback",
    category: Category::Certificates,
    level: Level::Error,
    exchange_id: Some(12024),
    action: "TLS is offered with another certificate than the one wanted. Fix the reason given (missing or unreadable key file, key not matching, expired) or enable another certificate; `gatehouse cert which --connector NAME` shows the choice.",
};

pub const CERTIFICATE_PROBLEM: EventDef = EventDef {
    id: 1013,
    name: "CertificateUnusable",
    category: Category::Certificates,
    level: Level::Error,
    exchange_id: Some(12013),
    action: "A certificate in the store cannot be used. Re-import it (with its key) or remove it.",
};

pub const CERTIFICATE_EXPIRES_SOON: EventDef = EventDef {
    id: 1018,
    name: "CertificateExpiresSoon",
    category: Category::Certificates,
    level: Level::Warning,
    exchange_id: Some(12018),
    action: "An enabled certificate expires soon (warnings at 30, 14, 7 and 1 days). Renew it and import the new one; it takes effect without a restart.",
};

pub const CERTIFICATE_EXPIRED: EventDef = EventDef {
    id: 1016,
    name: "CertificateExpired",
    category: Category::Certificates,
    level: Level::Error,
    exchange_id: Some(12016),
    action: "An enabled certificate has expired and is no longer selected. Import a renewed certificate.",
};

pub const CERTIFICATES_RELOADED: EventDef = EventDef {
    id: 1030,
    name: "CertificatesReloaded",
    category: Category::Certificates,
    level: Level::Information,
    exchange_id: None,
    action: "The certificate store changed on disk; new handshakes use the new state. Open sessions keep theirs.",
};

pub const PROXY_BACKEND_TRUST_FAILURE: EventDef = EventDef {
    id: 4001,
    name: "ProxyBackendTrustFailure",
    category: Category::Proxy,
    level: Level::Error,
    exchange_id: Some(43),
    action: "The proxy refused a backend whose certificate it does not trust (untrusted issuer, expired or name mismatch). Install a certificate from a trusted CA on the backend, add its CA with the pool's ca_file, set tls_name to a name the certificate holds, or (internal backends only) set allow_internal_untrusted_certs = true on the pool.",
};

pub const PROXY_BACKEND_UNAVAILABLE: EventDef = EventDef {
    id: 4002,
    name: "ProxyBackendUnavailable",
    category: Category::Proxy,
    level: Level::Error,
    exchange_id: None,
    action: "The proxy could not reach a backend (refused, timeout or protocol error). Check that the backend runs and listens on the configured address and speaks HTTPS (or set tls = false on the pool for plain HTTP).",
};

pub const PROXY_UNTRUSTED_CERTS_ALLOWED: EventDef = EventDef {
    id: 4003,
    name: "ProxyUntrustedCertsAllowed",
    category: Category::Proxy,
    level: Level::Warning,
    exchange_id: None,
    action: "A backend pool has allow_internal_untrusted_certs = true: its backends' certificates are not verified, so anyone on the path to them can read and change client traffic. Give the backends trusted certificates and remove the setting.",
};

pub const PROXY_BACKEND_DOWN: EventDef = EventDef {
    id: 4004,
    name: "ProxyBackendDown",
    category: Category::Proxy,
    level: Level::Warning,
    exchange_id: None,
    action: "A backend failed its health check and receives no new requests; its mailboxes are re-hashed over the healthy servers until it recovers.",
};

pub const PROXY_BACKEND_UP: EventDef = EventDef {
    id: 4005,
    name: "ProxyBackendUp",
    category: Category::Proxy,
    level: Level::Information,
    exchange_id: None,
    action: "A backend passes its health check again and receives requests.",
};

/// An emitted event.
#[derive(Clone, Debug)]
pub struct Emitted {
    pub id: u32,
    pub name: &'static str,
    pub at: SystemTime,
    pub message: String,
}

const RECENT: usize = 1024;
static RECENT_EVENTS: Mutex<VecDeque<Emitted>> = Mutex::new(VecDeque::new());

/// Emits an event: a tracing record with `event_id` and `event` fields,
/// and an entry in the in-memory history.
pub fn emit(def: &'static EventDef, message: String) {
    match def.level {
        Level::Error => tracing::error!(
            event_id = def.id,
            event = def.name,
            exchange_id = def.exchange_id,
            action = def.action,
            "{message}"
        ),
        Level::Warning => tracing::warn!(
            event_id = def.id,
            event = def.name,
            exchange_id = def.exchange_id,
            "{message}"
        ),
        Level::Information => tracing::info!(event_id = def.id, event = def.name, "{message}"),
    }
    let mut q = RECENT_EVENTS.lock().unwrap_or_else(|e| e.into_inner());
    if q.len() == RECENT {
        q.pop_front();
    }
    q.push_back(Emitted {
        id: def.id,
        name: def.name,
        at: SystemTime::now(),
        message,
    });
}

/// The most recent events, oldest first.
pub fn recent() -> Vec<Emitted> {
    RECENT_EVENTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}
