//! The `gatehouse` binary as an operator runs it: --version, check-config
//! on good and bad files, serve with a port in use, and a real serve /
//! deliver / SIGTERM cycle.

mod common;
use common::config_text;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// The binary with a clean environment for its own variables.
fn gatehouse(cwd: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(cwd)
        .env_remove("GATEHOUSE_CONFIG")
        .env_remove("RUST_LOG");
    c
}

fn run(cmd: Command) -> Output {
    common::run_bounded(cmd, Duration::from_secs(20))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes a harness config (data under `dir/var`) with `extra_connector`
/// lines in the connector; returns its path and text.
fn write_config(dir: &Path, extra_connector: &str) -> (PathBuf, String) {
    let body = config_text(&dir.join("var"), extra_connector, "");
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, &body).expect("write config");
    (path, body)
}

/// 1-based number of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in config")
        + 1
}

#[test]
fn version_prints_name_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gatehouse(dir.path());
    cmd.arg("--version");
    let out = run(cmd);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim_end(), "gatehouse 0.1.0");
}

#[test]
fn check_config_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_config(dir.path(), "max_recipients = 100");
    let mut cmd = gatehouse(dir.path());
    cmd.args(["check-config", "--config"]).arg(&path);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        text(&out.stdout).trim_end(),
        format!(
            "{}: OK (1 receive connector(s), 2 accepted domain(s), 1 mailbox(es))",
            path.display()
        )
    );
    assert!(
        !dir.path().join("var").exists(),
        "check-config creates nothing"
    );
}

#[test]
fn check_config_reports_a_misspelt_key_with_position_line_and_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let (path, body) = write_config(dir.path(), "max_recipient = 5");
    let mut cmd = gatehouse(dir.path());
    cmd.args(["check-config", "--config"]).arg(&path);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    let line = line_of(&body, "max_recipient = 5");
    assert!(
        err.contains(&format!(
            "{}:{line}:1: unknown field `max_recipient`",
            path.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{line} | max_recipient = 5")),
        "the offending line is shown: {err}"
    );
    assert!(err.contains("did you mean `max_recipients`"), "{err}");
    assert!(err.contains("1 error(s) in the configuration"), "{err}");
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn check_config_reports_a_bad_network_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let (path, body) = write_config(dir.path(), "relay_networks = [\"10.0.0.0/40\"]");
    let mut cmd = gatehouse(dir.path());
    cmd.args(["check-config", "--config"]).arg(&path);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    let line = line_of(&body, "10.0.0.0/40");
    assert!(
        err.contains(&format!("{}:{line}:", path.display())),
        "file:line of the value: {err}"
    );
    assert!(err.contains("prefix length `/40` must be 0..=32"), "{err}");
    assert!(
        err.contains(&format!("{line} | relay_networks = [\"10.0.0.0/40\"]")),
        "{err}"
    );
}

/// In a multi-line array the error must point at the bad element, not at
/// the `[` of the array: `relay_networks` is a `Vec<Cidr>` (not
/// `Vec<Spanned<Cidr>>` like `listen`), so the element's span is lost.
#[test]
fn check_config_points_at_the_bad_element_of_a_multi_line_network_list() {
    let dir = tempfile::tempdir().unwrap();
    let (path, body) = write_config(
        dir.path(),
        "relay_networks = [\n    \"10.0.0.0/8\",\n    \"192.168.0.0/16\",\n    \"10.0.0.0/40\",\n]",
    );
    let mut cmd = gatehouse(dir.path());
    cmd.args(["check-config", "--config"]).arg(&path);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    let line = line_of(&body, "10.0.0.0/40");
    assert!(
        err.contains(&format!("{}:{line}:5: prefix length", path.display())),
        "expected line {line}, column 5: {err}"
    );
    assert!(
        err.contains(&format!("{line} |     \"10.0.0.0/40\",")),
        "{err}"
    );
}

#[test]
fn check_config_on_a_missing_file_says_it_cannot_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let mut cmd = gatehouse(dir.path());
    cmd.args(["check-config", "--config"]).arg(&path);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "error: {}: cannot read the configuration file: No such file or directory",
            path.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("hint: check the path given to --config"),
        "{err}"
    );
}

#[test]
fn check_config_without_a_file_validates_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gatehouse(dir.path());
    cmd.arg("check-config");
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("<embedded default>: OK ("), "{stdout}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written to the working directory"
    );
}

#[test]
fn check_config_prefers_gatehouse_toml_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "max_recipient = 5");
    let mut cmd = gatehouse(dir.path());
    cmd.arg("check-config");
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("gatehouse.toml:"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn serve_exits_2_naming_the_address_when_the_port_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (path, body) = write_config(dir.path(), "");
    std::fs::write(&path, body.replace("127.0.0.1:0", &addr.to_string())).unwrap();
    let mut cmd = gatehouse(dir.path());
    cmd.args(["serve", "--config"]).arg(&path);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr} for connector `Default`")),
        "{err}"
    );
    assert!(
        err.contains("hint: another process already listens there"),
        "{err}"
    );
    drop(taken);
}

/// A running `gatehouse serve`, killed if a test fails half-way.
struct Served {
    child: Child,
    stdout: mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Served {
    fn start(dir: &Path, config: &Path) -> Served {
        let mut child = gatehouse(dir)
            .args(["serve", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Served { child, stdout: rx }
    }

    /// The first stdout line starting with `prefix`, within `limit`.
    fn line(&self, prefix: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(e) => panic!("no stdout line starting with {prefix:?}: {e}"),
            }
        }
    }

    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// A minimal blocking SMTP client.
struct Smtp {
    r: BufReader<TcpStream>,
}

impl Smtp {
    fn connect(addr: &str) -> Smtp {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Smtp {
            r: BufReader::new(s),
        }
    }
    /// The last line of the next reply.
    fn reply(&mut self) -> String {
        loop {
            let mut l = String::new();
            self.r.read_line(&mut l).expect("reply");
            assert!(!l.is_empty(), "connection closed");
            if l.as_bytes().get(3) != Some(&b'-') {
                return l.trim_end().to_string();
            }
        }
    }
    fn cmd(&mut self, line: &str) -> String {
        self.r
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }
}

#[test]
fn serve_prints_its_address_accepts_mail_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_config(dir.path(), "");
    let mut served = Served::start(dir.path(), &path);
    let listening = served.line("listening: smtp ", Duration::from_secs(15));
    let addr = listening["listening: smtp ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{listening}"
    );

    let mut c = Smtp::connect(&addr);
    assert!(c.reply().starts_with("220 mx.example.test "));
    assert!(c.cmd("EHLO cli.example.test").starts_with("250 "));
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250 2.1.0"));
    assert!(c.cmd("RCPT TO:<bob@example.test>").starts_with("250 2.1.5"));
    assert!(c.cmd("DATA").starts_with("354 "));
    let queued = c.cmd("Subject: cli\r\n\r\nfrom the cli test\r\n.");
    assert!(queued.starts_with("250 2.6.0"), "{queued}");
    assert!(c.cmd("QUIT").starts_with("221 2.0.0"));

    let new = dir.path().join("var/mail/catchall/new");
    let end = Instant::now() + Duration::from_secs(10);
    let delivered = loop {
        let files: Vec<PathBuf> = std::fs::read_dir(&new)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        if !files.is_empty() || Instant::now() > end {
            break files;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(delivered.len(), 1);
    let mut msg = String::new();
    std::fs::File::open(&delivered[0])
        .unwrap()
        .read_to_string(&mut msg)
        .unwrap();
    assert!(msg.ends_with("\r\n\r\nfrom the cli test\r\n"), "{msg}");

    let pid = served.child.id().to_string();
    let started = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = served
        .wait(Duration::from_secs(10))
        .expect("exits within 10 s of SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?} after {:?}",
        started.elapsed()
    );
    // The listener is gone.
    assert!(TcpStream::connect(&addr).is_err());
}

/// A supervisor may stop the server as soon as it reports that it listens.
/// The SIGTERM/SIGINT handlers are installed only after the "listening:"
/// lines are printed, so a SIGTERM in that window kills the process with
/// the default action (status: signal 15) instead of a graceful stop. The
/// window is narrow, so the test tries up to 50 times.
#[test]
fn serve_exits_0_on_sigterm_sent_right_after_it_reports_listening() {
    for attempt in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_config(dir.path(), "");
        let mut child = gatehouse(dir.path())
            .args(["serve", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        // Blocking read on purpose (no thread hop): signal as early as an
        // attentive supervisor would. The child either prints or exits (EOF).
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 && !line.starts_with("listening: smtp ") {
            line.clear();
        }
        assert!(
            line.starts_with("listening: smtp "),
            "attempt {attempt}: no listening line"
        );
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let mut served = Served {
            child,
            stdout: mpsc::channel().1,
        };
        let status = served
            .wait(Duration::from_secs(10))
            .expect("exits within 10 s of SIGTERM");
        assert_eq!(status.code(), Some(0), "attempt {attempt}: {status:?}");
    }
}

#[test]
fn user_add_list_remove_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = write_config(dir.path(), "");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let mut add = gatehouse(dir.path());
    add.arg("--config")
        .arg(&cfg)
        .args(["user", "add", "alice@example.test", "--password-file"])
        .arg(&pw);
    let out = run(add);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let users = std::fs::read_to_string(dir.path().join("var/users")).unwrap();
    assert!(users.contains("alice@example.test:$argon2id$"), "{users}");
    assert!(!users.contains("s3cret"));
    let mut list = gatehouse(dir.path());
    list.arg("--config").arg(&cfg).args(["user", "list"]);
    assert_eq!(text(&run(list).stdout), "alice@example.test\n");
    let mut rm = gatehouse(dir.path());
    rm.arg("--config").arg(&cfg).args(["user", "remove", "bob"]);
    let out = run(rm);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("user `bob` does not exist"),
        "{}",
        text(&out.stderr)
    );
    let mut rm = gatehouse(dir.path());
    rm.arg("--config")
        .arg(&cfg)
        .args(["user", "remove", "alice@example.test"]);
    assert!(run(rm).status.success());
}
