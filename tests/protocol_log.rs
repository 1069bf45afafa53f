//! The SMTP receive protocol log as written by a real session: header
//! block, every field of every line, and `protocol_log = false`.

mod common;
use common::*;
use gatehouse::protolog::{Record, parse_line};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const FIELDS: &str = "date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data,context";

/// `RECV*.LOG` files of the receive log, sorted by name.
fn recv_logs(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("log").join("protocol").join("SmtpReceive");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("RECV") && n.ends_with(".LOG"))
        })
        .collect();
    files.sort();
    files
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm),
/// written independently of the server's own formatter.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DDTHH:MM:SS.mmmZ` strictly into ms since the epoch.
fn parse_date_time(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24 {
        return None;
    }
    for (i, c) in b.iter().enumerate() {
        let ok = match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        };
        if !ok {
            return None;
        }
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().ok();
    let (y, mo, d, h, mi, se, ms) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
        n(20..23)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se;
    Some((secs * 1000 + ms) as u64)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// What the client did and saw, in order: `('<', command)` or
/// `('>', reply line)`.
struct Transcript {
    events: Vec<(char, String)>,
    client: Client,
}

impl Transcript {
    async fn greet(addr: SocketAddr) -> Transcript {
        let mut client = Client::connect(addr).await;
        let r = client.reply().await;
        assert_eq!(r.code, 220);
        let mut t = Transcript {
            events: Vec::new(),
            client,
        };
        t.saw(&r);
        t
    }
    fn saw(&mut self, r: &Reply) {
        for l in r.text.lines() {
            self.events.push(('>', l.to_string()));
        }
    }
    async fn cmd(&mut self, line: &str) -> Reply {
        self.events.push(('<', line.to_string()));
        let r = self.client.cmd(line).await;
        self.saw(&r);
        r
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn session_is_logged_with_every_field_in_exchange_format() {
    let started = now_ms();
    let t = TestServer::start().await;
    let server_addr = t.addr;
    let mut s = Transcript::greet(t.addr).await;
    let client_addr = s.client.local_addr();
    assert_eq!(s.cmd("EHLO client.example.test").await.code, 250);
    assert!(s.cmd("MAIL FROM:<a@sender.test>").await.starts("250 2.1.0"));
    assert!(
        s.cmd("RCPT TO:<bob@example.test>")
            .await
            .starts("250 2.1.5")
    );
    assert_eq!(s.cmd("DATA").await.code, 354);
    // A comma and a quote in the data: never logged, only its size.
    let body = b"Subject: logged, \"quoted\"\r\n\r\nbody line\r\n";
    s.client
        .send(&gatehouse::smtp::inbound::data::dot_stuff(body))
        .await;
    let r = s.client.reply().await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    s.events.push(('*', body.len().to_string()));
    s.saw(&r);
    assert!(s.cmd("QUIT").await.starts("221 2.0.0"));
    assert!(s.client.is_closed().await);

    let TestServer { dir, server, .. } = t;
    let data_dir = dir.path().join("var");
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown");
    let finished = now_ms();

    let files = recv_logs(&data_dir);
    assert_eq!(files.len(), 1, "one log file: {files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    let raw = std::fs::read_to_string(&files[0]).expect("read log");
    assert!(raw.ends_with("\r\n"), "lines end in CRLF");
    let lines: Vec<&str> = raw.split("\r\n").filter(|l| !l.is_empty()).collect();

    // Header block.
    assert_eq!(lines[0], "#Software: Gatehouse");
    assert_eq!(lines[1], format!("#Version: {}", gatehouse::VERSION));
    assert_eq!(lines[1], "#Version: 0.1.0");
    assert_eq!(lines[2], "#Log-type: SMTP Receive Protocol Log");
    let date = lines[3].strip_prefix("#Date: ").expect("#Date: line");
    let date_ms = parse_date_time(date).unwrap_or_else(|| panic!("#Date: {date:?}"));
    assert!(
        date_ms >= started.saturating_sub(1000) && date_ms <= finished + 1000,
        "#Date: {date}"
    );
    assert_eq!(lines[4], format!("#Fields: {FIELDS}"));
    // File name carries the same UTC date.
    let ymd = date[..10].replace('-', "");
    assert!(
        name.starts_with(&format!("RECV{ymd}-")) && name.ends_with(".LOG"),
        "{name}"
    );

    // Records.
    let records: Vec<Record> = lines[5..]
        .iter()
        .map(|l| {
            assert!(!l.starts_with('#'), "a second header block: {l}");
            parse_line(l).unwrap_or_else(|| panic!("unparseable line {l:?}"))
        })
        .collect();
    let session = &records[0].session_id;
    assert_eq!(session.len(), 16, "{session}");
    assert!(
        session
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
        "16 upper-case hex digits: {session}"
    );
    let mut last_ms = 0;
    for (i, r) in records.iter().enumerate() {
        let ms =
            parse_date_time(&r.date_time).unwrap_or_else(|| panic!("date-time {:?}", r.date_time));
        assert!(
            ms >= started.saturating_sub(1000) && ms <= finished + 1000,
            "{r:?}"
        );
        assert!(ms >= last_ms, "date-time goes backwards at {r:?}");
        last_ms = ms;
        assert_eq!(r.connector_id, "MX\\Default", "{r:?}");
        assert_eq!(&r.session_id, session, "{r:?}");
        assert_eq!(
            r.sequence_number as usize, i,
            "sequence numbers count from 0 without gaps: {r:?}"
        );
        assert_eq!(r.local_endpoint, server_addr.to_string(), "{r:?}");
        assert_eq!(r.remote_endpoint, client_addr.to_string(), "{r:?}");
    }
    let first = records.first().unwrap();
    let last = records.last().unwrap();
    assert_eq!(
        (first.event, first.data.as_str(), first.context.as_str()),
        ('+', "", "")
    );
    assert_eq!(
        (last.event, last.data.as_str(), last.context.as_str()),
        ('-', "", "")
    );
    assert!(
        records[1..records.len() - 1]
            .iter()
            .all(|r| r.event != '+' && r.event != '-'),
        "+ and - only at the ends"
    );

    // Everything in between is exactly what went over the wire, in order.
    let logged: Vec<(char, String)> = records[1..records.len() - 1]
        .iter()
        .map(|r| (r.event, r.data.clone()))
        .collect();
    assert_eq!(logged, s.events);
    for r in &records[1..records.len() - 1] {
        match r.event {
            '<' | '>' => assert_eq!(r.context, "", "{r:?}"),
            '*' => assert_eq!(r.context, "Message data received", "{r:?}"),
            e => panic!("unexpected event {e}"),
        }
    }
    // The multi-line EHLO reply is one `>` line per reply line.
    let ehlo_lines = records
        .iter()
        .filter(|r| r.event == '>' && r.data.starts_with("250-"))
        .count();
    // Eight keyword lines follow the greeting line, STARTTLS last.
    assert_eq!(ehlo_lines, 8, "EHLO continuation lines");
    assert!(
        records
            .iter()
            .any(|r| r.event == '>' && r.data == "250 STARTTLS")
    );
    // The message body itself is not in the log.
    assert!(!raw.contains("body line"));
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_command_bytes_are_logged_on_one_line() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    c.send(b"NOOP a,\"b\"\x01c\r\n").await;
    assert!(c.reply().await.starts("500 5.5.2"));
    assert!(c.cmd("QUIT").await.starts("221 2.0.0"));
    let TestServer { dir, server, .. } = t;
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown");
    let files = recv_logs(&dir.path().join("var"));
    let raw = std::fs::read_to_string(&files[0]).unwrap();
    let records: Vec<Record> = raw.lines().filter_map(parse_line).collect();
    let received: Vec<&str> = records
        .iter()
        .filter(|r| r.event == '<')
        .map(|r| r.data.as_str())
        .collect();
    // The control character becomes a space; comma and quotes survive the
    // CSV quoting.
    assert_eq!(
        received,
        ["EHLO client.example.test", "NOOP a,\"b\" c", "QUIT"]
    );
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.sequence_number as usize, i);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sessions_get_distinct_ids_and_their_own_sequence_numbers() {
    let t = TestServer::start().await;
    let mut a = Client::greeted(t.addr).await;
    let mut b = Client::greeted(t.addr).await;
    assert!(a.cmd("NOOP").await.starts("250 2.0.0"));
    assert!(b.cmd("NOOP").await.starts("250 2.0.0"));
    assert!(a.cmd("QUIT").await.starts("221 2.0.0"));
    assert!(b.cmd("QUIT").await.starts("221 2.0.0"));
    let (a_addr, b_addr) = (a.local_addr().to_string(), b.local_addr().to_string());
    let TestServer { dir, server, .. } = t;
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown");
    let raw = std::fs::read_to_string(&recv_logs(&dir.path().join("var"))[0]).unwrap();
    let records: Vec<Record> = raw.lines().filter_map(parse_line).collect();
    let of = |remote: &str| {
        records
            .iter()
            .filter(|r| r.remote_endpoint == remote)
            .cloned()
            .collect::<Vec<_>>()
    };
    let (ra, rb) = (of(&a_addr), of(&b_addr));
    assert_eq!(ra.len() + rb.len(), records.len());
    assert_ne!(ra[0].session_id, rb[0].session_id);
    for rs in [ra, rb] {
        assert!(rs.iter().all(|r| r.session_id == rs[0].session_id));
        let seq: Vec<u32> = rs.iter().map(|r| r.sequence_number).collect();
        assert_eq!(seq, (0..rs.len() as u32).collect::<Vec<_>>());
        assert_eq!(rs[0].event, '+');
        assert_eq!(rs.last().unwrap().event, '-');
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_log_false_writes_no_session_lines() {
    let t = TestServer::start_with("protocol_log = false", "").await;
    let mut c = Client::greeted(t.addr).await;
    let r = c
        .send_message(
            "a@sender.test",
            &["bob@example.test"],
            b"Subject: quiet\r\n\r\nquiet\r\n",
        )
        .await;
    assert!(r.starts("250 2.6.0"), "{r:?}");
    assert!(c.cmd("QUIT").await.starts("221 2.0.0"));
    let TestServer { dir, server, .. } = t;
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown");
    let data_dir = dir.path().join("var");
    let records: Vec<Record> = recv_logs(&data_dir)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter_map(parse_line)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(records.is_empty(), "{records:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_log_false_on_one_connector_leaves_only_the_other_connectors_sessions() {
    let other =
        "[[receive_connector]]\nname = \"Other\"\nrole = \"smtp\"\nlisten = [\"127.0.0.1:0\"]\n";
    let t = TestServer::start_with("protocol_log = false", other).await;
    let other_addr = t.server.addr("Other").expect("second connector");
    let mut quiet = Client::greeted(t.addr).await;
    assert!(quiet.cmd("NOOP").await.starts("250 2.0.0"));
    assert!(quiet.cmd("QUIT").await.starts("221 2.0.0"));
    let mut logged = Client::greeted(other_addr).await;
    assert!(logged.cmd("QUIT").await.starts("221 2.0.0"));
    let TestServer { dir, server, .. } = t;
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown");
    let files = recv_logs(&dir.path().join("var"));
    assert_eq!(files.len(), 1);
    let records: Vec<Record> = std::fs::read_to_string(&files[0])
        .unwrap()
        .lines()
        .filter_map(parse_line)
        .collect();
    assert!(!records.is_empty());
    assert!(
        records
            .iter()
            .all(|r| r.connector_id == "MX\\Other" && r.local_endpoint == other_addr.to_string()),
        "{records:?}"
    );
    let received: Vec<&str> = records
        .iter()
        .filter(|r| r.event == '<')
        .map(|r| r.data.as_str())
        .collect();
    assert_eq!(received, ["EHLO client.example.test", "QUIT"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn log_lines_reach_the_file_within_a_few_seconds_without_shutdown() {
    let t = TestServer::start().await;
    let mut c = Client::greeted(t.addr).await;
    assert!(c.cmd("QUIT").await.starts("221 2.0.0"));
    let data_dir = t.data_dir();
    let found = wait_until(Duration::from_secs(5), || {
        recv_logs(&data_dir)
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .any(|raw| raw.lines().filter_map(parse_line).any(|r| r.event == '-'))
    })
    .await;
    assert!(found, "the writer flushes at least once a second");
}
