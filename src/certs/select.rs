//! Which certificate a listener presents: one pure function, shared by the
//! TLS layer and `gatehouse cert which`, that explains its answer.
//!
//! The rule (docs/certificates.md has the operator's version):
//!
//! 1. Candidates are certificates enabled for the service and valid now
//!    (`not_before <= now < not_after`).
//! 2. First those whose names match the SNI name; else those matching the
//!    connector's FQDN; else the default certificate. Names are the DNS
//!    and IP subjectAltNames, or the subject CN when there are none
//!    (RFC 6125 §6.4.4). A `*.suffix` name matches exactly one extra label
//!    (RFC 6125 §6.4.3), never an IP address, and needs a suffix of two or
//!    more labels.
//! 3. Among the candidates of the first non-empty tier: CA-issued before
//!    self-signed (Exchange's `PreferedNonSelfSigned`), then the latest
//!    not_after, then the latest not_before (Exchange sorts by NotBefore),
//!    then the lowest thumbprint so the answer is deterministic.

use super::{CertInfo, Service};
use crate::certs::inspect::date;
use std::cmp::Ordering;
use std::net::IpAddr;
use std::time::SystemTime;

/// Why the chosen certificate was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchedBy {
    /// One of its names matches the SNI name the client sent.
    Sni,
    /// One of its names matches the connector's FQDN.
    Fqdn,
    /// Nothing matched by name; it is the default certificate.
    Default,
    /// No certificate can be used.
    None,
}

/// The answer of `select`, with one explanation line per certificate.
#[derive(Clone, Debug)]
pub struct Selection<'a> {
    pub chosen: Option<&'a CertInfo>,
    pub matched_by: MatchedBy,
    pub explanation: Vec<String>,
}

/// Applies the selection rule above to `certs` at time `now`, with one
/// explanation line per certificate (for `gatehouse cert which`, events
/// and tests). The handshake path uses `choose`, which gives the same
/// answer without building the explanation.
pub fn select<'a>(
    certs: &'a [CertInfo],
    service: Service,
    sni: Option<&str>,
    fqdn: &str,
    now: SystemTime,
) -> Selection<'a> {
    let sni = sni.map(str::trim).filter(|s| !s.is_empty());
    let (chosen, matched_by) = choose(certs, service, sni, fqdn, now);
    let matches = |c: &CertInfo, host: &str| names_match(c, host);
    let in_tier = |c: &CertInfo| {
        eligible(c, service, now)
            && match (matched_by, sni) {
                (MatchedBy::Sni, Some(s)) => matches(c, s),
                (MatchedBy::Fqdn, _) => matches(c, fqdn),
                (MatchedBy::Default, _) => c.is_default,
                _ => false,
            }
    };

    let tier_name = match matched_by {
        MatchedBy::Sni => format!("matches SNI `{}`", sni.unwrap_or_default()),
        MatchedBy::Fqdn => format!("matches the connector FQDN `{fqdn}`"),
        MatchedBy::Default => {
            "is the default certificate and no certificate matches by name".into()
        }
        MatchedBy::None => String::new(),
    };
    let wanted = match sni {
        Some(s) => format!("SNI `{s}` or FQDN `{fqdn}`"),
        None => format!("FQDN `{fqdn}` (the client sent no SNI)"),
    };

    let mut explanation = Vec::with_capacity(certs.len().max(1));
    if certs.is_empty() {
        explanation.push("the store holds no usable certificate".to_string());
    }
    for c in certs {
        let head = format!("{} {}", c.sha1, c.subject);
        let line = if !c.services.contains(service) {
            format!(
                "{head}: skipped, not enabled for {service} (enabled for: {})",
                c.services
            )
        } else if now >= c.not_after {
            format!(
                "{head}: skipped, expired on {} (not_after)",
                date(c.not_after)
            )
        } else if now < c.not_before {
            format!(
                "{head}: skipped, not valid until {} (not_before)",
                date(c.not_before)
            )
        } else if chosen.is_some_and(|x| std::ptr::eq(x, c)) {
            format!(
                "{head}: TAKEN, {tier_name}; {}, valid until {}",
                provenance(c),
                date(c.not_after)
            )
        } else if let Some(winner) = chosen.filter(|_| in_tier(c)) {
            format!(
                "{head}: passed over, also {tier_name} but {}",
                lost_because(c, winner)
            )
        } else {
            let mut why = match (matched_by, sni) {
                (MatchedBy::Fqdn | MatchedBy::Default | MatchedBy::None, _)
                | (MatchedBy::Sni, None) => {
                    format!(
                        "its names ({}) do not match {wanted}",
                        cert_names(c).join(", ")
                    )
                }
                (MatchedBy::Sni, Some(_)) if matches(c, fqdn) => format!(
                    "it matches the FQDN `{fqdn}`, and a certificate matching the SNI name comes first"
                ),
                (MatchedBy::Sni, Some(_)) => {
                    format!(
                        "its names ({}) do not match SNI `{}`",
                        cert_names(c).join(", "),
                        sni.unwrap_or_default()
                    )
                }
            };
            if c.is_default && matched_by != MatchedBy::None {
                why.push_str("; it is the default, used only when no certificate matches by name");
            } else if !c.is_default && matched_by == MatchedBy::None {
                why.push_str(", and it is not the default");
            }
            format!("{head}: not used, {why}")
        };
        explanation.push(line);
    }

    Selection {
        chosen,
        matched_by,
        explanation,
    }
}

/// The selection rule without the explanation: allocation-free, for the
/// TLS handshake path.
pub fn choose<'a>(
    certs: &'a [CertInfo],
    service: Service,
    sni: Option<&str>,
    fqdn: &str,
    now: SystemTime,
) -> (Option<&'a CertInfo>, MatchedBy) {
    let best = |pred: &dyn Fn(&CertInfo) -> bool| {
        certs
            .iter()
            .filter(|c| eligible(c, service, now) && pred(c))
            .min_by(|a, b| rank(a, b))
    };
    if let Some(s) = sni.map(str::trim).filter(|s| !s.is_empty())
        && let Some(c) = best(&|c| names_match(c, s))
    {
        return (Some(c), MatchedBy::Sni);
    }
    if let Some(c) = best(&|c| names_match(c, fqdn)) {
        return (Some(c), MatchedBy::Fqdn);
    }
    if let Some(c) = best(&|c| c.is_default) {
        return (Some(c), MatchedBy::Default);
    }
    (None, MatchedBy::None)
}

fn eligible(c: &CertInfo, service: Service, now: SystemTime) -> bool {
    c.services.contains(service) && c.is_valid_at(now)
}

/// Whether any of the certificate's names (SANs, else the CN) covers `host`.
fn names_match(c: &CertInfo, host: &str) -> bool {
    if c.sans.is_empty() {
        common_name(&c.subject).is_some_and(|cn| name_matches(cn, host))
    } else {
        c.sans.iter().any(|n| name_matches(n, host))
    }
}

fn common_name(subject: &str) -> Option<&str> {
    subject.split(", ").find_map(|rdn| rdn.strip_prefix("CN="))
}

/// Orders candidates best first.
fn rank(a: &CertInfo, b: &CertInfo) -> Ordering {
    a.self_signed
        .cmp(&b.self_signed)
        .then(b.not_after.cmp(&a.not_after))
        .then(b.not_before.cmp(&a.not_before))
        .then(a.sha1.cmp(&b.sha1))
}

fn lost_because(loser: &CertInfo, winner: &CertInfo) -> String {
    if loser.self_signed && !winner.self_signed {
        "it is self-signed and a CA-issued certificate qualifies".into()
    } else if loser.not_after < winner.not_after {
        format!(
            "it expires earlier ({} against {})",
            date(loser.not_after),
            date(winner.not_after)
        )
    } else if loser.not_before < winner.not_before {
        format!(
            "it is older (not_before {} against {})",
            date(loser.not_before),
            date(winner.not_before)
        )
    } else {
        "it ranks equal and its thumbprint sorts later".into()
    }
}

fn provenance(c: &CertInfo) -> &'static str {
    if c.self_signed {
        "self-signed"
    } else {
        "CA-issued"
    }
}

/// The names a certificate is matched on: its subjectAltNames, or the
/// subject CN when it has none.
fn cert_names(c: &CertInfo) -> Vec<String> {
    if !c.sans.is_empty() {
        return c.sans.clone();
    }
    common_name(&c.subject)
        .map(|cn| vec![cn.to_string()])
        .unwrap_or_default()
}

/// Whether certificate name `pattern` covers `host` (RFC 6125 §6.4):
/// exact (case-insensitive, trailing dot ignored), or `*.suffix` matching
/// exactly one more label. IP addresses match only exactly.
pub fn name_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    let host = host.trim().trim_end_matches('.');
    if host.is_empty() || host.contains('*') {
        return false;
    }
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    if !suffix.contains('.') || suffix.contains('*') || host.parse::<IpAddr>().is_ok() {
        return false;
    }
    match host.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::Services;
    use std::time::{Duration, UNIX_EPOCH};

    const DAY: u64 = 86_400;

    fn t(days: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(20_000 * DAY + days * DAY)
    }
    fn now() -> SystemTime {
        t(100)
    }

    fn cert(id: char, sans: &[&str]) -> CertInfo {
        CertInfo {
            sha1: id.to_string().repeat(40),
            sha256: id.to_string().repeat(64),
            subject: format!("CN={}", sans.first().copied().unwrap_or("nobody")),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            issuer: "CN=Test CA".into(),
            not_before: t(0),
            not_after: t(365),
            key_type: "ECDSA P-256".into(),
            self_signed: false,
            services: Services::SMTP,
            is_default: false,
            friendly_name: None,
        }
    }

    /// (first letter of the chosen thumbprint or '-', how, explanation).
    fn run(
        certs: &[CertInfo],
        service: Service,
        sni: Option<&str>,
        fqdn: &str,
    ) -> (char, MatchedBy, Vec<String>) {
        let s = select(certs, service, sni, fqdn, now());
        let (fast, how) = choose(certs, service, sni, fqdn, now());
        assert_eq!(how, s.matched_by, "choose and select agree");
        assert!(fast.map(|c| c as *const CertInfo) == s.chosen.map(|c| c as *const CertInfo));
        let id = s
            .chosen
            .map(|c| c.sha1.chars().next().unwrap())
            .unwrap_or('-');
        (id, s.matched_by, s.explanation)
    }

    #[test]
    fn sni_match_wins_over_fqdn() {
        let certs = [
            cert('A', &["mx.example.test"]),
            cert('B', &["mail.example.org"]),
        ];
        let (id, how, _) = run(
            &certs,
            Service::Smtp,
            Some("mail.example.org"),
            "mx.example.test",
        );
        assert_eq!((id, how), ('B', MatchedBy::Sni));
        let (id, how, _) = run(
            &certs,
            Service::Smtp,
            Some("other.example"),
            "mx.example.test",
        );
        assert_eq!((id, how), ('A', MatchedBy::Fqdn));
        let (id, how, _) = run(&certs, Service::Smtp, None, "mx.example.test");
        assert_eq!((id, how), ('A', MatchedBy::Fqdn));
    }

    #[test]
    fn wildcard_matches_one_label_only() {
        assert!(name_matches("*.example.test", "mx.example.test"));
        assert!(name_matches("*.Example.Test", "MX.example.test."));
        assert!(!name_matches("*.example.test", "a.b.example.test"));
        assert!(!name_matches("*.example.test", "example.test"));
        assert!(!name_matches("*.test", "example.test"));
        assert!(!name_matches("*.example.test", "*.example.test"));
        assert!(!name_matches("*.0.2.1", "192.0.2.1"));
        assert!(name_matches("192.0.2.1", "192.0.2.1"));

        let mut certs = vec![
            cert('W', &["*.example.test"]),
            cert('D', &["fallback.test"]),
        ];
        certs[1].is_default = true;
        let (id, how, _) = run(&certs, Service::Smtp, Some("a.b.example.test"), "x.other");
        assert_eq!((id, how), ('D', MatchedBy::Default));
        let (id, how, _) = run(&certs, Service::Smtp, Some("b.example.test"), "x.other");
        assert_eq!((id, how), ('W', MatchedBy::Sni));
    }

    #[test]
    fn ca_issued_beats_self_signed_even_when_it_expires_sooner() {
        let mut own = cert('S', &["mx.example.test"]);
        own.self_signed = true;
        own.not_after = t(2000);
        let ca = cert('C', &["mx.example.test"]);
        let (id, _, why) = run(&[own, ca], Service::Smtp, None, "mx.example.test");
        assert_eq!(id, 'C');
        assert!(why[0].contains("self-signed and a CA-issued"), "{why:?}");
    }

    #[test]
    fn later_expiry_wins_then_later_not_before() {
        let mut a = cert('A', &["mx.example.test"]);
        a.not_after = t(400);
        let mut b = cert('B', &["mx.example.test"]);
        b.not_after = t(500);
        let (id, _, why) = run(
            &[a.clone(), b.clone()],
            Service::Smtp,
            None,
            "mx.example.test",
        );
        assert_eq!(id, 'B');
        assert!(why[0].contains("expires earlier"), "{why:?}");

        b.not_after = a.not_after;
        b.not_before = t(10);
        let (id, _, why) = run(&[a, b], Service::Smtp, None, "mx.example.test");
        assert_eq!(id, 'B');
        assert!(why[0].contains("older"), "{why:?}");
    }

    #[test]
    fn disabled_and_expired_and_future_certificates_are_skipped() {
        let mut https_only = cert('H', &["mx.example.test"]);
        https_only.services = Services::HTTPS;
        let mut expired = cert('E', &["mx.example.test"]);
        expired.not_after = t(99);
        let mut future = cert('F', &["mx.example.test"]);
        future.not_before = t(101);
        let certs = [https_only, expired, future];
        let (id, how, why) = run(&certs, Service::Smtp, None, "mx.example.test");
        assert_eq!((id, how), ('-', MatchedBy::None));
        assert!(why[0].contains("not enabled for smtp"), "{}", why[0]);
        assert!(why[1].contains("expired on"), "{}", why[1]);
        assert!(why[2].contains("not valid until"), "{}", why[2]);
        let (id, _, _) = run(&certs, Service::Https, None, "mx.example.test");
        assert_eq!(id, 'H');
    }

    #[test]
    fn default_is_used_when_nothing_matches_but_only_if_enabled_and_valid() {
        let mut d = cert('D', &["gatehouse.local"]);
        d.is_default = true;
        let other = cert('O', &["other.test"]);
        let (id, how, _) = run(
            &[d.clone(), other.clone()],
            Service::Smtp,
            Some("x.test"),
            "mx.test",
        );
        assert_eq!((id, how), ('D', MatchedBy::Default));
        d.services = Services::HTTPS;
        let (id, how, why) = run(&[d, other], Service::Smtp, Some("x.test"), "mx.test");
        assert_eq!((id, how), ('-', MatchedBy::None));
        assert!(why[1].contains("not the default"), "{}", why[1]);
    }

    #[test]
    fn cn_is_used_only_without_sans() {
        let mut c = cert('N', &[]);
        c.subject = "CN=legacy.example.test, O=Example".into();
        let (id, _, _) = run(
            std::slice::from_ref(&c),
            Service::Smtp,
            None,
            "legacy.example.test",
        );
        assert_eq!(id, 'N');
        c.sans = vec!["new.example.test".into()];
        let (id, _, _) = run(&[c], Service::Smtp, None, "legacy.example.test");
        assert_eq!(id, '-');
    }

    #[test]
    fn explanation_mentions_every_candidate() {
        let mut d = cert('D', &["mx.example.test"]);
        d.is_default = true;
        let mut off = cert('X', &["mx.example.test"]);
        off.services = Services::NONE;
        let sni = cert('S', &["mail.example.test"]);
        let unrelated = cert('U', &["unrelated.test"]);
        let certs = [d, off, sni, unrelated];
        let (id, _, why) = run(
            &certs,
            Service::Smtp,
            Some("mail.example.test"),
            "mx.example.test",
        );
        assert_eq!(id, 'S');
        assert_eq!(why.len(), certs.len());
        for (line, c) in why.iter().zip(&certs) {
            assert!(line.starts_with(&c.sha1), "{line}");
        }
        assert!(why[0].contains("matches the FQDN"), "{}", why[0]);
        assert!(why[0].contains("it is the default"), "{}", why[0]);
        assert!(why[1].contains("not enabled for smtp"), "{}", why[1]);
        assert!(
            why[2].contains("TAKEN, matches SNI `mail.example.test`"),
            "{}",
            why[2]
        );
        assert!(why[3].contains("do not match SNI"), "{}", why[3]);
    }

    #[test]
    fn empty_store_explains_itself() {
        let (id, how, why) = run(&[], Service::Smtp, None, "mx.example.test");
        assert_eq!((id, how), ('-', MatchedBy::None));
        assert_eq!(
            why,
            vec!["the store holds no usable certificate".to_string()]
        );
    }
}
