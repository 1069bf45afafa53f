//! One outbound SMTP connection (RFC 5321 client side).
//!
//! ```text
//! connect --> 220 --> EHLO --> [STARTTLS --> handshake --> EHLO] --> [AUTH PLAIN]
//!         --> transaction* (MAIL, RCPT..., DATA pipelined when offered) --> QUIT
//! ```
//!
//! Everything the peer sends is bounded: reply lines at 4096 octets, 100
//! lines per reply, and each read under the connector's command timeout,
//! so a hostile or broken peer costs a timeout, never memory or a hang.
//! Bytes the peer sends after its 220 to STARTTLS, before the handshake,
//! end the session (RFC 3207 §5 response injection).

use super::tls::{Protection, TlsContext, TlsPolicy};
use crate::config::TlsLevel;
use crate::protolog::SessionLog;
use crate::queue::message::{Envelope, Recipient};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 100;

/// Any byte stream a session can run over (TCP, then TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A reply from the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl PeerReply {
    /// The RFC 3463 enhanced status of the last line, when it has one
    /// whose class agrees with the reply code.
    pub fn enhanced(&self) -> Option<String> {
        let last = self.lines.last()?;
        let status = last.get(4..)?.split(' ').next()?;
        let mut parts = status.split('.');
        let class = parts.next()?;
        let ok = parts.clone().count() == 2
            && parts
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        (ok && class.len() == 1
            && class.as_bytes().first() == self.code.to_string().as_bytes().first())
        .then(|| status.to_string())
    }
    /// Status for a DSN: the enhanced code or one derived from the class.
    pub fn status(&self) -> String {
        self.enhanced().unwrap_or_else(|| match self.code / 100 {
            2 => "2.0.0".into(),
            4 => "4.0.0".into(),
            _ => "5.0.0".into(),
        })
    }
    /// All lines joined, as the DSN's Diagnostic-Code shows them.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

/// ESMTP extensions the peer offered in its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub starttls: bool,
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub auth_plain: bool,
    pub chunking: bool,
}

impl Extensions {
    fn parse(reply: &PeerReply) -> Extensions {
        let mut e = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let kw = line.get(4..).unwrap_or("");
            let mut words = kw.split_ascii_whitespace();
            let Some(name) = words.next() else { continue };
            match name.to_ascii_uppercase().as_str() {
                "PIPELINING" => e.pipelining = true,
                "STARTTLS" => e.starttls = true,
                "SIZE" => e.size = words.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0),
                "8BITMIME" => e.eightbitmime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "DSN" => e.dsn = true,
                "CHUNKING" => e.chunking = true,
                "AUTH" => e.auth_plain |= words.any(|m| m.eq_ignore_ascii_case("PLAIN")),
                _ => {}
            }
        }
        e
    }
}

/// Why a connection could not be used. `retry_elsewhere` tells the caller
/// whether the next MX host may do better (RFC 5321 §5.1).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{host} answered {stage} with: {}", reply.text())]
    Refused {
        host: String,
        stage: &'static str,
        reply: PeerReply,
    },
    #[error("{host} does not offer STARTTLS, and TLS level {level} requires it")]
    TlsNotOffered { host: String, level: &'static str },
    #[error("TLS with {host} failed: {reason}")]
    TlsFailed { host: String, reason: String },
    #[error(
        "{host}: this session is {seen} but {domain} was seen with {best} before; refusing to downgrade (enforce_tls_memory)"
    )]
    Downgrade {
        host: String,
        domain: String,
        seen: &'static str,
        best: &'static str,
    },
    #[error("{host} sent data before the TLS handshake (RFC 3207 §5 injection)")]
    Injection { host: String },
    #[error("{host}: AUTH requires TLS; refusing to send credentials in plaintext")]
    AuthWithoutTls { host: String },
    #[error("{host}: {what}")]
    Protocol { host: String, what: String },
    #[error("{host}: timed out waiting for {stage}")]
    Timeout { host: String, stage: &'static str },
    #[error("{host}: connection lost during {stage}: {source}")]
    Io {
        host: String,
        stage: &'static str,
        source: std::io::Error,
    },
}

impl SessionError {
    /// RFC 3463 status for a DSN or the retry record.
    pub fn status(&self) -> String {
        match self {
            SessionError::Refused { reply, .. } => reply.status(),
            SessionError::TlsNotOffered { .. } => "4.7.4".into(),
            SessionError::TlsFailed { .. } | SessionError::Downgrade { .. } => "4.7.5".into(),
            SessionError::AuthWithoutTls { .. } => "4.7.0".into(),
            SessionError::Connect { .. }
            | SessionError::Timeout { .. }
            | SessionError::Io { .. } => "4.4.1".into(),
            _ => "4.5.0".into(),
        }
    }
}

/// What this session achieved, for the log, the event and the memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSummary {
    pub version: String,
    pub cipher: String,
    pub peer_thumbprint: Option<String>,
}

/// Outcome of one recipient in a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptResult {
    Delivered(PeerReply),
    /// Temporary: retry later (status, diagnostic).
    Deferred(String, String),
    /// Permanent: bounce (status, diagnostic, remote MTA answered).
    Failed(String, String),
}

/// Settings for `Session::open`.
pub struct SessionSetup<'a> {
    pub helo: &'a str,
    pub host: &'a str,
    pub domain: &'a str,
    pub policy: &'a TlsPolicy,
    pub tls: &'a TlsContext,
    /// Skip STARTTLS even if offered (second try after a failed `may`).
    pub plaintext_only: bool,
    pub credentials: Option<&'a (String, String)>,
    pub timeout: Duration,
}

/// An open, greeted session ready for transactions.
pub struct Session {
    reader: BufReader<Box<dyn Io>>,
    pub log: SessionLog,
    pub ext: Extensions,
    pub host: String,
    /// The peer's address (the MX or smart host address in use).
    pub addr: SocketAddr,
    pub protection: Protection,
    pub tls: Option<TlsSummary>,
    /// `may` found STARTTLS offered but it failed, or it was not offered.
    pub timeout: Duration,
    pub messages: usize,
}

/// Reads one bounded line (without CRLF).
async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() {
                None
            } else {
                Some(String::from_utf8_lossy(&line).into())
            });
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_REPLY_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("reply line longer than {MAX_REPLY_LINE} octets"),
            ));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            return Ok(Some(String::from_utf8_lossy(&line).into()));
        }
    }
}

impl Session {
    /// Connects to `addr` (from `source` if set) and opens the session.
    pub async fn open(
        addr: SocketAddr,
        source: Option<std::net::IpAddr>,
        connect_timeout: Duration,
        log: &crate::protolog::ProtocolLog,
        connector_id: &str,
        setup: &SessionSetup<'_>,
    ) -> Result<Session, SessionError> {
        let connect = async {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }?;
            if let Some(src) = source {
                socket.bind(SocketAddr::new(src, 0))?;
            }
            socket.connect(addr).await
        };
        let stream: TcpStream = match tokio::time::timeout(connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(SessionError::Connect { addr, source }),
            Err(_) => {
                return Err(SessionError::Connect {
                    addr,
                    source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                });
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(addr);
        let mut slog = log.session(connector_id, local, addr);
        slog.connect();
        let mut s = Session {
            reader: BufReader::new(Box::new(stream) as Box<dyn Io>),
            log: slog,
            ext: Extensions::default(),
            host: setup.host.to_string(),
            addr,
            protection: Protection::Plaintext,
            tls: None,
            timeout: setup.timeout,
            messages: 0,
        };
        match s.greet(setup).await {
            Ok(()) => Ok(s),
            Err(e) => {
                s.log.info(&e.to_string(), "Session failed");
                s.log.disconnect();
                Err(e)
            }
        }
    }

    async fn greet(&mut self, setup: &SessionSetup<'_>) -> Result<(), SessionError> {
        let greeting = self.reply("greeting").await?;
        if greeting.code != 220 {
            return Err(self.refused("the connection", greeting));
        }
        self.ehlo(setup.helo).await?;
        let level = setup.policy.level;
        let want_tls = level != TlsLevel::None && !setup.plaintext_only;
        if want_tls && self.ext.starttls {
            self.starttls(setup).await?;
            self.ehlo(setup.helo).await?;
        } else if level > TlsLevel::May {
            return Err(SessionError::TlsNotOffered {
                host: self.host.clone(),
                level: level.as_str(),
            });
        } else if level == TlsLevel::May {
            let why = if setup.plaintext_only {
                "STARTTLS failed on the previous connection; sending in plaintext"
            } else {
                "STARTTLS not offered; sending in plaintext"
            };
            self.log.info(why, "TLS level may");
        }
        if let Some((user, pass)) = setup.credentials {
            if self.tls.is_none() {
                return Err(SessionError::AuthWithoutTls {
                    host: self.host.clone(),
                });
            }
            self.auth_plain(user, pass).await?;
        }
        Ok(())
    }

    async fn ehlo(&mut self, helo: &str) -> Result<(), SessionError> {
        let r = self.command(&format!("EHLO {helo}"), "EHLO").await?;
        if r.code == 250 {
            self.ext = Extensions::parse(&r);
            return Ok(());
        }
        // RFC 5321 §3.2: fall back to HELO when EHLO is not understood.
        if r.code >= 500 {
            let r = self.command(&format!("HELO {helo}"), "HELO").await?;
            if r.code == 250 {
                self.ext = Extensions::default();
                return Ok(());
            }
            return Err(self.refused("HELO", r));
        }
        Err(self.refused("EHLO", r))
    }

    async fn starttls(&mut self, setup: &SessionSetup<'_>) -> Result<(), SessionError> {
        let r = self.command("STARTTLS", "STARTTLS").await?;
        if r.code != 220 {
            return Err(SessionError::TlsFailed {
                host: self.host.clone(),
                reason: format!("STARTTLS refused: {}", r.text()),
            });
        }
        if !self.reader.buffer().is_empty() {
            return Err(SessionError::Injection {
                host: self.host.clone(),
            });
        }
        let config = setup
            .tls
            .client_config(setup.policy, setup.host, setup.domain);
        let name = match rustls::pki_types::ServerName::try_from(setup.host.to_string()) {
            Ok(n) => n,
            Err(_) => rustls::pki_types::ServerName::try_from("invalid.invalid".to_string())
                .expect("literal is a valid name"),
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let placeholder = BufReader::new(Box::new(tokio::io::empty()) as Box<dyn Io>);
        let io = std::mem::replace(&mut self.reader, placeholder).into_inner();
        let handshake = tokio::time::timeout(self.timeout, connector.connect(name, io)).await;
        let stream = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let reason = e.to_string();
                self.log.info(&reason, "TLS negotiation failed");
                return Err(SessionError::TlsFailed {
                    host: self.host.clone(),
                    reason,
                });
            }
            Err(_) => {
                self.log.info("timeout", "TLS negotiation failed");
                return Err(SessionError::TlsFailed {
                    host: self.host.clone(),
                    reason: "handshake timed out".into(),
                });
            }
        };
        let (_, conn) = stream.get_ref();
        let certs = conn.peer_certificates().unwrap_or(&[]);
        let version = conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|| "unknown".into());
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_else(|| "unknown".into());
        let thumb = certs.first().map(|c| crate::certs::sha1_thumbprint(c));
        // The level's own verifier already passed; `assess` says whether
        // the full webpki check would pass too (for the memory).
        self.protection = match setup.policy.level {
            TlsLevel::Verify | TlsLevel::Secure => Protection::Verified,
            _ => setup.tls.assess(certs, setup.host),
        };
        let proto = match version.as_str() {
            "TLSv1_3" => "SP_PROT_TLS1_3_CLIENT",
            "TLSv1_2" => "SP_PROT_TLS1_2_CLIENT",
            _ => "SP_PROT_UNKNOWN_CLIENT",
        };
        self.log.info(
            &format!(
                "host={};thumbprint={};level={};outcome={}",
                setup.host,
                thumb.as_deref().unwrap_or("none"),
                setup.policy.level.as_str(),
                self.protection.as_str()
            ),
            "Remote certificate",
        );
        self.log.info(
            &format!(" TLS protocol {proto} negotiation succeeded using bulk encryption algorithm {cipher}"),
            "TLS negotiation succeeded",
        );
        self.tls = Some(TlsSummary {
            version,
            cipher,
            peer_thumbprint: thumb,
        });
        self.reader = BufReader::new(Box::new(stream) as Box<dyn Io>);
        Ok(())
    }

    async fn auth_plain(&mut self, user: &str, pass: &str) -> Result<(), SessionError> {
        if !self.ext.auth_plain {
            return Err(SessionError::Protocol {
                host: self.host.clone(),
                what: "credentials are configured but the peer does not offer AUTH PLAIN".into(),
            });
        }
        let token = base64_encode(format!("\0{user}\0{pass}").as_bytes());
        self.write(format!("AUTH PLAIN {token}\r\n").as_bytes(), "AUTH")
            .await?;
        // Never log the credentials.
        self.log.sent("AUTH PLAIN ****");
        let r = self.reply("AUTH").await?;
        if r.code != 235 {
            return Err(self.refused("AUTH", r));
        }
        self.log.info(user, "Outbound AUTH succeeded");
        Ok(())
    }

    fn refused(&self, stage: &'static str, reply: PeerReply) -> SessionError {
        SessionError::Refused {
            host: self.host.clone(),
            stage,
            reply,
        }
    }

    async fn write(&mut self, data: &[u8], stage: &'static str) -> Result<(), SessionError> {
        let host = self.host.clone();
        let w = self.reader.get_mut();
        let io = async {
            w.write_all(data).await?;
            w.flush().await
        };
        match tokio::time::timeout(self.timeout, io).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(SessionError::Io {
                host,
                stage,
                source,
            }),
            Err(_) => Err(SessionError::Timeout { host, stage }),
        }
    }

    async fn command(
        &mut self,
        line: &str,
        stage: &'static str,
    ) -> Result<PeerReply, SessionError> {
        self.log.sent(line);
        self.write(format!("{line}\r\n").as_bytes(), stage).await?;
        self.reply(stage).await
    }

    /// Reads one (multi-line) reply.
    async fn reply(&mut self, stage: &'static str) -> Result<PeerReply, SessionError> {
        let host = self.host.clone();
        let read = async {
            let mut lines = Vec::new();
            loop {
                let Some(line) = read_line(&mut self.reader).await? else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "peer closed the connection",
                    ));
                };
                self.log.received(&line);
                let code = line
                    .get(..3)
                    .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|c| c.parse::<u16>().ok())
                    .filter(|c| (200..600).contains(c));
                let sep = line.as_bytes().get(3).copied();
                let Some(code) = code.filter(|_| matches!(sep, None | Some(b' ') | Some(b'-')))
                else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("malformed reply line: {:.80}", line),
                    ));
                };
                let more = sep == Some(b'-');
                lines.push(line);
                if !more {
                    return Ok(PeerReply { code, lines });
                }
                if lines.len() >= MAX_REPLY_LINES {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("reply longer than {MAX_REPLY_LINES} lines"),
                    ));
                }
            }
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(SessionError::Protocol {
                    host,
                    what: e.to_string(),
                })
            }
            Ok(Err(source)) => Err(SessionError::Io {
                host,
                stage,
                source,
            }),
            Err(_) => Err(SessionError::Timeout { host, stage }),
        }
    }

    /// Sends one message to `rcpts` (index in the envelope, recipient).
    /// Per-recipient results; `Err` only when the connection is unusable
    /// afterwards (every recipient is then deferred by the caller).
    pub async fn send(
        &mut self,
        env: &Envelope,
        rcpts: &[(u32, &Recipient)],
        message: &[u8],
    ) -> Result<Vec<(u32, RcptResult)>, SessionError> {
        self.messages += 1;
        // RFC 6531 §3.4: an SMTPUTF8 message cannot go to a peer without
        // SMTPUTF8; the sender gets a DSN (5.6.7).
        if env.smtputf8 && !self.ext.smtputf8 {
            return Ok(fail_all(
                rcpts,
                "5.6.7",
                format!(
                    "{} does not support SMTPUTF8, which this message needs",
                    self.host
                ),
            ));
        }
        // RFC 6152 §3: 8-bit content may not go to a peer without
        // 8BITMIME; we do not convert it, so such a message bounces with
        // 5.6.3 (a message declared 8BITMIME but 7-bit clean goes as is).
        if env.body == Some(crate::smtp::inbound::command::BodyType::EightBitMime)
            && !self.ext.eightbitmime
            && message.iter().any(|b| *b >= 0x80)
        {
            return Ok(fail_all(
                rcpts,
                "5.6.3",
                format!(
                    "{} does not support 8BITMIME and the message has 8-bit content",
                    self.host
                ),
            ));
        }
        if let Some(max) = self.ext.size
            && message.len() as u64 > max
        {
            return Ok(fail_all(
                rcpts,
                "5.3.4",
                format!(
                    "message of {} octets exceeds {}'s SIZE limit {max}",
                    message.len(),
                    self.host
                ),
            ));
        }
        let mut mail = format!("MAIL FROM:<{}>", env.mail_from);
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        if self.ext.eightbitmime
            && let Some(b) = env.body
        {
            mail.push_str(match b {
                crate::smtp::inbound::command::BodyType::SevenBit => " BODY=7BIT",
                crate::smtp::inbound::command::BodyType::EightBitMime => " BODY=8BITMIME",
            });
        }
        if env.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.ext.dsn {
            if let Some(ret) = env.ret {
                mail.push_str(match ret {
                    crate::smtp::inbound::command::Ret::Full => " RET=FULL",
                    crate::smtp::inbound::command::Ret::Hdrs => " RET=HDRS",
                });
            }
            if let Some(envid) = &env.envid {
                mail.push_str(&format!(" ENVID={envid}"));
            }
        }
        let rcpt_lines: Vec<String> = rcpts
            .iter()
            .map(|(_, r)| {
                let mut l = format!("RCPT TO:<{}>", r.address);
                if self.ext.dsn {
                    if let Some(n) = &r.notify {
                        l.push_str(&format!(" NOTIFY={}", notify_param(n)));
                    }
                    if let Some(o) = &r.orcpt {
                        l.push_str(&format!(" ORCPT={o}"));
                    }
                }
                l
            })
            .collect();

        if self.ext.chunking {
            return self.send_bdat(&mail, &rcpt_lines, rcpts, message).await;
        }
        let (mail_reply, rcpt_replies, data_reply) = if self.ext.pipelining {
            // RFC 2920: MAIL, every RCPT and DATA in one write, then the
            // replies in order.
            let mut batch = String::new();
            self.log.sent(&mail);
            batch.push_str(&mail);
            batch.push_str("\r\n");
            for l in &rcpt_lines {
                self.log.sent(l);
                batch.push_str(l);
                batch.push_str("\r\n");
            }
            self.log.sent("DATA");
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes(), "MAIL").await?;
            let m = self.reply("MAIL").await?;
            let mut rr = Vec::with_capacity(rcpt_lines.len());
            for _ in &rcpt_lines {
                rr.push(self.reply("RCPT").await?);
            }
            let d = self.reply("DATA").await?;
            (m, rr, Some(d))
        } else {
            let m = self.command(&mail, "MAIL").await?;
            if m.code != 250 {
                (m, Vec::new(), None)
            } else {
                let mut rr = Vec::new();
                for l in &rcpt_lines {
                    rr.push(self.command(l, "RCPT").await?);
                }
                let d = if rr.iter().any(|r| r.code / 100 == 2) {
                    Some(self.command("DATA", "DATA").await?)
                } else {
                    None
                };
                (m, rr, d)
            }
        };

        let fail_all = |reply: &PeerReply| -> Vec<(u32, RcptResult)> {
            rcpts.iter().map(|(i, _)| (*i, classify(reply))).collect()
        };
        if mail_reply.code != 250 {
            if data_reply.as_ref().is_some_and(|d| d.code == 354) {
                // Pipelined DATA was accepted although MAIL was not: end it empty.
                let _ = self.command(".", "DATA").await?;
            }
            self.rset().await?;
            return Ok(fail_all(&mail_reply));
        }
        let accepted: Vec<bool> = rcpt_replies.iter().map(|r| r.code / 100 == 2).collect();
        let Some(data_reply) = data_reply else {
            self.rset().await?;
            return Ok(rcpts
                .iter()
                .zip(&rcpt_replies)
                .map(|((i, _), r)| (*i, classify(r)))
                .collect());
        };
        if data_reply.code != 354 {
            self.rset().await?;
            return Ok(rcpts
                .iter()
                .zip(&rcpt_replies)
                .map(|((i, _), r)| {
                    (
                        *i,
                        if r.code / 100 == 2 {
                            classify(&data_reply)
                        } else {
                            classify(r)
                        },
                    )
                })
                .collect());
        }
        if !accepted.iter().any(|a| *a) {
            // RFC 2920 §3.1: DATA got 354 with no valid recipient; send
            // an empty message's end so the peer discards it.
            let _ = self.command(".", "DATA").await?;
            return Ok(rcpts
                .iter()
                .zip(&rcpt_replies)
                .map(|((i, _), r)| (*i, classify(r)))
                .collect());
        }
        let body = crate::smtp::inbound::data::dot_stuff(message);
        self.write(&body, "message data").await?;
        self.log
            .info(&message.len().to_string(), "Message data sent");
        let final_reply = self.reply("end of data").await?;
        Ok(rcpts
            .iter()
            .zip(&rcpt_replies)
            .map(|((i, _), r)| {
                if r.code / 100 == 2 {
                    if final_reply.code / 100 == 2 {
                        (*i, RcptResult::Delivered(final_reply.clone()))
                    } else {
                        (*i, classify(&final_reply))
                    }
                } else {
                    (*i, classify(r))
                }
            })
            .collect())
    }

    /// RFC 3030 CHUNKING: the message goes as one `BDAT <n> LAST` chunk,
    /// byte for byte (no dot-stuffing), after MAIL and RCPT (pipelined
    /// when offered).
    async fn send_bdat(
        &mut self,
        mail: &str,
        rcpt_lines: &[String],
        rcpts: &[(u32, &Recipient)],
        message: &[u8],
    ) -> Result<Vec<(u32, RcptResult)>, SessionError> {
        let (mail_reply, rcpt_replies) = if self.ext.pipelining {
            let mut batch = String::new();
            self.log.sent(mail);
            batch.push_str(mail);
            batch.push_str("\r\n");
            for l in rcpt_lines {
                self.log.sent(l);
                batch.push_str(l);
                batch.push_str("\r\n");
            }
            self.write(batch.as_bytes(), "MAIL").await?;
            let m = self.reply("MAIL").await?;
            let mut rr = Vec::with_capacity(rcpt_lines.len());
            for _ in rcpt_lines {
                rr.push(self.reply("RCPT").await?);
            }
            (m, rr)
        } else {
            let m = self.command(mail, "MAIL").await?;
            let mut rr = Vec::new();
            if m.code == 250 {
                for l in rcpt_lines {
                    rr.push(self.command(l, "RCPT").await?);
                }
            }
            (m, rr)
        };
        if mail_reply.code != 250 {
            self.rset().await?;
            return Ok(rcpts
                .iter()
                .map(|(i, _)| (*i, classify(&mail_reply)))
                .collect());
        }
        if !rcpt_replies.iter().any(|r| r.code / 100 == 2) {
            self.rset().await?;
            return Ok(rcpts
                .iter()
                .zip(&rcpt_replies)
                .map(|((i, _), r)| (*i, classify(r)))
                .collect());
        }
        let command = format!("BDAT {} LAST", message.len());
        self.log.sent(&command);
        let mut chunk = Vec::with_capacity(command.len() + 2 + message.len());
        chunk.extend_from_slice(command.as_bytes());
        chunk.extend_from_slice(b"\r\n");
        chunk.extend_from_slice(message);
        self.write(&chunk, "message data").await?;
        self.log
            .info(&message.len().to_string(), "Message data sent (BDAT)");
        let final_reply = self.reply("end of data").await?;
        Ok(rcpts
            .iter()
            .zip(&rcpt_replies)
            .map(|((i, _), r)| {
                if r.code / 100 != 2 {
                    (*i, classify(r))
                } else if final_reply.code / 100 == 2 {
                    (*i, RcptResult::Delivered(final_reply.clone()))
                } else {
                    (*i, classify(&final_reply))
                }
            })
            .collect())
    }

    async fn rset(&mut self) -> Result<(), SessionError> {
        let r = self.command("RSET", "RSET").await?;
        if r.code != 250 {
            return Err(self.refused("RSET", r));
        }
        Ok(())
    }

    /// Polite end (RFC 5321 §4.1.1.10); errors do not matter any more.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.command("QUIT", "QUIT")).await;
        self.log.disconnect();
    }

    /// Ends after an error.
    pub fn abandon(mut self, why: &str) {
        self.log.info(why, "Session failed");
        self.log.disconnect();
    }
}

fn classify(r: &PeerReply) -> RcptResult {
    if r.code / 100 == 2 {
        RcptResult::Delivered(r.clone())
    } else if r.is_permanent() {
        RcptResult::Failed(r.status(), r.text())
    } else {
        RcptResult::Deferred(r.status(), r.text())
    }
}

fn notify_param(n: &crate::smtp::inbound::command::Notify) -> String {
    if n.never {
        return "NEVER".into();
    }
    let mut v = Vec::new();
    if n.success {
        v.push("SUCCESS");
    }
    if n.failure {
        v.push("FAILURE");
    }
    if n.delay {
        v.push("DELAY");
    }
    v.join(",")
}

/// Standard base64 (RFC 4648 §4) for AUTH PLAIN.
pub fn base64_encode(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].iter().enumerate() {
            if k <= chunk.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The same permanent failure for every recipient of a message the peer
/// cannot take (the sender gets a DSN).
fn fail_all(rcpts: &[(u32, &Recipient)], status: &str, text: String) -> Vec<(u32, RcptResult)> {
    rcpts
        .iter()
        .map(|(i, _)| (*i, RcptResult::Failed(status.into(), text.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_status_is_taken_only_when_it_matches_the_class() {
        let r = PeerReply {
            code: 550,
            lines: vec!["550 5.1.1 no such user".into()],
        };
        assert_eq!(r.enhanced().as_deref(), Some("5.1.1"));
        let r = PeerReply {
            code: 450,
            lines: vec!["450 5.1.1 odd".into()],
        };
        assert_eq!(r.status(), "4.0.0");
        let r = PeerReply {
            code: 451,
            lines: vec!["451 try later".into()],
        };
        assert_eq!(r.status(), "4.0.0");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn ehlo_extensions_are_parsed() {
        let r = PeerReply {
            code: 250,
            lines: vec![
                "250-mx.test".into(),
                "250-PIPELINING".into(),
                "250-SIZE 1000".into(),
                "250-AUTH LOGIN PLAIN".into(),
                "250 STARTTLS".into(),
            ],
        };
        let e = Extensions::parse(&r);
        assert!(e.pipelining && e.starttls && e.auth_plain);
        assert_eq!(e.size, Some(1000));
        assert!(!e.dsn);
    }
}
