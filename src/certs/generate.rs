//! New keys, self-signed certificates and certificate signing requests.
//!
//! Every certificate made here is a TLS server leaf: CA:FALSE, EKU
//! serverAuth (Apple platforms refuse server certificates without it),
//! key usage digitalSignature (plus keyEncipherment for RSA), a random
//! 128-bit serial, not_before an hour in the past so peers with a slow
//! clock accept it at once, and a validity of `SELF_SIGNED_VALIDITY`.

use super::{CertError, KeyKind};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, RsaKeySize,
    SerialNumber,
};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// 365 days from `not_before` to `not_after`, backdate included: within
/// the 90-366-day lifespan of Mozilla's "intermediate" configuration
/// (sslyze checks it; it flagged the earlier 397 days) and under the
/// 398-day cap of Apple and testssl.sh (which flagged 825 days), so the
/// default never shows up as a finding. Exchange's 5 years would. The
/// expiry warnings (30/14/7/1 days) and `gatehouse cert new-self-signed`
/// make renewal a one-line job. See docs/certificates.md.
pub(crate) const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// Tolerance for peers whose clock is behind ours.
const BACKDATE: Duration = Duration::from_secs(3600);

/// A freshly made certificate with its key.
pub(crate) struct Generated {
    pub cert_der: Vec<u8>,
    pub key_pkcs8: Vec<u8>,
}

/// A new request: the CSR and its private key, both PEM.
pub(crate) struct Request {
    pub csr_pem: String,
    pub key_pem: String,
}

/// Checks and normalises names for a certificate: lower case, no trailing
/// dot, duplicates dropped. DNS names (a leading `*.` wildcard allowed,
/// RFC 6125 §6.4.3) or IP addresses.
pub(crate) fn normalize_names(names: &[String]) -> Result<Vec<String>, CertError> {
    let mut out: Vec<String> = Vec::new();
    for raw in names {
        let name = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        check_name(&name).map_err(|reason| CertError::BadName {
            name: raw.clone(),
            reason,
        })?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.is_empty() {
        return Err(CertError::NoNames);
    }
    Ok(out)
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.len() > 253 {
        return Err("a DNS name has at most 253 characters");
    }
    let labels: Vec<&str> = name.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if *label == "*" {
            if i != 0 {
                return Err("a wildcard must be the whole leftmost label, as in *.example.com");
            }
            if labels.len() < 3 {
                return Err("a wildcard needs at least two labels after it, as in *.example.com");
            }
            continue;
        }
        if label.is_empty() || label.len() > 63 {
            return Err("every label between dots needs 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("use letters, digits and hyphens (IDNs in their xn-- form)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label cannot start or end with a hyphen");
        }
    }
    Ok(())
}

fn key_pair(kind: KeyKind) -> Result<KeyPair, CertError> {
    let generated = match kind {
        KeyKind::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyKind::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyKind::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyKind::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
    };
    generated.map_err(|e| CertError::Generate {
        what: "generate a private key",
        reason: format!("{} key: {e}", kind.label()),
    })
}

/// Parameters shared by self-signed certificates and requests.
fn leaf_params(names: &[String], kind: KeyKind) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(|e| CertError::Generate {
        what: "encode the names",
        reason: e.to_string(),
    })?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = match kind {
        KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => vec![KeyUsagePurpose::DigitalSignature],
        KeyKind::Rsa2048 | KeyKind::Rsa3072 => vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ],
    };
    Ok(params)
}

/// A self-signed server certificate for `names` (already normalised; the
/// first becomes the subject CN).
pub(crate) fn self_signed(
    names: &[String],
    kind: KeyKind,
    now: SystemTime,
) -> Result<Generated, CertError> {
    let key = key_pair(kind)?;
    let mut params = leaf_params(names, kind)?;
    params.not_before = (now - BACKDATE).into();
    // The backdate counts inside the lifetime, so the total is exact.
    params.not_after = (now - BACKDATE + SELF_SIGNED_VALIDITY).into();
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key).map_err(|e| CertError::Generate {
        what: "sign the self-signed certificate",
        reason: e.to_string(),
    })?;
    Ok(Generated {
        cert_der: cert.der().to_vec(),
        key_pkcs8: key.serialize_der(),
    })
}

/// A PKCS#10 request for `names` with a new key.
pub(crate) fn request(names: &[String], kind: KeyKind) -> Result<Request, CertError> {
    let key = key_pair(kind)?;
    let params = leaf_params(names, kind)?;
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| CertError::Generate {
            what: "build the certificate request",
            reason: e.to_string(),
        })?;
    Ok(Request {
        csr_pem: csr,
        key_pem: key.serialize_pem(),
    })
}

/// 128 random bits, positive and non-zero (RFC 5280 §4.1.2.2).
fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CertError::Generate {
            what: "draw a serial number",
            reason: "the system random generator failed".into(),
        })?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_normalised() {
        let n = normalize_names(&["Mail.Example.COM.".into(), "mail.example.com".into()]).unwrap();
        assert_eq!(n, vec!["mail.example.com"]);
        assert!(normalize_names(&["*.example.com".into()]).is_ok());
        assert!(normalize_names(&["192.0.2.1".into()]).is_ok());
        for bad in [
            "*.com",
            "a.*.example.com",
            "bad_name.example",
            "-x.example",
            "",
        ] {
            assert!(normalize_names(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(matches!(normalize_names(&[]), Err(CertError::NoNames)));
    }
}
