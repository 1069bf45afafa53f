//! PKCS#12 (.pfx/.p12) in and out, the format Windows and Exchange
//! (`Export-ExchangeCertificate -BinaryEncoded`) exchange certificates in.
//!
//! Reading takes every key and certificate bag and leaves the pairing to
//! the store (a key belongs to the certificate whose public key it
//! derives), because real files disagree about localKeyId attributes.
//! Writing uses PBES2 with AES-256 and an HMAC-SHA-256 MAC, which OpenSSL 3
//! and Windows Server 2019 or later read; the leaf and key share a
//! localKeyId (the SHA-1 thumbprint) as Windows expects.

use super::CertError;
use p12_keystore::error::Error as P12Error;
use p12_keystore::{
    Certificate, KeyStore, KeyStoreEntry, Pkcs12Archive, PrivateKey, PrivateKeyChain,
};
use std::path::Path;

/// The bags of one PKCS#12 file.
pub(crate) struct Bundle {
    /// DER certificates, in file order.
    pub certs: Vec<Vec<u8>>,
    /// PKCS#8 DER private keys.
    pub keys: Vec<Vec<u8>>,
    /// The first friendly name found (Windows shows it as FriendlyName).
    pub friendly_name: Option<String>,
}

/// Decodes `data` with `password` (empty when none was given).
pub(crate) fn read(data: &[u8], password: &str, path: &Path) -> Result<Bundle, CertError> {
    let archive = Pkcs12Archive::from_pkcs12(data, password).map_err(|e| match e {
        P12Error::MacError(_) => CertError::WrongPassword {
            path: path.to_path_buf(),
        },
        P12Error::UnpadError => CertError::Pkcs12 {
            path: path.to_path_buf(),
            reason: "decryption failed (wrong password, or a damaged file)".into(),
        },
        P12Error::DerError(d) => CertError::UnknownFormat {
            path: path.to_path_buf(),
            reason: format!("DER decoding failed: {d}"),
        },
        other => CertError::Pkcs12 {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    let friendly_name = archive
        .keys
        .iter()
        .find_map(|k| k.friendly_name.clone())
        .or_else(|| archive.certs.iter().find_map(|c| c.friendly_name.clone()));
    Ok(Bundle {
        certs: archive
            .certs
            .into_iter()
            .map(|c| c.cert.as_der().to_vec())
            .collect(),
        keys: archive
            .keys
            .into_iter()
            .map(|k| k.key.as_der().to_vec())
            .collect(),
        friendly_name,
    })
}

/// Encodes one key with its chain (leaf first).
pub(crate) fn write(
    chain: &[Vec<u8>],
    key_pkcs8: &[u8],
    alias: &str,
    local_key_id: &[u8],
    password: &str,
) -> Result<Vec<u8>, CertError> {
    let err = |e: P12Error| CertError::Pkcs12Write {
        reason: e.to_string(),
    };
    let key = PrivateKey::from_der(key_pkcs8).map_err(err)?;
    let certs = chain
        .iter()
        .map(|der| Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let mut store = KeyStore::new();
    store.add_entry(
        alias,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id.to_vec(), key, certs)),
    );
    store.writer(password).write().map_err(err)
}
