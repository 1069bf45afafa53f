//! Helpers for the admin API tests: calls with and without the token, a
//! STARTTLS client that completes a handshake, and one that makes the
//! server's handshake fail. 127.0.0.1 only.
#![allow(dead_code)]

use crate::common::Client;
use gatehouse::admin::client::{Response, request};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// One admin API call (the CLI's client, on a blocking thread).
pub async fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Response {
    let (method, path, token) = (
        method.to_string(),
        path.to_string(),
        token.map(str::to_string),
    );
    tokio::task::spawn_blocking(move || request(addr, &method, &path, token.as_deref()))
        .await
        .expect("join")
        .expect("admin API answers")
}

/// The token the server created under `data_dir`.
pub fn token(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin.token"))
        .expect("token file")
        .trim()
        .to_string()
}

/// Accepts any certificate: these tests look at counters, not trust.
#[derive(Debug)]
struct AnyCert(gatehouse::tls::SignatureCheck);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// Greets, EHLO, STARTTLS; returns the plain stream ready for TLS.
async fn to_starttls(addr: SocketAddr) -> TcpStream {
    let mut c = Client::greeted(addr).await;
    let r = c.cmd("EHLO client.example.test").await;
    assert_eq!(r.code, 250, "{r:?}");
    let r = c.cmd("STARTTLS").await;
    assert_eq!(r.code, 220, "{r:?}");
    c.reader.into_inner()
}

/// A complete STARTTLS handshake, then QUIT.
pub async fn good_handshake(addr: SocketAddr) {
    gatehouse::tls::install_provider();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(gatehouse::tls::SignatureCheck(
            provider,
        ))))
        .with_no_client_auth();
    let tcp = to_starttls(addr).await;
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("mx.example.test").unwrap(), tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake succeeds");
    let mut c = Client::over(tls);
    let r = c.cmd("EHLO client.example.test").await;
    assert_eq!(r.code, 250);
    let _ = c.cmd("QUIT").await;
}

/// STARTTLS, then bytes that are not a TLS record: the server's handshake
/// fails.
pub async fn failed_handshake(addr: SocketAddr) {
    let mut tcp = to_starttls(addr).await;
    tcp.write_all(b"this is not a TLS ClientHello\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    // The server answers with an alert or closes; either way, bounded.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
    )
    .await;
}

/// `name{label,label}` for every sample in a Prometheus text exposition,
/// plus `name` for every family declared by `# TYPE`, sorted and unique.
pub fn names_and_label_sets(text: &str) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                out.insert(format!("# {name} {kind}"));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let mut keys = Vec::new();
        if line[name_end..].starts_with('{') {
            let close = line.rfind('}').expect("closing brace");
            let labels = &line[name_end + 1..close];
            for pair in split_labels(labels) {
                if let Some((k, _)) = pair.split_once('=') {
                    keys.push(k.to_string());
                }
            }
        }
        out.insert(format!("{name}{{{}}}", keys.join(",")));
    }
    out.into_iter().collect()
}

/// Splits `a="x",b="y,z"` at the commas outside quotes.
fn split_labels(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, ch) in s.char_indices() {
        match ch {
            '\\' if quoted => escaped = !escaped,
            '"' if !escaped => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => escaped = false,
        }
        if ch != '\\' {
            escaped = false;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// The value of the sample whose line starts with `prefix` (name and
/// labels as written), if any.
pub fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes /metrics until `ready` holds for the text (the server records
/// a failed handshake after the client may already have seen the alert),
/// at most 10 s; returns the last scrape.
pub async fn scrape_until(admin: SocketAddr, token: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(admin, "GET", "/metrics", Some(token)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if ready(&r.body) || std::time::Instant::now() > deadline {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
