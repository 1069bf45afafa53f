//! Metrics: labelled counters other code increments, and the collector
//! that renders them with everything read at scrape time for `/metrics`.
//!
//! ```text
//! hot path     Counter (an Arc<AtomicU64>), resolved once per connector
//!              (ConnectorMetrics) -> one relaxed fetch_add per message
//! cold path    CounterVec::inc(&["label", ...]) -> read lock + linear scan,
//!              no allocation once the label set exists
//! scrape       Collector::encode: every CounterVec in FAMILIES, then values
//!              read from their owners (queue stats, TLS counters,
//!              certificate state, event counts) -> prometheus-client text
//! ```
//!
//! Adding a metric: declare a `pub static X: CounterVec = CounterVec::new(
//! "gatehouse_area_thing", "help", &["label"])`, list it in `FAMILIES`, and
//! call `X.inc(&[value])` (or cache `X.handle(&[value])` on a hot path).
//! Names have no `_total` suffix: the encoder adds it to counters.
//! Label values must come from a bounded set (connector names, reply
//! codes, TLS suites); each family keeps at most `MAX_LABEL_SETS` sets and
//! folds the rest into one `overflow` set.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// One counter cell; clone it to keep a handle on a hot path.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bound of label sets per family (memory bound against a label
/// value that turns out not to be bounded).
pub const MAX_LABEL_SETS: usize = 1024;

/// A counter family with fixed label names.
#[derive(Debug)]
pub struct CounterVec {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    cells: RwLock<Vec<(Box<[String]>, Counter)>>,
}

impl CounterVec {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> CounterVec {
        CounterVec {
            name,
            help,
            labels,
            cells: RwLock::new(Vec::new()),
        }
    }

    fn find(cells: &[(Box<[String]>, Counter)], values: &[&str]) -> Option<Counter> {
        cells
            .iter()
            .find(|(k, _)| k.len() == values.len() && k.iter().zip(values).all(|(a, b)| a == b))
            .map(|(_, c)| c.clone())
    }

    /// The cell for `values` (one per label name), created on first use.
    pub fn handle(&self, values: &[&str]) -> Counter {
        if let Some(c) = Self::find(
            &self.cells.read().unwrap_or_else(|e| e.into_inner()),
            values,
        ) {
            return c;
        }
        let mut cells = self.cells.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = Self::find(&cells, values) {
            return c;
        }
        let key: Box<[String]> = if cells.len() >= MAX_LABEL_SETS {
            self.labels.iter().map(|_| "overflow".to_string()).collect()
        } else {
            values.iter().map(|v| v.to_string()).collect()
        };
        if let Some(c) = cells
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, c)| c.clone())
        {
            return c;
        }
        let c = Counter::default();
        cells.push((key, c.clone()));
        c
    }

    pub fn inc(&self, values: &[&str]) {
        if let Some(c) = Self::find(
            &self.cells.read().unwrap_or_else(|e| e.into_inner()),
            values,
        ) {
            c.inc();
            return;
        }
        self.handle(values).inc();
    }

    /// Current value (0 when the label set was never used).
    pub fn get(&self, values: &[&str]) -> u64 {
        Self::find(
            &self.cells.read().unwrap_or_else(|e| e.into_inner()),
            values,
        )
        .map_or(0, |c| c.get())
    }

    fn snapshot(&self) -> Vec<(Box<[String]>, u64)> {
        self.cells
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, c)| (k.clone(), c.get()))
            .collect()
    }
}

pub static SMTP_SESSIONS: CounterVec = CounterVec::new(
    "gatehouse_smtp_sessions",
    "SMTP sessions started, by receive connector",
    &["connector"],
);
pub static SMTP_MESSAGES_ACCEPTED: CounterVec = CounterVec::new(
    "gatehouse_smtp_messages_accepted",
    "Messages accepted (durably queued, 250 sent), by receive connector",
    &["connector"],
);
pub static SMTP_REJECTIONS: CounterVec = CounterVec::new(
    "gatehouse_smtp_rejections",
    "Commands and messages refused with 4xx/5xx, by connector, reply class and enhanced status code (RFC 3463)",
    &["connector", "class", "status"],
);
pub static RELOADS: CounterVec = CounterVec::new(
    "gatehouse_config_reloads",
    "Configuration reloads, by result (applied, refused)",
    &["result"],
);

pub static PROXY_REQUESTS: CounterVec = CounterVec::new(
    "gatehouse_proxy_requests",
    "Proxied requests answered, by proxy listener and status class (2xx, 4xx, ...)",
    &["proxy", "class"],
);
pub static PROXY_BACKEND_FAILURES: CounterVec = CounterVec::new(
    "gatehouse_proxy_backend_failures",
    "Requests that got no backend response, by backend pool and reason (untrusted issuer, expired, name mismatch, refused, timeout, protocol)",
    &["pool", "reason"],
);
pub static PROXY_UNVERIFIED_REQUESTS: CounterVec = CounterVec::new(
    "gatehouse_proxy_unverified_requests",
    "Requests sent to backends without certificate verification (allow_internal_untrusted_certs), by backend pool",
    &["pool"],
);

/// The families rendered on /metrics.
pub static FAMILIES: &[&CounterVec] = &[
    &SMTP_SESSIONS,
    &SMTP_MESSAGES_ACCEPTED,
    &SMTP_REJECTIONS,
    &RELOADS,
    &PROXY_REQUESTS,
    &PROXY_BACKEND_FAILURES,
    &PROXY_UNVERIFIED_REQUESTS,
];

/// One receive connector's counters, resolved once so a session costs
/// atomic adds only.
#[derive(Debug)]
pub struct ConnectorMetrics {
    name: String,
    pub sessions: Counter,
    pub accepted: Counter,
    /// (code, enhanced status) -> counter; reply codes come from the
    /// reply table, so this stays small.
    rejections: RwLock<Vec<((u16, &'static str), Counter)>>,
}

impl ConnectorMetrics {
    pub fn new(connector: &str) -> Arc<ConnectorMetrics> {
        Arc::new(ConnectorMetrics {
            name: connector.to_string(),
            sessions: SMTP_SESSIONS.handle(&[connector]),
            accepted: SMTP_MESSAGES_ACCEPTED.handle(&[connector]),
            rejections: RwLock::new(Vec::new()),
        })
    }

    /// Counts a 4xx/5xx reply (others are ignored).
    pub fn reply(&self, code: u16, status: Option<&'static str>) {
        if code < 400 {
            return;
        }
        let key = (code, status.unwrap_or(""));
        if let Some((_, c)) = self
            .rejections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(k, _)| *k == key)
        {
            c.inc();
            return;
        }
        let class = if code >= 500 { "5xx" } else { "4xx" };
        let status_label = if key.1.is_empty() { "none" } else { key.1 };
        let c = SMTP_REJECTIONS.handle(&[&self.name, class, status_label]);
        c.inc();
        let mut w = self.rejections.write().unwrap_or_else(|e| e.into_inner());
        if !w.iter().any(|(k, _)| *k == key) {
            w.push((key, c));
        }
    }
}

/// What the collector reads at scrape time from the running server.
pub trait ScrapeSource: Send + Sync + std::fmt::Debug + 'static {
    /// (state, messages) for the queue-depth gauge.
    fn queue_depth(&self) -> Vec<(&'static str, u64)>;
    /// (result, count) for the deliveries counter.
    fn deliveries(&self) -> Vec<(&'static str, u64)>;
    /// (SHA-1 thumbprint, subject, days to expiry; negative once expired).
    fn certificate_expiry(&self) -> Vec<(String, String, i64)>;
}

/// Renders every metric; registered in the admin API's registry.
#[derive(Debug)]
pub struct GatehouseCollector {
    pub source: Arc<dyn ScrapeSource>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for GatehouseCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in FAMILIES {
            let rows = f.snapshot().into_iter().map(|(values, v)| {
                (
                    f.labels
                        .iter()
                        .copied()
                        .zip(values.iter().cloned())
                        .collect::<Vec<_>>(),
                    v,
                )
            });
            counter(&mut encoder, f.name, f.help, rows)?;
        }
        gauge(
            &mut encoder,
            "gatehouse_queue_messages",
            "Messages in the queue, by state (pending: some recipient not yet delivered; held: waiting for a send connector)",
            self.source
                .queue_depth()
                .into_iter()
                .map(|(s, n)| (vec![("state", s.to_string())], n as i64)),
        )?;
        counter(
            &mut encoder,
            "gatehouse_deliveries",
            "Delivery attempts, by result (delivered, deferred)",
            self.source
                .deliveries()
                .into_iter()
                .map(|(r, n)| (vec![("result", r.to_string())], n)),
        )?;
        let tls = crate::tls::counters();
        counter(
            &mut encoder,
            "gatehouse_tls_handshakes",
            "Completed inbound TLS handshakes, by protocol version and cipher suite",
            tls.successes()
                .into_iter()
                .map(|((version, cipher), n)| (vec![("version", version), ("cipher", cipher)], n)),
        )?;
        {
            let family = encoder.encode_descriptor(
                "gatehouse_tls_resumptions",
                "Inbound TLS handshakes that resumed a session",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            ConstCounter::new(tls.resumed()).encode(family)?;
        }
        counter(
            &mut encoder,
            "gatehouse_tls_handshake_failures",
            "Failed inbound TLS handshakes, by reason",
            tls.failures()
                .into_iter()
                .map(|(reason, n)| (vec![("reason", reason)], n)),
        )?;
        gauge(
            &mut encoder,
            "gatehouse_certificate_expiry_days",
            "Days until an enabled certificate expires (negative once expired), by SHA-1 thumbprint",
            self.source
                .certificate_expiry()
                .into_iter()
                .map(|(thumb, subject, days)| {
                    (vec![("thumbprint", thumb), ("subject", subject)], days)
                }),
        )?;
        counter(
            &mut encoder,
            "gatehouse_events",
            "Catalog events emitted (after the level filter, rate-limited repeats included), by ID, name and level",
            crate::events::counts().into_iter().map(|(d, n)| {
                (
                    vec![
                        ("id", d.id.to_string()),
                        ("name", d.name.to_string()),
                        ("level", d.level.name().to_string()),
                    ],
                    n,
                )
            }),
        )?;
        Ok(())
    }
}

/// The text exposition of every metric.
pub fn render(source: Arc<dyn ScrapeSource>) -> Result<String, std::fmt::Error> {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(GatehouseCollector { source }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_vec_counts_per_label_set() {
        static T: CounterVec = CounterVec::new("t", "t", &["a"]);
        T.inc(&["x"]);
        T.inc(&["x"]);
        T.inc(&["y"]);
        assert_eq!(T.get(&["x"]), 2);
        assert_eq!(T.get(&["y"]), 1);
        assert_eq!(T.get(&["z"]), 0);
        let h = T.handle(&["x"]);
        h.inc();
        assert_eq!(T.get(&["x"]), 3);
    }

    #[test]
    fn label_sets_are_bounded() {
        static T: CounterVec = CounterVec::new("t2", "t", &["a"]);
        for i in 0..MAX_LABEL_SETS + 10 {
            T.inc(&[&i.to_string()]);
        }
        assert_eq!(T.snapshot().len(), MAX_LABEL_SETS + 1);
        assert_eq!(T.get(&["overflow"]), 10);
    }
}
