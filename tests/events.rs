//! The event catalog: invariants of the table, docs/events.md in sync,
//! the `gatehouse events` CLI, level filtering, rate limiting and the
//! JSON lines sink.
//!
//! Levels and the rate-limit table are process-wide, so everything that
//! emits lives in one test (`levels_rate_limit_and_jsonl_sink`); the CLI
//! tests run the binary in its own process.

mod common;

use gatehouse::events::{self, CATALOG, Category, Level, TlsHandshakeFailed, Verbosity};
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn gatehouse(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(BIN);
    c.current_dir(dir.path())
        .env_remove("GATEHOUSE_CONFIG")
        .args(args);
    common::run_bounded(c, Duration::from_secs(20))
}

#[test]
fn ids_and_names_are_unique_and_every_field_is_filled() {
    let mut ids = HashSet::new();
    let mut names = HashSet::new();
    for d in CATALOG {
        assert!(ids.insert(d.id), "duplicate ID {}", d.id);
        assert!(
            names.insert(d.name.to_ascii_lowercase()),
            "duplicate name {}",
            d.name
        );
        assert!(
            d.name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_uppercase())
                && d.name.chars().all(|c| c.is_ascii_alphanumeric()),
            "{}: names are PascalCase",
            d.name
        );
        for (what, text) in [
            ("message", d.message),
            ("explanation", d.explanation),
            ("action", d.action),
        ] {
            assert!(
                text.trim().len() >= 10,
                "{} {}: {what} is missing",
                d.id,
                d.name
            );
        }
        assert!(!d.fields.is_empty(), "{}: no fields", d.name);
        for f in d.fields {
            assert!(
                d.message.contains(&format!("{{{f}}}")),
                "{}: field {f} not in the message",
                d.name
            );
        }
        for k in d.key {
            assert!(d.fields.contains(k), "{}: key {k} is not a field", d.name);
        }
        if d.level == Level::Error {
            assert_eq!(
                d.verbosity,
                Verbosity::Lowest,
                "{}: errors must show at every level",
                d.name
            );
        }
    }
}

#[test]
fn ids_sit_in_their_category_range() {
    for d in CATALOG {
        let ok = match d.category {
            Category::Certificates => (1000..1100).contains(&d.id),
            Category::Tls => (1100..1200).contains(&d.id),
            Category::SmtpReceive => (1200..1300).contains(&d.id),
            Category::SmtpSend | Category::Queue | Category::Delivery => {
                (2000..2200).contains(&d.id)
            }
            Category::Acme => (3000..3100).contains(&d.id),
            Category::Proxy => (4000..4100).contains(&d.id),
            Category::Config => (5000..5100).contains(&d.id),
            Category::Admin => (6000..6100).contains(&d.id),
        };
        assert!(
            ok,
            "{} {} is outside the {:?} range",
            d.id, d.name, d.category
        );
    }
}

#[test]
fn docs_events_md_matches_the_catalog() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md");
    let committed = std::fs::read_to_string(path).expect("docs/events.md exists");
    let generated = events::docs::markdown();
    assert!(
        committed == generated,
        "docs/events.md is out of date: run `cargo run -- events docs > docs/events.md`"
    );
    for d in CATALOG {
        assert!(committed.contains(&format!("### {} {}", d.id, d.name)));
    }
}

#[test]
fn cli_docs_prints_the_committed_page() {
    let out = gatehouse(&["events", "docs"]);
    assert!(out.status.success(), "{out:?}");
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
}

#[test]
fn cli_explain_finds_by_id_name_and_exchange_id() {
    for q in [
        "1024",
        "CertificateFallback",
        "certificatefallback",
        "12024",
    ] {
        let out = gatehouse(&["events", "explain", q]);
        assert!(out.status.success(), "{q}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("1024 CertificateFallback\n"),
            "{q}: {text}"
        );
        assert!(
            text.contains("exchange:    MSExchangeTransport 12024"),
            "{text}"
        );
        assert!(text.contains("action:"), "{text}");
    }
    let out = gatehouse(&["events", "explain", "NoSuchEvent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no event with ID, name or Exchange ID `NoSuchEvent`")
    );
}

#[test]
fn cli_list_filters_by_category() {
    let out = gatehouse(&["events", "list", "--category", "tls"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let tls: Vec<_> = CATALOG
        .iter()
        .filter(|d| d.category == Category::Tls)
        .collect();
    assert_eq!(text.lines().count(), tls.len(), "{text}");
    assert!(text.contains("TlsHandshakeFailed"));
    assert!(!text.contains("CertificateFallback"));
    let all = gatehouse(&["events", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&all.stdout).lines().count(),
        CATALOG.len()
    );
    let bad = gatehouse(&["events", "list", "--category", "Nope"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown category `Nope`"));
}

fn handshake_failures(client: &str) -> Vec<events::Emitted> {
    events::recent()
        .into_iter()
        .filter(|e| {
            e.name == "TlsHandshakeFailed"
                && e.fields.iter().any(|(k, v)| *k == "client" && v == client)
        })
        .collect()
}

fn fail(client: &str, reason: &str) {
    events::emit(TlsHandshakeFailed {
        connector: "Default",
        client: client.parse().expect("test IP"),
        reason,
    });
}

#[test]
fn levels_rate_limit_and_jsonl_sink() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("log").join("events.jsonl");
    events::sink::configure(Some(events::sink::JsonlConfig {
        path: jsonl.clone(),
        max_file_size: 2048,
        keep: 2,
    }));
    events::set_rate_limit_window(Duration::from_millis(400));

    // TlsHandshakeFailed shows from Medium: at Low it is filtered out.
    events::set_level(Category::Tls, Verbosity::Low);
    fail("192.0.2.1", "protocol version");
    assert!(handshake_failures("192.0.2.1").is_empty());
    events::set_level(Category::Tls, Verbosity::Expert);
    fail("192.0.2.1", "protocol version");
    let got = handshake_failures("192.0.2.1");
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].message,
        "connector `Default`: TLS handshake with 192.0.2.1 failed: protocol version"
    );
    assert_eq!(got[0].repeated, 0);

    // Same (connector, reason) key: suppressed inside the window, even
    // from another client; another reason is another key.
    for _ in 0..4 {
        fail("192.0.2.2", "protocol version");
    }
    assert!(handshake_failures("192.0.2.2").is_empty());
    fail("192.0.2.3", "peer closed");
    assert_eq!(handshake_failures("192.0.2.3").len(), 1);

    // After the window: emitted again, carrying the repeat count.
    std::thread::sleep(Duration::from_millis(450));
    fail("192.0.2.4", "protocol version");
    let again = handshake_failures("192.0.2.4");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].repeated, 4);

    // JSON lines: one object per emitted event, with the fields.
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["id"], 1101);
    assert_eq!(last["name"], "TlsHandshakeFailed");
    assert_eq!(last["category"], "Tls");
    assert_eq!(last["level"], "Warning");
    assert_eq!(last["repeated"], 4);
    assert!(last["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(last["fields"]["client"], "192.0.2.4");
    assert_eq!(last["fields"]["connector"], "Default");
    assert_eq!(last["fields"]["reason"], "protocol version");

    // Rotation: past max_file_size the file moves to events.1.jsonl, at
    // most `keep` rotated files remain.
    events::set_rate_limit_window(Duration::ZERO);
    for i in 0..60 {
        fail(&format!("198.51.100.{i}"), "other");
    }
    let rotated1 = events::sink::rotated_path(&jsonl, 1);
    let rotated2 = events::sink::rotated_path(&jsonl, 2);
    let rotated3 = events::sink::rotated_path(&jsonl, 3);
    assert!(rotated1.exists() && rotated2.exists());
    assert!(!rotated3.exists());
    for p in [&jsonl, &rotated1, &rotated2] {
        let len = std::fs::metadata(p).unwrap().len();
        assert!(len <= 2048, "{} is {len} bytes", p.display());
    }
    let newest = std::fs::read_to_string(&jsonl).unwrap();
    assert!(newest.contains("198.51.100.59"));
    events::sink::configure(None);
}

#[test]
fn every_field_type_has_an_operator_name() {
    let text = events::docs::markdown();
    assert!(
        !text.contains("(value)"),
        "a field type has no name in docs.rs `kind`"
    );
    for d in CATALOG {
        assert_eq!(d.fields.len(), d.field_types.len(), "{}", d.name);
    }
}
