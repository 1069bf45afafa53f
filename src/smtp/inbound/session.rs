//! One SMTP session, from greeting to close.
//!
//! Phases: greeted → (EHLO/HELO) → transaction (MAIL → RCPT* → DATA or
//! BDAT*) → back to greeted. Replies are buffered and written only when
//! no complete command is left in the input (RFC 2920: answer a pipelined
//! group in one write, never block reading while replies are pending).
//!
//! Bounds, all from the connector's config: command line length (512 plus
//! the extensions' allowances), message size (SIZE parameter and while
//! receiving), recipients, protocol errors, and a timeout per phase
//! (command, data) plus one for the whole session.

use super::command::{self, Command, MailFrom};
use super::data::{DataReceiver, LineEndingCheck, Violation};
use super::policy::AcceptancePolicy;
use super::stream::Stream;
use crate::config::ReceiveConnectorConfig;
use crate::protolog::{ProtocolLog, SessionLog};
use crate::queue::Queue;
use crate::queue::message::{Envelope, QueueId, Recipient};
use crate::shutdown::Shutdown;
use crate::smtp::address::Path;
use crate::smtp::reply::Reply;
use crate::tls::Negotiated;
use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// RFC 5321 §4.5.3.1.4 allows 512 octets; RFC 1870 (SIZE) adds 26,
/// RFC 6152 (BODY) 20, RFC 6531 (SMTPUTF8) 10 and RFC 3461 (DSN) 100 on
/// MAIL and 500 on RCPT. The longest possible legal line is the limit.
pub const MAX_COMMAND_LINE: usize = 512 + 26 + 20 + 10 + 600;

/// Everything sessions of one connector share.
pub struct ConnectorContext {
    pub config: ReceiveConnectorConfig,
    pub name: String,
    pub fqdn: String,
    pub banner: String,
    /// `HOST\Connector`, as Exchange writes it in protocol logs.
    pub connector_id: String,
    /// `config.relay_networks` without their config positions.
    pub relay_networks: Vec<crate::config::Cidr>,
    pub policy: Arc<AcceptancePolicy>,
    pub queue: Queue,
    pub protolog: ProtocolLog,
    pub shutdown: Shutdown,
    /// TLS for STARTTLS (`smtp`) or from the first byte (`smtps`); `None`
    /// when the connector offers no TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// TLS before the greeting (port 465 style, RFC 8314).
    pub implicit_tls: bool,
    /// SMTP AUTH users; `None` when the connector offers no AUTH.
    pub users: Option<Arc<crate::auth::LiveUsers>>,
    /// Wait before answering a failed AUTH (slows password guessing).
    pub auth_failure_delay: Duration,
    /// Failed AUTHs per client address, shared by every connector.
    pub auth_lockout: Arc<crate::auth::lockout::AuthLockout>,
    /// MAIL needs AUTH first (`submission`, RFC 6409 §4.3).
    pub require_auth: bool,
    /// This connector's counters (sessions, accepted, rejections).
    pub metrics: Arc<crate::admin::metrics::ConnectorMetrics>,
}

struct Transaction {
    mail: MailFrom,
    recipients: Vec<Recipient>,
    bdat: Option<Bdat>,
}

struct Bdat {
    data: Vec<u8>,
    size: u64,
    check: LineEndingCheck,
    failed: Option<Reply>,
}

enum Input {
    Line(Vec<u8>),
    TooLong,
    Closed,
    TimedOut,
    SessionExpired,
    ShuttingDown,
}

enum Flow {
    Continue,
    Close,
}

pub struct Session {
    ctx: Arc<ConnectorContext>,
    stream: Stream,
    tls: Option<Negotiated>,
    /// The authenticated user, after a successful AUTH.
    user: Option<String>,
    peer: SocketAddr,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    log: SessionLog,
    helo: Option<(String, bool)>,
    tx: Option<Transaction>,
    errors: usize,
    deadline: Instant,
    /// Discarding an over-long line until its LF.
    skipping: bool,
}

impl Session {
    pub fn new(
        ctx: Arc<ConnectorContext>,
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Session {
        let log = ctx.protolog.session(&ctx.connector_id, local, peer);
        ctx.metrics.sessions.inc();
        let deadline = Instant::now() + ctx.config.connection_timeout.0;
        Session {
            ctx,
            stream: Stream::Plain(stream),
            tls: None,
            user: None,
            peer,
            rbuf: BytesMut::with_capacity(512),
            wbuf: Vec::with_capacity(256),
            log,
            helo: None,
            tx: None,
            errors: 0,
            deadline,
            skipping: false,
        }
    }

    /// Runs the session to its end. Never panics on input; I/O errors end
    /// the session quietly (the peer went away).
    pub async fn run(mut self) {
        self.log.connect();
        if self.ctx.implicit_tls && !self.handshake().await {
            self.log.disconnect();
            return;
        }
        let greeting = Reply::greeting(&self.ctx.fqdn, &self.ctx.banner);
        self.reply(greeting);
        let _ = self.serve().await;
        let _ = self.flush().await;
        self.log.disconnect();
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        loop {
            let input = self.next_line().await?;
            let line = match input {
                Input::Line(l) => l,
                Input::TooLong => {
                    if let Flow::Close = self.reply_counted(Reply::line_too_long(MAX_COMMAND_LINE))
                    {
                        return Ok(());
                    }
                    continue;
                }
                Input::Closed => return Ok(()),
                Input::TimedOut => {
                    self.reply(Reply::timeout(&self.ctx.fqdn, "a command"));
                    return Ok(());
                }
                Input::SessionExpired => {
                    self.reply(Reply::session_too_long(&self.ctx.fqdn));
                    return Ok(());
                }
                Input::ShuttingDown => {
                    self.reply(Reply::shutting_down(&self.ctx.fqdn));
                    return Ok(());
                }
            };
            let text = match check_line(&line) {
                Ok(t) => t,
                Err(r) => {
                    self.log.received(&String::from_utf8_lossy(&line));
                    if let Flow::Close = self.reply_counted(r) {
                        return Ok(());
                    }
                    continue;
                }
            };
            // `get`, not indexing: client text may put a multi-byte
            // character across byte 5 (found by fuzzing).
            if let Some(args) = text
                .get(..5)
                .filter(|verb| verb.eq_ignore_ascii_case("AUTH "))
                .map(|_| &text[5..])
            {
                // Never log credentials: mechanism only.
                let mech = args.split(' ').next().unwrap_or("");
                self.log.received(&format!("AUTH {mech} ****"));
            } else {
                self.log.received(text);
            }
            let utf8_tx = self.tx.as_ref().is_some_and(|t| t.mail.smtputf8);
            let flow = match command::parse(text, utf8_tx) {
                Err(r) => self.reply_counted(r),
                Ok(cmd) => self.handle(cmd).await?,
            };
            if let Flow::Close = flow {
                return Ok(());
            }
        }
    }

    /// Queues a reply, logging it.
    fn reply(&mut self, r: Reply) {
        self.ctx.metrics.reply(r.code, r.status);
        let start = self.wbuf.len();
        r.write_to(&mut self.wbuf);
        // Log the bytes just queued, one protocol-log line per reply line.
        if self.log.is_enabled()
            && let Ok(text) = std::str::from_utf8(&self.wbuf[start..])
        {
            for line in text.split_terminator("\r\n") {
                self.log.sent(line);
            }
        }
    }

    /// Queues a reply and counts it against the error limit.
    fn reply_counted(&mut self, r: Reply) -> Flow {
        let is_error = r.is_client_error();
        self.reply(r);
        if is_error {
            self.errors += 1;
            if self.errors >= self.ctx.config.max_errors {
                self.log.info(
                    &format!("{} errors", self.errors),
                    "Session dropped: error limit reached",
                );
                self.reply(Reply::too_many_errors(&self.ctx.fqdn));
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let timeout = self.ctx.config.command_timeout.0;
        match tokio::time::timeout(timeout, self.stream.write_all(&self.wbuf)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "client does not read replies",
                ));
            }
        }
        self.wbuf.clear();
        if self.wbuf.capacity() > 4096 {
            self.wbuf.shrink_to(256);
        }
        Ok(())
    }

    /// Reads more input, flushing pending replies first. `phase` picks the
    /// timeout; `interruptible` lets shutdown end an idle wait.
    /// Reads more bytes, until `phase_deadline` (and the session's own
    /// deadline) at the latest.
    async fn fill(
        &mut self,
        phase_deadline: Instant,
        interruptible: bool,
    ) -> std::io::Result<Option<Input>> {
        self.flush().await?;
        let deadline = phase_deadline.min(self.deadline);
        if self.rbuf.capacity() - self.rbuf.len() < 256 {
            self.rbuf.reserve(1024);
        }
        let shutdown = self.ctx.shutdown.token.clone();
        tokio::select! {
            r = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)) => match r {
                Ok(Ok(0)) => Ok(Some(Input::Closed)),
                Ok(Ok(_)) => Ok(None),
                Ok(Err(e)) => Err(e),
                Err(_) if deadline == self.deadline => Ok(Some(Input::SessionExpired)),
                Err(_) => Ok(Some(Input::TimedOut)),
            },
            _ = shutdown.cancelled(), if interruptible => Ok(Some(Input::ShuttingDown)),
        }
    }

    /// The next command line. `command_timeout` bounds the wait for the
    /// whole line, not each read: a client trickling a byte at a time
    /// (slowloris) is cut off as surely as a silent one.
    async fn next_line(&mut self) -> std::io::Result<Input> {
        let line_deadline = Instant::now() + self.ctx.config.command_timeout.0;
        loop {
            if let Some(pos) = self.rbuf.iter().position(|&b| b == b'\n') {
                let line = self.rbuf.split_to(pos + 1);
                if self.skipping {
                    self.skipping = false;
                    return Ok(Input::TooLong);
                }
                let mut l = &line[..line.len() - 1];
                if l.last() == Some(&b'\r') {
                    l = &l[..l.len() - 1];
                }
                if l.len() > MAX_COMMAND_LINE {
                    return Ok(Input::TooLong);
                }
                return Ok(Input::Line(l.to_vec()));
            }
            // +1: the CR of a maximum-length line may arrive before its LF.
            if self.rbuf.len() > MAX_COMMAND_LINE + 1 {
                // Keep memory bounded: drop what we have, wait for the LF.
                self.rbuf.clear();
                self.skipping = true;
            }
            let idle = self.tx.is_none() && self.rbuf.is_empty();
            if let Some(end) = self.fill(line_deadline, idle).await? {
                return Ok(end);
            }
        }
    }

    async fn handle(&mut self, cmd: Command) -> std::io::Result<Flow> {
        let fqdn = self.ctx.fqdn.clone();
        let flow = match cmd {
            Command::Ehlo(name) => {
                self.tx = None;
                let mut lines = vec![
                    format!("{fqdn} Hello [{}]", self.peer.ip()),
                    format!("SIZE {}", self.ctx.config.max_message_size.0),
                    "PIPELINING".into(),
                    "DSN".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    "CHUNKING".into(),
                ];
                if self.ctx.tls.is_some() && !self.stream.is_tls() {
                    lines.push("STARTTLS".into());
                }
                // RFC 4954 §4 / SPEC 2.1: plaintext mechanisms only over TLS.
                if self.ctx.users.is_some() && self.stream.is_tls() {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                self.helo = Some((name, true));
                self.reply(Reply::ehlo(lines));
                Flow::Continue
            }
            Command::Helo(name) => {
                self.tx = None;
                self.helo = Some((name, false));
                let client = format!("[{}]", self.peer.ip());
                self.reply(Reply::helo(&fqdn, &client));
                Flow::Continue
            }
            Command::Mail(m) => self.mail(m),
            Command::Rcpt(r) => self.rcpt(r),
            Command::Data => return self.data().await,
            Command::Bdat { size, last } => return self.bdat(size, last).await,
            Command::Rset => {
                self.tx = None;
                self.reply(Reply::reset());
                Flow::Continue
            }
            Command::Noop => {
                self.reply(Reply::ok());
                Flow::Continue
            }
            Command::Quit => {
                self.reply(Reply::bye(&fqdn));
                Flow::Close
            }
            Command::Vrfy => {
                self.reply(Reply::vrfy());
                Flow::Continue
            }
            Command::Help => {
                self.reply(Reply::help());
                Flow::Continue
            }
            Command::Expn => self.reply_counted(Reply::not_implemented("EXPN")),
            Command::StartTls => return self.starttls().await,
            Command::Auth { mechanism, initial } => return self.auth(mechanism, initial).await,
        };
        Ok(flow)
    }

    fn mail(&mut self, m: MailFrom) -> Flow {
        if self.helo.is_none() {
            return self.reply_counted(Reply::need_helo());
        }
        if self.ctx.config.require_tls && self.tls.is_none() {
            return self.reply_counted(Reply::tls_required());
        }
        if self.ctx.require_auth && self.user.is_none() {
            return self.reply_counted(Reply::auth_required());
        }
        if self.tx.is_some() {
            return self.reply_counted(Reply::nested_mail());
        }
        let max = self.ctx.config.max_message_size.0;
        if m.size.is_some_and(|s| s > max) {
            return self.reply_counted(Reply::size_exceeded(max));
        }
        self.tx = Some(Transaction {
            mail: m,
            recipients: Vec::new(),
            bdat: None,
        });
        self.reply(Reply::sender_ok());
        Flow::Continue
    }

    fn rcpt(&mut self, r: command::RcptTo) -> Flow {
        let max = self.ctx.config.max_recipients;
        let Some(tx) = self.tx.as_ref() else {
            return self.reply_counted(Reply::need_mail());
        };
        if tx.recipients.len() >= max {
            return self.reply_counted(Reply::too_many_recipients(max));
        }
        match self.ctx.policy.recipient(
            &r.path,
            self.peer.ip(),
            &self.ctx.relay_networks,
            self.user.is_some(),
        ) {
            Ok((address, route)) => {
                let tx = self.tx.as_mut().expect("checked above");
                tx.recipients.push(Recipient {
                    address,
                    route,
                    notify: r.notify,
                    orcpt: r.orcpt,
                });
                self.reply(Reply::recipient_ok());
                Flow::Continue
            }
            Err(reply) => self.reply_counted(reply),
        }
    }

    async fn data(&mut self) -> std::io::Result<Flow> {
        match &self.tx {
            None => return Ok(self.reply_counted(Reply::need_mail())),
            Some(tx) if tx.bdat.is_some() => {
                return Ok(self.reply_counted(Reply::data_after_bdat()));
            }
            Some(tx) if tx.recipients.is_empty() => {
                return Ok(self.reply_counted(Reply::no_valid_recipients()));
            }
            Some(_) => {}
        }
        self.reply(Reply::start_data());
        let mut rx = DataReceiver::new(self.ctx.config.max_message_size.0);
        loop {
            let n = rx.feed(&self.rbuf);
            self.rbuf.advance(n);
            if rx.is_done() {
                break;
            }
            if let Some(end) = self
                .fill(Instant::now() + self.ctx.config.data_timeout.0, false)
                .await?
            {
                if let Input::TimedOut | Input::SessionExpired = end {
                    self.tx = None;
                    self.reply(Reply::timeout(&self.ctx.fqdn, "message data"));
                }
                return Ok(Flow::Close);
            }
        }
        let tx = self.tx.take().expect("checked above");
        let reply = if rx.oversized() {
            Reply::size_exceeded(self.ctx.config.max_message_size.0)
        } else if let Some(v) = rx.violation() {
            violation_reply(v)
        } else {
            let size = rx.size();
            self.log.info(&format!("{size}"), "Message data received");
            self.commit(tx, rx.into_body()).await
        };
        Ok(self.reply_counted(reply))
    }

    async fn bdat(&mut self, size: u64, last: bool) -> std::io::Result<Flow> {
        let max = self.ctx.config.max_message_size.0;
        // Decide first; the chunk is consumed whatever the decision
        // (RFC 3030 §2: the server must read the whole chunk).
        let verdict: Result<(), Reply> = match self.tx.as_mut() {
            None => Err(Reply::need_mail()),
            Some(tx) if tx.recipients.is_empty() => Err(Reply::no_valid_recipients()),
            Some(tx) => {
                let b = tx.bdat.get_or_insert_with(|| Bdat {
                    data: Vec::new(),
                    size: 0,
                    check: LineEndingCheck::new(),
                    failed: None,
                });
                if b.failed.is_some() {
                    Err(Reply::bdat_failed_earlier())
                } else if b.size.saturating_add(size) > max {
                    b.failed = Some(Reply::size_exceeded(max));
                    Err(Reply::size_exceeded(max))
                } else {
                    Ok(())
                }
            }
        };
        let store = verdict.is_ok();
        let mut remaining = size;
        while remaining > 0 {
            if self.rbuf.is_empty()
                && let Some(end) = self
                    .fill(Instant::now() + self.ctx.config.data_timeout.0, false)
                    .await?
            {
                if let Input::TimedOut | Input::SessionExpired = end {
                    self.reply(Reply::timeout(&self.ctx.fqdn, "BDAT chunk data"));
                }
                return Ok(Flow::Close);
            }
            let take = remaining.min(self.rbuf.len() as u64) as usize;
            let chunk = self.rbuf.split_to(take);
            if store && let Some(b) = self.tx.as_mut().and_then(|t| t.bdat.as_mut()) {
                b.check.scan(&chunk);
                b.data.extend_from_slice(&chunk);
                b.size += take as u64;
            }
            remaining -= take as u64;
        }
        if let Err(r) = verdict {
            if last {
                self.tx = None;
            }
            return Ok(self.reply_counted(r));
        }
        if !last {
            self.reply(Reply::chunk_ok(size));
            return Ok(Flow::Continue);
        }
        let mut tx = self.tx.take().expect("verdict was Ok");
        let b = tx.bdat.take().expect("created above");
        let reply = match b.check.finish() {
            Some(v) => violation_reply(v),
            None => {
                self.log
                    .info(&format!("{}", b.size), "Message data received (BDAT)");
                self.commit(tx, b.data).await
            }
        };
        Ok(self.reply_counted(reply))
    }

    /// SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN, only over TLS.
    async fn auth(&mut self, mechanism: String, initial: Option<String>) -> std::io::Result<Flow> {
        let Some(users) = self.ctx.users.clone() else {
            return Ok(self.reply_counted(Reply::not_implemented("AUTH")));
        };
        if !self.stream.is_tls() {
            return Ok(self.reply_counted(Reply::encryption_required_for_auth()));
        }
        if self.helo.is_none() {
            return Ok(self.reply_counted(Reply::need_helo()));
        }
        if self.user.is_some() {
            return Ok(self.reply_counted(Reply::already_authenticated()));
        }
        let lockout = self.ctx.auth_lockout.clone();
        if let Some(remaining) = lockout.locked_for(self.peer.ip(), std::time::Instant::now()) {
            self.log.info(
                &format!("{}", self.peer.ip()),
                "Inbound AUTH refused: address locked out after repeated failures",
            );
            return Ok(self.reply_counted(Reply::auth_locked_out(remaining)));
        }
        if self.tx.is_some() {
            return Ok(self.reply_counted(Reply::auth_in_transaction()));
        }
        let credentials = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    // RFC 4954 §4: "=" is an empty initial response.
                    Some(r) if r == "=" => String::new(),
                    Some(r) => r,
                    None => match self.auth_prompt("").await? {
                        Some(r) => r,
                        None => return Ok(Flow::Close),
                    },
                };
                if response == "*" {
                    return Ok(self.reply_counted(Reply::auth_cancelled()));
                }
                crate::auth::decode_plain(&response)
            }
            "LOGIN" => {
                let user = match initial {
                    Some(r) => Some(r),
                    None => self.auth_prompt("VXNlcm5hbWU6").await?,
                };
                let Some(user) = user else {
                    return Ok(Flow::Close);
                };
                if user == "*" {
                    return Ok(self.reply_counted(Reply::auth_cancelled()));
                }
                let Some(pass) = self.auth_prompt("UGFzc3dvcmQ6").await? else {
                    return Ok(Flow::Close);
                };
                if pass == "*" {
                    return Ok(self.reply_counted(Reply::auth_cancelled()));
                }
                let decode =
                    |s: &str| crate::auth::base64_decode(s).and_then(|b| String::from_utf8(b).ok());
                decode(&user).zip(decode(&pass))
            }
            _ => return Ok(self.reply_counted(Reply::auth_mechanism_unknown(&mechanism))),
        };
        let Some((name, password)) = credentials else {
            return Ok(self.reply_counted(Reply::auth_malformed()));
        };
        let verified = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || users.current().verify(&name, &password))
                .await
                .unwrap_or(false)
        };
        if verified {
            lockout.succeeded(self.peer.ip());
            self.log.info(&name, "Inbound AUTH succeeded");
            self.user = Some(name);
            self.reply(Reply::auth_ok());
            Ok(Flow::Continue)
        } else {
            // Exchange logs "Inbound AUTH LOGIN failed because of LogonDenied".
            self.log.info(
                &name,
                &format!("Inbound AUTH {mechanism} failed because of LogonDenied"),
            );
            tracing::warn!(client = %self.peer, user = %name, "AUTH failed");
            if let crate::auth::lockout::FailureOutcome::LockedOut =
                lockout.failed(self.peer.ip(), std::time::Instant::now())
            {
                let p = lockout.policy();
                crate::events::emit(crate::events::AuthLockedOut {
                    connector: &self.ctx.name,
                    client: self.peer.ip(),
                    failures: p.threshold,
                    minutes: p.duration.as_secs().div_ceil(60),
                });
            }
            tokio::time::sleep(self.ctx.auth_failure_delay).await;
            Ok(self.reply_counted(Reply::auth_failed()))
        }
    }

    /// Sends a 334 challenge and reads one response line (not logged:
    /// it carries credentials). `None` when the client went away.
    async fn auth_prompt(&mut self, challenge: &str) -> std::io::Result<Option<String>> {
        self.reply(Reply::auth_challenge(challenge));
        match self.next_line().await? {
            Input::Line(l) => {
                self.log.received("****");
                Ok(Some(String::from_utf8_lossy(&l).trim().to_string()))
            }
            Input::TooLong => Ok(Some(String::new())),
            _ => Ok(None),
        }
    }

    /// Answers STARTTLS: 220, discard anything the client pipelined after
    /// it (RFC 3207 §4.2: that plaintext could be an injection, CVE-2011-0411
    /// class), handshake, and forget the EHLO state (the client must EHLO
    /// again, §4.2).
    async fn starttls(&mut self) -> std::io::Result<Flow> {
        if self.ctx.tls.is_none() {
            return Ok(self.reply_counted(Reply::not_implemented("STARTTLS")));
        }
        if self.stream.is_tls() {
            return Ok(self.reply_counted(Reply::tls_already_active()));
        }
        self.reply(Reply::ready_for_tls());
        self.flush().await?;
        if !self.rbuf.is_empty() {
            self.log.info(
                &format!("{} octets", self.rbuf.len()),
                "Plaintext pipelined after STARTTLS discarded (RFC 3207)",
            );
            self.rbuf.clear();
        }
        if !self.handshake().await {
            return Ok(Flow::Close);
        }
        self.helo = None;
        self.tx = None;
        Ok(Flow::Continue)
    }

    /// Runs the TLS handshake on the socket; false when it failed (the
    /// connection is then unusable and is closed).
    async fn handshake(&mut self) -> bool {
        let Some(acceptor) = self.ctx.tls.clone() else {
            return false;
        };
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            return false;
        };
        let timeout = self.ctx.config.command_timeout.0;
        match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let negotiated = Negotiated::from_connection(tls.get_ref().1);
                self.log.info(
                    &format!(
                        "TLS protocol {} negotiation succeeded using {} ({}){}",
                        negotiated.exchange_protocol(),
                        negotiated.cipher,
                        negotiated.version,
                        if negotiated.resumed {
                            ", resumed session"
                        } else {
                            ""
                        }
                    ),
                    "TLS negotiation",
                );
                crate::tls::counters().record_success(&negotiated);
                self.stream = Stream::Tls(Box::new(tls));
                self.tls = Some(negotiated);
                true
            }
            Ok(Err(e)) => {
                let reason = crate::tls::failure_reason(&e);
                crate::tls::counters().record_failure(reason);
                if crate::events::enabled(crate::events::TlsHandshakeFailed::ENTRY) {
                    crate::events::emit(crate::events::TlsHandshakeFailed {
                        connector: &self.ctx.name,
                        client: self.peer.ip(),
                        reason: &format!("{reason} ({e})"),
                    });
                }
                self.log.info(&e.to_string(), "TLS negotiation failed");
                tracing::debug!(client = %self.peer, error = %e, "TLS handshake failed");
                false
            }
            Err(_) => {
                crate::tls::counters().record_failure("timeout");
                crate::events::emit(crate::events::TlsHandshakeFailed {
                    connector: &self.ctx.name,
                    client: self.peer.ip(),
                    reason: "timeout",
                });
                self.log.info("timeout", "TLS negotiation failed");
                false
            }
        }
    }

    /// Prepends the Received: header, stores the message durably and
    /// returns the reply: 250 with the queue ID only after the fsync.
    async fn commit(&mut self, tx: Transaction, body: Vec<u8>) -> Reply {
        let id = QueueId::generate();
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        // RFC 3848 / RFC 6531 protocol names; the TLS parameters go into a
        // comment as Exchange 2016+ and Postfix do.
        let base = match (esmtp, tx.mail.smtputf8) {
            (false, _) => "SMTP",
            (true, false) => "ESMTP",
            (true, true) => "UTF8SMTP",
        };
        let protocol = format!(
            "{base}{}{}{}",
            if self.tls.is_some() { "S" } else { "" },
            if self.user.is_some() { "A" } else { "" },
            match &self.tls {
                Some(t) => format!(" ({} cipher={})", t.version, t.cipher),
                None => String::new(),
            }
        );
        let for_clause = match tx.recipients.as_slice() {
            [one] => format!("\r\n\tfor <{}>", one.address),
            _ => String::new(),
        };
        let received = format!(
            "Received: from {} ([{}])\r\n\tby {} (Gatehouse) with {} id {}{};\r\n\t{}\r\n",
            sanitize_helo(&helo),
            self.peer.ip(),
            self.ctx.fqdn,
            protocol,
            id,
            for_clause,
            crate::timefmt::rfc5322(SystemTime::now())
        );
        let mut message = Vec::with_capacity(received.len() + body.len());
        message.extend_from_slice(received.as_bytes());
        message.extend_from_slice(&body);
        drop(body);
        let size = message.len();
        let mail_from = match &tx.mail.path {
            Path::Mailbox(m) => m.to_string(),
            Path::Null | Path::Postmaster => String::new(),
        };
        let envelope = Envelope {
            id,
            received_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            connector: self.ctx.name.clone(),
            client_ip: self.peer.ip(),
            helo,
            mail_from,
            body: tx.mail.body,
            smtputf8: tx.mail.smtputf8,
            ret: tx.mail.ret,
            envid: tx.mail.envid,
            recipients: tx.recipients,
        };
        match self.ctx.queue.submit(envelope, message).await {
            Ok(()) => {
                self.ctx.metrics.accepted.inc();
                Reply::queued(&id.to_string(), size)
            }
            Err(e) => {
                self.log.info(&e.to_string(), "Queue commit failed");
                Reply::storage_failure(&e.to_string())
            }
        }
    }
}

fn violation_reply(v: Violation) -> Reply {
    match v {
        Violation::BareCr { line } => Reply::bare_line_ending("bare CR", line),
        Violation::BareLf { line } => Reply::bare_line_ending("bare LF", line),
        Violation::Nul { line } => Reply::nul_in_data(line),
    }
}

/// Checks a command line's bytes: UTF-8, no control characters.
fn check_line(line: &[u8]) -> Result<&str, Reply> {
    if let Some(b) = line
        .iter()
        .find(|b| (**b < 0x20 && **b != b'\t') || **b == 0x7f)
    {
        let what = match b {
            0 => "NUL octet".to_string(),
            b'\r' => "bare CR".to_string(),
            b => format!("control character 0x{b:02X}"),
        };
        return Err(Reply::bad_command_bytes(&what));
    }
    std::str::from_utf8(line).map_err(|_| Reply::bad_command_bytes("invalid UTF-8"))
}

/// The HELO name as it may appear in a Received: header.
fn sanitize_helo(helo: &str) -> String {
    helo.chars()
        .take(255)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._:[]".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}
