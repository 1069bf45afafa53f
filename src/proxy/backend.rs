//! Backend connections and backend trust (seed 003).
//!
//! ```text
//! connect(server) --TCP (connect_timeout)--> [TLS: BackendVerifier] --> HTTP/1.1 handshake
//!                                                   |
//!       chain: store CA certificates + system roots + pool ca_file (webpki)
//!       name:  server tls_name (default: host of `address`)
//! ```
//!
//! Verification is on by default. `BackendVerifier` wraps rustls'
//! `WebPkiServerVerifier` only to attach the leaf's SHA-1 thumbprint to a
//! refusal, so the 502 page, the `X-Gatehouse-Error` header and the
//! `ProxyBackendTrustFailure` event (Exchange OWA 43) can name the exact
//! certificate. With `allow_internal_untrusted_certs` the chain and name
//! are not checked (the handshake signature still is), for that pool only.
//!
//! Every failure becomes a `BackendFailure` with one `FailureReason`:
//! `untrusted issuer`, `expired`, `name mismatch`, `refused`, `timeout`,
//! `protocol`.

use super::body::ProxyBody;
use crate::config::{BackendPoolConfig, BackendServerConfig};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Why a request could not be proxied to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    UntrustedIssuer,
    Expired,
    NameMismatch,
    Refused,
    Timeout,
    Protocol,
}

impl FailureReason {
    /// The words the error page and the event use.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::UntrustedIssuer => "untrusted issuer",
            FailureReason::Expired => "expired",
            FailureReason::NameMismatch => "name mismatch",
            FailureReason::Refused => "refused",
            FailureReason::Timeout => "timeout",
            FailureReason::Protocol => "protocol",
        }
    }

    /// The value of the `X-Gatehouse-Error` header and the log's ErrorCode.
    pub fn code(self) -> &'static str {
        match self {
            FailureReason::UntrustedIssuer => "BackendCertificateUntrusted",
            FailureReason::Expired => "BackendCertificateExpired",
            FailureReason::NameMismatch => "BackendCertificateNameMismatch",
            FailureReason::Refused => "BackendConnectionRefused",
            FailureReason::Timeout => "BackendTimeout",
            FailureReason::Protocol => "BackendProtocolError",
        }
    }

    pub fn is_trust(self) -> bool {
        matches!(
            self,
            FailureReason::UntrustedIssuer | FailureReason::Expired | FailureReason::NameMismatch
        )
    }
}

/// A failed backend attempt with its explanation.
#[derive(Clone, Debug)]
pub struct BackendFailure {
    pub reason: FailureReason,
    pub detail: String,
    /// SHA-1 of the backend's leaf certificate for trust failures.
    pub thumbprint: Option<String>,
    /// The request reached the backend (a timeout then is 504, not 502).
    pub after_sending: bool,
    /// The connection was closed or reset before any response byte: what
    /// a keep-alive connection the backend had just closed looks like.
    pub stale_close: bool,
}

impl BackendFailure {
    pub fn new(reason: FailureReason, detail: impl Into<String>) -> Self {
        BackendFailure {
            reason,
            detail: detail.into(),
            thumbprint: None,
            after_sending: false,
            stale_close: false,
        }
    }
}

/// Carried inside rustls' error to get the thumbprint out of the handshake.
#[derive(Debug, thiserror::Error)]
#[error("{cause:?} (certificate {thumbprint})")]
struct TrustRefusal {
    cause: CertificateError,
    thumbprint: String,
}

#[derive(Debug)]
struct BackendVerifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    signatures: crate::tls::SignatureCheck,
}

impl ServerCertVerifier for BackendVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else {
            // allow_internal_untrusted_certs: chain and name not checked.
            return Ok(ServerCertVerified::assertion());
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(cause)) => {
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(TrustRefusal {
                        cause,
                        thumbprint: crate::certs::sha1_thumbprint(end_entity),
                    })),
                )))
            }
            other => other,
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

/// Builds the rustls client config of one pool. `store_cas` are the CA
/// certificates found in the certificate store.
pub fn client_config(
    pool: &BackendPoolConfig,
    store_cas: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, String> {
    crate::tls::install_provider();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let inner = if pool.allow_internal_untrusted_certs {
        None
    } else {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(store_cas.iter().cloned());
        if pool.system_roots {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                // No readable OS store: the bundled Mozilla roots instead.
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
        if let Some(file) = &pool.ca_file {
            use rustls::pki_types::pem::PemObject;
            let iter = CertificateDer::pem_file_iter(file).map_err(|e| {
                format!(
                    "pool `{}`: cannot read ca_file {}: {e}",
                    pool.name.get_ref(),
                    file.display()
                )
            })?;
            let mut n = 0;
            for c in iter {
                let c = c.map_err(|e| {
                    format!(
                        "pool `{}`: bad PEM in ca_file {}: {e}",
                        pool.name.get_ref(),
                        file.display()
                    )
                })?;
                roots.add(c).map_err(|e| {
                    format!("pool `{}`: ca_file certificate: {e}", pool.name.get_ref())
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(format!(
                    "pool `{}`: ca_file {} holds no certificate",
                    pool.name.get_ref(),
                    file.display()
                ));
            }
        }
        let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| {
                format!(
                    "pool `{}`: no trust anchors ({e}); set ca_file or system_roots = true",
                    pool.name.get_ref()
                )
            })?;
        Some(v)
    };
    let verifier = Arc::new(BackendVerifier {
        inner,
        signatures: crate::tls::SignatureCheck(provider.clone()),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // Backends get HTTP/1.1: RPC over HTTP and NTLM need it, and it is
    // what Exchange's own front end speaks to the back end.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// How to reach one server.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls_name: String,
    /// `host:port` as configured, for logs and events.
    pub display: Arc<str>,
}

impl Endpoint {
    pub fn from_config(s: &BackendServerConfig) -> Option<Endpoint> {
        let (host, port) = s.host_port()?;
        Some(Endpoint {
            host,
            port,
            tls_name: s.tls_name(),
            display: s.address.get_ref().as_str().into(),
        })
    }
}

pub type Sender = http1::SendRequest<ProxyBody>;

type ConnFuture = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One HTTP/1.1 backend connection whose I/O is driven by the request
/// using it, not by a task of its own: the request's task polls the
/// connection while it waits for the response head (`send`) and while
/// the response body streams (`DrivenBody`). A proxied request then costs
/// no wake-ups between tasks (hyper's default spawns the connection and
/// hands every head and body chunk across a channel to another task,
/// often on the other worker thread). Idle connections in the pool are
/// not polled; `refresh` notices a close that arrived in the meantime.
/// Pinned connections and health probes `detach` into their own task.
pub struct BackendConn {
    pub sender: Sender,
    /// `None` once the connection has ended.
    conn: Option<ConnFuture>,
}

impl BackendConn {
    /// Polls the connection's I/O; false once it has ended.
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(c) = &mut self.conn
            && c.as_mut().poll(cx).is_ready()
        {
            self.conn = None;
        }
        self.conn.is_some()
    }

    /// Drives with a no-op waker: processes whatever already arrived (a
    /// close, the end of a response) without waiting.
    pub fn refresh(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.drive(&mut cx)
    }

    /// Alive and ready for a request now.
    pub fn is_ready(&mut self) -> bool {
        self.refresh() && self.sender.is_ready()
    }

    /// Sends a request; a request hyper could not start sending comes
    /// back in the error.
    pub async fn send(
        &mut self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ProxyBody>>> {
        let BackendConn { sender, conn } = self;
        let mut fut = std::pin::pin!(sender.try_send_request(req));
        std::future::poll_fn(|cx| {
            if let Some(c) = conn
                && c.as_mut().poll(cx).is_ready()
            {
                *conn = None;
            }
            fut.as_mut().poll(cx)
        })
        .await
    }

    /// Gives the connection its own task (pinned connections, probes).
    pub fn detach(mut self) -> Sender {
        if let Some(c) = self.conn.take() {
            tokio::spawn(async move {
                let _ = c.await;
            });
        }
        self.sender
    }
}

/// A backend response body that drives its connection while it is read
/// and, once it ended cleanly, returns the connection to its server's
/// idle list.
pub struct DrivenBody {
    body: Incoming,
    conn: Option<(BackendConn, Arc<super::pool::Server>)>,
    ended: bool,
}

impl DrivenBody {
    /// `conn`: the connection to drive and where it goes back to; `None`
    /// for a connection with a task of its own (pinned).
    pub fn new(body: Incoming, conn: Option<(BackendConn, Arc<super::pool::Server>)>) -> Self {
        let ended = hyper::body::Body::is_end_stream(&body);
        DrivenBody { body, conn, ended }
    }
}

impl hyper::body::Body for DrivenBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = &mut *self;
        // Twice: the first body poll may only tell the connection that
        // data is wanted; the second drive then reads and hands it over.
        for _ in 0..2 {
            if let Some((c, _)) = &mut this.conn {
                c.drive(cx);
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => continue,
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(r)) => {
                    if hyper::body::Body::is_end_stream(&this.body) {
                        this.ended = true;
                    }
                    return Poll::Ready(Some(r));
                }
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for DrivenBody {
    fn drop(&mut self) {
        let Some((mut c, server)) = self.conn.take() else {
            return;
        };
        if !self.ended {
            return; // a half-read response: the connection is unusable
        }
        // The connection turns idle once it has seen the end of the
        // response; that is normally already there to process.
        for _ in 0..3 {
            if !c.refresh() {
                return;
            }
            if c.sender.is_ready() {
                server.push_idle(c);
                return;
            }
        }
        server.give_back_later(c);
    }
}

/// Opens one HTTP/1.1 connection to `ep` (TLS when `tls` is set).
pub async fn connect(
    ep: &Endpoint,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<BackendConn, BackendFailure> {
    match tokio::time::timeout(timeout, connect_inner(ep, tls)).await {
        Ok(r) => r,
        Err(_) => Err(BackendFailure::new(
            FailureReason::Timeout,
            format!("no connection to {} within {timeout:?}", ep.display),
        )),
    }
}

async fn connect_inner(
    ep: &Endpoint,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<BackendConn, BackendFailure> {
    let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| {
            let reason = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => FailureReason::Refused,
                std::io::ErrorKind::TimedOut => FailureReason::Timeout,
                _ => FailureReason::Protocol,
            };
            BackendFailure::new(reason, format!("connecting to {}: {e}", ep.display))
        })?;
    let _ = tcp.set_nodelay(true);
    let mut builder = http1::Builder::new();
    // Head and body in one buffer: one TLS record, not one per slice.
    builder.writev(false);
    match tls {
        None => {
            let (sender, conn) = builder
                .handshake::<_, ProxyBody>(TokioIo::new(tcp))
                .await
                .map_err(|e| BackendFailure::new(FailureReason::Protocol, e.to_string()))?;
            Ok(BackendConn {
                sender,
                conn: Some(Box::pin(conn)),
            })
        }
        Some(cfg) => {
            let name = ServerName::try_from(ep.tls_name.clone()).map_err(|e| {
                BackendFailure::new(
                    FailureReason::NameMismatch,
                    format!("`{}` is not a valid TLS name: {e}", ep.tls_name),
                )
            })?;
            let stream = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| classify_tls(&e, ep))?;
            let (sender, conn) = builder
                .handshake::<_, ProxyBody>(TokioIo::new(stream))
                .await
                .map_err(|e| BackendFailure::new(FailureReason::Protocol, e.to_string()))?;
            Ok(BackendConn {
                sender,
                conn: Some(Box::pin(conn)),
            })
        }
    }
}

/// Maps a TLS handshake error to the reason the client and the event see.
fn classify_tls(e: &std::io::Error, ep: &Endpoint) -> BackendFailure {
    let rustls_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) = rustls_err
        && let Some(refusal) = other.0.downcast_ref::<TrustRefusal>()
    {
        let reason = match &refusal.cause {
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => FailureReason::Expired,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                FailureReason::NameMismatch
            }
            _ => FailureReason::UntrustedIssuer,
        };
        return BackendFailure {
            reason,
            detail: format!(
                "certificate of {} (expected name {}): {:?}",
                ep.display, ep.tls_name, refusal.cause
            ),
            thumbprint: Some(refusal.thumbprint.clone()),
            after_sending: false,
            stale_close: false,
        };
    }
    let reason = match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused => {
            FailureReason::Refused
        }
        std::io::ErrorKind::TimedOut => FailureReason::Timeout,
        _ => FailureReason::Protocol,
    };
    BackendFailure::new(reason, format!("TLS with {}: {e}", ep.display))
}
