//! The TLS doctor: `gatehouse tls probe smtp://|smtps://|https://HOST:PORT`
//! (SPEC 2.10). It connects like a client would, looks at everything an
//! administrator needs when mail flow or Outlook breaks over TLS, and gives
//! one verdict (OK, WARN, FAIL) per check with the reason.
//!
//! ```text
//! Target (target.rs)            smtp:// = STARTTLS, smtps:// and https:// = implicit TLS
//!   -> open(): resolve, connect, [greeting, EHLO, STARTTLS (smtp.rs)]   one connection per attempt
//!   -> modern handshake, TLS 1.3 + 1.2 (handshake.rs, rustls with a recording verifier)
//!        -> negotiated version/suite, chain (chain.rs summaries), webpki verdict
//!   -> one handshake per version: TLS 1.3 only, TLS 1.2 only
//!   -> legacy hellos: TLS 1.1, TLS 1.0, SSL 3.0 (legacy.rs, hand-built; rustls cannot)
//!   -> chain checks: trust, expiry, name (--expect-name or host), msstd (--msstd)
//!   -> resumption: TLS 1.3 ticket, TLS 1.2 session id (two handshakes each)
//!   -> Report { checks: [Check { name, verdict, detail }], chain, negotiated }
//!        -> Display (human) or serde JSON (--json); exit code 1 when any check FAILs
//! ```
//!
//! Every network step runs under a timeout (`Options::timeout_secs`) and
//! says which step timed out. Nothing from the network is indexed or
//! allocated without a bound. The doctor prints; it emits no events.

mod chain;
pub mod cli;
mod handshake;
pub mod legacy;
mod smtp;
mod target;

pub use chain::{ChainCert, msstd_check, name_check, summarize};
pub use legacy::{LegacyAnswer, LegacyVersion, client_hello, read_answer};
pub use target::{Scheme, Target, TargetError};

use rustls::pki_types::ServerName;
use serde::Serialize;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What to probe and how.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: Target,
    /// The name the certificate must be valid for; default: the target
    /// host when it is a DNS name. Also sent as SNI.
    pub expect_name: Option<String>,
    /// `msstd:NAME`, checked the way Outlook checks it.
    pub msstd: Option<String>,
    /// Extra trust anchors (PEM) on top of webpki-roots.
    pub ca_file: Option<PathBuf>,
    /// Limit for each step: connect, greeting, EHLO, STARTTLS, handshake.
    pub timeout_secs: u64,
}

impl Options {
    pub fn new(target: Target) -> Options {
        Options {
            target,
            expect_name: None,
            msstd: None,
            ca_file: None,
            timeout_secs: 10,
        }
    }

    /// The name for SNI and the name check.
    pub(crate) fn server_name(&self) -> Option<String> {
        self.expect_name
            .clone()
            .or_else(|| (!self.target.host_is_ip()).then(|| self.target.host.clone()))
    }
}

/// A check's outcome; ordered so the worst wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "OK",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable key: `starttls`, `tls1.3`, `tls1.2`, `tls1.1`, `tls1.0`,
    /// `ssl3`, `cipher`, `trust`, `expiry`, `name`, `msstd`,
    /// `resume-tls1.3`, `resume-tls1.2`, `connect`, `handshake`, `chain`
    /// (a certificate that cannot be parsed).
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
}

impl Check {
    pub fn new(name: &str, verdict: Verdict, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            verdict,
            detail: detail.into(),
        }
    }
}

/// What the main handshake negotiated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Negotiated {
    pub version: String,
    pub suite: String,
}

/// The whole result of a probe.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub checks: Vec<Check>,
    pub negotiated: Option<Negotiated>,
    /// Leaf first, as the server sent it.
    pub chain: Vec<ChainCert>,
    /// The worst verdict of all checks.
    pub verdict: Verdict,
}

impl Report {
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Process exit code: 1 when any check failed, else 0.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.verdict == Verdict::Fail)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "TLS probe of {}", self.target)?;
        for c in &self.checks {
            writeln!(
                f,
                "{:<5} {:<14} {}",
                c.verdict.to_string(),
                c.name,
                c.detail
            )?;
        }
        if !self.chain.is_empty() {
            writeln!(f, "chain (as sent, leaf first):")?;
        }
        for (i, c) in self.chain.iter().enumerate() {
            writeln!(f, "  [{i}] subject:    {}", c.subject)?;
            if !c.sans.is_empty() {
                writeln!(f, "      SANs:       {}", c.sans.join(", "))?;
            }
            let ss = if c.self_signed { " (self-signed)" } else { "" };
            writeln!(f, "      issuer:     {}{ss}", c.issuer)?;
            writeln!(f, "      not before: {}", c.not_before)?;
            writeln!(
                f,
                "      not after:  {} ({} days left)",
                c.not_after, c.days_left
            )?;
            writeln!(f, "      SHA-1:      {}", c.sha1)?;
            writeln!(f, "      SHA-256:    {}", c.sha256)?;
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .count();
        let warned = self
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Warn)
            .count();
        writeln!(
            f,
            "verdict: {} ({failed} failed, {warned} warning(s), {} checks)",
            self.verdict,
            self.checks.len()
        )
    }
}

/// A network step, named in timeouts and errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Connect,
    Banner,
    Ehlo,
    Starttls,
    Handshake,
    Exchange,
    LegacyHello,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Connect => "connecting",
            Step::Banner => "waiting for the SMTP greeting",
            Step::Ehlo => "waiting for the EHLO reply",
            Step::Starttls => "waiting for the STARTTLS reply",
            Step::Handshake => "in the TLS handshake",
            Step::Exchange => "talking inside TLS after the handshake",
            Step::LegacyHello => "waiting for an answer to the legacy ClientHello",
        })
    }
}

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot resolve {host}: {why}")]
    Resolve { host: String, why: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out after {secs} s {step}")]
    Timeout { step: Step, secs: u64 },
    #[error("{step}: {source}")]
    Io { step: Step, source: std::io::Error },
    #[error("connection closed {step}")]
    Closed { step: Step },
    #[error("malformed SMTP reply {step}: {why}")]
    BadReply { step: Step, why: String },
    #[error("refused {step}: {reply}")]
    Refused { step: Step, reply: String },
    #[error("the server does not advertise STARTTLS (EHLO keywords: {extensions})")]
    NoStarttls { extensions: String },
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("--ca-file {path}: {why}")]
    CaFile { path: String, why: String },
    #[error("cannot set up the TLS client: {0}")]
    Setup(String),
}

/// Runs `fut` under the step's time limit.
pub(crate) async fn within<T>(
    step: Step,
    secs: u64,
    fut: impl Future<Output = Result<T, ProbeError>>,
) -> Result<T, ProbeError> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or(Err(ProbeError::Timeout { step, secs }))
}

/// A fresh connection, past STARTTLS for smtp://, ready for a ClientHello.
pub(crate) async fn open(
    target: &Target,
    opts: &Options,
) -> Result<(TcpStream, Option<smtp::SmtpFacts>), ProbeError> {
    let secs = opts.timeout_secs;
    let authority = target.authority();
    let tcp = within(Step::Connect, secs, async {
        let addrs: Vec<_> = tokio::net::lookup_host(authority.as_str())
            .await
            .map_err(|e| ProbeError::Resolve {
                host: target.host.clone(),
                why: e.to_string(),
            })?
            .collect();
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some((addr, e)),
            }
        }
        Err(match last {
            Some((addr, source)) => ProbeError::Connect {
                addr: addr.to_string(),
                source,
            },
            None => ProbeError::Resolve {
                host: target.host.clone(),
                why: "no addresses".into(),
            },
        })
    })
    .await?;
    let _ = tcp.set_nodelay(true);
    match target.scheme {
        Scheme::Smtp => {
            let (tcp, facts) = smtp::starttls(tcp, secs).await?;
            Ok((tcp, Some(facts)))
        }
        Scheme::Smtps | Scheme::Https => Ok((tcp, None)),
    }
}

/// Sends one legacy ClientHello on a fresh connection and reads the answer.
pub async fn legacy_probe(
    target: &Target,
    opts: &Options,
    version: LegacyVersion,
) -> Result<LegacyAnswer, ProbeError> {
    let (mut tcp, _) = open(target, opts).await?;
    let mut random = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut random)
        .map_err(|_| ProbeError::Setup("no secure random numbers".into()))?;
    let hello = client_hello(version, opts.server_name().as_deref(), random);
    within(Step::LegacyHello, opts.timeout_secs, async {
        tcp.write_all(&hello)
            .await
            .map_err(|source| ProbeError::Io {
                step: Step::LegacyHello,
                source,
            })?;
        match read_answer(&mut tcp).await {
            Ok(a) => Ok(a),
            // A reset is how some servers refuse an old hello.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(LegacyAnswer::Closed),
            Err(source) => Err(ProbeError::Io {
                step: Step::LegacyHello,
                source,
            }),
        }
    })
    .await
}

fn rustls_name(opts: &Options) -> Result<ServerName<'static>, ProbeError> {
    let name = opts
        .server_name()
        .unwrap_or_else(|| opts.target.host.clone());
    ServerName::try_from(name.clone()).map_err(|_| {
        ProbeError::Setup(format!(
            "{name:?} is not a valid DNS name or IP address (--expect-name)"
        ))
    })
}

/// Runs every check against the target. Only set-up problems (a bad
/// `--ca-file`) are errors; everything about the server is in the report.
pub async fn probe(opts: &Options) -> Result<Report, ProbeError> {
    let roots = handshake::roots(opts.ca_file.as_deref())?;
    let server_name = rustls_name(opts)?;
    let target = &opts.target;
    let mut checks = Vec::new();
    let report = |checks: Vec<Check>, negotiated, chain| {
        let verdict = checks
            .iter()
            .map(|c: &Check| c.verdict)
            .max()
            .unwrap_or(Verdict::Ok);
        Report {
            target: target.to_string(),
            checks,
            negotiated,
            chain,
            verdict,
        }
    };

    // 1. Reachability and, for smtp://, STARTTLS.
    match open(target, opts).await {
        Ok((tcp, facts)) => {
            drop(tcp);
            if let Some(f) = facts {
                checks.push(Check::new(
                    "starttls",
                    Verdict::Ok,
                    format!(
                        "advertised and accepted ({}); greeting: {}",
                        f.starttls_reply, f.banner
                    ),
                ));
            }
        }
        Err(e @ ProbeError::NoStarttls { .. }) => {
            checks.push(Check::new(
                "starttls",
                Verdict::Fail,
                format!("{e}: mail to this server travels in clear text, and senders that require TLS cannot deliver"),
            ));
            return Ok(report(checks, None, Vec::new()));
        }
        Err(e) => {
            let name = match e {
                ProbeError::Refused {
                    step: Step::Starttls,
                    ..
                } => "starttls",
                _ => "connect",
            };
            checks.push(Check::new(name, Verdict::Fail, e.to_string()));
            return Ok(report(checks, None, Vec::new()));
        }
    }

    // 2. The handshake a modern client makes; keeps the chain.
    let (cfg, recorder) = handshake::client_config(
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        roots.clone(),
        false,
    )?;
    let mut negotiated = None;
    match handshake::session(target, opts, cfg, server_name.clone(), false).await {
        Ok(s) => {
            checks.push(Check::new(
                "cipher",
                Verdict::Ok,
                format!("{} with {}", s.version, s.suite),
            ));
            negotiated = Some(Negotiated {
                version: s.version,
                suite: s.suite,
            });
        }
        Err(
            e @ (ProbeError::Handshake(_)
            | ProbeError::Timeout {
                step: Step::Handshake,
                ..
            }),
        ) => checks.push(Check::new(
            "handshake",
            Verdict::Fail,
            format!("{e}: clients limited to TLS 1.2/1.3 cannot connect"),
        )),
        Err(e) => checks.push(Check::new(
            "connect",
            Verdict::Fail,
            format!("second connection: {e}"),
        )),
    }
    let recorded = recorder.take();

    // 3. Each modern version alone.
    let mut offered13 = false;
    let mut offered12 = false;
    for (version, key) in [
        (&rustls::version::TLS13, "tls1.3"),
        (&rustls::version::TLS12, "tls1.2"),
    ] {
        let (cfg, _) = handshake::client_config(&[version], roots.clone(), false)?;
        let check = match handshake::session(target, opts, cfg, server_name.clone(), false).await {
            Ok(s) => {
                if key == "tls1.3" {
                    offered13 = true;
                } else {
                    offered12 = true;
                }
                Check::new(key, Verdict::Ok, format!("offered ({})", s.suite))
            }
            // A failure before the handshake (connection refused, a 421
            // greeting from a rate limit) says nothing about the version.
            Err(e)
                if !matches!(
                    e,
                    ProbeError::Handshake(_)
                        | ProbeError::Timeout {
                            step: Step::Handshake,
                            ..
                        }
                ) =>
            {
                Check::new(key, Verdict::Warn, format!("could not test: {e}"))
            }
            Err(e) if key == "tls1.3" => Check::new(
                key,
                Verdict::Warn,
                format!("not offered ({e}); TLS 1.3 is faster and forward-secret by design"),
            ),
            Err(e) => match legacy_probe(target, opts, LegacyVersion::Tls12Legacy).await {
                // TLS 1.2 is there, but only with suites rustls (and every
                // current browser) refuses.
                Ok(LegacyAnswer::ServerHello {
                    version: 0x0303,
                    cipher,
                }) => Check::new(
                    key,
                    Verdict::Warn,
                    format!(
                        "offered only with a weak suite (0x{cipher:04X}: CBC or RSA key exchange) that \
                         modern clients refuse ({e}); enable ECDHE with AES-GCM"
                    ),
                ),
                _ => Check::new(key, Verdict::Warn, format!("not offered ({e})")),
            },
        };
        checks.push(check);
    }
    // Without TLS 1.2 or 1.3 no current client (and no Microsoft 365
    // connector) can talk to the server at all.
    if !offered12
        && !offered13
        && let Some(c) = checks
            .iter_mut()
            .find(|c| c.name == "tls1.2" && !c.detail.starts_with("could not test"))
    {
        c.verdict = Verdict::Fail;
        c.detail
            .push_str("; TLS 1.3 is not offered either: current clients cannot connect");
    }

    // 4. Legacy versions, with hand-built hellos.
    for (version, key) in [
        (LegacyVersion::Tls11, "tls1.1"),
        (LegacyVersion::Tls10, "tls1.0"),
        (LegacyVersion::Ssl3, "ssl3"),
    ] {
        let check = match legacy_probe(target, opts, version).await {
            Ok(answer) if answer.accepts(version) => Check::new(
                key,
                Verdict::Fail,
                format!(
                    "OFFERED: the server accepted a {} hello ({}); {} is deprecated (RFC 8996/7568) and \
                     Microsoft 365 refuses it: disable it",
                    version.name(),
                    answer.describe(),
                    version.name()
                ),
            ),
            Ok(answer @ LegacyAnswer::ServerHello { .. }) => Check::new(
                key,
                Verdict::Warn,
                format!(
                    "not offered, but the server answered a {} hello with {} instead of refusing \
                     (a protocol violation, RFC 5246 E.1)",
                    version.name(),
                    answer.describe()
                ),
            ),
            Ok(answer) => Check::new(
                key,
                Verdict::Ok,
                format!("not offered ({})", answer.describe()),
            ),
            Err(e) => Check::new(key, Verdict::Warn, format!("could not test: {e}")),
        };
        checks.push(check);
    }

    // 5. The chain.
    let now = SystemTime::now();
    let mut chain = Vec::new();
    if let Some(rec) = &recorded {
        for (i, der) in rec.chain.iter().enumerate() {
            match chain::summarize(der, now) {
                Ok(c) => chain.push(c),
                Err(why) => checks.push(Check::new(
                    "chain",
                    Verdict::Fail,
                    format!("certificate [{i}] cannot be parsed: {why}"),
                )),
            }
        }
        let ca = opts.ca_file.as_ref().map(|p| p.display().to_string());
        checks.push(chain::trust_check(&rec.verdict, &chain, ca.as_deref(), now));
    }
    match chain.first() {
        Some(leaf) => {
            checks.push(chain::expiry_check(leaf, now));
            match opts.server_name() {
                Some(name) => checks.push(name_check(leaf, &name)),
                None => checks.push(Check::new(
                    "name",
                    Verdict::Warn,
                    format!(
                        "not checked: the target is an IP address; pass --expect-name with the name \
                         clients use (the certificate names {})",
                        leaf.sans.join(", ")
                    ),
                )),
            }
            if let Some(m) = &opts.msstd {
                checks.push(msstd_check(m, leaf));
            }
        }
        None => {
            let why = "no certificate to check: no TLS 1.2/1.3 handshake succeeded";
            if opts.expect_name.is_some() {
                checks.push(Check::new("name", Verdict::Fail, why));
            }
            if opts.msstd.is_some() {
                checks.push(Check::new("msstd", Verdict::Fail, why));
            }
        }
    }

    // 6. Resumption: a full handshake (with an exchange so TLS 1.3 tickets
    // arrive), then a second one that should be abbreviated.
    for (version, key, offered, how) in [
        (
            &rustls::version::TLS13,
            "resume-tls1.3",
            offered13,
            "a session ticket (RFC 8446 2.2)",
        ),
        (
            &rustls::version::TLS12,
            "resume-tls1.2",
            offered12,
            "the session id (RFC 5246 7.3)",
        ),
    ] {
        if !offered {
            continue;
        }
        let (cfg, _) = handshake::client_config(&[version], roots.clone(), true)?;
        let first = handshake::session(target, opts, cfg.clone(), server_name.clone(), true).await;
        let check = match first {
            Err(e) => Check::new(key, Verdict::Warn, format!("could not test: {e}")),
            Ok(_) => {
                match handshake::session(target, opts, cfg, server_name.clone(), false).await {
                    Ok(s) if s.resumed => {
                        Check::new(key, Verdict::Ok, format!("resumed with {how}"))
                    }
                    Ok(_) => Check::new(
                        key,
                        Verdict::Warn,
                        format!(
                            "not resumed with {how}: every connection pays for a full handshake"
                        ),
                    ),
                    Err(e) => Check::new(
                        key,
                        Verdict::Warn,
                        format!("resumption attempt failed: {e}"),
                    ),
                }
            }
        };
        checks.push(check);
    }

    Ok(report(checks, negotiated, chain))
}
