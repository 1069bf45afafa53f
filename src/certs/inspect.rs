//! Facts about certificates and keys: thumbprints, names, validity, key
//! type, self-signed or not, whether a private key belongs to a
//! certificate, and the small DER/PEM work the store needs.
//!
//! A key matches a certificate when the SubjectPublicKeyInfo derived from
//! the private key (by rustls' aws-lc-rs key loader, the same code that
//! will sign handshakes) equals the certificate's, byte for byte.

use rustls::crypto::aws_lc_rs::sign::any_supported_type;
use rustls_pki_types::PrivateKeyDer;
use sha1::Digest;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::public_key::PublicKey;

/// What the store reads out of one DER certificate.
#[derive(Clone, Debug)]
pub(crate) struct CertFacts {
    pub sha1: String,
    pub sha256: String,
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub key_type: String,
    pub self_signed: bool,
    /// RSA below 2048 bits, DSA, or an algorithm rustls cannot sign with.
    pub weak_key: bool,
    /// The raw SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    pub subject_raw: Vec<u8>,
    pub issuer_raw: Vec<u8>,
}

/// Parses one DER certificate. The error is the parser's reason.
pub(crate) fn facts(der: &[u8]) -> Result<CertFacts, String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes of garbage after the certificate",
            rest.len()
        ));
    }
    let subject_raw = cert.subject().as_raw().to_vec();
    let issuer_raw = cert.issuer().as_raw().to_vec();
    // A signature we cannot check (an algorithm aws-lc does not offer for
    // verification) does not make a self-issued certificate CA-issued.
    let self_signed = subject_raw == issuer_raw
        && !matches!(
            cert.verify_signature(None),
            Err(X509Error::SignatureVerificationError)
        );
    let (key_type, weak_key) = key_type(&cert);
    Ok(CertFacts {
        sha1: hex_upper(&sha1::Sha1::digest(der)),
        sha256: hex_upper(&sha2::Sha256::digest(der)),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans: sans(&cert),
        not_before: from_unix(cert.validity().not_before.timestamp()),
        not_after: from_unix(cert.validity().not_after.timestamp()),
        key_type,
        self_signed,
        weak_key,
        spki: cert.public_key().raw.to_vec(),
        subject_raw,
        issuer_raw,
    })
}

/// Whether `child` carries a valid signature by `issuer`'s key.
pub(crate) fn is_signed_by(child: &[u8], issuer: &[u8]) -> bool {
    let (Ok((_, c)), Ok((_, i))) = (
        x509_parser::parse_x509_certificate(child),
        x509_parser::parse_x509_certificate(issuer),
    ) else {
        return false;
    };
    c.verify_signature(Some(i.public_key())).is_ok()
}

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn key_type(cert: &X509Certificate<'_>) -> (String, bool) {
    let spki = cert.public_key();
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => 0,
        };
        return (format!("RSA {bits}"), bits < 2048);
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => ("ECDSA P-256".into(), false),
            Some(c) if c == OID_NIST_EC_P384 => ("ECDSA P-384".into(), false),
            Some(c) if c == OID_NIST_EC_P521 => ("ECDSA P-521".into(), false),
            Some(c) => (format!("ECDSA curve {c}"), true),
            None => ("ECDSA (no curve)".into(), true),
        };
    }
    if *alg == OID_SIG_ED25519 {
        return ("Ed25519".into(), false);
    }
    (format!("unknown key algorithm {alg}"), true)
}

/// The SubjectPublicKeyInfo of a private key, or why the key is unusable.
pub(crate) fn key_spki(key: &PrivateKeyDer<'_>) -> Result<Vec<u8>, String> {
    let signer = any_supported_type(key).map_err(|e| e.to_string())?;
    signer
        .public_key()
        .map(|spki| spki.as_ref().to_vec())
        .ok_or_else(|| "rustls cannot derive its public key".to_string())
}

/// Re-encodes a PKCS#1 (RSA) or SEC1 (EC) key as PKCS#8, taking the
/// algorithm identifier from the matching certificate's SPKI. The store
/// keeps every key as PKCS#8 so export to PKCS#12 needs no conversion.
pub(crate) fn to_pkcs8(key: &PrivateKeyDer<'_>, cert_spki: &[u8]) -> Result<Vec<u8>, String> {
    let inner = match key {
        PrivateKeyDer::Pkcs8(k) => return Ok(k.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Pkcs1(k) => k.secret_pkcs1_der(),
        PrivateKeyDer::Sec1(k) => k.secret_sec1_der(),
        _ => return Err("unsupported private key encoding".into()),
    };
    // SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, ... }
    let (_, spki_body, _) = der_tlv(cert_spki).ok_or("malformed SubjectPublicKeyInfo")?;
    let (alg_id, _, _) = der_tlv(spki_body).ok_or("malformed AlgorithmIdentifier")?;
    // PrivateKeyInfo ::= SEQUENCE { version 0, algorithm, privateKey OCTET STRING }
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(alg_id);
    body.extend(der_wrap(0x04, inner));
    Ok(der_wrap(0x30, &body))
}

/// Splits the first DER TLV off `input`: (whole TLV, contents, rest).
fn der_tlv(input: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let first_len = *input.get(1)?;
    let (len, header) = if first_len < 0x80 {
        (first_len as usize, 2)
    } else {
        let n = (first_len & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        (
            bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize),
            2 + n,
        )
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((whole, &whole[header..], &input[end..]))
}

fn der_wrap(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// PEM text for one DER object (RFC 7468: base64, 64 columns).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | ((*b as u32) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The raw SHA-1 digest of a DER object (PKCS#12 localKeyId).
pub(crate) fn sha1_raw(der: &[u8]) -> Vec<u8> {
    sha1::Sha1::digest(der).to_vec()
}

/// Upper-case hex, as Windows shows thumbprints.
pub fn hex_upper(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02X}");
            s
        })
}

fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// `2026-01-01`, the form error messages use.
pub(crate) fn date(t: SystemTime) -> String {
    crate::timefmt::iso8601_millis(t)[..10].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn pem_round_trips_through_the_pki_types_parser() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 200] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let pem = pem_encode("CERTIFICATE", &der);
            let back = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), &der[..], "length {len}");
        }
    }

    #[test]
    fn der_length_forms() {
        let long = vec![7u8; 300];
        let w = der_wrap(0x04, &long);
        assert_eq!(&w[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (whole, body, rest) = der_tlv(&w).unwrap();
        assert_eq!((whole.len(), body.len(), rest.len()), (304, 300, 0));
    }
}
