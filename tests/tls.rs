//! TLS on the listeners: STARTTLS with the store's certificate, injection,
//! implicit TLS, submission AUTH, legacy TLS refused, fallback and hot
//! reload. Real sockets, a tokio-rustls client.

mod common;
use common::*;
use gatehouse::certs::{CertStore, KeyKind, Services};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Accepts only `pinned` (when set) and records what the server presented.
#[derive(Debug)]
struct Recorder {
    pinned: Option<Vec<u8>>,
    seen: Mutex<Option<Vec<u8>>>,
    signatures: gatehouse::tls::SignatureCheck,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        ee: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(ee.to_vec());
        match &self.pinned {
            Some(p) if p.as_slice() != ee.as_ref() => {
                Err(rustls::Error::General("not the store's certificate".into()))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

fn connector(pinned: Option<Vec<u8>>) -> (tokio_rustls::TlsConnector, Arc<Recorder>) {
    gatehouse::tls::install_provider();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let rec = Arc::new(Recorder {
        pinned,
        seen: Mutex::new(None),
        signatures: gatehouse::tls::SignatureCheck(provider.clone()),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(rec.clone())
        .with_no_client_auth();
    (tokio_rustls::TlsConnector::from(Arc::new(cfg)), rec)
}

/// The default certificate's DER and SHA-1 thumbprint.
fn default_cert(data: &std::path::Path) -> (Vec<u8>, String) {
    let store = CertStore::open(data).unwrap();
    let info = store
        .list()
        .unwrap()
        .into_iter()
        .find(|c| c.is_default)
        .expect("a default certificate");
    let pem = std::fs::read(data.join("certs").join(&info.sha1).join("chain.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    (der, info.sha1)
}

fn sha1(der: &[u8]) -> String {
    use sha1::Digest;
    sha1::Sha1::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// Plain connect, EHLO, STARTTLS, handshake. Returns the client and the
/// certificate the server presented.
async fn starttls(
    addr: SocketAddr,
    pinned: Option<Vec<u8>>,
    pipelined_after: &[u8],
) -> (Client<TlsStream<TcpStream>>, Vec<u8>, String) {
    let mut c = Client::greeted(addr).await;
    let mut w = b"STARTTLS\r\n".to_vec();
    w.extend_from_slice(pipelined_after);
    c.send(&w).await;
    let r = c.reply().await;
    assert!(r.starts("220 2.0.0"), "{r:?}");
    let tcp = c.reader.into_inner();
    let (conn, rec) = connector(pinned);
    let tls = conn
        .connect(ServerName::try_from("mx.example.test").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let version = format!("{:?}", tls.get_ref().1.protocol_version().unwrap());
    let seen = rec.seen.lock().unwrap().clone().unwrap();
    (Client::over(tls), seen, version)
}

#[tokio::test(flavor = "multi_thread")]
async fn starttls_end_to_end_with_the_store_certificate() {
    let t = TestServer::start().await;
    let (der, _) = default_cert(&t.data_dir());
    let mut c = Client::connect(t.addr).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.text.lines().any(|l| l.ends_with("STARTTLS")),
        "{ehlo:?}"
    );
    drop(c);
    let (mut s, seen, version) = starttls(t.addr, Some(der.clone()), b"").await;
    assert_eq!(
        seen, der,
        "the server presented the store's default certificate"
    );
    assert_eq!(version, "TLSv1_3");
    let ehlo = s.cmd("EHLO client.test").await;
    assert!(
        !ehlo.text.contains("STARTTLS"),
        "no STARTTLS after TLS: {ehlo:?}"
    );
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").await.code, 250);
    assert_eq!(s.cmd("RCPT TO:<bob@example.test>").await.code, 250);
    assert_eq!(s.cmd("DATA").await.code, 354);
    let r = s.cmd("Subject: tls\r\n\r\nover tls\r\n.").await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    let msgs = wait_for_messages(&t.mailbox("catchall"), 1, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&msgs[0]);
    assert!(
        text.contains("with ESMTPS (TLSv1_3 cipher=TLS13_"),
        "{text}"
    );
    let counted: u64 = gatehouse::tls::counters()
        .successes()
        .iter()
        .filter(|((v, _), _)| v == "TLSv1_3")
        .map(|(_, n)| n)
        .sum();
    assert!(counted >= 1, "TLS 1.3 handshakes are counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let t = TestServer::start().await;
    let (mut s, _, _) = starttls(
        t.addr,
        None,
        b"MAIL FROM:<injected@evil.test>\r\nRCPT TO:<bob@example.test>\r\n",
    )
    .await;
    // The first reply inside TLS must answer our NOOP, not the injection.
    assert!(s.cmd("NOOP").await.starts("250 2.0.0"));
    // And the session state was reset: MAIL needs a new EHLO.
    assert!(s.cmd("MAIL FROM:<a@sender.test>").await.starts("503 5.5.1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn require_tls_refuses_mail_before_starttls() {
    let t = TestServer::start_with("require_tls = true", "").await;
    let mut c = Client::greeted(t.addr).await;
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts("530 5.7.0"));
    drop(c);
    let (mut s, _, _) = starttls(t.addr, None, b"").await;
    s.cmd("EHLO client.test").await;
    assert_eq!(s.cmd("MAIL FROM:<a@sender.test>").await.code, 250);
}

const SUBMISSION: &str = r#"
[auth]
failure_delay = "50ms"

[[receive_connector]]
name = "Submission"
role = "submission"
listen = ["127.0.0.1:0"]
"#;

async fn submission_server() -> (TestServer, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let mut db = gatehouse::auth::UserDb::load(&data.join("users")).unwrap();
    db.set_password("alice@example.test", "correct horse")
        .unwrap();
    let t = TestServer::start_in(dir, &data, "", SUBMISSION).await;
    let addr = t.server.addr("Submission").unwrap();
    (t, addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn submission_refuses_auth_before_tls_and_mail_before_auth() {
    let (_t, addr) = submission_server().await;
    let mut c = Client::connect(addr).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        !ehlo.text.contains("AUTH"),
        "AUTH must not be offered before TLS: {ehlo:?}"
    );
    let plain = gatehouse::auth::base64_encode(b"\0alice@example.test\0correct horse");
    assert!(
        c.cmd(&format!("AUTH PLAIN {plain}"))
            .await
            .starts("538 5.7.11")
    );
    assert!(
        c.cmd("MAIL FROM:<alice@example.test>")
            .await
            .starts("530 5.7.0")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn submission_auth_plain_and_login_then_relay() {
    let (t, addr) = submission_server().await;
    let (mut s, _, _) = starttls(addr, None, b"").await;
    let ehlo = s.cmd("EHLO client.test").await;
    assert!(
        ehlo.text.lines().any(|l| l.ends_with("AUTH PLAIN LOGIN")),
        "{ehlo:?}"
    );
    assert!(
        s.cmd("MAIL FROM:<alice@example.test>")
            .await
            .starts("530 5.7.0")
    );
    let bad = gatehouse::auth::base64_encode(b"\0alice@example.test\0wrong");
    assert!(
        s.cmd(&format!("AUTH PLAIN {bad}"))
            .await
            .starts("535 5.7.8")
    );
    // LOGIN with challenges.
    assert_eq!(s.cmd("AUTH LOGIN").await.text, "334 VXNlcm5hbWU6");
    assert_eq!(
        s.cmd(&gatehouse::auth::base64_encode(b"alice@example.test"))
            .await
            .text,
        "334 UGFzc3dvcmQ6"
    );
    assert!(
        s.cmd(&gatehouse::auth::base64_encode(b"correct horse"))
            .await
            .starts("235 2.7.0")
    );
    assert!(
        s.cmd("AUTH PLAIN x").await.starts("503 5.5.1"),
        "second AUTH"
    );
    // Authenticated: may relay to any domain.
    assert_eq!(s.cmd("MAIL FROM:<alice@example.test>").await.code, 250);
    assert_eq!(s.cmd("RCPT TO:<friend@elsewhere.test>").await.code, 250);
    assert_eq!(s.cmd("DATA").await.code, 354);
    assert!(
        s.cmd("Subject: out\r\n\r\nbody\r\n.")
            .await
            .starts("250 2.6.0")
    );
    assert!(
        wait_until(Duration::from_secs(5), || t
            .server
            .queue
            .stats()
            .held
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
        .await
    );
    // Credentials never reach the protocol log.
    drop(s);
    let TestServer { server, dir, .. } = t;
    server.shutdown().await;
    let logdir = dir.path().join("var/log/protocol/SmtpReceive");
    let mut all = String::new();
    for e in std::fs::read_dir(logdir).unwrap() {
        all.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    assert!(all.contains("AUTH PLAIN ****"), "AUTH logged redacted");
    assert!(
        !all.contains(&bad) && !all.contains(&gatehouse::auth::base64_encode(b"correct horse")),
        "credentials leaked into the protocol log"
    );
    assert!(all.contains("Inbound AUTH PLAIN failed because of LogonDenied"));
}

#[tokio::test(flavor = "multi_thread")]
async fn smtps_is_tls_from_the_first_byte() {
    let extra =
        "[[receive_connector]]\nname = \"Smtps\"\nrole = \"smtps\"\nlisten = [\"127.0.0.1:0\"]\n";
    let t = TestServer::start_with("", extra).await;
    let tcp = TcpStream::connect(t.server.addr("Smtps").unwrap())
        .await
        .unwrap();
    let (conn, _) = connector(None);
    let tls = conn
        .connect(ServerName::try_from("mx.example.test").unwrap(), tcp)
        .await
        .expect("implicit TLS");
    let mut c = Client::over(tls);
    assert_eq!(c.reply().await.code, 220);
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.text.contains("STARTTLS"));
    assert!(
        ehlo.text.contains("AUTH PLAIN LOGIN"),
        "smtps offers AUTH by default: {ehlo:?}"
    );
}

/// A minimal TLS ClientHello offering only `version` (0x0301 = TLS 1.0,
/// 0x0302 = TLS 1.1) and no extensions.
fn legacy_client_hello(version: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    // Old RSA/CBC suites plus ECDHE-ECDSA-AES128-GCM, which the server
    // would accept in TLS 1.2: only the version can make it refuse.
    body.extend_from_slice(&[0x00, 0x06, 0xc0, 0x2b, 0x00, 0x2f, 0x00, 0x35]);
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_0_and_1_1_client_hellos_are_refused() {
    let extra =
        "[[receive_connector]]\nname = \"Smtps\"\nrole = \"smtps\"\nlisten = [\"127.0.0.1:0\"]\n";
    let t = TestServer::start_with("", extra).await;
    for version in [0x0301u16, 0x0302] {
        let mut s = TcpStream::connect(t.server.addr("Smtps").unwrap())
            .await
            .unwrap();
        s.write_all(&legacy_client_hello(version)).await.unwrap();
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        // Either a fatal alert or the connection closed: never a
        // ServerHello. rustls answers a pre-1.2 hello with a fatal
        // handshake_failure (40); protocol_version (70) is also a refusal.
        if n > 0 {
            assert_eq!(
                buf[0],
                0x15,
                "expected an alert record, got {:02x?}",
                &buf[..n]
            );
            assert_eq!(buf[5], 2, "alert level fatal: {:02x?}", &buf[..n]);
            assert!(
                matches!(buf[6], 40 | 70),
                "handshake_failure or protocol_version: {:02x?}",
                &buf[..n]
            );
        }
    }
    assert!(
        wait_until(Duration::from_secs(5), || gatehouse::tls::counters()
            .failures()
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>()
            >= 2)
        .await,
        "refused handshakes are counted: {:?}",
        gatehouse::tls::counters().failures()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_key_file_falls_back_loudly_and_tls_still_works() {
    let t = TestServer::start().await;
    let (der, thumb) = default_cert(&t.data_dir());
    std::fs::remove_file(t.data_dir().join("certs").join(&thumb).join("key.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let hit = gatehouse::events::recent()
            .iter()
            .any(|e| e.name == "CertificateFallback" && e.message.contains(&thumb));
        if hit {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no CertificateFallback event naming {thumb}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut s, seen, _) = starttls(t.addr, None, b"").await;
    assert_ne!(seen, der, "the certificate without its key is not served");
    assert_eq!(s.cmd("EHLO client.test").await.code, 250);
}

#[tokio::test(flavor = "multi_thread")]
async fn new_certificate_takes_effect_without_restart_and_old_sessions_continue() {
    let t = TestServer::start().await;
    let (der, _) = default_cert(&t.data_dir());
    let (mut old, seen, _) = starttls(t.addr, None, b"").await;
    assert_eq!(seen, der);
    // A CA-issued certificate for the FQDN beats the self-signed default.
    let store = CertStore::open(&t.data_dir()).unwrap();
    let ca = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test CA");
    let ca_cert = ca_params.self_signed(&ca).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca);
    let leaf = rcgen::CertificateParams::new(vec!["mx.example.test".into()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let pem = format!(
        "{}{}{}",
        leaf.pem(),
        ca_cert.pem(),
        leaf_key.serialize_pem()
    );
    let file = t.dir.path().join("new.pem");
    std::fs::write(&file, pem).unwrap();
    let info = store.import(&file, None).unwrap();
    store
        .enable(
            &info.sha1,
            Services {
                smtp: true,
                https: false,
            },
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, seen, _) = starttls(t.addr, None, b"").await;
        if sha1(&seen) == info.sha1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new certificate not used by new handshakes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The session opened before the change still works.
    assert_eq!(old.cmd("EHLO client.test").await.code, 250);
    assert!(old.cmd("NOOP").await.starts("250 2.0.0"));
    let _ = KeyKind::EcdsaP256;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_tls_listener_means_no_certificate_work_at_start() {
    let t = TestServer::start_with("tls = false", "").await;
    assert!(t.server.certificates.is_none());
    assert!(
        !t.data_dir().join("certs").exists(),
        "no default certificate is created without a TLS listener"
    );
    let mut c = Client::connect(t.addr).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.text.contains("STARTTLS"), "{ehlo:?}");
}

/// AUTH brute force: after `lockout_threshold` failures from one address,
/// across sessions, AUTH gets 454 4.7.0 without a password check, even
/// with the right password; other commands still work.
#[tokio::test(flavor = "multi_thread")]
async fn repeated_auth_failures_lock_the_address_out_across_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let mut db = gatehouse::auth::UserDb::load(&data.join("users")).unwrap();
    db.set_password("alice@example.test", "correct horse")
        .unwrap();
    let config = SUBMISSION.replace(
        "failure_delay = \"50ms\"",
        "failure_delay = \"10ms\"\nlockout_threshold = 3\nlockout_window = \"10m\"\nlockout_duration = \"15m\"",
    );
    let t = TestServer::start_in(dir, &data, "", &config).await;
    let addr = t.server.addr("Submission").unwrap();
    let bad = gatehouse::auth::base64_encode(b"\0alice@example.test\0guess");
    let good = gatehouse::auth::base64_encode(b"\0alice@example.test\0correct horse");
    // Two failures in one session, the third in another.
    let (mut s, _, _) = starttls(addr, None, b"").await;
    s.cmd("EHLO client.test").await;
    for _ in 0..2 {
        assert!(
            s.cmd(&format!("AUTH PLAIN {bad}"))
                .await
                .starts("535 5.7.8")
        );
    }
    drop(s);
    let (mut s, _, _) = starttls(addr, None, b"").await;
    s.cmd("EHLO client.test").await;
    assert!(
        s.cmd(&format!("AUTH PLAIN {bad}"))
            .await
            .starts("535 5.7.8")
    );
    let locked = s.cmd(&format!("AUTH PLAIN {good}")).await;
    assert!(locked.starts("454 4.7.0"), "{locked:?}");
    assert!(locked.text.contains("15 minute"), "{locked:?}");
    // LOGIN is refused before any challenge.
    assert!(s.cmd("AUTH LOGIN").await.starts("454 4.7.0"));
    assert_eq!(s.cmd("NOOP").await.code, 250);
    assert!(
        s.cmd("MAIL FROM:<alice@example.test>")
            .await
            .starts("530 5.7.0")
    );
    assert!(
        gatehouse::events::recent()
            .iter()
            .any(|e| e.id == 1202 && e.message.contains("3 failed AUTH attempts from 127.0.0.1")),
        "AuthLockedOut event"
    );
}

/// A correct password before the threshold clears the count.
#[tokio::test(flavor = "multi_thread")]
async fn successful_auth_resets_the_failure_count() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let mut db = gatehouse::auth::UserDb::load(&data.join("users")).unwrap();
    db.set_password("alice@example.test", "correct horse")
        .unwrap();
    let config = SUBMISSION.replace(
        "failure_delay = \"50ms\"",
        "failure_delay = \"10ms\"\nlockout_threshold = 2",
    );
    let t = TestServer::start_in(dir, &data, "", &config).await;
    let addr = t.server.addr("Submission").unwrap();
    let bad = gatehouse::auth::base64_encode(b"\0alice@example.test\0guess");
    let good = gatehouse::auth::base64_encode(b"\0alice@example.test\0correct horse");
    for _ in 0..3 {
        let (mut s, _, _) = starttls(addr, None, b"").await;
        s.cmd("EHLO client.test").await;
        assert!(
            s.cmd(&format!("AUTH PLAIN {bad}"))
                .await
                .starts("535 5.7.8")
        );
        drop(s);
        let (mut s, _, _) = starttls(addr, None, b"").await;
        s.cmd("EHLO client.test").await;
        assert!(
            s.cmd(&format!("AUTH PLAIN {good}"))
                .await
                .starts("235 2.7.0")
        );
    }
}
