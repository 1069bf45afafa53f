//! Reload: a bad configuration is refused with file:line:col and the old
//! one keeps serving; a good one changes accepted domains, mailboxes and
//! the banner for new connections; settings that need a restart are named.
//! Through the admin API in-process, through `gatehouse reload` and
//! `gatehouse log level`, and through SIGHUP on a real `gatehouse serve`.

mod admin_support;
mod common;

use admin_support::*;
use common::*;
use gatehouse::config::Config;
use gatehouse::server::{ConfigOrigin, RunningServer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// Event levels are process-wide and a reload re-applies the file's
/// levels, so the in-process tests take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NEW_DOMAIN: &str = "[[accepted_domain]]\ndomain = \"new.test\"\ntype = \"authoritative\"\n\n[[mailbox]]\nname = \"newbox\"\naddresses = [\"@new.test\"]\n";

/// A free loopback port (bound then released: the CLI needs a fixed
/// port in the file it reads).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

async fn start(path: &Path) -> RunningServer {
    let (cfg, _) = Config::load(Some(path)).expect("valid config");
    gatehouse::server::start_from(cfg, ConfigOrigin::Load(Some(path.to_path_buf())))
        .await
        .expect("server starts")
}

/// `gatehouse_config_reloads_total{result}` from a scrape.
fn reloads(metrics: &str, result: &str) -> f64 {
    sample(
        metrics,
        &format!("gatehouse_config_reloads_total{{result=\"{result}\"}}"),
    )
    .expect("reload counter")
}

/// The reply to RCPT TO:<rcpt> in a fresh session.
async fn rcpt(addr: SocketAddr, to: &str) -> Reply {
    let mut c = Client::greeted(addr).await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@client.test>").await;
    c.cmd(&format!("RCPT TO:<{to}>")).await
}

#[tokio::test]
async fn bad_config_is_refused_and_good_one_applies_to_new_sessions() {
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let path = dir.path().join("gatehouse.toml");
    let admin_section = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let base = config_text(&data, "", admin_section);
    write(&path, &base);
    let server = start(&path).await;
    let smtp = server.addr("Default").unwrap();
    let admin = server.admin.unwrap();
    let token = token(&data);

    assert!(rcpt(smtp, "x@new.test").await.starts("550 5.7.1"));
    let r = call(admin, "GET", "/metrics", Some(&token)).await;
    let (refused0, applied0) = (reloads(&r.body, "refused"), reloads(&r.body, "applied"));

    // A typo: refused with the position, nothing changes.
    let bad = base.replace("role = \"smtp\"", "role = \"smtp\"\nmax_recipient = 5");
    write(&path, &bad);
    let line = bad
        .lines()
        .position(|l| l.starts_with("max_recipient"))
        .unwrap()
        + 1;
    let r = call(admin, "POST", "/reload", Some(&token)).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let errors = body["errors"].as_str().unwrap();
    assert!(
        errors.contains(&format!("{}:{line}:1", path.display())),
        "{errors}"
    );
    assert!(errors.contains("unknown field `max_recipient`"), "{errors}");
    assert_eq!(
        rcpt(smtp, "y@example.test").await.code,
        250,
        "old config serves"
    );
    assert!(rcpt(smtp, "x@new.test").await.starts("550 5.7.1"));

    // A semantic error is refused too (mailbox of a domain not accepted).
    write(
        &path,
        &format!("{base}\n[[mailbox]]\nname = \"orphan\"\naddresses = [\"@orphan.test\"]\n"),
    );
    let r = call(admin, "POST", "/reload", Some(&token)).await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("not an accepted domain"), "{}", r.body);

    // A good one: new domain and mailbox, new banner.
    let good = config_text(
        &data,
        "banner = \"reloaded banner\"",
        &format!("{admin_section}\n{NEW_DOMAIN}"),
    );
    write(&path, &good);
    let r = call(admin, "POST", "/reload", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let report: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(
        report["restart_needed"].as_array().unwrap().is_empty(),
        "{}",
        r.body
    );
    assert!(
        report["applied"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("accepted domains (3)")),
        "{}",
        r.body
    );
    assert_eq!(rcpt(smtp, "x@new.test").await.code, 250);
    let mut c = Client::connect(smtp).await;
    let greeting = c.reply().await;
    assert_eq!(greeting.text, "220 mx.example.test reloaded banner");
    assert_eq!(c.cmd("EHLO client.test").await.code, 250);
    let r = c
        .send_message(
            "a@client.test",
            &["x@new.test"],
            b"Subject: r\r\n\r\nafter reload\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    let got = wait_for_messages(
        &data.join("mail").join("newbox").join("new"),
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(got.len(), 1, "delivered to the mailbox added by the reload");

    // Settings that need a restart are named, and not applied.
    let moved = good.replace(&data.display().to_string(), "/tmp/elsewhere-gatehouse-test");
    let moved = moved.replace(
        "[queue]\nretry_after = \"1s\"",
        "[queue]\nretry_after = \"2s\"",
    );
    write(&path, &moved);
    let r = call(admin, "POST", "/reload", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let report: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let restart: Vec<&str> = report["restart_needed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(restart, ["server.data_dir", "[queue]"], "{}", r.body);
    assert!(!Path::new("/tmp/elsewhere-gatehouse-test").exists());

    // Certificates: a new one in the store is live after the reload (the
    // 2 s watcher may get there first; either way the expiry gauge shows
    // it right after).
    let store = gatehouse::certs::CertStore::open(&data).unwrap();
    let info = store
        .new_self_signed(
            &["mx.example.test".to_string()],
            gatehouse::certs::KeyKind::EcdsaP256,
            gatehouse::certs::Services {
                smtp: true,
                https: false,
            },
        )
        .unwrap();
    let r = call(admin, "POST", "/reload", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("certificates ("), "{}", r.body);
    let r = call(admin, "GET", "/metrics", Some(&token)).await;
    let days = sample(
        &r.body,
        &format!(
            "gatehouse_certificate_expiry_days{{thumbprint=\"{}\"",
            info.sha1
        ),
    )
    .unwrap_or_else(|| panic!("new certificate not in /metrics:\n{}", r.body));
    assert!(days > 300.0);

    // Both outcomes are events and counted.
    let r = call(admin, "GET", "/events?category=Config", Some(&token)).await;
    let events: Vec<serde_json::Value> = serde_json::from_str(&r.body).unwrap();
    let refused = events
        .iter()
        .filter(|e| e["name"] == "ConfigReloadRefused")
        .count();
    assert_eq!(refused, 2, "{}", r.body);
    let last = events.last().unwrap();
    assert_eq!(last["name"], "ConfigReloaded");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("needs a restart: server.data_dir; [queue]"),
        "{last}"
    );
    let r = call(admin, "GET", "/metrics", Some(&token)).await;
    // Counters are process-wide: compare with the values at the start.
    assert_eq!(reloads(&r.body, "refused") - refused0, 2.0);
    assert_eq!(reloads(&r.body, "applied") - applied0, 3.0);
    server.shutdown().await;
}

fn gatehouse(config: &Path, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("GATEHOUSE_CONFIG");
    run_bounded(c, Duration::from_secs(30))
}

#[tokio::test]
async fn cli_reload_and_log_level_talk_to_the_running_server() {
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let path = dir.path().join("gatehouse.toml");
    let admin_section = format!("[admin]\nlisten = \"127.0.0.1:{}\"\n", free_port());
    let base = config_text(&data, "", &admin_section);
    write(&path, &base);
    let server = start(&path).await;
    let smtp = server.addr("Default").unwrap();

    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || {
        gatehouse(&p, &["log", "level", "set", "Tls", "Expert"])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        gatehouse::events::level(gatehouse::events::Category::Tls),
        gatehouse::events::Verbosity::Expert
    );
    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || gatehouse(&p, &["log", "level", "list"]))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["Tls", "Expert"])),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["Certificates", "Low"]))
    );
    let p = path.clone();
    let out =
        tokio::task::spawn_blocking(move || gatehouse(&p, &["log", "level", "set", "Tls", "Loud"]))
            .await
            .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // Bad file: exit 1, the errors with their position on stderr.
    write(
        &path,
        &base.replace("type = \"relay\"", "type = \"relayed\""),
    );
    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || gatehouse(&p, &["reload"]))
        .await
        .unwrap_or_else(|_| panic!());
    // The CLI reads the same file to find the API: it refuses it itself.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gatehouse.toml:"), "{err}");
    assert!(err.contains("not reloaded"), "{err}");
    assert_eq!(rcpt(smtp, "y@example.test").await.code, 250);

    // Good file: applied.
    write(&path, &format!("{base}\n{NEW_DOMAIN}"));
    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || gatehouse(&p, &["reload"]))
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"applied\""));
    assert_eq!(rcpt(smtp, "x@new.test").await.code, 250);
    server.shutdown().await;

    // Server gone: exit 2 naming the address.
    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || gatehouse(&p, &["reload"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
}

/// A `gatehouse serve` child, killed if the test fails half-way.
struct Served(std::process::Child);
impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kill(sig: &str, pid: u32) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_reloads_a_running_serve() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let path: PathBuf = dir.path().join("gatehouse.toml");
    let port = free_port();
    let base = config_text(&data, "", "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    write(&path, &base);
    let child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .env_remove("GATEHOUSE_CONFIG")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut served = Served(child);
    let smtp: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(smtp).await.is_err() {
        assert!(Instant::now() < deadline, "serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rcpt(smtp, "x@new.test").await.starts("550 5.7.1"));

    // A bad file and SIGHUP: still serving the old configuration.
    write(
        &path,
        &base.replace("type = \"relay\"", "type = \"relayed\""),
    );
    kill("-HUP", pid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rcpt(smtp, "y@example.test").await.code, 250);

    write(&path, &format!("{base}\n{NEW_DOMAIN}"));
    kill("-HUP", pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rcpt(smtp, "x@new.test").await.code != 250 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not apply the new domain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill("-TERM", pid);
    let status = served.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    use std::io::Read;
    served
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("ConfigReloadRefused"), "{err}");
    assert!(err.contains("ConfigReloaded"), "{err}");
    assert!(err.contains("unknown variant `relayed`"), "{err}");
}

/// Connects, reads the greeting (bounded); `None` when refused.
async fn greeting(addr: SocketAddr) -> Option<String> {
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let mut c = Client::over(stream);
    let r = tokio::time::timeout(Duration::from_secs(5), c.reply())
        .await
        .ok()?;
    Some(r.text)
}

/// Waits (bounded) until nothing accepts on `addr` any more.
async fn closed(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reload_adds_removes_and_rebinds_listeners() {
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let path = dir.path().join("gatehouse.toml");
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let admin_section = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let second = format!(
        "[[receive_connector]]\nname = \"Second\"\nrole = \"smtp\"\nlisten = [\"127.0.0.1:{p1}\"]\nbanner = \"second\"\n"
    );
    write(
        &path,
        &config_text(&data, "", &format!("{admin_section}\n{second}")),
    );
    let server = start(&path).await;
    let admin = server.admin.unwrap();
    let token = token(&data);
    let first = server.addr("Default").unwrap();
    let second_addr: SocketAddr = format!("127.0.0.1:{p1}").parse().unwrap();
    assert!(greeting(second_addr).await.unwrap().ends_with(" second"));

    // Default moves to p2, Second goes, Third comes on p3, and a
    // submission connector needs AUTH, which was not opened at start.
    let third = format!(
        "[[receive_connector]]\nname = \"Third\"\nrole = \"smtp\"\nlisten = [\"127.0.0.1:{p3}\"]\nbanner = \"third\"\n\n[[receive_connector]]\nname = \"Sub\"\nrole = \"submission\"\nlisten = [\"127.0.0.1:{}\"]\n",
        free_port()
    );
    let moved = config_text(&data, "", &format!("{admin_section}\n{third}")).replacen(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:{p2}\"]"),
        1,
    );
    write(&path, &moved);
    let r = call(admin, "POST", "/reload", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let report: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let applied = report["applied"].to_string();
    assert!(
        applied.contains(&format!(
            "receive connector `Third` added, listening on 127.0.0.1:{p3}"
        )),
        "{applied}"
    );
    assert!(
        applied.contains("receive connector `Second` removed"),
        "{applied}"
    );
    assert_eq!(
        report["restart_needed"],
        serde_json::json!([
            "receive connector `Sub`: needs AUTH, and no listener offered AUTH at start"
        ]),
        "{}",
        r.body
    );

    let moved_to: SocketAddr = format!("127.0.0.1:{p2}").parse().unwrap();
    let third_addr: SocketAddr = format!("127.0.0.1:{p3}").parse().unwrap();
    assert!(
        greeting(moved_to)
            .await
            .unwrap()
            .starts_with("220 mx.example.test")
    );
    assert!(greeting(third_addr).await.unwrap().ends_with(" third"));
    assert!(closed(first).await, "Default's old address still accepts");
    assert!(closed(second_addr).await, "removed connector still accepts");
    let mut now: Vec<_> = server.live.listeners();
    now.sort();
    assert_eq!(
        now,
        [
            ("Default".to_string(), moved_to),
            ("Third".to_string(), third_addr)
        ]
    );

    // An address that cannot be bound: that change fails, named in the
    // reply; the rest is applied and the connector keeps its old address.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    write(
        &path,
        &moved.replace(&format!("127.0.0.1:{p3}"), &taken.to_string()),
    );
    let r = call(admin, "POST", "/reload", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let report: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let failed = report["not_applied"].to_string();
    assert!(
        failed.contains(&format!("cannot listen on {taken} for connector `Third`")),
        "{}",
        r.body
    );
    assert!(greeting(third_addr).await.unwrap().ends_with(" third"));
    server.shutdown().await;
    assert!(closed(moved_to).await && closed(third_addr).await);
}
