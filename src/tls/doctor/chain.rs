//! The certificate side of a probe: a summary of every certificate the
//! server sent, and the checks on it: trust (with the precise reason a
//! chain is refused), expiry, the host name (RFC 6125 6.4) and Outlook's
//! `msstd:` certificate principal name (exchange-tls.md section 6.4).

use super::{Check, Verdict};
use crate::certs::name_matches;
use rustls::CertificateError;
use serde::Serialize;
use sha1::Digest;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::extensions::GeneralName;

/// Warn when the leaf has fewer days left than this.
pub const EXPIRY_WARN_DAYS: i64 = 30;

/// One certificate of the presented chain.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ChainCert {
    pub subject: String,
    pub common_name: Option<String>,
    /// `DNS:mx.example.com`, `IP:192.0.2.1`.
    pub sans: Vec<String>,
    pub issuer: String,
    /// ISO 8601 UTC.
    pub not_before: String,
    pub not_after: String,
    /// Whole days until not-after; negative once expired.
    pub days_left: i64,
    /// SHA-1 of the DER, upper-case hex: the thumbprint Windows and
    /// Get-ExchangeCertificate show.
    pub sha1: String,
    pub sha256: String,
    /// Issuer equals subject and the certificate verifies with its own key.
    pub self_signed: bool,
    #[serde(skip)]
    pub not_before_unix: i64,
    #[serde(skip)]
    pub not_after_unix: i64,
}

impl ChainCert {
    /// DNS names from the subjectAltName extension.
    pub fn dns_names(&self) -> impl Iterator<Item = &str> {
        self.sans.iter().filter_map(|s| s.strip_prefix("DNS:"))
    }
}

fn iso(unix: i64) -> String {
    let t = if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH
    };
    crate::timefmt::iso8601_millis(t)
}

fn unix_now(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reads one DER certificate; the error is the parser's reason.
pub fn summarize(der: &[u8], now: SystemTime) -> Result<ChainCert, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        sans.push(format!("IP:{ip}"));
                    }
                }
                _ => {}
            }
        }
    }
    let self_signed =
        cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok();
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    Ok(ChainCert {
        subject: cert.subject().to_string(),
        common_name,
        sans,
        issuer: cert.issuer().to_string(),
        not_before: iso(nb),
        not_after: iso(na),
        days_left: (na - unix_now(now)).div_euclid(86_400),
        sha1: crate::certs::sha1_thumbprint(der),
        sha256: crate::certs::hex_upper(&sha2::Sha256::digest(der)),
        self_signed,
        not_before_unix: nb,
        not_after_unix: na,
    })
}

/// Turns webpki's verdict into a precise trust check. A name mismatch
/// does not count here: webpki checks the name only after the chain
/// verified, and the name has its own check.
pub fn trust_check(
    verdict: &Result<(), rustls::Error>,
    chain: &[ChainCert],
    ca_file: Option<&str>,
    now: SystemTime,
) -> Check {
    let anchors = match ca_file {
        Some(f) => format!("webpki-roots or {f}"),
        None => "webpki-roots (Mozilla's list; add a private CA with --ca-file)".into(),
    };
    let fail = |detail: String| Check::new("trust", Verdict::Fail, detail);
    let err = match verdict {
        Ok(()) => None,
        Err(rustls::Error::InvalidCertificate(e)) => Some(e),
        Err(other) => return fail(format!("chain refused: {other}")),
    };
    let Some(err) = err else {
        return Check::new(
            "trust",
            Verdict::Ok,
            format!("chain verifies to a root in {anchors}"),
        );
    };
    let leaf = chain.first();
    let now_unix = unix_now(now);
    match err {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            Check::new("trust", Verdict::Ok, format!("chain verifies to a root in {anchors}"))
        }
        CertificateError::UnknownIssuer => match (leaf, chain.last()) {
            (Some(l), _) if l.self_signed && chain.len() == 1 => fail(format!(
                "self-signed certificate ({}): no client trusts it unless it is installed; use a \
                 CA-issued certificate, or pass --ca-file with this certificate to trust it here",
                l.subject
            )),
            (_, Some(last)) if last.self_signed => fail(format!(
                "the chain ends in the root {:?}, which is not in {anchors}",
                last.subject
            )),
            (_, Some(last)) => fail(format!(
                "untrusted issuer: {:?} is not in {anchors}, and the server sent no intermediate \
                 leading to one (a missing intermediate certificate?)",
                last.issuer
            )),
            _ => fail("the server sent no certificate".into()),
        },
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            let expired: Vec<String> = chain
                .iter()
                .filter(|c| c.not_after_unix < now_unix)
                .map(|c| format!("{} (not after {})", c.subject, c.not_after))
                .collect();
            fail(if expired.is_empty() {
                "a certificate in the chain has expired".into()
            } else {
                format!("expired certificate: {}", expired.join("; "))
            })
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => fail(
            "a certificate in the chain is not valid yet (check the server's and this machine's clocks)".into(),
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => fail(
            "the certificate is not valid for TLS server authentication (extendedKeyUsage lacks serverAuth)".into(),
        ),
        CertificateError::Revoked => fail("the certificate is revoked".into()),
        CertificateError::BadSignature => {
            fail("a signature in the chain does not verify (wrong intermediate sent?)".into())
        }
        CertificateError::BadEncoding => fail("a certificate in the chain is malformed".into()),
        // webpki reports a CA certificate used as the server certificate
        // only through `Other`; `openssl req -x509` makes such certificates
        // by default, so name it.
        other if format!("{other:?}").contains("CaUsedAsEndEntity") => fail(format!(
            "the server certificate{} is a CA certificate (basicConstraints CA:TRUE), which \
             webpki-based clients refuse as a server certificate; reissue it with CA:FALSE",
            leaf.map(|l| format!(" ({})", l.subject)).unwrap_or_default()
        )),
        other => fail(format!("chain refused: {other:?}")),
    }
}

/// Leaf validity: FAIL when expired or not yet valid, WARN within
/// [`EXPIRY_WARN_DAYS`].
pub fn expiry_check(leaf: &ChainCert, now: SystemTime) -> Check {
    let now = unix_now(now);
    if leaf.not_before_unix > now {
        Check::new(
            "expiry",
            Verdict::Fail,
            format!("not valid before {}", leaf.not_before),
        )
    } else if leaf.not_after_unix < now {
        Check::new(
            "expiry",
            Verdict::Fail,
            format!(
                "expired {} day(s) ago (not after {})",
                -leaf.days_left, leaf.not_after
            ),
        )
    } else if leaf.days_left < EXPIRY_WARN_DAYS {
        Check::new(
            "expiry",
            Verdict::Warn,
            format!(
                "{} day(s) left (not after {}): renew now",
                leaf.days_left, leaf.not_after
            ),
        )
    } else {
        Check::new(
            "expiry",
            Verdict::Ok,
            format!(
                "{} days left (not after {})",
                leaf.days_left, leaf.not_after
            ),
        )
    }
}

/// Whether the leaf is valid for `name` (RFC 6125 6.4: SAN DNS names,
/// one-label wildcards; the Subject CN only when there is no DNS SAN).
pub fn name_check(leaf: &ChainCert, name: &str) -> Check {
    let dns: Vec<&str> = leaf.dns_names().collect();
    if name.parse::<std::net::IpAddr>().is_ok() {
        let want = format!("IP:{name}");
        return if leaf.sans.contains(&want) {
            Check::new("name", Verdict::Ok, format!("{name} matches SAN {want}"))
        } else {
            Check::new(
                "name",
                Verdict::Fail,
                format!(
                    "the certificate has no IP SAN {name} (it names {})",
                    names_list(leaf)
                ),
            )
        };
    }
    if let Some(hit) = dns.iter().find(|d| name_matches(d, name)) {
        return Check::new("name", Verdict::Ok, format!("{name} matches SAN DNS:{hit}"));
    }
    if dns.is_empty()
        && let Some(cn) = leaf
            .common_name
            .as_deref()
            .filter(|cn| name_matches(cn, name))
    {
        return Check::new(
            "name",
            Verdict::Warn,
            format!(
                "{name} matches only the Subject CN {cn:?}: the certificate has no DNS SAN, which \
                 browsers and most TLS clients require (RFC 6125 6.4.4)"
            ),
        );
    }
    Check::new(
        "name",
        Verdict::Fail,
        format!(
            "the certificate is not valid for {name}: it names {} (an Exchange Online connector \
             would answer 450 4.4.317 SubjectMismatch)",
            names_list(leaf)
        ),
    )
}

fn names_list(leaf: &ChainCert) -> String {
    let mut names: Vec<String> = leaf.sans.clone();
    if let Some(cn) = &leaf.common_name {
        names.insert(0, format!("CN={cn}"));
    }
    if names.is_empty() {
        "no name at all".into()
    } else {
        names.join(", ")
    }
}

/// Outlook's "Only connect to proxy servers that have this principal name
/// in their certificate" (`Set-OutlookProvider -CertPrincipalName`),
/// exchange-tls.md 6.4: the name after `msstd:` must equal the Subject CN
/// (Windows XP) or any DNS name of the certificate (Vista and later),
/// compared literally: a wildcard certificate needs `msstd:*.domain.com`,
/// and no wildcard expansion happens. DNS names compare case-insensitively.
pub fn msstd_check(value: &str, leaf: &ChainCert) -> Check {
    let fail = |d: String| Check::new("msstd", Verdict::Fail, d);
    let Some(name) = value
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("msstd:"))
        .and_then(|_| value.get(6..))
    else {
        return fail(format!(
            "{value:?} does not start with msstd: (Outlook expects msstd:mail.example.com)"
        ));
    };
    if name.is_empty() {
        return fail("msstd: names no host".into());
    }
    if name.starts_with('*') && !name.starts_with("*.") {
        return fail(format!(
            "msstd:{name} has no dot after the asterisk (the form a widely copied blog post shows); a \
             wildcard certificate needs the literal msstd:*.{}",
            name.trim_start_matches('*')
        ));
    }
    let cn = leaf.common_name.as_deref();
    if cn.is_some_and(|cn| cn.eq_ignore_ascii_case(name)) {
        return Check::new(
            "msstd",
            Verdict::Ok,
            format!(
                "msstd:{name} equals the Subject CN (Outlook on every Windows version accepts it)"
            ),
        );
    }
    if let Some(hit) = leaf.dns_names().find(|d| d.eq_ignore_ascii_case(name)) {
        return Check::new(
            "msstd",
            Verdict::Ok,
            format!(
                "msstd:{name} equals SAN DNS:{hit} (Outlook on Vista and later accepts it; Windows XP \
                 compares only the Subject CN {})",
                cn.unwrap_or("(none)")
            ),
        );
    }
    let wildcard = cn
        .into_iter()
        .chain(leaf.dns_names())
        .find(|n| n.starts_with("*.") && name_matches(n, name));
    if let Some(w) = wildcard {
        return fail(format!(
            "certificate name {w} doesn't validate against the mutual authentication string \
             msstd:{name}: Outlook compares the principal name literally and will loop on credential \
             prompts; set Set-OutlookProvider EXPR -CertPrincipalName msstd:{w}"
        ));
    }
    fail(format!(
        "msstd:{name} matches neither the Subject CN nor a SAN of the certificate ({}): Outlook will \
         refuse the proxy and loop on credential prompts",
        names_list(leaf)
    ))
}
