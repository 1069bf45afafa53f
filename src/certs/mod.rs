//! The certificate store: every TLS certificate Gatehouse can present,
//! keyed by thumbprint, with the services it is enabled for (SPEC 2.5).
//!
//! Design:
//!
//! * **On disk, one directory per certificate** under `<data_dir>/certs/`,
//!   named by the SHA-1 thumbprint in upper-case hex (as Windows and
//!   `Get-ExchangeCertificate` show it): `chain.pem` (leaf first, then
//!   intermediates), `key.pem` (PKCS#8, mode 0600) and `meta.json`
//!   (services, default flag, friendly name, import time). Pending
//!   certificate requests live in `certs/pending/<name>/` (CSR + key, 0600).
//!   The files are the truth: there is no index to fall out of step, and an
//!   operator can read them with `openssl`.
//! * **Crash safety.** A new certificate is assembled in a hidden temporary
//!   directory (each file fsynced), which is then renamed into place and the
//!   parent fsynced, so a crash leaves either the whole certificate or
//!   nothing. `meta.json` is replaced by write-tmp / fsync / rename / fsync.
//!   Removal renames the directory away first. Mutations hold an exclusive
//!   lock on `certs/.lock` so two `gatehouse cert` commands cannot interleave.
//! * **Reading never panics.** `CertStore::load` reads everything fresh and
//!   returns the usable certificates (with their rustls signing key) and a
//!   list of problems (missing file, unreadable or mismatched key, expired)
//!   for the TLS layer to turn into loud events. `CertStore::generation`
//!   fingerprints the files so a poller notices replaced files cheaply:
//!   that is how hot reload works without inotify.
//! * **Selection** (`select`) is a pure function over `CertInfo`s, so the
//!   TLS layer, `gatehouse cert which` and the tests run the same rule, and
//!   the answer explains itself line by line. `choose` gives the same
//!   answer without the explanation, allocation-free, for the handshake
//!   path. The rule is documented in `docs/certificates.md`.
//! * **Guards** follow Remove-ExchangeCertificate: the default certificate
//!   cannot be removed, nor the only certificate enabled for SMTP, and every
//!   refusal says what to do instead.
//!
//! Module map: `inspect` reads X.509 facts and matches keys, `generate`
//! makes keys, self-signed certificates and CSRs, `pkcs12` reads and writes
//! PFX files, `fsio` does the atomic file work, `store` is the store,
//! `select` the selection rule, `cli` the `gatehouse cert` commands.

pub mod cli;
mod error;
mod fsio;
mod generate;
mod inspect;
mod pkcs12;
mod select;
mod store;

pub use error::CertError;
pub use inspect::hex_upper;

/// The SHA-1 thumbprint of a DER certificate, upper-case hex as Windows
/// shows it: the one way certificates are named everywhere (store, events,
/// logs, the doctor, the proxy's error pages).
pub fn sha1_thumbprint(der: &[u8]) -> String {
    hex_upper(&inspect::sha1_raw(der))
}
pub use select::{MatchedBy, Selection, choose, name_matches, select};
pub use store::{
    CertDetails, CertStore, LoadProblem, LoadReport, LoadedCert, PendingRequest, parse_import_file,
};

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

/// A certificate's SHA-1 thumbprint: 40 upper-case hex digits, the name
/// Windows, Exchange and the store's directories use.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Thumbprint(String);

impl Thumbprint {
    /// Wraps a thumbprint computed by this module (always valid hex).
    pub(crate) fn new(sha1_hex: String) -> Thumbprint {
        Thumbprint(sha1_hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Thumbprint {
    fn eq(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

impl PartialEq<&str> for Thumbprint {
    fn eq(&self, other: &&str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

/// Everything the store knows about one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// SHA-1 of the DER leaf, upper-case hex (the thumbprint).
    pub sha1: String,
    /// SHA-256 of the DER leaf, upper-case hex.
    pub sha256: String,
    /// RFC 4514 style, e.g. `CN=mx.example.test, O=Example`.
    pub subject: String,
    /// DNS names and IP addresses from the subjectAltName extension.
    pub sans: Vec<String>,
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// `ECDSA P-256`, `ECDSA P-384`, `RSA 2048`, ...
    pub key_type: String,
    /// Issuer equals subject and the signature verifies with its own key.
    pub self_signed: bool,
    pub services: Services,
    pub is_default: bool,
    pub friendly_name: Option<String>,
}

impl CertInfo {
    /// Thumbprint as the typed value.
    pub fn thumbprint(&self) -> Thumbprint {
        Thumbprint::new(self.sha1.clone())
    }

    /// `not_before <= now < not_after`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// Time left until `not_after`; `None` once expired. The TLS layer
    /// uses it for the 30/14/7/1-day expiry warnings.
    pub fn remaining(&self, now: SystemTime) -> Option<std::time::Duration> {
        self.not_after.duration_since(now).ok()
    }
}

/// The services a certificate can be enabled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// STARTTLS and implicit TLS on receive connectors, TLS on send connectors.
    Smtp,
    /// The client-access HTTPS proxy.
    Https,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Smtp => "smtp",
            Service::Https => "https",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Service {
    type Err = CertError;
    fn from_str(s: &str) -> Result<Service, CertError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "smtp" => Ok(Service::Smtp),
            "https" => Ok(Service::Https),
            _ => Err(CertError::BadServices { given: s.into() }),
        }
    }
}

/// The set of services a certificate is enabled for. Parses and prints as
/// `smtp,https`, `smtp`, `https` or `none`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Services {
    pub smtp: bool,
    pub https: bool,
}

impl Services {
    pub const NONE: Services = Services {
        smtp: false,
        https: false,
    };
    pub const SMTP: Services = Services {
        smtp: true,
        https: false,
    };
    pub const HTTPS: Services = Services {
        smtp: false,
        https: true,
    };

    pub fn contains(self, service: Service) -> bool {
        match service {
            Service::Smtp => self.smtp,
            Service::Https => self.https,
        }
    }

    pub fn is_none(self) -> bool {
        !self.smtp && !self.https
    }
}

impl fmt::Display for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.smtp, self.https) {
            (true, true) => "smtp,https",
            (true, false) => "smtp",
            (false, true) => "https",
            (false, false) => "none",
        })
    }
}

impl FromStr for Services {
    type Err = CertError;
    fn from_str(s: &str) -> Result<Services, CertError> {
        let mut out = Services::NONE;
        let mut saw_none = false;
        let mut count = 0;
        for part in s.split(',').map(str::trim) {
            count += 1;
            if part.eq_ignore_ascii_case("none") {
                saw_none = true;
                continue;
            }
            match part.parse::<Service>() {
                Ok(Service::Smtp) => out.smtp = true,
                Ok(Service::Https) => out.https = true,
                Err(_) => return Err(CertError::BadServices { given: s.into() }),
            }
        }
        if saw_none && count > 1 {
            return Err(CertError::BadServices { given: s.into() });
        }
        Ok(out)
    }
}

/// Key algorithms the store generates. ECDSA P-256 is the default: the
/// cheapest handshake (SPEC seed 000); RSA is there for old peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyKind {
    #[default]
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    #[value(name = "ecdsa-p384")]
    EcdsaP384,
    #[value(name = "rsa2048")]
    Rsa2048,
    #[value(name = "rsa3072")]
    Rsa3072,
}

impl KeyKind {
    /// The name `CertInfo::key_type` shows for keys of this kind.
    pub fn label(self) -> &'static str {
        match self {
            KeyKind::EcdsaP256 => "ECDSA P-256",
            KeyKind::EcdsaP384 => "ECDSA P-384",
            KeyKind::Rsa2048 => "RSA 2048",
            KeyKind::Rsa3072 => "RSA 3072",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_parse_and_print() {
        assert_eq!(
            "smtp,https".parse::<Services>().unwrap().to_string(),
            "smtp,https"
        );
        assert_eq!(" HTTPS ".parse::<Services>().unwrap(), Services::HTTPS);
        assert_eq!("none".parse::<Services>().unwrap(), Services::NONE);
        assert!("smtp,none".parse::<Services>().is_err());
        assert!("imap".parse::<Services>().is_err());
    }
}
