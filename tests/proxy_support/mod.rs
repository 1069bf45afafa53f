//! Test peers for the proxy tests: a test PKI (CA, leaves: trusted,
//! expired, wrong name, self-signed), small hyper backends with their own
//! certificates that count connections and report what reached them, and
//! an HTTPS client for HTTP/1.1 or HTTP/2. All on 127.0.0.1.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn full(s: impl Into<Bytes>) -> TestBody {
    http_body_util::Full::new(s.into())
        .map_err(|n: Infallible| match n {})
        .boxed_unsync()
}

/// A body of `left` zero bytes in 64 KiB frames, produced on demand.
pub struct Zeros {
    pub left: u64,
    chunk: Bytes,
}

impl Zeros {
    pub fn new(n: u64) -> Zeros {
        Zeros {
            left: n,
            chunk: Bytes::from(vec![0u8; 64 * 1024]),
        }
    }
    pub fn boxed(n: u64) -> TestBody {
        Zeros::new(n)
            .map_err(|n: Infallible| match n {})
            .boxed_unsync()
    }
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

pub struct Pki {
    pub ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Certificates above `issuer` (the root, for an intermediate).
    above: Vec<CertificateDer<'static>>,
}

pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

impl Pki {
    pub fn new() -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "Gatehouse Test CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        Pki {
            ca_pem: issuer.pem(),
            issuer,
            above: Vec::new(),
        }
    }

    /// An intermediate CA under this one; its leaves' chains carry
    /// leaf, intermediate, root.
    pub fn intermediate(&self) -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "Gatehouse Test Intermediate");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer =
            CertifiedIssuer::signed_by(p, KeyPair::generate().unwrap(), &self.issuer).unwrap();
        let mut above = vec![self.issuer.der().clone()];
        above.extend(self.above.iter().cloned());
        Pki {
            ca_pem: issuer.pem(),
            issuer,
            above,
        }
    }

    /// A leaf for `names` signed by the CA; `expired` puts not_after in
    /// the past.
    pub fn leaf(&self, names: &[&str], expired: bool) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        let now = SystemTime::now();
        if expired {
            p.not_before = (now - Duration::from_secs(86_400 * 30)).into();
            p.not_after = (now - Duration::from_secs(86_400)).into();
        }
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let mut chain = vec![cert.der().clone(), self.issuer.der().clone()];
        chain.extend(self.above.iter().cloned());
        (
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

pub fn self_signed(names: &[&str]) -> Identity {
    let c =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    (
        vec![c.cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.signing_key.serialize_der())),
    )
}

pub fn thumbprint(der: &[u8]) -> String {
    use sha1::Digest;
    sha1::Sha1::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// What a backend saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: hyper::HeaderMap,
    pub conn: usize,
    pub body_bytes: u64,
}

/// A small HTTP/1.1 backend.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub healthy: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(name: &str, tls: Option<Identity>) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.map(|(certs, key)| {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let cfg = rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        });
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let healthy = Arc::new(AtomicBool::new(true));
        let (c, s, h, n) = (
            connections.clone(),
            seen.clone(),
            healthy.clone(),
            name.to_string(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let id = c.fetch_add(1, Ordering::SeqCst);
                let (s, h, n, acceptor) = (s.clone(), h.clone(), n.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let authed = Arc::new(AtomicBool::new(false));
                    let svc = hyper::service::service_fn(move |req| {
                        respond(req, n.clone(), id, s.clone(), h.clone(), authed.clone())
                    });
                    let b = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(a) => {
                            if let Ok(t) = a.accept(tcp).await {
                                let _ = b.serve_connection(TokioIo::new(t), svc).await;
                            }
                        }
                        None => {
                            let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            connections,
            seen,
            healthy,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn query_n(uri: &hyper::Uri) -> u64 {
    uri.query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("n=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn respond(
    req: Request<Incoming>,
    name: String,
    conn: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
    healthy: Arc<AtomicBool>,
    authed: Arc<AtomicBool>,
) -> Result<Response<TestBody>, Infallible> {
    let (parts, mut body) = req.into_parts();
    // Drain the request body frame by frame, counting (never buffering).
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        conn,
        body_bytes: n,
    });
    let path = parts.uri.path();
    if path.contains("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let mut resp = Response::new(full(format!(
        "backend={name} conn={conn} method={} uri={} bytes={n}\n",
        parts.method, parts.uri
    )));
    if path == "/health" {
        if !healthy.load(Ordering::SeqCst) {
            *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        }
    } else if parts.method.as_str() == "RPC_OUT_DATA" || path.contains("/big") {
        resp = Response::new(Zeros::boxed(query_n(&parts.uri)));
    } else if path.contains("ntlm") {
        // A connection-oriented handshake: type 1 -> 401 challenge,
        // type 3 -> authenticated; later requests on the same connection
        // need no header.
        let auth = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if auth == "NTLM TlRMTVNTUAABAAAA" {
            *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
            resp.headers_mut()
                .insert("www-authenticate", "NTLM TlRMTVNTUAACAAAA".parse().unwrap());
        } else if auth == "NTLM TlRMTVNTUAADAAAA" {
            authed.store(true, Ordering::SeqCst);
        } else if !authed.load(Ordering::SeqCst) {
            *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
            resp.headers_mut()
                .insert("www-authenticate", "NTLM".parse().unwrap());
        }
    }
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    resp.headers_mut().insert(
        "connection",
        "keep-alive, x-backend-secret".parse().unwrap(),
    );
    resp.headers_mut()
        .insert("x-backend-secret", "1".parse().unwrap());
    Ok(resp)
}

/// Accepts any server certificate: the tests check the proxy's backend
/// trust, not the client's trust in the proxy.
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS to the proxy with the given ALPN list; returns the stream and the
/// negotiated protocol.
pub async fn tls_connect(
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("mail.example.test".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<TestBody>),
    H2(hyper::client::conn::http2::SendRequest<TestBody>),
}

impl Client {
    pub async fn h1(addr: SocketAddr) -> Client {
        let tls = tls_connect(addr, &[b"http/1.1"]).await;
        let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(c);
        Client::H1(s)
    }

    pub async fn h2(addr: SocketAddr) -> Client {
        let tls = tls_connect(addr, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(c);
        Client::H2(s)
    }

    pub async fn send(&mut self, req: Request<TestBody>) -> Response<Incoming> {
        let fut = async {
            match self {
                Client::H1(s) => {
                    s.ready().await.unwrap();
                    s.send_request(req).await.unwrap()
                }
                Client::H2(s) => {
                    s.ready().await.unwrap();
                    s.send_request(req).await.unwrap()
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .expect("response within 30 s")
    }

    /// GET `path` with extra headers; returns status, headers and body text.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, hyper::HeaderMap, String) {
        let mut b = Request::get(path);
        if matches!(self, Client::H1(_)) {
            b = b.header("host", "mail.example.test");
        } else {
            b = b.uri(format!("https://mail.example.test{path}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self.send(b.body(full("")).unwrap()).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Counts the bytes of a response body without keeping them.
pub async fn drain(mut body: Incoming) -> u64 {
    let mut n = 0;
    while let Some(f) = body.frame().await {
        n += f.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    n
}

/// Resident set size of this process, from /proc.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
