//! The TLS doctor against real listeners on 127.0.0.1: our own STARTTLS
//! and implicit-TLS connectors, a plain connector without STARTTLS, a
//! hand-built TLS 1.0-only server, a silent server (timeouts), and the
//! Windows protocol bitmask codec.

mod common;
use common::*;
use gatehouse::certs::CertStore;
use gatehouse::tls::doctor::{self, Options, Report, Target, Verdict};
use gatehouse::tls::protocols::{self, PROTOCOLS, Side};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SMTPS: &str =
    "[[receive_connector]]\nname = \"Smtps\"\nrole = \"smtps\"\nlisten = [\"127.0.0.1:0\"]\n";

/// The store's default certificate: its chain.pem (to trust it with
/// --ca-file) and its thumbprint.
fn default_cert(t: &TestServer) -> (PathBuf, String) {
    let store = CertStore::open(&t.data_dir()).unwrap();
    let info = store
        .list()
        .unwrap()
        .into_iter()
        .find(|c| c.is_default)
        .expect("a default certificate");
    let pem = t
        .data_dir()
        .join("certs")
        .join(&info.sha1)
        .join("chain.pem");
    (pem, info.sha1)
}

fn opts(url: &str) -> Options {
    let mut o = Options::new(url.parse::<Target>().unwrap());
    o.timeout_secs = 5;
    o
}

fn verdict(r: &Report, name: &str) -> Verdict {
    r.check(name)
        .unwrap_or_else(|| panic!("no {name} check in\n{r}"))
        .verdict
}

fn detail<'a>(r: &'a Report, name: &str) -> &'a str {
    &r.check(name)
        .unwrap_or_else(|| panic!("no {name} check in\n{r}"))
        .detail
}

#[tokio::test(flavor = "multi_thread")]
async fn starttls_listener_offers_tls12_and_13_only_and_resumes() {
    let t = TestServer::start().await;
    let (pem, thumb) = default_cert(&t);
    let mut o = opts(&format!("smtp://{}", t.addr));
    o.expect_name = Some("mx.example.test".into());
    o.msstd = Some("msstd:mx.example.test".into());
    o.ca_file = Some(pem);
    let r = doctor::probe(&o).await.unwrap();
    for ok in [
        "starttls",
        "cipher",
        "tls1.3",
        "tls1.2",
        "tls1.1",
        "tls1.0",
        "ssl3",
        "trust",
        "expiry",
        "name",
        "msstd",
        "resume-tls1.3",
        "resume-tls1.2",
    ] {
        assert_eq!(verdict(&r, ok), Verdict::Ok, "{ok}:\n{r}");
    }
    assert!(detail(&r, "tls1.3").starts_with("offered (TLS13_"), "{r}");
    assert!(
        detail(&r, "tls1.2").starts_with("offered (TLS_ECDHE_"),
        "{r}"
    );
    for legacy in ["tls1.1", "tls1.0", "ssl3"] {
        assert!(
            detail(&r, legacy).starts_with("not offered (fatal alert"),
            "{r}"
        );
    }
    assert!(
        detail(&r, "resume-tls1.3").contains("session ticket"),
        "{r}"
    );
    assert!(detail(&r, "resume-tls1.2").contains("session id"), "{r}");
    assert_eq!(r.negotiated.as_ref().unwrap().version, "TLS 1.3");
    assert_eq!(r.chain.len(), 1);
    assert_eq!(
        r.chain[0].sha1, thumb,
        "Windows-style upper-case thumbprint"
    );
    assert_eq!(r.chain[0].sha256.len(), 64);
    assert!(r.chain[0].sans.contains(&"DNS:mx.example.test".to_string()));
    assert!(r.chain[0].days_left > 300, "{r}");
    assert_eq!(r.verdict, Verdict::Ok, "{r}");
    assert_eq!(r.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn smtps_listener_is_probed_with_implicit_tls() {
    let t = TestServer::start_with("", SMTPS).await;
    let (pem, _) = default_cert(&t);
    let mut o = opts(&format!("smtps://{}", t.server.addr("Smtps").unwrap()));
    o.expect_name = Some("mx.example.test".into());
    o.ca_file = Some(pem);
    let r = doctor::probe(&o).await.unwrap();
    assert!(r.check("starttls").is_none(), "no STARTTLS on smtps: {r}");
    for ok in [
        "tls1.3",
        "tls1.2",
        "tls1.1",
        "tls1.0",
        "trust",
        "name",
        "resume-tls1.3",
    ] {
        assert_eq!(verdict(&r, ok), Verdict::Ok, "{ok}:\n{r}");
    }
    assert_eq!(r.exit_code(), 0, "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn self_signed_and_mismatched_names_fail_precisely() {
    let t = TestServer::start().await;
    let mut o = opts(&format!("smtp://{}", t.addr));
    o.expect_name = Some("other.example.test".into());
    let r = doctor::probe(&o).await.unwrap();
    assert_eq!(verdict(&r, "trust"), Verdict::Fail);
    assert!(
        detail(&r, "trust").starts_with("self-signed certificate (CN="),
        "{r}"
    );
    assert_eq!(verdict(&r, "name"), Verdict::Fail);
    assert!(
        detail(&r, "name")
            .contains("not valid for other.example.test: it names CN=mx.example.test"),
        "{r}"
    );
    assert_eq!(r.verdict, Verdict::Fail);
    assert_eq!(r.exit_code(), 1);
    // An IP target without --expect-name: the name is not guessed.
    let r = doctor::probe(&opts(&format!("smtp://{}", t.addr)))
        .await
        .unwrap();
    assert_eq!(verdict(&r, "name"), Verdict::Warn, "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn msstd_matches_the_certificate_like_outlook() {
    let t = TestServer::start_with("", SMTPS).await;
    let url = format!("smtps://{}", t.server.addr("Smtps").unwrap());
    let mut o = opts(&url);
    o.expect_name = Some("mx.example.test".into());
    o.msstd = Some("msstd:MX.example.test".into());
    let r = doctor::probe(&o).await.unwrap();
    assert_eq!(verdict(&r, "msstd"), Verdict::Ok, "{r}");
    o.msstd = Some("msstd:mail.example.test".into());
    let r = doctor::probe(&o).await.unwrap();
    assert_eq!(verdict(&r, "msstd"), Verdict::Fail, "{r}");
    assert!(detail(&r, "msstd").contains("matches neither"), "{r}");
    assert_eq!(r.exit_code(), 1);
}

/// A leaf certificate summary for `names` (first name is the CN).
fn leaf(names: &[&str]) -> doctor::ChainCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let cert = p.self_signed(&key).unwrap();
    doctor::summarize(cert.der(), std::time::SystemTime::now()).unwrap()
}

#[test]
fn msstd_wildcard_certificates_need_the_literal_wildcard() {
    let wild = leaf(&["*.example.test"]);
    let c = doctor::msstd_check("msstd:mail.example.test", &wild);
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        c.detail.contains(
            "certificate name *.example.test doesn't validate against the mutual authentication string msstd:mail.example.test"
        ),
        "{c:?}"
    );
    assert!(
        c.detail.contains("-CertPrincipalName msstd:*.example.test"),
        "{c:?}"
    );
    assert_eq!(
        doctor::msstd_check("msstd:*.example.test", &wild).verdict,
        Verdict::Ok
    );
    // The seed blog's form without the dot.
    let c = doctor::msstd_check("msstd:*example.test", &wild);
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.detail.contains("no dot after the asterisk"), "{c:?}");
    // Vista and later accept any SAN; XP only the CN (said, not failed).
    let multi = leaf(&["mail.example.test", "autodiscover.example.test"]);
    let c = doctor::msstd_check("msstd:autodiscover.example.test", &multi);
    assert_eq!(c.verdict, Verdict::Ok);
    assert!(c.detail.contains("Windows XP"), "{c:?}");
    assert_eq!(
        doctor::msstd_check("mail.example.test", &multi).verdict,
        Verdict::Fail,
        "the msstd: prefix is required"
    );
    // The name check does expand wildcards (RFC 6125), one label only.
    assert_eq!(
        doctor::name_check(&wild, "mail.example.test").verdict,
        Verdict::Ok
    );
    assert_eq!(
        doctor::name_check(&wild, "a.b.example.test").verdict,
        Verdict::Fail
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connector_without_tls_fails_the_starttls_check() {
    let t = TestServer::start_with("tls = false", "").await;
    let r = doctor::probe(&opts(&format!("smtp://{}", t.addr)))
        .await
        .unwrap();
    assert_eq!(verdict(&r, "starttls"), Verdict::Fail, "{r}");
    assert!(
        detail(&r, "starttls").contains("does not advertise STARTTLS"),
        "{r}"
    );
    assert_eq!(r.exit_code(), 1);
}

/// A server that speaks only TLS 1.0, as far as the first flight goes:
/// it answers a TLS 1.0 ClientHello with a hand-built ServerHello
/// (RFC 2246 7.4.1.3) and anything else with a protocol_version alert.
/// With `cbc12`, it also answers every TLS 1.2 hello with a ServerHello
/// choosing ECDHE-RSA-AES128-SHA256 (CBC), which rustls does not offer.
async fn legacy_server(cbc12: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 5];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([head[3], head[4]])).min(16_384);
                let mut body = vec![0u8; len];
                if s.read_exact(&mut body).await.is_err() {
                    return;
                }
                // handshake type(1) length(3) client_version(2)
                let offered = body.get(4..6).map(|v| u16::from_be_bytes([v[0], v[1]]));
                let answer = if offered == Some(0x0301) || (cbc12 && offered == Some(0x0303)) {
                    let v = offered.unwrap_or_default().to_be_bytes();
                    let suite: [u8; 2] = if v[1] == 3 {
                        [0xc0, 0x27]
                    } else {
                        [0xc0, 0x14]
                    };
                    let mut sh = vec![v[0], v[1]];
                    sh.extend_from_slice(&[0x5a; 32]);
                    sh.push(0); // session id
                    sh.extend_from_slice(&suite);
                    sh.push(0); // null compression
                    let mut hs = vec![0x02, 0, 0, sh.len() as u8];
                    hs.extend_from_slice(&sh);
                    let mut rec = vec![0x16, 0x03, 0x01, 0, hs.len() as u8];
                    rec.extend_from_slice(&hs);
                    rec
                } else {
                    vec![0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 70]
                };
                let _ = s.write_all(&answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_tls10_server_is_detected_and_fails() {
    let addr = legacy_server(false).await;
    let r = doctor::probe(&opts(&format!("smtps://{addr}")))
        .await
        .unwrap();
    assert_eq!(verdict(&r, "tls1.0"), Verdict::Fail, "{r}");
    assert!(
        detail(&r, "tls1.0").starts_with(
            "OFFERED: the server accepted a TLS 1.0 hello (ServerHello TLS 1.0 with suite 0xC014)"
        ),
        "{r}"
    );
    assert_eq!(verdict(&r, "tls1.1"), Verdict::Ok, "{r}");
    assert!(detail(&r, "tls1.1").contains("protocol_version"), "{r}");
    assert_eq!(verdict(&r, "handshake"), Verdict::Fail, "{r}");
    assert_eq!(
        verdict(&r, "tls1.2"),
        Verdict::Fail,
        "no modern version at all: {r}"
    );
    assert!(r.chain.is_empty());
    assert_eq!(r.exit_code(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_server_times_out_with_the_step_named() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            conns.push(s); // accept, never speak
        }
    });
    let mut o = opts(&format!("smtp://{addr}"));
    o.timeout_secs = 1;
    let start = std::time::Instant::now();
    let r = doctor::probe(&o).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(verdict(&r, "connect"), Verdict::Fail, "{r}");
    assert_eq!(
        detail(&r, "connect"),
        "timed out after 1 s waiting for the SMTP greeting"
    );
    held.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_port_fails_the_connect_check() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let r = doctor::probe(&opts(&format!("https://{addr}")))
        .await
        .unwrap();
    assert_eq!(verdict(&r, "connect"), Verdict::Fail, "{r}");
    assert!(
        detail(&r, "connect").starts_with("cannot connect to 127.0.0.1:"),
        "{r}"
    );
}

fn gatehouse(args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.args(args);
    run_bounded(cmd, Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_probe_prints_json_and_exits_by_verdict() {
    let t = TestServer::start().await;
    let (pem, thumb) = default_cert(&t);
    let url = format!("smtp://{}", t.addr);
    let pem = pem.display().to_string();
    let (ok, fail) = tokio::task::spawn_blocking(move || {
        let ok = gatehouse(&[
            "tls",
            "probe",
            &url,
            "--expect-name",
            "mx.example.test",
            "--ca-file",
            &pem,
            "--json",
        ]);
        let fail = gatehouse(&["tls", "probe", &url, "--expect-name", "wrong.example.test"]);
        (ok, fail)
    })
    .await
    .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let json: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(json["verdict"], "OK");
    assert_eq!(json["chain"][0]["sha1"], thumb.as_str());
    assert!(
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "resume-tls1.3" && c["verdict"] == "OK")
    );
    assert_eq!(fail.status.code(), Some(1));
    let text = String::from_utf8_lossy(&fail.stdout);
    assert!(text.contains("FAIL  name"), "{text}");
    assert!(text.contains(&format!("SHA-1:      {thumb}")), "{text}");
    assert!(text.contains("verdict: FAIL"), "{text}");
}

#[test]
fn cli_rejects_bad_targets_and_values_with_exit_2() {
    let out = gatehouse(&["tls", "probe", "imap://mx.example.test"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a probe scheme"));
    let out = gatehouse(&["tls", "decode-protocols", "0xZZ"]);
    assert_eq!(out.status.code(), Some(2));
    let out = gatehouse(&["tls", "encode-protocols", "tls1.2,tls2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown protocol \"tls2\""));
}

#[test]
fn cli_decode_corrects_the_seed_values() {
    let out = gatehouse(&["tls", "decode-protocols", "0xA8"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("0xA8 (168) = SSL 2.0 | SSL 3.0 | TLS 1.0\n"),
        "{text}"
    );
    assert!(text.contains("not TLS 1.0-1.2"), "{text}");
    let out = gatehouse(&["tls", "decode-protocols", "0xA08"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("0xA08 (2568) = SSL 2.0 | TLS 1.1 | TLS 1.2\n"),
        "{text}"
    );
    assert!(text.contains("typo for 0xA80"), "{text}");
    let out = gatehouse(&["tls", "decode-protocols", "2688"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("0xA80 (2688) = TLS 1.0 | TLS 1.1 | TLS 1.2\n"),
        "{text}"
    );
    assert!(!text.contains("blog"), "{text}");
    let out = gatehouse(&["tls", "encode-protocols", "tls1.2,tls1.3"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("0x2800 (10240) = TLS 1.2 | TLS 1.3\n")
    );
}

#[test]
fn every_documented_bit_round_trips() {
    // Reference section 7: client bits.
    let documented = [
        ("ssl2", 0x8),
        ("ssl3", 0x20),
        ("tls1.0", 0x80),
        ("tls1.1", 0x200),
        ("tls1.2", 0x800),
        ("tls1.3", 0x2000),
    ];
    for (token, bit) in documented {
        assert_eq!(protocols::encode(token), Ok(bit), "{token}");
        let d = protocols::decode(bit);
        assert_eq!(d.protocols.len(), 1);
        assert_eq!(d.protocols[0].0.token, token);
        assert_eq!(d.protocols[0].1, Side::Client);
        assert_eq!(d.unknown, 0);
    }
    // Every subset of every protocol's client bit survives encode/decode.
    for mask in 0u32..(1 << PROTOCOLS.len()) {
        let chosen: Vec<_> = PROTOCOLS
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, p)| *p)
            .collect();
        if chosen.is_empty() {
            continue;
        }
        let list = chosen.iter().map(|p| p.token).collect::<Vec<_>>().join(",");
        let value = protocols::encode(&list).unwrap();
        let d = protocols::decode(value);
        let back: Vec<_> = d.protocols.iter().map(|(p, s)| (p.token, *s)).collect();
        let want: Vec<_> = chosen.iter().map(|p| (p.token, Side::Client)).collect();
        assert_eq!(back, want, "{list} -> 0x{value:X}");
        assert_eq!(protocols::parse_value(&format!("0x{value:X}")), Ok(value));
        assert_eq!(protocols::parse_value(&value.to_string()), Ok(value));
    }
    // Server bits decode as server bits, with the advice to use the client bit.
    for p in PROTOCOLS {
        let d = protocols::decode(p.server_bit);
        assert_eq!(d.protocols, vec![(p, Side::Server)]);
        assert!(d.warnings().iter().any(|w| w.contains("server bit")));
    }
    assert_eq!(protocols::decode(0x4000).unknown, 0x4000);
    // The seed's wrong values.
    assert_eq!(
        protocols::decode(0xA8).summary(),
        "SSL 2.0 | SSL 3.0 | TLS 1.0"
    );
    assert_eq!(
        protocols::decode(0xA08).summary(),
        "SSL 2.0 | TLS 1.1 | TLS 1.2"
    );
    assert!(protocols::seed_correction(0xA8).is_some());
    assert!(protocols::seed_correction(0xA08).is_some());
}

/// A TLS-only server (no application protocol) presenting `chain`.
async fn tls_server(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: &rcgen::KeyPair,
) -> SocketAddr {
    gatehouse::tls::install_provider();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let mut buf = [0u8; 512];
                    let _ = tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await;
                    let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

fn ca(name: &str) -> (rcgen::CertificateParams, rcgen::KeyPair, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = p.self_signed(&key).unwrap();
    (p, key, cert)
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_issuer_and_expired_chains_are_named() {
    let (ca_params, ca_key, ca_cert) = ca("Doctor Test CA");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["web.example.test".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let addr = tls_server(vec![leaf.der().clone()], &leaf_key).await;
    let mut o = opts(&format!("https://{addr}"));
    o.expect_name = Some("web.example.test".into());
    let r = doctor::probe(&o).await.unwrap();
    assert_eq!(verdict(&r, "trust"), Verdict::Fail, "{r}");
    assert!(
        detail(&r, "trust")
            .starts_with("untrusted issuer: \"CN=Doctor Test CA\" is not in webpki-roots"),
        "{r}"
    );
    assert_eq!(verdict(&r, "name"), Verdict::Ok, "{r}");
    assert_eq!(r.chain[0].issuer, "CN=Doctor Test CA");
    // The same chain with the CA trusted through --ca-file.
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    o.ca_file = Some(ca_pem);
    let r = doctor::probe(&o).await.unwrap();
    assert_eq!(verdict(&r, "trust"), Verdict::Ok, "{r}");
    assert_eq!(r.exit_code(), 0, "{r}");

    // An expired leaf from the trusted CA.
    let old_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["web.example.test".to_string()]).unwrap();
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let old = p.signed_by(&old_key, &issuer).unwrap();
    let addr = tls_server(vec![old.der().clone()], &old_key).await;
    o.target = format!("https://{addr}").parse().unwrap();
    let r = doctor::probe(&o).await.unwrap();
    assert_eq!(verdict(&r, "trust"), Verdict::Fail, "{r}");
    assert!(
        detail(&r, "trust").starts_with("expired certificate: CN=rcgen self signed cert"),
        "{r}"
    );
    assert_eq!(verdict(&r, "expiry"), Verdict::Fail, "{r}");
    assert!(
        detail(&r, "expiry").contains("day(s) ago (not after 2021-01-01T00:00:00.000Z)"),
        "{r}"
    );
    assert_eq!(r.exit_code(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_ca_file_is_a_precise_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("empty.pem");
    std::fs::write(&f, "not a certificate\n").unwrap();
    let mut o = opts("https://127.0.0.1:9");
    o.ca_file = Some(f);
    let e = doctor::probe(&o).await.unwrap_err().to_string();
    assert!(e.contains("no PEM CERTIFICATE block"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cbc_only_tls12_is_reported_as_weak_not_absent() {
    let addr = legacy_server(true).await;
    let r = doctor::probe(&opts(&format!("https://{addr}")))
        .await
        .unwrap();
    assert!(
        detail(&r, "tls1.2").starts_with("offered only with a weak suite (0xC027"),
        "{r}"
    );
    assert_eq!(verdict(&r, "tls1.0"), Verdict::Fail, "{r}");
    assert!(detail(&r, "tls1.3").starts_with("not offered"), "{r}");
    assert_eq!(r.exit_code(), 1);
}

/// An SMTP server that serves one STARTTLS dialog, then greets every later
/// connection with a 421 (as a per-client rate limit would).
async fn rate_limited_smtp_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut s, _)) = l.accept().await {
            n += 1;
            if n > 1 {
                let _ = s
                    .write_all(b"421 4.7.0 too many connections from you\r\n")
                    .await;
                continue;
            }
            let mut c = Client::over(s);
            c.send(b"220 limited.example.test ESMTP\r\n").await;
            let _ = c.reply().await; // EHLO, read as a "reply" line
            c.send(b"250-limited.example.test\r\n250 STARTTLS\r\n")
                .await;
            let _ = c.reply().await; // STARTTLS
            c.send(b"220 2.0.0 go ahead\r\n").await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_later_connections_are_not_mistaken_for_missing_versions() {
    let addr = rate_limited_smtp_server().await;
    let r = doctor::probe(&opts(&format!("smtp://{addr}")))
        .await
        .unwrap();
    assert_eq!(verdict(&r, "starttls"), Verdict::Ok, "{r}");
    assert_eq!(verdict(&r, "connect"), Verdict::Fail, "{r}");
    assert!(
        detail(&r, "connect").contains("421 4.7.0 too many connections"),
        "{r}"
    );
    for key in ["tls1.3", "tls1.2", "tls1.1", "tls1.0", "ssl3"] {
        assert_eq!(verdict(&r, key), Verdict::Warn, "{key}: {r}");
        assert!(
            detail(&r, key).starts_with("could not test: refused waiting for the SMTP greeting"),
            "{r}"
        );
    }
    assert!(r.check("handshake").is_none(), "{r}");
    assert_eq!(r.exit_code(), 1);
}
