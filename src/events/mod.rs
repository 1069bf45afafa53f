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
    SmtpSend,
    Queue,
    Delivery,
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
    action: "A self-signed default certificate was created for SMTP at first start. Import a CA-issued certificate for the host name and enable it for smtp.",
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

// ----- SmtpSend (2000-2099) -----

pub const NO_SEND_CONNECTOR: EventDef = EventDef {
    id: 2001,
    name: "NoSendConnector",
    category: Category::SmtpSend,
    level: Level::Warning,
    exchange_id: None,
    action: "Mail for a relay domain has no [[send_connector]] whose address_spaces match it. It stays queued and is retried (4.4.0) until it expires. Add a send connector for the domain (or \"*\").",
};

pub const OUTBOUND_CONNECTION_FAILED: EventDef = EventDef {
    id: 2002,
    name: "OutboundConnectionFailed",
    category: Category::SmtpSend,
    level: Level::Warning,
    exchange_id: Some(1035),
    action: "No host of the destination could be used (connection refused, timed out, or the peer refused the session). The messages are retried with backoff; check the destination's MX or smart host and the network path.",
};

pub const OUTBOUND_TLS_FAILED: EventDef = EventDef {
    id: 2003,
    name: "OutboundTlsFailed",
    category: Category::SmtpSend,
    level: Level::Warning,
    exchange_id: Some(12023),
    action: "The connector's TLS level could not be met (STARTTLS not offered, handshake failed, untrusted chain, wrong name or unpinned certificate). Mail is not sent over this host and is retried. Fix the peer's certificate or lower the level for that domain with [[send_connector.tls_domain]].",
};

pub const OUTBOUND_TLS_FALLBACK: EventDef = EventDef {
    id: 2004,
    name: "OutboundTlsFallbackPlaintext",
    category: Category::SmtpSend,
    level: Level::Warning,
    exchange_id: None,
    action: "TLS level `may`: STARTTLS was offered but failed before any mail data was sent, so the message went over a new plaintext connection (RFC 7435). Check the peer's TLS set-up; raise the level to `encrypt` to refuse plaintext.",
};

pub const OUTBOUND_TLS_DOWNGRADE: EventDef = EventDef {
    id: 2005,
    name: "OutboundTlsDowngrade",
    category: Category::SmtpSend,
    level: Level::Warning,
    exchange_id: None,
    action: "A destination that was reached with better TLS before (verified or encrypted) now offers less. This can be an attack stripping STARTTLS or a broken peer. With enforce_tls_memory = true such sessions are refused and the mail waits.",
};

pub const OUTBOUND_DNS_FAILED: EventDef = EventDef {
    id: 2006,
    name: "OutboundDnsFailure",
    category: Category::SmtpSend,
    level: Level::Warning,
    exchange_id: None,
    action: "The MX or address lookup for a destination failed. Temporary failures are retried; NXDOMAIN and null MX (RFC 7505) bounce at once.",
};

// ----- Queue / Delivery (2100-2199) -----

pub const FAILURE_DSN_SENT: EventDef = EventDef {
    id: 2101,
    name: "FailureDsnQueued",
    category: Category::Queue,
    level: Level::Information,
    exchange_id: None,
    action: "Recipients failed permanently (5xx, null MX, expiry); a failure DSN (RFC 3464) was queued to the sender.",
};

pub const DELAY_DSN_SENT: EventDef = EventDef {
    id: 2102,
    name: "DelayDsnQueued",
    category: Category::Queue,
    level: Level::Information,
    exchange_id: None,
    action: "Recipients have waited longer than queue.delay_dsn_after; a delay DSN was queued to the sender. Delivery goes on until expiry.",
};

pub const DSN_DROPPED: EventDef = EventDef {
    id: 2103,
    name: "DsnDropped",
    category: Category::Queue,
    level: Level::Warning,
    exchange_id: None,
    action: "A notification could not be delivered (it has a null sender, so no further DSN is generated and no loop can form), or the original sender is not routable. Nothing else to do unless this repeats.",
};

pub const MESSAGE_EXPIRED: EventDef = EventDef {
    id: 2104,
    name: "MessageExpired",
    category: Category::Queue,
    level: Level::Warning,
    exchange_id: None,
    action: "Recipients were still undelivered after queue.expire_after; they are bounced with the last error.",
};

pub const MESSAGE_REMOVED: EventDef = EventDef {
    id: 2105,
    name: "MessageRemovedByAdmin",
    category: Category::Queue,
    level: Level::Information,
    exchange_id: None,
    action: "An operator deleted or bounced a queued message.",
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
