//! Modern handshakes with rustls: a client whose certificate verifier
//! *records* the chain and the verification result instead of aborting, so
//! the doctor can show an untrusted, expired or mismatched chain and say
//! exactly what is wrong with it.
//!
//! The verifier wraps rustls' own `WebPkiServerVerifier` (webpki-roots
//! plus `--ca-file`), so "trusted" means what it means for every rustls
//! client. Handshake signatures are still verified for real: only the
//! chain verdict is deferred.

use super::{Options, ProbeError, Step, Target, smtp};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, Tls12Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion,
};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The chain a server presented and what webpki thought of it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// DER certificates, leaf first, as sent.
    pub chain: Vec<Vec<u8>>,
    /// `Ok` or the verification error (`UnknownIssuer`, `Expired`, ...).
    pub verdict: Result<(), rustls::Error>,
}

#[derive(Debug)]
pub struct Recorder {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<Recorded>>,
}

impl Recorder {
    pub fn take(&self) -> Option<Recorded> {
        self.seen.lock().ok().and_then(|mut s| s.take())
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map(|_| ());
        let mut chain = vec![end_entity.to_vec()];
        chain.extend(intermediates.iter().map(|c| c.to_vec()));
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(Recorded { chain, verdict });
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// webpki-roots plus the PEM certificates of `--ca-file`.
pub fn roots(ca_file: Option<&std::path::Path>) -> Result<Arc<RootCertStore>, ProbeError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        use rustls::pki_types::pem::PemObject;
        let bad = |why: String| ProbeError::CaFile {
            path: path.display().to_string(),
            why,
        };
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("no PEM CERTIFICATE block in the file".into()));
        }
    }
    Ok(Arc::new(roots))
}

/// A client config offering `versions`, recording the chain. `resume`
/// turns on a session store (TLS 1.3 tickets, TLS 1.2 session ids only,
/// so a server that only has tickets for 1.2 shows as not resuming by id).
pub fn client_config(
    versions: &[&'static SupportedProtocolVersion],
    roots: Arc<RootCertStore>,
    resume: bool,
) -> Result<(Arc<ClientConfig>, Arc<Recorder>), ProbeError> {
    crate::tls::install_provider();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| ProbeError::Setup(e.to_string()))?;
    let recorder = Arc::new(Recorder {
        inner,
        seen: Mutex::new(None),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| ProbeError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    cfg.resumption = if resume {
        Resumption::in_memory_sessions(8).tls12_resumption(Tls12Resumption::SessionIdOnly)
    } else {
        Resumption::disabled()
    };
    Ok((Arc::new(cfg), recorder))
}

/// What one handshake negotiated.
#[derive(Clone, Debug)]
pub struct Session {
    /// `TLS 1.3`.
    pub version: String,
    /// IANA name, `TLS13_AES_256_GCM_SHA384`.
    pub suite: String,
    pub resumed: bool,
}

fn version_label(v: Option<rustls::ProtocolVersion>) -> String {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".into(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".into(),
        Some(other) => format!("{other:?}"),
        None => "unknown".into(),
    }
}

/// Opens a connection, runs the handshake and, when `exchange` is set,
/// talks a little inside TLS (so TLS 1.3 tickets arrive) before closing.
pub async fn session(
    target: &Target,
    opts: &Options,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    exchange: bool,
) -> Result<Session, ProbeError> {
    let (tcp, _) = super::open(target, opts).await?;
    let secs = opts.timeout_secs;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = super::within(Step::Handshake, secs, async {
        connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| ProbeError::Handshake(e.to_string()))
    })
    .await?;
    let (_, conn) = tls.get_ref();
    let s = Session {
        version: version_label(conn.protocol_version()),
        suite: conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_else(|| "unknown".into()),
        resumed: matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
    };
    if exchange {
        let host = opts.server_name().unwrap_or_else(|| target.host.clone());
        super::within(Step::Exchange, secs, talk(target, &host, &mut tls)).await?;
    }
    Ok(s)
}

/// A polite exchange inside TLS: SMTP EHLO + QUIT, or an HTTP HEAD.
async fn talk(
    target: &Target,
    host: &str,
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Result<(), ProbeError> {
    let step = Step::Exchange;
    match target.scheme {
        super::Scheme::Smtp | super::Scheme::Smtps => {
            let name = smtp::ehlo_name(
                tls.get_ref()
                    .0
                    .local_addr()
                    .map_err(|source| ProbeError::Io { step, source })?,
            );
            let mut s = tokio::io::BufReader::new(&mut *tls);
            if target.scheme == super::Scheme::Smtps {
                smtp::read_reply(&mut s, step).await?;
            }
            smtp::send(&mut s, &format!("EHLO {name}"), step).await?;
            smtp::read_reply(&mut s, step).await?;
            smtp::send(&mut s, "QUIT", step).await?;
            let _ = smtp::read_reply(&mut s, step).await;
        }
        super::Scheme::Https => {
            let req = format!(
                "HEAD / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gatehouse-tls-doctor\r\nConnection: close\r\n\r\n"
            );
            tls.write_all(req.as_bytes())
                .await
                .map_err(|source| ProbeError::Io { step, source })?;
            tls.flush()
                .await
                .map_err(|source| ProbeError::Io { step, source })?;
            // Read the response head (bounded) so tickets sent before it
            // are processed; the body, if any, is not needed.
            let mut buf = vec![0u8; 4096];
            let mut total = 0usize;
            while total < 16_384 {
                match tls.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        total += n;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }
    let _ = tls.shutdown().await;
    Ok(())
}
