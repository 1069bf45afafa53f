//! `gatehouse cert ...` as an operator runs it: the real binary, a config
//! file whose data_dir is a temporary directory, stdout/stderr and exit
//! codes. The CA that signs requests is made with rcgen in the test.

mod common;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
    KeyPair,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const DAY: Duration = Duration::from_secs(86_400);

/// A data directory with its config file.
struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gatehouse.toml");
        let text = format!(
            "[server]\nhostname = \"mx.example.test\"\ndata_dir = \"{}\"\n[[receive_connector]]\nname = \"Default\"\nrole = \"smtp\"\nlisten = [\"127.0.0.1:0\"]\n",
            dir.path().join("var").display()
        );
        std::fs::write(&config, text).unwrap();
        Site { dir, config }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Runs `gatehouse --config <site> cert <args>`, killing it after 60 s.
    fn cert(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(self.dir.path())
            .env_remove("GATEHOUSE_CONFIG")
            .env_remove("RUST_LOG")
            .arg("--config")
            .arg(&self.config)
            .arg("cert")
            .args(args);
        Run::from(run(cmd))
    }

    /// `cert new-self-signed ...`, returning the new thumbprint.
    fn new_self_signed(&self, args: &[&str]) -> String {
        let mut all = vec!["new-self-signed"];
        all.extend_from_slice(args);
        let r = self.cert(&all).ok();
        let first = r.stdout.lines().next().unwrap_or_default().to_string();
        let thumb = first.strip_prefix("created ").expect(&r.stdout).to_string();
        assert_eq!(thumb.len(), 40, "{}", r.stdout);
        thumb
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Exit 1 with `gatehouse: <message>` on stderr containing `text`.
    fn refused(self, text: &str) -> Run {
        assert_eq!(
            self.code, 1,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert!(self.stderr.starts_with("gatehouse: "), "{}", self.stderr);
        assert!(
            self.stderr.contains(text),
            "wanted {text:?} in:\n{}",
            self.stderr
        );
        self
    }
}

fn run(cmd: Command) -> Output {
    common::run_bounded(cmd, Duration::from_secs(60))
}

/// A test CA that signs leaves and CSRs.
struct TestCa {
    params: CertificateParams,
    key: KeyPair,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "CLI Test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        TestCa {
            params,
            key: KeyPair::generate().unwrap(),
        }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    fn leaf(&self, name: &str, not_after: SystemTime) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = (SystemTime::now() - DAY * 400).into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn sign_csr(&self, csr_pem: &str) -> String {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        csr.params.not_before = (SystemTime::now() - DAY).into();
        csr.params.not_after = (SystemTime::now() + DAY * 90).into();
        csr.signed_by(&self.issuer()).unwrap().pem()
    }
}

#[test]
fn list_show_create_enable_default_and_remove() {
    let site = Site::new();
    let r = site.cert(&["list"]).ok();
    assert!(r.stdout.starts_with("no certificates in "), "{}", r.stdout);

    let a = site.new_self_signed(&["--name", "mx.example.test", "--services", "smtp"]);
    let b = site.new_self_signed(&[
        "--name",
        "web.example.test",
        "--name",
        "autodiscover.example.test",
        "--key",
        "rsa2048",
        "--services",
        "https",
    ]);
    let r = site.cert(&["list"]).ok();
    let header = r.stdout.lines().next().unwrap();
    assert!(
        header.starts_with("THUMBPRINT") && header.contains("SERVICES"),
        "{}",
        r.stdout
    );
    let row_a = r
        .stdout
        .lines()
        .find(|l| l.starts_with(&a))
        .expect(&r.stdout);
    assert!(
        row_a.contains("smtp") && row_a.contains("ECDSA P-256") && row_a.contains("self-signed"),
        "{row_a}"
    );
    let row_b = r
        .stdout
        .lines()
        .find(|l| l.starts_with(&b))
        .expect(&r.stdout);
    assert!(
        row_b.contains("https") && row_b.contains("RSA 2048"),
        "{row_b}"
    );
    // Columns line up: SERVICES starts at the same offset in every row.
    let col = header.find("SERVICES").unwrap();
    assert_eq!(&row_a[col..col + 4], "smtp", "{}", r.stdout);

    let r = site.cert(&["show", &a[..10].to_lowercase()]).ok();
    assert!(
        r.stdout.contains(&format!("thumbprint:    {a}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("names:         mx.example.test"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("default:       no"), "{}", r.stdout);

    site.cert(&["enable", &b, "--services", "smtp,https"]).ok();
    assert!(
        site.cert(&["show", &b])
            .ok()
            .stdout
            .contains("services:      smtp,https")
    );
    let r = site.cert(&["default", &a]).ok();
    assert!(
        r.stdout
            .contains(&format!("{a} is now the default certificate")),
        "{}",
        r.stdout
    );

    site.cert(&["remove", &a]).refused(
        "cannot remove the default certificate; make another default first with `gatehouse cert default THUMB`",
    );
    site.cert(&["default", &b]).ok();
    let r = site.cert(&["remove", &a]).ok();
    assert!(
        r.stdout.starts_with(&format!("removed {a}")),
        "{}",
        r.stdout
    );
    site.cert(&["show", &a]).refused("no certificate matches");
    site.cert(&["remove", &b])
        .refused("it is the only certificate enabled for SMTP");
    site.cert(&["enable", &b, "--services", "none"])
        .refused("cannot disable SMTP");
    site.cert(&["show", "12"]).refused("is not a thumbprint");
}

#[test]
fn request_sign_import_export_and_reimport() {
    let site = Site::new();
    let r = site
        .cert(&[
            "request",
            "--name",
            "mail.example.test",
            "--key",
            "ecdsa-p384",
        ])
        .ok();
    let first = r.stdout.lines().next().unwrap();
    let csr_path = PathBuf::from(first.strip_prefix("request written to ").expect(&r.stdout));
    assert!(csr_path.exists());
    assert!(
        r.stdout.contains("-----BEGIN CERTIFICATE REQUEST-----"),
        "{}",
        r.stdout
    );
    assert!(
        site.cert(&["list"])
            .ok()
            .stdout
            .contains("pending requests")
    );

    let ca = TestCa::new();
    let signed = site.write(
        "signed.pem",
        &ca.sign_csr(&std::fs::read_to_string(&csr_path).unwrap()),
    );
    let r = site.cert(&["import", signed.to_str().unwrap()]).ok();
    let thumb = r.stdout.split_whitespace().nth(1).unwrap().to_string();
    assert!(
        r.stdout.contains("enabled for no service yet"),
        "{}",
        r.stdout
    );
    let shown = site.cert(&["show", &thumb]).ok().stdout;
    assert!(
        shown.contains("ECDSA P-384") && shown.contains("CA-issued"),
        "{shown}"
    );
    assert!(
        !site
            .cert(&["list"])
            .ok()
            .stdout
            .contains("pending requests")
    );

    let pw = site.write("pw.txt", "correct horse\n");
    let out = site.path("export.pfx");
    site.cert(&[
        "export",
        &thumb,
        "--pkcs12",
        out.to_str().unwrap(),
        "--password-file",
        pw.to_str().unwrap(),
    ])
    .ok();
    assert!(out.exists());
    site.cert(&[
        "export",
        &thumb,
        "--pkcs12",
        out.to_str().unwrap(),
        "--password-file",
        pw.to_str().unwrap(),
    ])
    .refused("already exists");

    let other = Site::new();
    let wrong = other.write("wrong.txt", "battery staple\n");
    other
        .cert(&[
            "import",
            out.to_str().unwrap(),
            "--password-file",
            wrong.to_str().unwrap(),
        ])
        .refused("wrong PKCS#12 password (MAC check failed)");
    let r = other
        .cert(&[
            "import",
            out.to_str().unwrap(),
            "--password-file",
            pw.to_str().unwrap(),
        ])
        .ok();
    assert!(
        r.stdout.starts_with(&format!("imported {thumb}")),
        "{}",
        r.stdout
    );
}

#[test]
fn import_refusals_name_the_problem() {
    let site = Site::new();
    let ca = TestCa::new();
    let (leaf, _) = ca.leaf("mail.example.test", SystemTime::now() + DAY * 30);
    let (_, other_key) = ca.leaf("other.example.test", SystemTime::now() + DAY * 30);
    let (old, old_key) = ca.leaf("old.example.test", SystemTime::now() - DAY * 3);

    let f = site.write("mismatch.pem", &format!("{leaf}{other_key}"));
    site.cert(&["import", f.to_str().unwrap()])
        .refused("does not match the certificate (public keys differ)");
    let f = site.write("old.pem", &format!("{old}{old_key}"));
    site.cert(&["import", f.to_str().unwrap()])
        .refused("certificate CN=old.example.test expired on");
    let f = site.write("file.pem", &leaf);
    site.cert(&["import", f.to_str().unwrap()]).refused(
        "file.pem holds a certificate but no private key, and no pending request matches it",
    );
    site.cert(&["import", site.path("absent.pem").to_str().unwrap()])
        .refused("cannot read");
    assert!(
        site.cert(&["list"])
            .ok()
            .stdout
            .starts_with("no certificates")
    );
}

#[test]
fn which_shows_the_choice_and_every_candidate() {
    let site = Site::new();
    let fqdn_cert = site.new_self_signed(&["--name", "mx.example.test"]);
    let sni_cert = site.new_self_signed(&["--name", "mail.example.test"]);
    let web_only = site.new_self_signed(&["--name", "web.example.test", "--services", "https"]);

    let r = site
        .cert(&[
            "which",
            "--connector",
            "Default",
            "--sni",
            "mail.example.test",
        ])
        .ok();
    assert!(
        r.stdout
            .contains("connector:   Default (fqdn mx.example.test)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains(&format!("chosen:      {sni_cert} (matched by SNI)")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("subject:     CN=mail.example.test"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("expires:     "), "{}", r.stdout);
    for t in [&fqdn_cert, &sni_cert, &web_only] {
        assert!(
            r.stdout.contains(&format!("  {t} ")),
            "{t} missing from:\n{}",
            r.stdout
        );
    }
    assert!(r.stdout.contains("not enabled for smtp"), "{}", r.stdout);

    let r = site.cert(&["which", "--connector", "default"]).ok();
    assert!(
        r.stdout.contains(&format!(
            "chosen:      {fqdn_cert} (matched by connector FQDN)"
        )),
        "{}",
        r.stdout
    );

    let r = site
        .cert(&[
            "which",
            "--connector",
            "Default",
            "--sni",
            "mx.example.test",
            "--service",
            "https",
        ])
        .refused("no certificate can serve https for connector `Default`");
    assert!(r.stdout.contains("chosen:      none"), "{}", r.stdout);

    site.cert(&["which", "--connector", "Nope"])
        .refused("no receive connector is named `Nope`; the configuration has: `Default`");
}

#[test]
fn a_broken_config_is_reported_before_touching_the_store() {
    let site = Site::new();
    std::fs::write(&site.config, "[server\n").unwrap();
    let r = site.cert(&["list"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("gatehouse.toml"), "{}", r.stderr);
    assert!(!Path::new(&site.path("var")).exists());
}
