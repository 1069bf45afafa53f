//! TLS handshake load generator (and a bare rustls server for the ceiling).
//!
//! ```text
//! tls_bench --addr 127.0.0.1:PORT --mode starttls|implicit|raw \
//!           --sessions N --duration SECS [--resume] [--warmup SECS]
//! tls_bench --serve-raw PORT          # bare rustls server, no SMTP
//! ```
//!
//! Each of the N workers loops over whole sessions:
//!
//! * `starttls`: TCP connect, read 220, `EHLO bench.test`, read the reply,
//!   `STARTTLS`, read 220, TLS handshake, `QUIT` over TLS, read 221, close.
//! * `implicit`: TCP connect, TLS handshake, read 220, `QUIT`, read 221, close.
//! * `raw`: TCP connect, TLS handshake, close_notify, read until the
//!   server's close_notify (this also reads the session tickets), close.
//!   Meant for `--serve-raw`.
//!
//! The client accepts any certificate (benchmark only) but still checks the
//! handshake signatures with the provider's algorithms, so the server's
//! private-key operation and the client's verification are both paid for.
//! Without `--resume` every handshake is a full one (resumption disabled);
//! with it all workers share one `ClientConfig` whose in-memory store keeps
//! the tickets the server sends, so later handshakes resume.
//!
//! Sessions that complete inside the measurement window (after `--warmup`)
//! are counted; the rate is completions divided by the window. The last
//! line is machine-readable: `RESULT key=value ...`.

use clap::{Parser, ValueEnum};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, HandshakeKind, NamedGroup, SignatureScheme};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Starttls,
    Implicit,
    Raw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kx {
    /// The provider's default groups (aws-lc-rs: X25519MLKEM768 first, plus X25519).
    Default,
    /// X25519 key share (secp256r1 listed second: TLS 1.2 servers such as
    /// OpenSSL refuse an ECDSA P-256 certificate unless the client lists P-256).
    X25519,
    /// secp256r1 only.
    P256,
}

#[derive(Parser, Debug)]
#[command(
    about = "TLS handshake benchmark client (STARTTLS, implicit TLS, raw) and raw rustls server"
)]
struct Args {
    /// Server to connect to.
    #[arg(long, required_unless_present = "serve_raw")]
    addr: Option<SocketAddr>,
    #[arg(long, value_enum, default_value = "starttls")]
    mode: Mode,
    /// Concurrent sessions (workers).
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Measurement window in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before the window (not counted; fills ticket caches,
    /// starts server processes).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Keep session tickets and resume.
    #[arg(long)]
    resume: bool,
    /// Key-exchange groups the client offers.
    #[arg(long, value_enum, default_value = "default")]
    kx: Kx,
    /// Offer TLS 1.2 only (default: TLS 1.3 and 1.2). With --resume the
    /// client reuses the TLS 1.2 session (ID or ticket) across connections.
    #[arg(long)]
    tls12: bool,
    /// Send this SNI name (default: none, like most MTAs; the IP is the cache key).
    #[arg(long)]
    sni: Option<String>,
    /// Per-session timeout in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Server process to account CPU for (with its children, e.g. Postfix's
    /// master and its smtpd/tlsmgr processes; reaped children count through
    /// the parent's cutime/cstime).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Label printed in the RESULT line.
    #[arg(long, default_value = "")]
    label: String,
    /// Run a bare rustls server on 127.0.0.1:PORT instead (no SMTP).
    #[arg(long, value_name = "PORT")]
    serve_raw: Option<u16>,
}

fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(t) = args.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.build().expect("tokio runtime");
    let res = match args.serve_raw {
        Some(port) => rt.block_on(serve_raw(port)),
        None => rt.block_on(run_client(args)),
    };
    if let Err(e) = res {
        eprintln!("tls_bench: {e}");
        std::process::exit(1);
    }
}

// --------------------------------------------------------------------------
// Client

/// Accepts any certificate but verifies the handshake signatures.
#[derive(Debug)]
struct AnyCertCheckSignatures {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertCheckSignatures {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn client_config(
    resume: bool,
    kx: Kx,
    tls12: bool,
    tickets_per_server: usize,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut provider: CryptoProvider = rustls::crypto::aws_lc_rs::default_provider();
    match kx {
        Kx::Default => {}
        Kx::X25519 => {
            provider.kx_groups = vec![
                rustls::crypto::aws_lc_rs::kx_group::X25519,
                rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
            ]
        }
        Kx::P256 => provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::SECP256R1],
    }
    let verifier = Arc::new(AnyCertCheckSignatures {
        algs: provider.signature_verification_algorithms,
    });
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("client config: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = if resume {
        // One shared store for all workers: tickets from any session can be
        // used by the next handshake of any worker. rustls' own in-memory
        // store keeps only 8 TLS 1.3 tickets per server name, which bursts
        // of more than 8 concurrent sessions drain (measured: ~88 % resumed
        // at 20 sessions against a server sending 2 tickets per handshake),
        // so keep more.
        rustls::client::Resumption::store(Arc::new(TicketStore::new(tickets_per_server)))
    } else {
        rustls::client::Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// Client session store: like rustls' `ClientSessionMemoryCache` but with a
/// configurable number of TLS 1.3 tickets per server (each used at most
/// once, newest first).
#[derive(Debug)]
struct TicketStore {
    per_server: usize,
    servers: Mutex<HashMap<ServerName<'static>, ServerEntry>>,
}

#[derive(Debug, Default)]
struct ServerEntry {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl TicketStore {
    fn new(per_server: usize) -> TicketStore {
        TicketStore {
            per_server,
            servers: Mutex::new(HashMap::new()),
        }
    }
    fn with<R>(&self, name: ServerName<'static>, f: impl FnOnce(&mut ServerEntry) -> R) -> R {
        let mut m = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        f(m.entry(name).or_default())
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with(server_name, |e| e.kx_hint = Some(group));
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(server_name.to_owned(), |e| e.kx_hint)
    }
    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(server_name, |e| e.tls12 = Some(value));
    }
    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(server_name.to_owned(), |e| e.tls12.clone())
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.with(server_name.clone(), |e| e.tls12 = None);
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let cap = self.per_server;
        self.with(server_name, |e| {
            if e.tls13.len() >= cap {
                e.tls13.pop_front();
            }
            e.tls13.push_back(value);
        });
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.with(server_name.clone(), |e| e.tls13.pop_back())
    }
}

/// Reads one complete SMTP reply (possibly multi-line) from `s`, using and
/// keeping `buf` as the read buffer; returns the reply code.
async fn read_reply<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<u16> {
    let mut tmp = [0u8; 4096];
    loop {
        // Look for the final line (code followed by a space or line end).
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + pos + 1];
            let is_final = line.len() < 5 || line[3] != b'-';
            if is_final {
                let code = std::str::from_utf8(&line[..line.len().min(3)])
                    .ok()
                    .and_then(|c| c.parse::<u16>().ok())
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad reply line {:?}", String::from_utf8_lossy(line)),
                        )
                    })?;
                buf.drain(..start + pos + 1);
                return Ok(code);
            }
            start += pos + 1;
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "server closed (partial: {:?})",
                    String::from_utf8_lossy(buf)
                ),
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

async fn expect<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    want: u16,
    what: &str,
) -> io::Result<()> {
    let code = read_reply(s, buf).await?;
    if code != want {
        return Err(io::Error::other(format!(
            "{what}: got {code}, wanted {want}"
        )));
    }
    Ok(())
}

async fn smtp_quit<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    s.write_all(b"QUIT\r\n").await?;
    s.flush().await?;
    expect(s, buf, 221, "QUIT").await
}

struct Done {
    kind: Option<HandshakeKind>,
    /// e.g. "TLSv1_3 X25519MLKEM768 TLS13_AES_256_GCM_SHA384"
    params: String,
}

fn describe(conn: &rustls::ClientConnection) -> Done {
    let version = conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_else(|| "?".into());
    let group = conn
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_else(|| "none".into());
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_else(|| "?".into());
    Done {
        kind: conn.handshake_kind(),
        params: format!("{version}/{group}/{suite}"),
    }
}

/// One whole session; returns what the handshake was.
async fn session(
    addr: SocketAddr,
    mode: Mode,
    connector: &tokio_rustls::TlsConnector,
    name: ServerName<'static>,
) -> io::Result<Done> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    if mode == Mode::Starttls {
        expect(&mut tcp, &mut buf, 220, "greeting").await?;
        tcp.write_all(b"EHLO bench.test\r\n").await?;
        expect(&mut tcp, &mut buf, 250, "EHLO").await?;
        tcp.write_all(b"STARTTLS\r\n").await?;
        expect(&mut tcp, &mut buf, 220, "STARTTLS").await?;
        if !buf.is_empty() {
            return Err(io::Error::other("server sent data after 220 to STARTTLS"));
        }
    }
    let mut tls = connector.connect(name, tcp).await?;
    let done = describe(tls.get_ref().1);
    match mode {
        Mode::Starttls => smtp_quit(&mut tls, &mut buf).await?,
        Mode::Implicit => {
            expect(&mut tls, &mut buf, 220, "greeting").await?;
            smtp_quit(&mut tls, &mut buf).await?
        }
        Mode::Raw => {
            // close_notify, then read to the server's close_notify: this
            // also processes the tickets the server sent after the handshake.
            tls.shutdown().await?;
            let mut sink = Vec::new();
            tls.read_to_end(&mut sink).await?;
        }
    }
    Ok(done)
}

#[derive(Default)]
struct WorkerStats {
    latencies_us: Vec<u32>,
    resumed: u64,
    hrr: u64,
    errors: u64,
    first_errors: Vec<String>,
    params: BTreeMap<String, u64>,
}

/// CPU time (user+system, all threads) of this process in clock ticks.
fn self_cpu_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ": state is field 3, utime 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// (ppid, utime+stime+cutime+cstime) of a process, in clock ticks.
fn proc_cpu(pid: &str) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
    Some((f.get(1)?.parse().ok()?, n(11)? + n(12)? + n(13)? + n(14)?))
}

/// Cumulative CPU of `pid` and its live children (dead, reaped children are
/// in the parent's cutime/cstime), in clock ticks.
fn tree_cpu_ticks(pid: u32) -> Option<u64> {
    let mut total = proc_cpu(&pid.to_string())?.1;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Some((ppid, t)) = proc_cpu(name)
            && ppid == pid
        {
            total += t;
        }
    }
    Some(total)
}

/// Busy CPU time of the whole machine (all CPUs: user, nice, system, irq,
/// softirq; not idle, iowait or steal) in clock ticks.
fn machine_busy_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
}

async fn run_client(args: Args) -> Result<(), String> {
    let addr = args.addr.ok_or("--addr is required")?;
    let config = client_config(args.resume, args.kx, args.tls12, (4 * args.sessions).max(8))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name: ServerName<'static> = match &args.sni {
        Some(n) => ServerName::try_from(n.clone()).map_err(|e| format!("--sni {n}: {e}"))?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(args.warmup.max(0.0));
    let end = window_start + Duration::from_secs_f64(args.duration.max(0.1));
    let session_timeout = Duration::from_secs(args.timeout.max(1));

    let mut handles = Vec::with_capacity(args.sessions);
    for _ in 0..args.sessions.max(1) {
        let connector = connector.clone();
        let name = name.clone();
        let mode = args.mode;
        handles.push(tokio::spawn(async move {
            let mut st = WorkerStats::default();
            while Instant::now() < end {
                let t0 = Instant::now();
                let r = tokio::time::timeout(
                    session_timeout,
                    session(addr, mode, &connector, name.clone()),
                )
                .await;
                let t1 = Instant::now();
                let r = match r {
                    Ok(r) => r,
                    Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "session timed out")),
                };
                let counted = t1 >= window_start && t1 <= end;
                match r {
                    Ok(done) => {
                        if counted {
                            st.latencies_us
                                .push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                            match done.kind {
                                Some(HandshakeKind::Resumed) => st.resumed += 1,
                                Some(HandshakeKind::FullWithHelloRetryRequest) => st.hrr += 1,
                                _ => {}
                            }
                            *st.params.entry(done.params).or_default() += 1;
                        }
                    }
                    Err(e) => {
                        st.errors += 1;
                        if st.first_errors.len() < 3 {
                            st.first_errors.push(e.to_string());
                        }
                        // Do not spin on a refusing server.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            st
        }));
    }

    // CPU of this client over the window.
    tokio::time::sleep_until(window_start.into()).await;
    let server_cpu = || args.server_pid.and_then(tree_cpu_ticks);
    let (cpu0, busy0, srv0) = (self_cpu_ticks(), machine_busy_ticks(), server_cpu());
    tokio::time::sleep_until(end.into()).await;
    let (cpu1, busy1, srv1) = (self_cpu_ticks(), machine_busy_ticks(), server_cpu());

    let mut lat = Vec::new();
    let (mut resumed, mut hrr, mut errors) = (0u64, 0u64, 0u64);
    let mut first_errors = Vec::new();
    let mut params: BTreeMap<String, u64> = BTreeMap::new();
    for h in handles {
        let st = h.await.map_err(|e| format!("worker panicked: {e}"))?;
        lat.extend(st.latencies_us);
        resumed += st.resumed;
        hrr += st.hrr;
        errors += st.errors;
        for e in st.first_errors {
            if first_errors.len() < 5 && !first_errors.contains(&e) {
                first_errors.push(e);
            }
        }
        for (k, v) in st.params {
            *params.entry(k).or_default() += v;
        }
    }
    lat.sort_unstable();
    let n = lat.len() as u64;
    let window = args.duration.max(0.1);
    let rate = n as f64 / window;
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (lat.len() as f64 - 1.0)).round() as usize;
        lat[i.min(lat.len() - 1)] as f64 / 1000.0
    };
    let resumed_pct = if n > 0 {
        100.0 * resumed as f64 / n as f64
    } else {
        0.0
    };
    // Clock ticks are 100 Hz on Linux (USER_HZ).
    let client_cpu_s = match (cpu0, cpu1) {
        (Some(a), Some(b)) => (b.saturating_sub(a)) as f64 / 100.0,
        _ => f64::NAN,
    };
    let machine_busy_s = match (busy0, busy1) {
        (Some(a), Some(b)) => (b.saturating_sub(a)) as f64 / 100.0,
        _ => f64::NAN,
    };
    let server_cpu_s = match (srv0, srv1) {
        (Some(a), Some(b)) => (b.saturating_sub(a)) as f64 / 100.0,
        _ => f64::NAN,
    };
    let per_hs = |secs: f64| {
        if n > 0 {
            secs * 1e6 / n as f64
        } else {
            f64::NAN
        }
    };
    // Everything but this client (the server, its helpers, the kernel work
    // charged to them, and anything else running), per completed handshake.
    let rest_us = per_hs((machine_busy_s - client_cpu_s).max(0.0));
    let server_us = per_hs(server_cpu_s);
    let client_us = per_hs(client_cpu_s);
    // Busy time that is neither this client nor the watched server.
    let other_s = if server_cpu_s.is_nan() {
        f64::NAN
    } else {
        (machine_busy_s - client_cpu_s - server_cpu_s).max(0.0)
    };
    let params_s = params
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",");

    println!(
        "{} {:?}{} {} sessions, {:.1} s window ({:.1} s warm-up): {} handshakes, {:.0}/s, {:.1} % resumed, \
         p50 {:.2} ms, p99 {:.2} ms, {} errors, CPU: client {:.2} s, server {:.2} s, machine {:.2} s \
         (per handshake: client {:.0} us, server {:.0} us, all but client {:.0} us)",
        if args.label.is_empty() {
            "tls_bench"
        } else {
            &args.label
        },
        args.mode,
        if args.resume { " --resume" } else { "" },
        args.sessions,
        window,
        args.warmup,
        n,
        rate,
        resumed_pct,
        pct(50.0),
        pct(99.0),
        errors,
        client_cpu_s,
        server_cpu_s,
        machine_busy_s,
        client_us,
        server_us,
        rest_us,
    );
    if !params_s.is_empty() {
        println!("  negotiated: {params_s}");
    }
    for e in &first_errors {
        println!("  error: {e}");
    }
    println!(
        "RESULT label={} mode={:?} resume={} sessions={} secs={:.3} handshakes={} rate={:.1} resumed={} \
         resumed_pct={:.1} hrr={} p50_ms={:.3} p99_ms={:.3} errors={} client_cpu_s={:.2} server_cpu_s={:.2} machine_cpu_s={:.2} other_cpu_s={:.2} \
         client_us_per_hs={:.0} server_us_per_hs={:.0} rest_us_per_hs={:.0} params={}",
        if args.label.is_empty() {
            "-"
        } else {
            &args.label
        },
        args.mode,
        args.resume as u8,
        args.sessions,
        window,
        n,
        rate,
        resumed,
        resumed_pct,
        hrr,
        pct(50.0),
        pct(99.0),
        errors,
        client_cpu_s,
        server_cpu_s,
        machine_busy_s,
        other_s,
        client_us,
        server_us,
        rest_us,
        if params_s.is_empty() { "-" } else { &params_s },
    );
    if n == 0 {
        return Err(format!(
            "no handshake completed ({errors} errors{})",
            first_errors
                .first()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default()
        ));
    }
    Ok(())
}

// --------------------------------------------------------------------------
// Raw server (the ceiling)

/// A bare rustls server: an rcgen ECDSA P-256 certificate, the same server
/// settings as Gatehouse's listeners (aws-lc-rs, TLS 1.2/1.3, server order,
/// session cache, stateless tickets, 2 TLS 1.3 tickets), no SMTP. Each
/// connection: handshake, read until the client's close_notify, send ours.
async fn serve_raw(port: u16) -> Result<(), String> {
    let ck = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "raw.bench.test".to_string(),
    ])
    .map_err(|e| format!("rcgen: {e}"))?;
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("server config: {e}"))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| format!("server cert: {e}"))?;
    cfg.ignore_client_order = true;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16_384);
    cfg.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| format!("ticketer: {e}"))?;
    cfg.send_tls13_tickets = 2;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));

    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))?;
    eprintln!("tls_bench: raw rustls server on 127.0.0.1:{port} (ECDSA P-256, rcgen)");
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("tls_bench: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let fut = async {
                let mut tls = acceptor.accept(tcp).await?;
                let mut sink = Vec::new();
                tls.read_to_end(&mut sink).await?;
                tls.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(30), fut).await;
        });
    }
}
