//! TLS policy: rustls server configurations for every listener.
//!
//! One policy for all listeners (SPEC 2.6): TLS 1.2 and 1.3 only (rustls
//! cannot speak anything older), the aws-lc-rs provider's AEAD suites
//! (Mozilla "intermediate" without DHE), the server's cipher order
//! (`ignore_client_order`, which testssl.sh checks), stateless session
//! tickets plus a session cache so STARTTLS clients can resume.
//! Certificates come from a `ResolvesServerCert` (the certificate store's
//! resolver), so a swapped certificate applies to the next handshake
//! without rebuilding the config.

pub mod doctor;
pub mod protocols;
pub mod resolver;

use rustls::ServerConfig;
use rustls::server::{ResolvesServerCert, ServerSessionMemoryCache};
use std::sync::Arc;

/// Installs aws-lc-rs as the process-wide rustls provider (idempotent).
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Builds the server config every TLS listener shares.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    install_provider();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.ignore_client_order = true;
    cfg.session_storage = ServerSessionMemoryCache::new(16_384);
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    cfg.send_tls13_tickets = 2;
    Ok(Arc::new(cfg))
}

/// What a handshake negotiated, for logs, headers and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: String,
    /// IANA suite name, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    pub sni: Option<String>,
    pub resumed: bool,
}

impl Negotiated {
    pub fn from_connection(conn: &rustls::ServerConnection) -> Negotiated {
        Negotiated {
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_else(|| "unknown".into()),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_else(|| "unknown".into()),
            sni: conn.server_name().map(str::to_string),
            resumed: matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
        }
    }

    /// Exchange's protocol-log spelling (`SP_PROT_TLS1_2_SERVER`), so the
    /// log lines match what Exchange parsers look for.
    pub fn exchange_protocol(&self) -> &'static str {
        match self.version.as_str() {
            "TLSv1_3" => "SP_PROT_TLS1_3_SERVER",
            "TLSv1_2" => "SP_PROT_TLS1_2_SERVER",
            _ => "SP_PROT_UNKNOWN_SERVER",
        }
    }
}

/// Handshake counters: successes by (version, cipher), resumptions, and
/// failures by reason. Process-wide; the admin API's `/metrics` (issue 6)
/// exposes them.
#[derive(Debug, Default)]
pub struct TlsCounters {
    by_suite: std::sync::Mutex<std::collections::BTreeMap<(String, String), u64>>,
    failures: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    resumed: std::sync::atomic::AtomicU64,
}

static COUNTERS: std::sync::OnceLock<TlsCounters> = std::sync::OnceLock::new();

/// The process-wide handshake counters.
pub fn counters() -> &'static TlsCounters {
    COUNTERS.get_or_init(TlsCounters::default)
}

impl TlsCounters {
    pub fn record_success(&self, n: &Negotiated) {
        *self
            .by_suite
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((n.version.clone(), n.cipher.clone()))
            .or_default() += 1;
        if n.resumed {
            self.resumed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// `reason` is a short class such as `timeout`, `protocol version`,
    /// `no shared cipher`, `peer closed`.
    pub fn record_failure(&self, reason: &str) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason.to_string())
            .or_default() += 1;
    }

    /// ((version, cipher), count) pairs.
    pub fn successes(&self) -> Vec<((String, String), u64)> {
        self.by_suite
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn failures(&self) -> Vec<(String, u64)> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn resumed(&self) -> u64 {
        self.resumed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Classifies a handshake error for the failure counter.
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    let text = e.to_string();
    if text.contains("PeerIncompatible")
        || text.contains("ProtocolVersion")
        || text.contains("Tls12NotOffered")
    {
        "protocol version"
    } else if text.contains("NoCipherSuitesInCommon") || text.contains("HandshakeFailure") {
        "no shared parameters"
    } else if text.contains("AlertReceived") {
        "alert from peer"
    } else if e.kind() == std::io::ErrorKind::UnexpectedEof
        || e.kind() == std::io::ErrorKind::ConnectionReset
    {
        "peer closed"
    } else {
        "other"
    }
}

/// The handshake-signature half of a rustls `ServerCertVerifier`, for the
/// verifiers that make their own decision about the certificate (outbound
/// peers by TLS level, proxy backends with the opt-out): the signature
/// is always checked, with the provider's algorithms.
#[derive(Debug)]
pub struct SignatureCheck(pub std::sync::Arc<rustls::crypto::CryptoProvider>);

impl SignatureCheck {
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub fn tls13(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub fn schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
