//! kill -9 torture harness shared by tests/durability.rs (local delivery)
//! and tests/outbound_durability.rs (relay): the real binary started from
//! a config file, and SMTP load generators that record every token
//! acknowledged with 250.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
}

pub fn spawn_server(config: &std::path::Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start gatehouse");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.strip_prefix("listening: smtp ") {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Proc { child, addr };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not announce its port");
}

pub fn read_reply(r: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::ErrorKind::InvalidData.into());
        }
    }
}

/// Sends messages from `from` to `to` until the connection breaks or
/// `stop`; records the tokens acknowledged with 250.
pub fn load(
    addr: SocketAddr,
    (from, to): (&str, &str),
    tag: String,
    acked: Arc<Mutex<Vec<String>>>,
    stop: Instant,
) {
    let Ok(s) = TcpStream::connect(addr) else {
        return;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    if read_reply(&mut r).ok() != Some(220)
        || w.write_all(b"EHLO load.test\r\n").is_err()
        || read_reply(&mut r).ok() != Some(250)
    {
        return;
    }
    let mut seq = 0;
    while Instant::now() < stop {
        let token = format!("tok-{tag}-{seq}");
        seq += 1;
        let msg = format!(
            "MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\nSubject: {token}\r\n\r\ntoken: {token}\r\n{}\r\n.\r\n",
            "x".repeat(900)
        );
        if w.write_all(msg.as_bytes()).is_err() {
            return;
        }
        let codes: Vec<_> = (0..4).map(|_| read_reply(&mut r)).collect();
        match codes.as_slice() {
            [Ok(250), Ok(250), Ok(354), Ok(250)] => acked.lock().unwrap().push(token),
            _ => return,
        }
    }
}
