//! The certificate store through its library API, on real files in a
//! temporary directory. Test CAs, intermediates and leaves are made with
//! rcgen here, the way a real CA would issue them.

use gatehouse::certs::{CertError, CertStore, KeyKind, Services};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::SignatureScheme;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use x509_parser::extensions::ParsedExtension;

const DAY: Duration = Duration::from_secs(86_400);

fn store() -> (tempfile::TempDir, CertStore) {
    let tmp = tempfile::tempdir().unwrap();
    let store = CertStore::open(tmp.path()).unwrap();
    (tmp, store)
}

/// A CA (root or intermediate) that can sign leaves and other CAs.
struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl TestCa {
    fn root(cn: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(cn);
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { params, key, pem }
    }

    fn intermediate(&self, cn: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(cn);
        let pem = params.signed_by(&key, &self.issuer()).unwrap().pem();
        TestCa { params, key, pem }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// A server leaf for `names` valid from `from` to `until` (relative to
    /// now), and its key as PEM.
    fn leaf(&self, names: &[&str], from: i64, until: i64) -> (String, String) {
        self.leaf_with(KeyPair::generate().unwrap(), names, from, until)
    }

    fn leaf_with(&self, key: KeyPair, names: &[&str], from: i64, until: i64) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = days_from_now(from).into();
        params.not_after = days_from_now(until).into();
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = days_from_now(-10).into();
    params.not_after = days_from_now(3650).into();
    params
}

fn days_from_now(days: i64) -> SystemTime {
    if days >= 0 {
        SystemTime::now() + DAY * days as u32
    } else {
        SystemTime::now() - DAY * (-days) as u32
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Signs a handshake-sized message with the loaded key, the way rustls
/// would during a TLS 1.3 handshake.
fn signs(store: &CertStore, sha1: &str) -> bool {
    let report = store.load();
    let Some(loaded) = report.usable.iter().find(|l| l.info.sha1 == sha1) else {
        return false;
    };
    let schemes = [
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::RSA_PSS_SHA256,
    ];
    loaded.certified_key.keys_match().is_ok()
        && loaded
            .certified_key
            .key
            .choose_scheme(&schemes)
            .is_some_and(|s| s.sign(b"transcript hash").is_ok())
}

#[test]
fn ensure_default_creates_one_p256_server_certificate_for_smtp_and_https() {
    let (tmp, store) = store();
    assert_eq!(mode(&tmp.path().join("certs")), 0o700);
    let thumb = store.ensure_default("mx.example.test").unwrap().unwrap();
    assert_eq!(store.ensure_default("mx.example.test").unwrap(), None);

    let all = store.list().unwrap();
    assert_eq!(all.len(), 1);
    let c = &all[0];
    assert_eq!(c.sha1, thumb.as_str());
    assert_eq!(c.sha1.len(), 40);
    assert_eq!(c.sha1, c.sha1.to_ascii_uppercase());
    assert_eq!(c.sha256.len(), 64);
    assert_eq!(c.key_type, "ECDSA P-256");
    assert_eq!(c.subject, "CN=mx.example.test");
    assert_eq!(c.sans, vec!["mx.example.test", "mx"]);
    assert!(c.self_signed);
    assert_eq!(c.services.to_string(), "smtp,https");
    assert!(c.is_default);
    let life = c.not_after.duration_since(c.not_before).unwrap();
    // Within Mozilla intermediate's 90-366 days (sslyze) and the 398-day
    // cap of graders, backdate included.
    assert_eq!(life, DAY * 365, "{life:?}");

    let dir = tmp.path().join("certs").join(&c.sha1);
    assert_eq!(mode(&dir.join("key.pem")), 0o600);
    let chain = std::fs::read(dir.join("chain.pem")).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(&chain)
        .map(|d: rustls_pki_types::CertificateDer<'static>| d.to_vec())
        .unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    let mut saw_bc = false;
    let mut saw_eku = false;
    for ext in x509.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => {
                saw_bc = true;
                assert!(!bc.ca, "the default must be CA:FALSE");
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                saw_eku = true;
                assert!(eku.server_auth);
            }
            _ => {}
        }
    }
    assert!(saw_bc && saw_eku);
    let meta = std::fs::read_to_string(dir.join("meta.json")).unwrap();
    assert!(meta.contains("\"services\": \"smtp,https\""), "{meta}");
    assert!(meta.contains("\"default\": true"), "{meta}");
    assert!(meta.contains("imported_at"), "{meta}");
    assert!(signs(&store, &c.sha1));
    assert!(store.load().problems.is_empty());
}

#[test]
fn get_accepts_sha1_sha256_any_case_and_unique_prefixes() {
    let (_tmp, store) = store();
    let t = store.ensure_default("mx.example.test").unwrap().unwrap();
    let c = store.get(t.as_str()).unwrap();
    assert_eq!(store.get(&c.sha256).unwrap().sha1, c.sha1);
    assert_eq!(store.get(&c.sha1.to_lowercase()).unwrap().sha1, c.sha1);
    assert_eq!(store.get(&c.sha1[..8]).unwrap().sha1, c.sha1);
    let colons: Vec<String> = c
        .sha1
        .as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8_lossy(p).into())
        .collect();
    assert_eq!(store.get(&colons.join(":")).unwrap().sha1, c.sha1);
    assert!(matches!(
        store.get(&c.sha1[..7]),
        Err(CertError::BadThumbprint { .. })
    ));
    let absent = if c.sha1.starts_with("00") {
        "11111111"
    } else {
        "00000000"
    };
    let err = store.get(absent).unwrap_err();
    assert!(err.to_string().contains("no certificate matches"), "{err}");
}

#[test]
fn new_self_signed_uses_the_requested_key_and_services() {
    let (_tmp, store) = store();
    for (kind, label) in [
        (KeyKind::EcdsaP384, "ECDSA P-384"),
        (KeyKind::Rsa2048, "RSA 2048"),
    ] {
        let c = store
            .new_self_signed(
                &["Web.Example.Test".into(), "192.0.2.7".into()],
                kind,
                "smtp,https".parse().unwrap(),
            )
            .unwrap();
        assert_eq!(c.key_type, label);
        assert_eq!(c.sans, vec!["web.example.test", "192.0.2.7"]);
        assert_eq!(
            c.services,
            Services {
                smtp: true,
                https: true
            }
        );
        assert!(!c.is_default);
        assert!(signs(&store, &c.sha1), "{label}");
    }
    let err = store
        .new_self_signed(
            &["bad_name.test".into()],
            KeyKind::EcdsaP256,
            Services::NONE,
        )
        .unwrap_err();
    assert!(err.to_string().contains("bad_name.test"), "{err}");
}

#[test]
fn import_pem_keeps_leaf_and_intermediate_and_drops_the_root() {
    let (tmp, store) = store();
    let root = TestCa::root("Test Root");
    let inter = root.intermediate("Test Intermediate");
    let (leaf, key) = inter.leaf(&["mail.example.test"], -1, 90);
    // Deliberately out of order: key first, root before intermediate.
    let file = write(
        tmp.path(),
        "bundle.pem",
        &format!("{key}{leaf}{}{}", root.pem, inter.pem),
    );
    let c = store.import(&file, None).unwrap();
    assert!(!c.self_signed);
    assert_eq!(c.issuer, "CN=Test Intermediate");
    assert_eq!(c.services, Services::NONE);
    assert!(!c.is_default);
    let details = store.details(&c.sha1).unwrap();
    assert_eq!(details.chain, vec!["CN=Test Intermediate"]);
    assert_eq!(mode(&details.dir.join("key.pem")), 0o600);
    assert!(signs(&store, &c.sha1));

    let again = store.import(&file, None).unwrap_err();
    assert!(matches!(again, CertError::AlreadyInStore { .. }), "{again}");
}

#[test]
fn import_refuses_a_key_that_does_not_match() {
    let (tmp, store) = store();
    let ca = TestCa::root("Test Root");
    let (leaf, _) = ca.leaf(&["mail.example.test"], -1, 90);
    let (_, other_key) = ca.leaf(&["other.example.test"], -1, 90);
    let file = write(tmp.path(), "mismatch.pem", &format!("{leaf}{other_key}"));
    let err = store.import(&file, None).unwrap_err();
    assert!(matches!(err, CertError::KeyMismatch { .. }));
    let text = err.to_string();
    assert!(
        text.contains("does not match the certificate (public keys differ)"),
        "{text}"
    );
    assert!(text.contains("mismatch.pem"), "{text}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn import_refuses_an_expired_certificate() {
    let (tmp, store) = store();
    let ca = TestCa::root("Test Root");
    let (leaf, key) = ca.leaf(&["old.example.test"], -400, -2);
    let file = write(tmp.path(), "old.pem", &format!("{leaf}{key}"));
    let err = store.import(&file, None).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CertError::Expired { .. }), "{text}");
    assert!(
        text.starts_with("certificate CN=old.example.test expired on "),
        "{text}"
    );
    assert!(text.ends_with("(not_after); get a new one"), "{text}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn import_refuses_pem_without_key_when_no_request_matches() {
    let (tmp, store) = store();
    let ca = TestCa::root("Test Root");
    let (leaf, _) = ca.leaf(&["mail.example.test"], -1, 90);
    let file = write(tmp.path(), "file.pem", &leaf);
    let err = store.import(&file, None).unwrap_err();
    assert!(matches!(err, CertError::NoPrivateKey { .. }));
    assert!(
        err.to_string().contains(
            "file.pem holds a certificate but no private key, and no pending request matches it; import the PEM that contains the key, or the PKCS#12"
        ),
        "{err}"
    );
}

#[test]
fn import_refuses_a_chain_whose_intermediate_did_not_sign_the_leaf() {
    let (tmp, store) = store();
    let real = TestCa::root("Same Name CA");
    let impostor = TestCa::root("Same Name CA");
    let (leaf, key) = real.leaf(&["mail.example.test"], -1, 90);
    let fake_inter = impostor.intermediate("Fake Intermediate");
    // The impostor's root has the issuer name the leaf asks for.
    let file = write(
        tmp.path(),
        "broken.pem",
        &format!("{leaf}{key}{}{}", impostor.pem, fake_inter.pem),
    );
    let err = store.import(&file, None).unwrap_err();
    assert!(matches!(err, CertError::ChainBroken { .. }), "{err}");
}

#[test]
fn encrypted_pem_keys_get_a_precise_refusal() {
    let (tmp, store) = store();
    let file = write(
        tmp.path(),
        "enc.pem",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let err = store.import(&file, None).unwrap_err();
    assert!(matches!(err, CertError::EncryptedPemKey { .. }), "{err}");
}

#[test]
fn pkcs12_round_trip_keeps_thumbprint_and_a_working_key() {
    let (tmp, store) = store();
    let root = TestCa::root("Test Root");
    let inter = root.intermediate("Test Intermediate");
    let (leaf, key) = inter.leaf(&["mail.example.test"], -1, 90);
    let file = write(tmp.path(), "in.pem", &format!("{leaf}{key}{}", inter.pem));
    let original = store.import(&file, None).unwrap();

    let pfx = tmp.path().join("out.pfx");
    store
        .export_pkcs12(&original.sha1, "s3cret pass", &pfx)
        .unwrap();
    assert_eq!(mode(&pfx), 0o600);
    let again = store
        .export_pkcs12(&original.sha1, "s3cret pass", &pfx)
        .unwrap_err();
    assert!(matches!(again, CertError::OutputExists { .. }), "{again}");
    let empty = store
        .export_pkcs12(&original.sha1, "", &tmp.path().join("x.pfx"))
        .unwrap_err();
    assert!(matches!(empty, CertError::EmptyPassword), "{empty}");

    let other = tempfile::tempdir().unwrap();
    let fresh = CertStore::open(other.path()).unwrap();
    let imported = fresh.import(&pfx, Some("s3cret pass")).unwrap();
    assert_eq!(imported.sha1, original.sha1);
    assert_eq!(imported.key_type, original.key_type);
    assert_eq!(
        fresh.details(&imported.sha1).unwrap().chain,
        vec!["CN=Test Intermediate"]
    );
    assert!(signs(&fresh, &imported.sha1));
}

#[test]
fn wrong_pkcs12_password_is_named() {
    let (tmp, store) = store();
    let t = store.ensure_default("mx.example.test").unwrap().unwrap();
    let pfx = tmp.path().join("out.p12");
    store.export_pkcs12(t.as_str(), "right", &pfx).unwrap();
    let other = tempfile::tempdir().unwrap();
    let fresh = CertStore::open(other.path()).unwrap();
    for wrong in [Some("wrong"), None] {
        let err = fresh.import(&pfx, wrong).unwrap_err();
        assert!(matches!(err, CertError::WrongPassword { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("wrong PKCS#12 password (MAC check failed)"),
            "{err}"
        );
    }
}

#[test]
fn pkcs12_from_openssl_imports_and_ours_reads_in_openssl() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("openssl not installed; skipping");
        return;
    }
    let (tmp, store) = store();
    let ca = TestCa::root("Test Root");
    let (leaf, key) = ca.leaf(&["legacy.example.test"], -1, 90);
    let cert_file = write(tmp.path(), "leaf.pem", &leaf);
    let key_file = write(tmp.path(), "leaf.key", &key);
    let pfx = tmp.path().join("openssl.pfx");
    let status = std::process::Command::new("openssl")
        .args([
            "pkcs12",
            "-export",
            "-passout",
            "pass:pw",
            "-name",
            "From OpenSSL",
        ])
        .arg("-in")
        .arg(&cert_file)
        .arg("-inkey")
        .arg(&key_file)
        .arg("-out")
        .arg(&pfx)
        .status()
        .unwrap();
    assert!(status.success());
    let c = store.import(&pfx, Some("pw")).unwrap();
    assert_eq!(c.friendly_name.as_deref(), Some("From OpenSSL"));
    assert!(signs(&store, &c.sha1));

    let ours = tmp.path().join("ours.pfx");
    store.export_pkcs12(&c.sha1, "pw2", &ours).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["pkcs12", "-nodes", "-passin", "pass:pw2", "-in"])
        .arg(&ours)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BEGIN CERTIFICATE") && text.contains("BEGIN PRIVATE KEY"),
        "{text}"
    );
}

#[test]
fn request_then_importing_the_signed_certificate_alone_completes_it() {
    let (tmp, store) = store();
    let csr_path = store
        .request(
            &[
                "mail.example.test".into(),
                "autodiscover.example.test".into(),
            ],
            KeyKind::EcdsaP256,
        )
        .unwrap();
    assert_eq!(mode(&csr_path), 0o600);
    let pending_dir = csr_path.parent().unwrap().to_path_buf();
    assert_eq!(mode(&pending_dir.join("key.pem")), 0o600);
    assert_eq!(store.pending_requests().unwrap().len(), 1);

    // The CA signs the CSR.
    let ca = TestCa::root("Test Root");
    let csr_pem = std::fs::read_to_string(&csr_path).unwrap();
    let mut csr = CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
    csr.params.not_before = days_from_now(-1).into();
    csr.params.not_after = days_from_now(90).into();
    let signed = csr.signed_by(&ca.issuer()).unwrap();
    let file = write(tmp.path(), "signed.pem", &signed.pem());

    let c = store.import(&file, None).unwrap();
    assert_eq!(c.subject, "CN=mail.example.test");
    assert_eq!(
        c.sans,
        vec!["mail.example.test", "autodiscover.example.test"]
    );
    assert!(!c.self_signed);
    assert!(!pending_dir.exists(), "the completed request is removed");
    assert!(store.pending_requests().unwrap().is_empty());
    assert!(signs(&store, &c.sha1));
}

#[test]
fn request_accepts_the_signed_certificate_in_der_form() {
    let (tmp, store) = store();
    let csr_path = store
        .request(&["mail.example.test".into()], KeyKind::Rsa2048)
        .unwrap();
    let ca = TestCa::root("Test Root");
    let mut csr =
        CertificateSigningRequestParams::from_pem(&std::fs::read_to_string(&csr_path).unwrap())
            .unwrap();
    csr.params.not_before = days_from_now(-1).into();
    csr.params.not_after = days_from_now(90).into();
    let signed = csr.signed_by(&ca.issuer()).unwrap();
    let file = tmp.path().join("signed.cer");
    std::fs::write(&file, signed.der()).unwrap();
    let c = store.import(&file, None).unwrap();
    assert_eq!(c.key_type, "RSA 2048");
    assert!(signs(&store, &c.sha1));
}

#[test]
fn removing_the_only_smtp_certificate_or_the_default_is_refused() {
    let (_tmp, store) = store();
    let default = store.ensure_default("mx.example.test").unwrap().unwrap();
    let err = store.remove(default.as_str()).unwrap_err();
    assert!(matches!(err, CertError::RemoveOnlySmtp { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!(
            "cannot remove {default}: it is the only certificate enabled for SMTP; import or create another, enable it with `gatehouse cert enable THUMB --services smtp`, then remove this one"
        )),
        "{err}"
    );
    let err = store.enable(default.as_str(), Services::NONE).unwrap_err();
    assert!(matches!(err, CertError::DisableOnlySmtp { .. }), "{err}");

    let second = store
        .new_self_signed(
            &["mx2.example.test".into()],
            KeyKind::EcdsaP256,
            Services::SMTP,
        )
        .unwrap();
    // Now the default is not the only SMTP certificate, but still the default.
    let err = store.remove(default.as_str()).unwrap_err();
    assert!(matches!(err, CertError::RemoveDefault { .. }), "{err}");
    assert!(err.to_string().contains(
        "cannot remove the default certificate; make another default first with `gatehouse cert default THUMB`"
    ));

    // Take SMTP off the default: `second` is the only SMTP certificate.
    store.enable(default.as_str(), Services::HTTPS).unwrap();
    let err = store.remove(&second.sha1).unwrap_err();
    assert!(matches!(err, CertError::RemoveOnlySmtp { .. }), "{err}");

    // Move the default, after which the old one can go.
    store.set_default(&second.sha1).unwrap();
    let all = store.list().unwrap();
    assert_eq!(all.iter().filter(|c| c.is_default).count(), 1);
    assert!(store.get(&second.sha1).unwrap().is_default);
    store.remove(default.as_str()).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn enable_refuses_an_expired_certificate_and_replaces_the_service_set() {
    let (tmp, store) = store();
    let c = store
        .new_self_signed(
            &["web.example.test".into()],
            KeyKind::EcdsaP256,
            Services::HTTPS,
        )
        .unwrap();
    let both: Services = "smtp,https".parse().unwrap();
    assert_eq!(store.enable(&c.sha1, both).unwrap().services, both);
    assert_eq!(store.get(&c.sha1).unwrap().services, both);

    // An expired certificate planted by hand (import would refuse it).
    let ca = TestCa::root("Test Root");
    let (leaf, key) = ca.leaf(&["old.example.test"], -400, -2);
    let der: rustls_pki_types::CertificateDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(leaf.as_bytes()).unwrap();
    let expired_sha1 = sha1_hex(&der);
    let planted = tmp.path().join("certs").join(&expired_sha1);
    std::fs::create_dir(&planted).unwrap();
    std::fs::write(planted.join("chain.pem"), &leaf).unwrap();
    std::fs::write(planted.join("key.pem"), &key).unwrap();
    std::fs::write(
        planted.join("meta.json"),
        r#"{"services": "none", "default": false}"#,
    )
    .unwrap();
    assert!(store.get(&expired_sha1).is_ok());
    let err = store.enable(&expired_sha1, Services::SMTP).unwrap_err();
    assert!(matches!(err, CertError::Expired { .. }), "{err}");
    let report = store.load();
    assert!(report.usable.iter().all(|l| l.info.sha1 != expired_sha1));
    let p = report
        .problems
        .iter()
        .find(|p| p.thumbprint == expired_sha1)
        .unwrap();
    assert!(p.reason.contains("expired on"), "{}", p.reason);
}

fn sha1_hex(der: &[u8]) -> String {
    use sha1::Digest;
    sha1::Sha1::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

#[test]
fn load_reports_a_deleted_or_foreign_key_instead_of_panicking() {
    let (_tmp, store) = store();
    let a = store.ensure_default("mx.example.test").unwrap().unwrap();
    let b = store
        .new_self_signed(
            &["other.example.test".into()],
            KeyKind::EcdsaP256,
            Services::SMTP,
        )
        .unwrap();
    let dir_a = store.details(a.as_str()).unwrap().dir;
    let dir_b = store.details(&b.sha1).unwrap().dir;
    let before = store.generation();

    // Replace a's key with b's: the files look fine, the key is wrong.
    std::fs::copy(dir_b.join("key.pem"), dir_a.join("key.pem")).unwrap();
    assert_ne!(
        store.generation(),
        before,
        "a replaced file changes the generation"
    );
    let report = store.load();
    assert_eq!(report.usable.len(), 1);
    assert_eq!(report.usable[0].info.sha1, b.sha1);
    let p = &report.problems[0];
    assert_eq!(p.thumbprint, a.as_str());
    assert!(
        p.reason
            .contains("does not match the certificate (public keys differ)"),
        "{}",
        p.reason
    );

    // Delete b's key.
    std::fs::remove_file(dir_b.join("key.pem")).unwrap();
    let report = store.load();
    assert!(report.usable.is_empty());
    assert_eq!(report.problems.len(), 2);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.thumbprint == b.sha1 && p.reason.contains("key.pem is missing"))
    );

    // Garbage in chain.pem and meta.json.
    std::fs::write(dir_b.join("chain.pem"), "not pem").unwrap();
    std::fs::write(dir_a.join("meta.json"), "{").unwrap();
    let report = store.load();
    assert!(report.usable.is_empty());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.reason.contains("holds no certificate")),
        "{:?}",
        report.problems
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.reason.contains("meta.json is not valid")),
        "{:?}",
        report.problems
    );
}

#[test]
fn generation_changes_on_every_store_change_and_only_then() {
    let (_tmp, store) = store();
    let g0 = store.generation();
    assert_eq!(store.generation(), g0);
    let t = store.ensure_default("mx.example.test").unwrap().unwrap();
    let g1 = store.generation();
    assert_ne!(g1, g0);
    assert_eq!(store.generation(), g1);
    store
        .enable(t.as_str(), "smtp,https".parse().unwrap())
        .unwrap();
    let g2 = store.generation();
    assert_ne!(g2, g1);
    store
        .request(&["later.example.test".into()], KeyKind::EcdsaP256)
        .unwrap();
    assert_eq!(store.generation(), g2, "pending requests are not served");
}

#[test]
fn a_crash_before_rename_leaves_no_half_certificate() {
    let (tmp, store) = store();
    // What an interrupted install leaves: a hidden temporary directory.
    let tmpdir = tmp.path().join("certs").join(".tmp-dir-99999-0");
    std::fs::create_dir(&tmpdir).unwrap();
    std::fs::write(tmpdir.join("chain.pem"), "partial").unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(store.load().problems.is_empty());
    // ensure_default still sees an empty store.
    assert!(store.ensure_default("mx.example.test").unwrap().is_some());
}

/// Converts a PKCS#8 PEM key to the traditional form with `openssl`.
fn traditional(key_pem: &str, tool: &str, dir: &Path) -> Option<String> {
    let input = write(dir, &format!("{tool}-in.pem"), key_pem);
    let output = dir.join(format!("{tool}-out.pem"));
    let mut cmd = std::process::Command::new("openssl");
    cmd.arg(tool)
        .arg("-in")
        .arg(&input)
        .arg("-out")
        .arg(&output);
    if tool == "rsa" {
        cmd.arg("-traditional");
    }
    let status = cmd.stderr(std::process::Stdio::null()).status().ok()?;
    assert!(status.success(), "openssl {tool} failed");
    Some(std::fs::read_to_string(output).unwrap())
}

#[test]
fn traditional_pem_keys_are_stored_as_pkcs8_and_export() {
    let (tmp, store) = store();
    let ca = TestCa::root("Test Root");
    let cases = [
        (
            "ec",
            KeyPair::generate().unwrap(),
            "-----BEGIN EC PRIVATE KEY-----",
        ),
        (
            "rsa",
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap(),
            "-----BEGIN RSA PRIVATE KEY-----",
        ),
    ];
    for (tool, key, header) in cases {
        let name = format!("{tool}.example.test");
        let (leaf, key_pem) = ca.leaf_with(key, &[&name], -1, 90);
        let Some(old_style) = traditional(&key_pem, tool, tmp.path()) else {
            eprintln!("openssl not installed; skipping");
            return;
        };
        assert!(old_style.starts_with(header), "{old_style}");
        let c = store
            .import(
                &write(
                    tmp.path(),
                    &format!("{tool}.pem"),
                    &format!("{leaf}{old_style}"),
                ),
                None,
            )
            .unwrap();
        let stored =
            std::fs::read_to_string(store.details(&c.sha1).unwrap().dir.join("key.pem")).unwrap();
        assert!(
            stored.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{stored}"
        );
        assert!(signs(&store, &c.sha1), "{tool}");
        let pfx = tmp.path().join(format!("{tool}.pfx"));
        store.export_pkcs12(&c.sha1, "pw", &pfx).unwrap();
        let other = tempfile::tempdir().unwrap();
        let fresh = CertStore::open(other.path()).unwrap();
        assert_eq!(fresh.import(&pfx, Some("pw")).unwrap().sha1, c.sha1);
        assert!(signs(&fresh, &c.sha1), "{tool} after PKCS#12");
    }
}
