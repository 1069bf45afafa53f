//! Peers for the outbound tests, all on 127.0.0.1: a small SMTP sink
//! (plain, STARTTLS with any certificate, failing STARTTLS, scripted
//! per-recipient replies) and an authoritative DNS responder (UDP and
//! TCP, hickory-proto messages) serving MX, A, AAAA, null MX and
//! NXDOMAIN. Certificates come from rcgen: self-signed ones and a test CA.
#![allow(dead_code)]

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};

// ---------------------------------------------------------------- certs

/// A certificate and its key, as rustls and PEM files want them.
pub struct TestCert {
    pub der: rustls::pki_types::CertificateDer<'static>,
    pub key_der: Vec<u8>,
    pub pem: String,
}

impl TestCert {
    /// SHA-256 of the DER, hex.
    pub fn sha256_hex(&self) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(self.der.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A server config that requires a client certificate (any; the
    /// sink records its thumbprint).
    pub fn server_config_requiring_client_cert(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(Arc::new(AnyClientCert(gatehouse::tls::SignatureCheck(
                provider,
            ))))
            .with_single_cert(
                vec![self.der.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )
            .unwrap();
        Arc::new(cfg)
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![self.der.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )
            .unwrap();
        Arc::new(cfg)
    }
}

#[derive(Debug)]
struct AnyClientCert(gatehouse::tls::SignatureCheck);

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.schemes()
    }
}

pub fn self_signed(name: &str) -> TestCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCert {
        der: cert.der().clone(),
        key_der: key.serialize_der(),
        pem: cert.pem(),
    }
}

/// A test CA that issues leaf certificates.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Gatehouse Test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    pub fn issue(&self, name: &str) -> TestCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        TestCert {
            der: cert.der().clone(),
            key_der: key.serialize_der(),
            pem: cert.pem(),
        }
    }

    /// An intermediate CA issued by this one.
    pub fn intermediate(&self, name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    pub fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join("test-ca.pem");
        std::fs::write(&p, &self.pem).unwrap();
        p
    }
}

// ---------------------------------------------------------------- SMTP sink

/// One message as the sink received it.
#[derive(Clone, Debug)]
pub struct Got {
    pub mail_line: String,
    pub rcpt_lines: Vec<String>,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
    /// MAIL arrived together with the following commands (PIPELINING).
    pub pipelined: bool,
    /// The message came with BDAT (CHUNKING) rather than DATA.
    pub bdat: bool,
    pub connection: usize,
}

/// How the sink behaves; switches can be flipped while it runs.
pub struct SinkOptions {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Advertise STARTTLS (when `tls` is set).
    pub offer_starttls: AtomicBool,
    /// Answer STARTTLS with 220, then close (a broken TLS peer).
    pub break_starttls: AtomicBool,
    pub pipelining: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    /// `(user, password)` required by AUTH PLAIN.
    pub auth: Option<(String, String)>,
    /// Close the connection silently after this many messages (0: never),
    /// as a peer with a short idle timeout does.
    pub drop_after: usize,
    /// Offer CHUNKING (RFC 3030) and accept BDAT.
    pub chunking: bool,
    /// Offer 8BITMIME.
    pub eightbit: bool,
    /// Answer every MAIL with 451 (a host with a full queue or greylisting).
    pub defer_mail: bool,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            tls: None,
            offer_starttls: AtomicBool::new(true),
            break_starttls: AtomicBool::new(false),
            pipelining: true,
            smtputf8: false,
            dsn: true,
            auth: None,
            drop_after: 0,
            defer_mail: false,
            chunking: false,
            eightbit: true,
        }
    }
}

pub struct Sink {
    pub addr: SocketAddr,
    pub opts: Arc<SinkOptions>,
    pub got: Arc<Mutex<Vec<Got>>>,
    pub connections: Arc<AtomicUsize>,
    /// Every RCPT line seen, accepted or not (retry tests count them).
    pub rcpt_attempts: Arc<Mutex<Vec<String>>>,
    pub auth_seen: Arc<Mutex<Vec<String>>>,
    /// SHA-1 thumbprints (upper-case hex) of client certificates presented.
    pub client_certs: Arc<Mutex<Vec<String>>>,
    /// The address each connection came from.
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Sink {
    pub async fn start(opts: SinkOptions) -> Sink {
        Self::start_on("127.0.0.1:0".parse().unwrap(), opts).await
    }

    pub async fn start_on(addr: SocketAddr, opts: SinkOptions) -> Sink {
        let listener = TcpListener::bind(addr).await.unwrap();
        let sink = Sink {
            addr: listener.local_addr().unwrap(),
            opts: Arc::new(opts),
            got: Arc::default(),
            connections: Arc::default(),
            rcpt_attempts: Arc::default(),
            auth_seen: Arc::default(),
            client_certs: Arc::default(),
            peers: Arc::default(),
        };
        let (opts, got, conns, attempts, auth, certs, peers) = (
            sink.opts.clone(),
            sink.got.clone(),
            sink.connections.clone(),
            sink.rcpt_attempts.clone(),
            sink.auth_seen.clone(),
            sink.client_certs.clone(),
            sink.peers.clone(),
        );
        tokio::spawn(async move {
            while let Ok((s, peer)) = listener.accept().await {
                let n = conns.fetch_add(1, Ordering::SeqCst) + 1;
                peers.lock().unwrap().push(peer);
                let (opts, got, attempts, auth, certs) = (
                    opts.clone(),
                    got.clone(),
                    attempts.clone(),
                    auth.clone(),
                    certs.clone(),
                );
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(60),
                        sink_session(Box::new(s), n, opts, got, attempts, auth, certs),
                    )
                    .await;
                });
            }
        });
        sink
    }

    pub fn messages(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Got> {
        let start = Instant::now();
        loop {
            let m = self.messages();
            if m.len() >= n || start.elapsed() > limit {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn sink_session(
    stream: Box<dyn Io>,
    conn: usize,
    opts: Arc<SinkOptions>,
    got: Arc<Mutex<Vec<Got>>>,
    attempts: Arc<Mutex<Vec<String>>>,
    auth_seen: Arc<Mutex<Vec<String>>>,
    client_certs: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(stream);
    let mut tls = false;
    r.get_mut()
        .write_all(b"220 sink.peer.test ESMTP test sink\r\n")
        .await?;
    let mut cur: Option<Got> = None;
    let mut done_here = 0;
    loop {
        if opts.drop_after > 0 && done_here >= opts.drop_after {
            return Ok(());
        }
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let mut caps = vec!["250-sink.peer.test".to_string()];
            if opts.pipelining {
                caps.push("250-PIPELINING".into());
            }
            caps.push("250-SIZE 10000000".into());
            if opts.eightbit {
                caps.push("250-8BITMIME".into());
            }
            if opts.smtputf8 {
                caps.push("250-SMTPUTF8".into());
            }
            if opts.dsn {
                caps.push("250-DSN".into());
            }
            if opts.chunking {
                caps.push("250-CHUNKING".into());
            }
            if opts.auth.is_some() && tls {
                caps.push("250-AUTH PLAIN".into());
            }
            if opts.tls.is_some() && !tls && opts.offer_starttls.load(Ordering::SeqCst) {
                caps.push("250-STARTTLS".into());
            }
            caps.push("250 ENHANCEDSTATUSCODES".into());
            caps.join("\r\n") + "\r\n"
        } else if upper == "STARTTLS" {
            let Some(cfg) = opts.tls.clone() else {
                r.get_mut().write_all(b"502 5.5.1 no TLS\r\n").await?;
                continue;
            };
            r.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
            if opts.break_starttls.load(Ordering::SeqCst) {
                // After the 220 (so it is not injection), the client's
                // ClientHello gets garbage back.
                r.get_mut().flush().await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
                r.get_mut().write_all(b"this is not TLS\r\n").await?;
                return Ok(());
            }
            let inner = r.into_inner();
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            let Ok(s) = acceptor.accept(inner).await else {
                return Ok(());
            };
            if let Some(c) = s.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                use sha1::Digest;
                client_certs.lock().unwrap().push(
                    sha1::Sha1::digest(c.as_ref())
                        .iter()
                        .map(|b| format!("{b:02X}"))
                        .collect(),
                );
            }
            r = BufReader::new(Box::new(s) as Box<dyn Io>);
            tls = true;
            continue;
        } else if upper.starts_with("AUTH PLAIN ") {
            auth_seen.lock().unwrap().push(line[11..].to_string());
            let want = opts.auth.clone().unwrap_or_default();
            let expect = gatehouse::smtp::outbound::client::base64_encode(
                format!("\0{}\0{}", want.0, want.1).as_bytes(),
            );
            if line[11..] == expect {
                "235 2.7.0 ok\r\n".into()
            } else {
                "535 5.7.8 bad credentials\r\n".into()
            }
        } else if upper.starts_with("MAIL FROM:") && opts.defer_mail {
            "451 4.3.2 system not accepting messages now\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            let pipelined = !r.buffer().is_empty();
            cur = Some(Got {
                mail_line: line.clone(),
                rcpt_lines: Vec::new(),
                rcpts: Vec::new(),
                data: Vec::new(),
                tls,
                pipelined,
                bdat: false,
                connection: conn,
            });
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            attempts.lock().unwrap().push(line.clone());
            let addr = line
                .split('<')
                .nth(1)
                .and_then(|s| s.split('>').next())
                .unwrap_or("")
                .to_string();
            if addr.starts_with("reject") {
                "550 5.1.1 no such user here\r\n".into()
            } else if addr.starts_with("later") {
                "451 4.2.0 mailbox busy, try later\r\n".into()
            } else {
                if let Some(c) = cur.as_mut() {
                    c.rcpt_lines.push(line.clone());
                    c.rcpts.push(addr);
                }
                "250 2.1.5 ok\r\n".into()
            }
        } else if upper == "DATA" {
            if cur.as_ref().is_none_or(|c| c.rcpts.is_empty()) {
                "554 5.5.1 no valid recipients\r\n".into()
            } else {
                r.get_mut().write_all(b"354 go ahead\r\n").await?;
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if r.read_until(b'\n', &mut l).await? == 0 {
                        return Ok(());
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    if l.starts_with(b"..") {
                        l.remove(0);
                    }
                    data.extend_from_slice(&l);
                }
                if let Some(mut c) = cur.take() {
                    c.data = data;
                    got.lock().unwrap().push(c);
                }
                done_here += 1;
                "250 2.0.0 queued at the sink\r\n".into()
            }
        } else if opts.chunking && upper.starts_with("BDAT ") {
            let mut words = upper.split_whitespace().skip(1);
            let n: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let last = words.next() == Some("LAST");
            let mut data = vec![0u8; n.min(50 << 20)];
            r.read_exact(&mut data).await?;
            match cur.as_mut() {
                Some(c) if !c.rcpts.is_empty() => {
                    c.data.extend_from_slice(&data);
                    c.bdat = true;
                    if last {
                        if let Some(c) = cur.take() {
                            got.lock().unwrap().push(c);
                        }
                        done_here += 1;
                        "250 2.0.0 queued at the sink (BDAT)\r\n".into()
                    } else {
                        format!("250 2.0.0 {n} octets\r\n")
                    }
                }
                _ => "554 5.5.1 no valid recipients\r\n".into(),
            }
        } else if upper == "RSET" {
            cur = None;
            "250 2.0.0 ok\r\n".into()
        } else if upper == "QUIT" {
            r.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "250 2.0.0 ok\r\n".into()
        };
        r.get_mut().write_all(reply.as_bytes()).await?;
        r.get_mut().flush().await?;
    }
}

// ---------------------------------------------------------------- DNS

/// An authoritative responder for everything under `.test`.
pub struct DnsServer {
    pub addr: SocketAddr,
}

#[derive(Default, Clone)]
pub struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_ascii_lowercase())
}

impl Zone {
    pub fn mx(mut self, domain: &str, pref: u16, host: &str) -> Zone {
        let exchange = if host == "." {
            Name::root()
        } else {
            Name::from_ascii(fqdn(host)).unwrap()
        };
        self.records
            .entry((fqdn(domain), RecordType::MX))
            .or_default()
            .push(RData::MX(MX::new(pref, exchange)));
        self
    }
    pub fn a(mut self, host: &str, ip: &str) -> Zone {
        let ip: IpAddr = ip.parse().unwrap();
        let (t, rd) = match ip {
            IpAddr::V4(v4) => (RecordType::A, RData::A(A(v4))),
            IpAddr::V6(v6) => (RecordType::AAAA, RData::AAAA(AAAA(v6))),
        };
        self.records.entry((fqdn(host), t)).or_default().push(rd);
        self
    }

    fn answer(&self, query: &Message) -> Message {
        let mut resp = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        resp.metadata.authoritative = true;
        resp.metadata.recursion_desired = query.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        let Some(q) = query.queries.first() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return resp;
        };
        resp.add_query(q.clone());
        let name = q.name().to_ascii().to_ascii_lowercase();
        let name = if name.ends_with('.') {
            name
        } else {
            format!("{name}.")
        };
        let known = self.records.keys().any(|(n, _)| *n == name);
        match self.records.get(&(name.clone(), q.query_type())) {
            Some(rds) => {
                for rd in rds {
                    resp.add_answer(Record::from_rdata(q.name().clone(), 60, rd.clone()));
                }
            }
            None => {
                if !known {
                    resp.metadata.response_code = ResponseCode::NXDomain;
                }
                let soa = SOA::new(
                    Name::from_ascii("ns.test.").unwrap(),
                    Name::from_ascii("hostmaster.test.").unwrap(),
                    1,
                    3600,
                    600,
                    86400,
                    60,
                );
                resp.add_authority(Record::from_rdata(
                    Name::from_ascii("test.").unwrap(),
                    60,
                    RData::SOA(soa),
                ));
            }
        }
        resp
    }
}

impl DnsServer {
    pub async fn start(zone: Zone) -> DnsServer {
        // UDP and TCP on the same port: retry while the TCP side is taken.
        let mut tries = 0;
        let (udp, tcp, addr) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            match TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, tcp, addr),
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                }
                Err(e) => panic!("no port free for UDP and TCP: {e}"),
            }
        };
        let zone = Arc::new(zone);
        let z = zone.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if let Ok(out) = z.answer(&q).to_vec() {
                    let _ = udp.send_to(&out, peer).await;
                }
            }
        });
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let zone = zone.clone();
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        if s.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                        if s.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        let Ok(q) = Message::from_vec(&buf) else {
                            return;
                        };
                        let Ok(out) = zone.answer(&q).to_vec() else {
                            return;
                        };
                        let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&out);
                        if s.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        DnsServer { addr }
    }
}

// ---------------------------------------------------------------- Gatehouse

/// A Gatehouse relay for tests: example.test is local (catch-all
/// mailbox), 127.0.0.1 may relay anywhere, `queue_extra` goes into
/// [queue], `extra` at the end (send connectors, [dns]).
pub fn relay_config(data_dir: &Path, queue_extra: &str, extra: &str) -> String {
    format!(
        r#"
[server]
hostname = "gw.example.test"
data_dir = "{}"
shutdown_grace = "2s"

[queue]
retry_after = "1s"
{queue_extra}

[[receive_connector]]
name = "Default"
role = "smtp"
listen = ["127.0.0.1:0"]
relay_networks = ["127.0.0.1/32"]
max_errors = 100

[[accepted_domain]]
domain = "example.test"
type = "authoritative"

[[mailbox]]
name = "catchall"
addresses = ["@example.test"]

{extra}
"#,
        data_dir.display()
    )
}

pub struct Relay {
    pub dir: tempfile::TempDir,
    pub server: gatehouse::server::RunningServer,
    pub addr: SocketAddr,
}

impl Relay {
    pub async fn start(queue_extra: &str, extra: &str) -> Relay {
        Self::start_in(tempfile::tempdir().unwrap(), queue_extra, extra).await
    }

    /// Starts in `dir` (data under `dir/var`, which may be prepared).
    pub async fn start_in(dir: tempfile::TempDir, queue_extra: &str, extra: &str) -> Relay {
        let text = relay_config(&dir.path().join("var"), queue_extra, extra);
        let cfg = gatehouse::config::Config::from_source(&gatehouse::config::ConfigSource {
            name: "test.toml".into(),
            text,
        })
        .expect("test config is valid");
        let server = gatehouse::server::start(cfg).await.expect("server starts");
        let addr = server.addr("Default").unwrap();
        Relay { dir, server, addr }
    }

    pub fn mailbox(&self) -> PathBuf {
        self.dir.path().join("var/mail/catchall/new")
    }

    pub fn pending(&self) -> u64 {
        self.server.queue.stats().pending.load(Ordering::SeqCst)
    }

    /// Sends one message; panics unless it is queued (250).
    pub async fn send(&self, from: &str, to: &[&str], body: &str) {
        self.send_with(&format!("MAIL FROM:<{from}>"), to, &[], body)
            .await;
    }

    /// Sends with a raw MAIL line and RCPT parameters.
    pub async fn send_with(&self, mail: &str, to: &[&str], rcpt_params: &[&str], body: &str) {
        let s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let mut r = BufReader::new(s);
        async fn reply(r: &mut BufReader<tokio::net::TcpStream>) -> String {
            let mut all = String::new();
            loop {
                let mut l = String::new();
                tokio::time::timeout(Duration::from_secs(20), r.read_line(&mut l))
                    .await
                    .expect("reply in time")
                    .unwrap();
                all.push_str(&l);
                if l.len() < 4 || l.as_bytes()[3] != b'-' {
                    return all;
                }
            }
        }
        async fn cmd(r: &mut BufReader<tokio::net::TcpStream>, line: &str) -> String {
            r.get_mut()
                .write_all(format!("{line}\r\n").as_bytes())
                .await
                .unwrap();
            reply(r).await
        }
        assert!(reply(&mut r).await.starts_with("220"));
        assert!(
            cmd(&mut r, "EHLO client.example.test")
                .await
                .starts_with("250")
        );
        let m = cmd(&mut r, mail).await;
        assert!(m.starts_with("250"), "{mail}: {m}");
        for (i, t) in to.iter().enumerate() {
            let p = rcpt_params.get(i).copied().unwrap_or("");
            let x = cmd(&mut r, &format!("RCPT TO:<{t}>{p}")).await;
            assert!(x.starts_with("250"), "{t}: {x}");
        }
        assert!(cmd(&mut r, "DATA").await.starts_with("354"));
        let msg = format!(
            "From: <sender@example.test>\r\nSubject: test\r\nMessage-ID: <{}@t.test>\r\n\r\n{body}\r\n",
            gatehouse::queue::message::QueueId::generate()
        );
        r.get_mut()
            .write_all(&gatehouse::smtp::inbound::data::dot_stuff(msg.as_bytes()))
            .await
            .unwrap();
        let fin = reply(&mut r).await;
        assert!(fin.starts_with("250"), "{fin}");
        let _ = cmd(&mut r, "QUIT").await;
    }
}

/// Events with `id` emitted since `since` whose message contains `needle`
/// (tests run in parallel in one process and share the event history, so
/// each test looks for something only it produces, e.g. its sink's port).
pub fn events_since(since: std::time::SystemTime, id: u32, needle: &str) -> Vec<String> {
    gatehouse::events::recent()
        .into_iter()
        .filter(|e| e.at >= since && e.id == id && e.message.contains(needle))
        .map(|e| e.message)
        .collect()
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Messages in the local catch-all Maildir.
pub fn maildir(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

pub async fn wait_maildir(dir: &Path, n: usize, limit: Duration) -> Vec<Vec<u8>> {
    let start = Instant::now();
    loop {
        let m = maildir(dir);
        if m.len() >= n || start.elapsed() > limit {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A send connector block.
pub fn connector(name: &str, spaces: &str, body: &str) -> String {
    format!("[[send_connector]]\nname = \"{name}\"\naddress_spaces = [{spaces}]\n{body}\n")
}
