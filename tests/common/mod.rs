//! Shared helpers for integration tests: a server on an ephemeral port in
//! a temporary data directory, a line-oriented SMTP client, and Maildir
//! readers. Everything talks to 127.0.0.1 only.
#![allow(dead_code)]

use gatehouse::config::{Config, ConfigSource};
use gatehouse::server::RunningServer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A config for tests: one connector on 127.0.0.1:0, catch-all mailbox
/// for example.test, `extra_connector` lines appended to the connector.
pub fn config_text(data_dir: &Path, extra_connector: &str, extra: &str) -> String {
    format!(
        r#"
[server]
hostname = "mx.example.test"
data_dir = "{}"
shutdown_grace = "5s"

[queue]
retry_after = "1s"

[[receive_connector]]
name = "Default"
role = "smtp"
listen = ["127.0.0.1:0"]
{extra_connector}

[[accepted_domain]]
domain = "example.test"
type = "authoritative"

[[accepted_domain]]
domain = "relay.test"
type = "relay"

[[mailbox]]
name = "catchall"
addresses = ["@example.test"]

{extra}
"#,
        data_dir.display()
    )
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub server: RunningServer,
    pub addr: SocketAddr,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with("", "").await
    }

    pub async fn start_with(extra_connector: &str, extra: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("var");
        Self::start_in(dir, &data, extra_connector, extra).await
    }

    pub async fn start_in(
        dir: tempfile::TempDir,
        data: &Path,
        extra_connector: &str,
        extra: &str,
    ) -> TestServer {
        let text = config_text(data, extra_connector, extra);
        let cfg = Config::from_source(&ConfigSource {
            name: "test.toml".into(),
            text,
        })
        .expect("test config is valid");
        let server = gatehouse::server::start(cfg).await.expect("server starts");
        let addr = server.addr("Default").expect("listener");
        TestServer { dir, server, addr }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("var")
    }

    pub fn mailbox(&self, name: &str) -> PathBuf {
        self.data_dir().join("mail").join(name).join("new")
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }
}

/// Reads every file in a Maildir `new/` directory.
pub fn read_maildir(new_dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(new_dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// Waits (bounded) until `new_dir` holds at least `n` messages.
pub async fn wait_for_messages(new_dir: &Path, n: usize, limit: Duration) -> Vec<Vec<u8>> {
    let start = Instant::now();
    loop {
        let msgs = read_maildir(new_dir);
        if msgs.len() >= n || start.elapsed() > limit {
            return msgs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The body of a delivered message: everything after the first empty line.
pub fn body_of(msg: &[u8]) -> &[u8] {
    msg.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| &msg[p + 4..])
        .unwrap_or(&[])
}

/// A raw SMTP client that reads whole (multi-line) replies, over plain
/// TCP or, after STARTTLS, over TLS (`Client<TlsStream<TcpStream>>`).
pub struct Client<S = TcpStream> {
    pub reader: BufReader<S>,
}

/// One reply: its code and all its lines joined with '\n'.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    /// `"550 5.7.1"`-style prefix of the last line.
    pub fn starts(&self, prefix: &str) -> bool {
        self.text
            .lines()
            .last()
            .is_some_and(|l| l.starts_with(prefix))
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        Client {
            reader: BufReader::new(s),
        }
    }

    /// Connects and reads the greeting, then EHLO.
    pub async fn greeted(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        assert_eq!(c.reply().await.code, 220);
        assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
        c
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Client<S> {
    /// Wraps an established stream (e.g. after a TLS handshake).
    pub fn over(stream: S) -> Client<S> {
        Client {
            reader: BufReader::new(stream),
        }
    }

    pub async fn send(&mut self, data: &[u8]) {
        let w = self.reader.get_mut();
        w.write_all(data).await.expect("write");
        // TLS streams hold written data until flushed.
        w.flush().await.expect("flush");
    }

    /// Reads one reply; code 0 means the server closed the connection.
    pub async fn reply(&mut self) -> Reply {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
                .await
                .expect("reply within 20 s")
                .unwrap_or(0);
            if n == 0 {
                return Reply { code: 0, text };
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let more = line.as_bytes().get(3) == Some(&b'-');
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&line);
            if !more {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Reply { code, text };
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Sends a complete message with DATA; returns the final reply.
    pub async fn send_message(&mut self, from: &str, to: &[&str], body: &[u8]) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        if r.code != 250 {
            return r;
        }
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>")).await;
            if r.code != 250 {
                return r;
            }
        }
        let r = self.cmd("DATA").await;
        if r.code != 354 {
            return r;
        }
        self.send(&gatehouse::smtp::inbound::data::dot_stuff(body))
            .await;
        self.reply().await
    }

    /// Whether the server has closed the connection (reads EOF).
    pub async fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.reader.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

// ----- helpers added for limits.rs, relay.rs, protocol_log.rs, cli.rs -----

/// Reads one of the queue's counters (`t.server.queue.stats().accepted`, ...).
pub fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// Polls `cond` every 20 ms until it holds or `limit` has passed; returns
/// whether it held.
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

impl Client {
    /// The client's own address (the server's "remote endpoint").
    pub fn local_addr(&self) -> SocketAddr {
        self.reader.get_ref().local_addr().expect("local_addr")
    }
}

/// Runs a command to completion with a time limit, killing it when the
/// limit passes (so a hung binary fails the test instead of hanging CI).
pub fn run_bounded(mut cmd: std::process::Command, limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gatehouse");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for gatehouse"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("gatehouse did not finish within {limit:?}");
        }
    }
}
