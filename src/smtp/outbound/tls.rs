//! Client TLS for send connectors: one rustls `ClientConfig` per TLS level
//! (SPEC 2.4, Postfix's smtp_tls_security_level names).
//!
//! | level         | STARTTLS missing      | chain | name checked against          |
//! |---------------|-----------------------|-------|-------------------------------|
//! | `none`        | -                     | -     | -                             |
//! | `may`         | plaintext (recorded)  | no    | -                             |
//! | `encrypt`     | defer 4.7.4           | no    | -                             |
//! | `verify`      | defer 4.7.4           | yes   | MX host / smart host name     |
//! | `secure`      | defer 4.7.4           | yes   | next-hop domain or tls_names  |
//! | `fingerprint` | defer 4.7.4           | no    | SHA-256 of the leaf is pinned |
//!
//! Trust anchors are webpki-roots, the certificate store's CA certificates
//! and the connector's `ca_file`. Every
//! handshake, whatever the level, is also assessed with the full webpki
//! check against the host name, so the per-domain memory (`memory.rs`)
//! learns whether a peer *could* be verified even under `may`.

use crate::config::TlsLevel;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest;
use std::sync::Arc;

/// How a session ended up protected: ordered, so "best seen" is a max.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protection {
    Plaintext,
    /// TLS, certificate not (or not successfully) verified.
    Encrypted,
    /// TLS with a chain and name that webpki accepts for the host.
    Verified,
}

impl Protection {
    pub fn as_str(self) -> &'static str {
        match self {
            Protection::Plaintext => "plaintext",
            Protection::Encrypted => "encrypted",
            Protection::Verified => "verified",
        }
    }
    pub fn parse(s: &str) -> Option<Protection> {
        match s {
            "plaintext" => Some(Protection::Plaintext),
            "encrypted" => Some(Protection::Encrypted),
            "verified" => Some(Protection::Verified),
            _ => None,
        }
    }
}

/// The effective TLS policy for one destination.
#[derive(Clone, Debug)]
pub struct TlsPolicy {
    pub level: TlsLevel,
    /// `secure`: accepted names (default: the next-hop domain).
    pub names: Vec<String>,
    /// `fingerprint`: accepted SHA-256 digests of the leaf.
    pub pins: Vec<[u8; 32]>,
}

/// Shared TLS material of one send connector.
#[derive(Clone)]
pub struct TlsContext {
    pub roots: Arc<RootCertStore>,
    pub provider: Arc<CryptoProvider>,
    pub client_cert: Option<Arc<rustls::sign::CertifiedKey>>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("roots", &self.roots.len())
            .field("client_cert", &self.client_cert.is_some())
            .finish()
    }
}

impl TlsContext {
    /// webpki-roots, the certificate store's CA certificates
    /// (`store_cas`) and the PEM certificates in `ca_file`.
    pub fn new(
        ca_file: Option<&std::path::Path>,
        store_cas: &[CertificateDer<'static>],
        client_cert: Option<Arc<rustls::sign::CertifiedKey>>,
    ) -> Result<TlsContext, String> {
        crate::tls::install_provider();
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // A store certificate webpki cannot use as an anchor is skipped:
        // it is still usable as what it is (part of a served chain).
        let _ = roots.add_parsable_certificates(store_cas.iter().cloned());
        if let Some(path) = ca_file {
            use rustls::pki_types::pem::PemObject;
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            let mut n = 0;
            for c in certs {
                let c = c.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                n += 1;
            }
            if n == 0 {
                return Err(format!(
                    "ca_file {} holds no PEM certificate",
                    path.display()
                ));
            }
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(TlsContext {
            roots,
            provider,
            client_cert,
            webpki,
        })
    }

    /// The client config for `policy` towards `host` (MX or smart host),
    /// for mail to `domain`.
    pub fn client_config(&self, policy: &TlsPolicy, host: &str, domain: &str) -> Arc<ClientConfig> {
        let check = match policy.level {
            TlsLevel::Verify => PeerCheck::Names(vec![host.to_string()]),
            TlsLevel::Secure => PeerCheck::Names(if policy.names.is_empty() {
                secure_names(host, domain)
            } else {
                policy.names.clone()
            }),
            TlsLevel::Fingerprint => PeerCheck::Pins(policy.pins.clone()),
            TlsLevel::None | TlsLevel::May | TlsLevel::Encrypt => PeerCheck::Any,
        };
        let verifier = Arc::new(PeerVerifier {
            check,
            webpki: self.webpki.clone(),
            signatures: crate::tls::SignatureCheck(self.provider.clone()),
        });
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("aws-lc-rs supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut cfg = match &self.client_cert {
            Some(key) => builder.with_client_cert_resolver(Arc::new(FixedClientCert(key.clone()))),
            None => builder.with_no_client_auth(),
        };
        cfg.enable_sni = true;
        Arc::new(cfg)
    }

    /// Whether the peer's chain and name pass webpki for `host`, whatever
    /// the level asked for.
    pub fn assess(&self, certs: &[CertificateDer<'_>], host: &str) -> Protection {
        let Some((leaf, rest)) = certs.split_first() else {
            return Protection::Encrypted;
        };
        let Ok(name) = ServerName::try_from(host.to_string()) else {
            return Protection::Encrypted;
        };
        match self
            .webpki
            .verify_server_cert(leaf, rest, &name, &[], UnixTime::now())
        {
            Ok(_) => Protection::Verified,
            Err(_) => Protection::Encrypted,
        }
    }
}

/// Default names for `secure` (Postfix's `nexthop, dot-nexthop`): the
/// next-hop domain itself, or a host inside it. The MX host name comes
/// from DNS and is not trusted by itself, so a host outside the domain
/// never counts.
fn secure_names(host: &str, domain: &str) -> Vec<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut names = vec![domain.clone()];
    if host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")) {
        names.push(host);
    }
    names
}

/// SHA-256 digest of a certificate (what `fingerprint` pins).
pub fn sha256(cert: &CertificateDer<'_>) -> [u8; 32] {
    sha2::Sha256::digest(cert.as_ref()).into()
}

#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// What a peer's certificate must pass, per TLS level. The handshake
/// signatures are checked in every case, so the key is really held.
#[derive(Debug)]
enum PeerCheck {
    /// `none`/`may`/`encrypt`: any certificate (RFC 7435 opportunistic
    /// security).
    Any,
    /// `verify`/`secure`: webpki chain validation, passing when the leaf
    /// is valid for any one of the names (the SNI name is not what is
    /// checked).
    Names(Vec<String>),
    /// `fingerprint`: the leaf's SHA-256 must be one of the pins; no chain
    /// or name check (the pin is the trust decision, as in Postfix).
    Pins(Vec<[u8; 32]>),
}

#[derive(Debug)]
struct PeerVerifier {
    check: PeerCheck,
    webpki: Arc<WebPkiServerVerifier>,
    signatures: crate::tls::SignatureCheck,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.check {
            PeerCheck::Any => Ok(ServerCertVerified::assertion()),
            PeerCheck::Names(names) => {
                let mut last = rustls::Error::General("no name to verify against".into());
                for n in names {
                    let Ok(name) = ServerName::try_from(n.clone()) else {
                        continue;
                    };
                    match self.webpki.verify_server_cert(
                        end_entity,
                        intermediates,
                        &name,
                        ocsp_response,
                        now,
                    ) {
                        Ok(v) => return Ok(v),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            PeerCheck::Pins(pins) => {
                let digest = sha256(end_entity);
                if pins.contains(&digest) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "certificate fingerprint {} is not pinned",
                        crate::certs::hex_upper(&digest)
                    )))
                }
            }
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_accepts_hosts_inside_the_next_hop_domain_only() {
        assert_eq!(
            secure_names("MX1.Example.test.", "example.test"),
            vec!["example.test".to_string(), "mx1.example.test".to_string()]
        );
        assert_eq!(
            secure_names("mx.other.test", "example.test"),
            vec!["example.test".to_string()]
        );
        assert_eq!(
            secure_names("badexample.test", "example.test"),
            vec!["example.test".to_string()]
        );
    }
}
