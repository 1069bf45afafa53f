//! The event catalog: every operator-relevant event, its level per
//! category, rate limiting and the sinks (SPEC 2.7).
//!
//! ```text
//! catalog.rs   catalog! { CertificateFallback { id: 1024, fields: {connector, ...}, ... } }
//!                 |  generates one struct per event (its named fields) + `Event` impl
//!                 v
//! call site    events::emit(CertificateFallback { connector: &name, ... })
//!                 |  1. diagnostic level: the entry's verbosity vs its category's level
//!                 |  2. counted per (ID, level) for /metrics
//!                 |  3. rate limit by (ID, key fields): repeats inside the window are
//!                 |     counted and reported as `repeated` in the next emission
//!                 v
//! sinks        stderr (tracing, human line) · JSON lines file (sink.rs, rotated)
//!              · last N in memory (`recent()`, the admin API's GET /events)
//! ```
//!
//! Emitting an event that is not in the catalog does not compile: `emit`
//! takes an `Event`, a sealed trait only the `catalog!` macro implements,
//! and each event is a struct whose fields are the message's named fields,
//! each with its type (`client: IpAddr`, `days: i64`, `connector: &'a str`).
//! The macro also checks, at compile time, that the message template names
//! exactly the declared fields.
//!
//! ```compile_fail
//! gatehouse::events::emit("something happened");
//! ```
//!
//! ```compile_fail,E0277
//! // Outside the catalog, a type cannot become an event (sealed trait).
//! struct Mine;
//! impl gatehouse::events::Event for Mine {
//!     const DEF: &'static gatehouse::events::EventDef = &gatehouse::events::EventDef {
//!         id: 9999, name: "Mine", category: gatehouse::events::Category::Tls,
//!         level: gatehouse::events::Level::Error,
//!         verbosity: gatehouse::events::Verbosity::Lowest, exchange_ids: &[],
//!         message: "m {x}", fields: &["x"], field_types: &["u8"], key: &[],
//!         explanation: "e", action: "a",
//!     };
//!     fn for_each_field(&self, _: &mut dyn FnMut(&'static str, &dyn std::fmt::Display)) {}
//! }
//! gatehouse::events::emit(Mine);
//! ```
//!
//! ```
//! // The catalog's own events compile, with their typed fields.
//! gatehouse::events::emit(gatehouse::events::CertificatesReloaded { usable: 1, unusable: 0 });
//! ```
//!
//! ```compile_fail,E0308
//! // Fields are typed: a count is not text.
//! gatehouse::events::emit(gatehouse::events::CertificatesReloaded { usable: "1", unusable: 0 });
//! ```
//!
//! Adding an event (or converting an old `pub const X: EventDef` + `emit(&X, format!(..))`):
//! 1. add an entry to `catalog!` in catalog.rs (id, category, level, verbosity, exchange, fields, key, message with `{field}`s, explanation, action);
//! 2. emit `events::emit(Name { field: value, .. })` (old style: one field `detail: &'a str` and `detail: &format!(..)`); 3. `gatehouse events docs > docs/events.md`.
//!
//! Levels: each entry has a *severity* (`Level`: Error, Warning,
//! Information, as the Windows event log shows it) and a *verbosity*
//! (`Verbosity`: Lowest … Expert, Exchange's Set-EventLogLevel scale). An
//! event is emitted when its verbosity is at or below its category's
//! configured level, so Lowest entries (errors that need a person) are
//! always on and Expert entries only when someone is diagnosing.
//!
//! State is process-wide (one server per process): levels, the rate-limit
//! table, the history and the JSON lines file.

pub mod docs;
pub mod sink;

pub use catalog::*;

use std::collections::{HashMap, VecDeque};
use std::fmt::{self, Display};
use std::hash::Hasher;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// What part of the product an event is about; each has its own level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
pub enum Category {
    Certificates,
    Tls,
    SmtpReceive,
    SmtpSend,
    Queue,
    Delivery,
    Proxy,
    Config,
    Acme,
    Admin,
}

impl Category {
    pub const ALL: [Category; 10] = [
        Category::Certificates,
        Category::Tls,
        Category::SmtpReceive,
        Category::SmtpSend,
        Category::Queue,
        Category::Delivery,
        Category::Proxy,
        Category::Config,
        Category::Acme,
        Category::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::Certificates => "Certificates",
            Category::Tls => "Tls",
            Category::SmtpReceive => "SmtpReceive",
            Category::SmtpSend => "SmtpSend",
            Category::Queue => "Queue",
            Category::Delivery => "Delivery",
            Category::Proxy => "Proxy",
            Category::Config => "Config",
            Category::Acme => "Acme",
            Category::Admin => "Admin",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Case-insensitive, as administrators type it.
    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
    }
}

impl Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Severity, as the Windows event log shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    Error,
    Warning,
    Information,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Information => "Information",
        }
    }
}

/// Diagnostic logging level (Exchange Set-EventLogLevel: Lowest 0, Low 1,
/// Medium 3, High 5, Expert 7). Higher shows more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
pub enum Verbosity {
    Lowest = 0,
    Low = 1,
    Medium = 3,
    High = 5,
    Expert = 7,
}

impl Verbosity {
    pub const ALL: [Verbosity; 5] = [
        Verbosity::Lowest,
        Verbosity::Low,
        Verbosity::Medium,
        Verbosity::High,
        Verbosity::Expert,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Verbosity::Lowest => "Lowest",
            Verbosity::Low => "Low",
            Verbosity::Medium => "Medium",
            Verbosity::High => "High",
            Verbosity::Expert => "Expert",
        }
    }

    pub fn parse(s: &str) -> Option<Verbosity> {
        Verbosity::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(s))
    }

    fn from_u8(v: u8) -> Verbosity {
        match v {
            0 => Verbosity::Lowest,
            1 => Verbosity::Low,
            3 => Verbosity::Medium,
            5 => Verbosity::High,
            _ => Verbosity::Expert,
        }
    }
}

impl Display for Verbosity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One catalog entry. Built only by the `catalog!` macro.
#[derive(Debug)]
pub struct EventDef {
    pub id: u32,
    pub name: &'static str,
    pub category: Category,
    pub level: Level,
    /// Shown when the category's level is at least this.
    pub verbosity: Verbosity,
    /// The familiar MSExchange events, closest first; empty when none.
    pub exchange_ids: &'static [u32],
    /// The message, with `{field}` placeholders.
    pub message: &'static str,
    /// The named fields, in declaration order.
    pub fields: &'static [&'static str],
    /// Their Rust types, as written in the catalog (`&'a str`, `IpAddr`).
    pub field_types: &'static [&'static str],
    /// The fields that identify "the same event again" for rate limiting.
    pub key: &'static [&'static str],
    /// What happened and why it matters.
    pub explanation: &'static str,
    /// What to do.
    pub action: &'static str,
}

mod sealed {
    pub trait Sealed {}
}

/// An event from the catalog with its field values. Implemented only by
/// the structs `catalog!` generates (the trait is sealed).
pub trait Event: sealed::Sealed {
    const DEF: &'static EventDef;
    /// Calls `f` with every (field name, value), in declaration order.
    fn for_each_field(&self, f: &mut dyn FnMut(&'static str, &dyn Display));
}

/// Generates the event structs and `CATALOG` from the table in
/// `catalog.rs`, and checks every message template against its fields.
macro_rules! catalog {
    ($(
        $(#[doc = $doc:literal])*
        $ty:ident $(<$lt:lifetime>)? {
            id: $id:literal,
            category: $cat:ident,
            level: $lvl:ident,
            verbosity: $verb:ident,
            exchange: [$($ex:literal),* $(,)?],
            fields: { $($field:ident : $fty:ty),+ $(,)? },
            key: [$($key:ident),* $(,)?],
            message: $msg:literal,
            explanation: $expl:literal,
            action: $act:literal $(,)?
        }
    )*) => {
        $(
            $(#[doc = $doc])*
            #[doc = ""]
            #[doc = concat!("Message: `", $msg, "`")]
            pub struct $ty $(<$lt>)? {
                $(pub $field: $fty,)+
            }

            impl $(<$lt>)? $ty $(<$lt>)? {
                /// This event's catalog entry.
                pub const ENTRY: &'static super::EventDef = &super::EventDef {
                    id: $id,
                    name: stringify!($ty),
                    category: super::Category::$cat,
                    level: super::Level::$lvl,
                    verbosity: super::Verbosity::$verb,
                    exchange_ids: &[$($ex),*],
                    message: $msg,
                    fields: &[$(stringify!($field)),+],
                    field_types: &[$(stringify!($fty)),+],
                    key: &[$(stringify!($key)),*],
                    explanation: $expl,
                    action: $act,
                };
            }

            impl $(<$lt>)? super::sealed::Sealed for $ty $(<$lt>)? {}

            impl $(<$lt>)? super::Event for $ty $(<$lt>)? {
                const DEF: &'static super::EventDef = Self::ENTRY;
                fn for_each_field(&self, f: &mut dyn FnMut(&'static str, &dyn std::fmt::Display)) {
                    $(f(stringify!($field), &self.$field);)+
                }
            }

            const _: () = assert!(
                super::template_matches($msg, &[$(stringify!($field)),+]),
                concat!("event ", stringify!($ty), ": the message must name exactly its fields")
            );
            const _: () = assert!(
                super::keys_are_fields(&[$(stringify!($key)),*], &[$(stringify!($field)),+]),
                concat!("event ", stringify!($ty), ": every key must be a field")
            );
        )*

        /// Every event, in table order.
        pub static CATALOG: &[&super::EventDef] = &[
            $($ty::ENTRY,)*
        ];
    };
}
// Declared after the macro: `macro_rules!` is visible only below it.
mod catalog;

const fn str_eq(a: &[u8], from: usize, to: usize, b: &str) -> bool {
    let b = b.as_bytes();
    if to - from != b.len() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if a[from + i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn is_field(a: &[u8], from: usize, to: usize, fields: &[&str]) -> bool {
    let mut j = 0;
    while j < fields.len() {
        if str_eq(a, from, to, fields[j]) {
            return true;
        }
        j += 1;
    }
    false
}

/// Compile-time check: every `{name}` in `msg` is a field, every field
/// appears, and braces are balanced.
pub const fn template_matches(msg: &str, fields: &[&str]) -> bool {
    let m = msg.as_bytes();
    let mut seen = [false; 16];
    if fields.len() > 16 {
        return false;
    }
    let mut i = 0;
    while i < m.len() {
        if m[i] == b'}' {
            return false;
        }
        if m[i] == b'{' {
            let start = i + 1;
            let mut end = start;
            while end < m.len() && m[end] != b'}' {
                end += 1;
            }
            if end == m.len() {
                return false;
            }
            let mut j = 0;
            let mut found = false;
            while j < fields.len() {
                if str_eq(m, start, end, fields[j]) {
                    seen[j] = true;
                    found = true;
                }
                j += 1;
            }
            if !found {
                return false;
            }
            i = end;
        }
        i += 1;
    }
    let mut j = 0;
    while j < fields.len() {
        if !seen[j] {
            return false;
        }
        j += 1;
    }
    true
}

/// Compile-time check: the rate-limit key names declared fields.
pub const fn keys_are_fields(keys: &[&str], fields: &[&str]) -> bool {
    let mut i = 0;
    while i < keys.len() {
        let k = keys[i].as_bytes();
        if !is_field(k, 0, k.len(), fields) {
            return false;
        }
        i += 1;
    }
    true
}

/// Finds an entry by our ID, name (case-insensitive) or Exchange ID.
pub fn lookup(query: &str) -> Vec<&'static EventDef> {
    if let Ok(n) = query.trim().parse::<u32>() {
        let ours: Vec<_> = CATALOG.iter().copied().filter(|d| d.id == n).collect();
        if !ours.is_empty() {
            return ours;
        }
        return CATALOG
            .iter()
            .copied()
            .filter(|d| d.exchange_ids.contains(&n))
            .collect();
    }
    CATALOG
        .iter()
        .copied()
        .filter(|d| d.name.eq_ignore_ascii_case(query.trim()))
        .collect()
}

// ---------------------------------------------------------------------------
// Levels per category

const DEFAULT_VERBOSITY: Verbosity = Verbosity::Low;

static LEVELS: [AtomicU8; 10] = [const { AtomicU8::new(DEFAULT_VERBOSITY as u8) }; 10];

/// The current level of a category.
pub fn level(category: Category) -> Verbosity {
    Verbosity::from_u8(LEVELS[category.index()].load(Ordering::Relaxed))
}

/// Changes a category's level at runtime (`gatehouse log level set`).
pub fn set_level(category: Category, verbosity: Verbosity) {
    LEVELS[category.index()].store(verbosity as u8, Ordering::Relaxed);
}

/// Every (category, level).
pub fn levels() -> Vec<(Category, Verbosity)> {
    Category::ALL.into_iter().map(|c| (c, level(c))).collect()
}

/// Whether an event would be emitted now (callers may skip building
/// expensive field values).
pub fn enabled(def: &EventDef) -> bool {
    def.verbosity <= level(def.category)
}

// ---------------------------------------------------------------------------
// Counters per event (for /metrics)

fn counters() -> &'static [AtomicU64] {
    static C: OnceLock<Vec<AtomicU64>> = OnceLock::new();
    C.get_or_init(|| CATALOG.iter().map(|_| AtomicU64::new(0)).collect())
}

/// (entry, how many times it was emitted, repeats included) for every
/// catalog entry.
pub fn counts() -> Vec<(&'static EventDef, u64)> {
    CATALOG
        .iter()
        .zip(counters())
        .map(|(d, c)| (*d, c.load(Ordering::Relaxed)))
        .collect()
}

fn count(def: &EventDef) {
    if let Some(i) = CATALOG.iter().position(|d| d.id == def.id)
        && let Some(c) = counters().get(i)
    {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Rate limiting

/// Repeats of the same (ID, key fields) inside this window are counted,
/// not written; the next emission after it carries the count.
static WINDOW_MS: AtomicU64 = AtomicU64::new(60_000);
/// Bound on the table, so a flood of distinct keys cannot grow memory.
const RATE_TABLE_MAX: usize = 10_000;

struct RateSlot {
    last: Instant,
    suppressed: u64,
}

static RATE: Mutex<Option<HashMap<(u32, u64), RateSlot>>> = Mutex::new(None);

/// Sets the rate-limit window; zero turns rate limiting off.
pub fn set_rate_limit_window(window: Duration) {
    WINDOW_MS.store(window.as_millis() as u64, Ordering::Relaxed);
}

/// A hasher fed through `fmt::Write`, so key fields are hashed without
/// formatting them into a String. Keyed per process, so a peer cannot
/// pick key values (its IP, its SNI) that collide with another's and
/// silence it.
struct HashWriter(std::collections::hash_map::DefaultHasher);

fn rate_hasher() -> std::collections::hash_map::DefaultHasher {
    use std::hash::BuildHasher;
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    KEYS.get_or_init(Default::default).build_hasher()
}
impl fmt::Write for HashWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

/// `None`: suppress. `Some(n)`: emit, `n` earlier repeats were suppressed.
fn rate_check<E: Event>(event: &E) -> Option<u64> {
    let window = Duration::from_millis(WINDOW_MS.load(Ordering::Relaxed));
    if window.is_zero() {
        return Some(0);
    }
    let def = E::DEF;
    let mut h = HashWriter(rate_hasher());
    event.for_each_field(&mut |name, value| {
        if def.key.contains(&name) {
            use fmt::Write as _;
            let _ = write!(h, "{name}={value}\u{0}");
        }
    });
    let key = (def.id, h.0.finish());
    let now = Instant::now();
    let mut guard = RATE.lock().unwrap_or_else(|e| e.into_inner());
    let table = guard.get_or_insert_with(HashMap::new);
    if let Some(slot) = table.get_mut(&key) {
        if now.duration_since(slot.last) < window {
            slot.suppressed += 1;
            return None;
        }
        let n = slot.suppressed;
        slot.last = now;
        slot.suppressed = 0;
        return Some(n);
    }
    if table.len() >= RATE_TABLE_MAX {
        table.retain(|_, s| now.duration_since(s.last) < window);
        if table.len() >= RATE_TABLE_MAX {
            table.clear();
        }
    }
    table.insert(
        key,
        RateSlot {
            last: now,
            suppressed: 0,
        },
    );
    Some(0)
}

// ---------------------------------------------------------------------------
// Emission and history

/// An emitted event, as the sinks see it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Emitted {
    pub id: u32,
    pub name: &'static str,
    #[serde(serialize_with = "ser_display")]
    pub category: Category,
    #[serde(serialize_with = "ser_level")]
    pub level: Level,
    #[serde(serialize_with = "ser_time")]
    pub at: SystemTime,
    pub message: String,
    /// The named fields and their values (a JSON object on the wire).
    #[serde(serialize_with = "ser_fields")]
    pub fields: Vec<(&'static str, String)>,
    /// Identical events suppressed by the rate limit since the last one.
    pub repeated: u64,
    pub exchange_id: Option<u32>,
}

fn ser_display<S: serde::Serializer>(c: &Category, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.name())
}
fn ser_fields<S: serde::Serializer>(
    fields: &[(&'static str, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(fields.len()))?;
    for (k, v) in fields {
        map.serialize_entry(k, v)?;
    }
    map.end()
}
fn ser_level<S: serde::Serializer>(l: &Level, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(l.name())
}
fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::timefmt::iso8601_millis(*t))
}

static RECENT_MAX: AtomicU64 = AtomicU64::new(1024);
static RECENT_EVENTS: Mutex<VecDeque<Emitted>> = Mutex::new(VecDeque::new());

/// How many events `recent()` keeps.
pub fn set_history_size(n: usize) {
    RECENT_MAX.store(n.max(1) as u64, Ordering::Relaxed);
}

/// Renders `def.message` with the event's field values.
pub fn render<E: Event>(event: &E) -> (String, Vec<(&'static str, String)>) {
    let mut fields = Vec::with_capacity(E::DEF.fields.len());
    event.for_each_field(&mut |name, value| fields.push((name, value.to_string())));
    let msg = fill(E::DEF.message, &fields);
    (msg, fields)
}

fn fill(template: &str, fields: &[(&'static str, String)]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = &after[..close];
        match fields.iter().find(|(n, _)| *n == name) {
            Some((_, v)) => out.push_str(v),
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Emits a catalog event: level filter, counter, rate limit, then the
/// sinks (stderr through `tracing`, the JSON lines file, the history).
pub fn emit<E: Event>(event: E) {
    let def = E::DEF;
    if !enabled(def) {
        return;
    }
    count(def);
    let Some(repeated) = rate_check(&event) else {
        return;
    };
    let (message, fields) = render(&event);
    let shown = if repeated > 0 {
        format!("{message} (repeated {repeated} more time(s) since the last report)")
    } else {
        message.clone()
    };
    match def.level {
        Level::Error => tracing::error!(
            event_id = def.id,
            event = def.name,
            exchange_id = def.exchange_ids.first(),
            action = def.action,
            "{shown}"
        ),
        Level::Warning => tracing::warn!(
            event_id = def.id,
            event = def.name,
            exchange_id = def.exchange_ids.first(),
            "{shown}"
        ),
        Level::Information => tracing::info!(event_id = def.id, event = def.name, "{shown}"),
    }
    let record = Emitted {
        id: def.id,
        name: def.name,
        category: def.category,
        level: def.level,
        at: SystemTime::now(),
        message,
        fields,
        repeated,
        exchange_id: def.exchange_ids.first().copied(),
    };
    sink::write(&record);
    let max = RECENT_MAX.load(Ordering::Relaxed) as usize;
    let mut q = RECENT_EVENTS.lock().unwrap_or_else(|e| e.into_inner());
    while q.len() >= max {
        q.pop_front();
    }
    q.push_back(record);
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

/// Applies the `[events]` configuration: levels, rate-limit window,
/// history size and the JSON lines file.
pub fn configure(cfg: &crate::config::EventsConfig, data_dir: &std::path::Path) {
    for c in Category::ALL {
        set_level(c, cfg.level_of(c));
    }
    set_rate_limit_window(cfg.rate_limit_window.0);
    set_history_size(cfg.history);
    let path = cfg
        .jsonl_path
        .clone()
        .unwrap_or_else(|| data_dir.join("log").join("events.jsonl"));
    sink::configure(if cfg.jsonl {
        Some(sink::JsonlConfig {
            path,
            max_file_size: cfg.jsonl_max_file_size.0,
            keep: cfg.jsonl_keep,
        })
    } else {
        None
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_check_accepts_exact_fields_only() {
        assert!(template_matches("a {x} b {y}", &["x", "y"]));
        assert!(template_matches("{x}{x}", &["x"]));
        assert!(!template_matches("a {x}", &["x", "y"]), "y unused");
        assert!(!template_matches("a {z}", &["x"]), "z unknown");
        assert!(!template_matches("a {x", &["x"]), "unclosed");
        assert!(!template_matches("a x}", &["x"]), "stray }}");
        assert!(keys_are_fields(&["x"], &["x", "y"]));
        assert!(!keys_are_fields(&["q"], &["x", "y"]));
    }

    #[test]
    fn fill_substitutes_named_fields() {
        let f = vec![("a", "1".to_string()), ("b", "two".to_string())];
        assert_eq!(fill("x {a} y {b} {a}", &f), "x 1 y two 1");
    }

    #[test]
    fn lookup_by_id_name_and_exchange_id() {
        assert_eq!(lookup("1024")[0].name, "CertificateFallback");
        assert_eq!(lookup("certificatefallback")[0].id, 1024);
        assert_eq!(lookup("12024")[0].id, 1024);
        assert_eq!(lookup("12014")[0].id, 1024);
        assert!(lookup("999999").is_empty());
        assert!(lookup("NoSuchEvent").is_empty());
    }
}
