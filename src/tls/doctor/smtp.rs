//! The SMTP part of a probe: greeting, EHLO, STARTTLS (RFC 5321 4.2,
//! RFC 3207), and the short exchange inside TLS that lets the server send
//! its TLS 1.3 session tickets before we hang up.
//!
//! Replies are read with hard limits (line length, line count), so a
//! hostile or broken server cannot make the doctor allocate without bound.

use super::{ProbeError, Step};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// RFC 5321 4.5.3.1.5 allows 512 octets per reply line; we accept twice
/// that before calling the reply malformed.
pub const MAX_LINE: u64 = 1024;
/// Lines in one multi-line reply (an EHLO reply has a dozen or so).
pub const MAX_LINES: usize = 100;

/// One SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of each line, without code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// The reply as the server wrote it, lines joined with " / ".
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| format!("{} {l}", self.code))
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

/// Reads one (possibly multi-line) reply.
pub async fn read_reply<R: AsyncBufRead + Unpin>(
    r: &mut R,
    step: Step,
) -> Result<Reply, ProbeError> {
    let mut lines = Vec::new();
    loop {
        let mut buf = Vec::new();
        let n = (&mut *r)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|source| ProbeError::Io { step, source })?;
        if n == 0 {
            return Err(ProbeError::Closed { step });
        }
        if buf.len() as u64 > MAX_LINE {
            return Err(ProbeError::BadReply {
                step,
                why: format!("a reply line longer than {MAX_LINE} bytes"),
            });
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\r', '\n']);
        let code = line
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| ProbeError::BadReply {
                step,
                why: format!("{line:?} does not start with a reply code"),
            })?;
        let sep = line.as_bytes().get(3).copied();
        lines.push(line.get(4..).unwrap_or("").to_string());
        match sep {
            Some(b'-') if lines.len() < MAX_LINES => continue,
            Some(b'-') => {
                return Err(ProbeError::BadReply {
                    step,
                    why: format!("a reply of more than {MAX_LINES} lines"),
                });
            }
            None | Some(b' ') => return Ok(Reply { code, lines }),
            Some(_) => {
                return Err(ProbeError::BadReply {
                    step,
                    why: format!("{line:?}: the code is not followed by a space or '-'"),
                });
            }
        }
    }
}

pub async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    line: &str,
    step: Step,
) -> Result<(), ProbeError> {
    w.write_all(format!("{line}\r\n").as_bytes())
        .await
        .map_err(|source| ProbeError::Io { step, source })?;
    w.flush()
        .await
        .map_err(|source| ProbeError::Io { step, source })
}

/// What the plain-text part of the dialog showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmtpFacts {
    pub banner: String,
    /// EHLO keywords (first word of each line after the greeting line).
    pub extensions: Vec<String>,
    pub starttls_reply: String,
}

/// The EHLO argument: our address literal (RFC 5321 4.1.3), which every
/// server accepts without DNS.
pub fn ehlo_name(local: std::net::SocketAddr) -> String {
    match local.ip() {
        std::net::IpAddr::V4(a) => format!("[{a}]"),
        std::net::IpAddr::V6(a) => format!("[IPv6:{a}]"),
    }
}

/// EHLO and the answer's extension keywords.
pub async fn ehlo<S>(s: &mut S, name: &str, secs: u64) -> Result<(Reply, Vec<String>), ProbeError>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    super::within(Step::Ehlo, secs, async {
        send(s, &format!("EHLO {name}"), Step::Ehlo).await?;
        let reply = read_reply(s, Step::Ehlo).await?;
        if reply.code != 250 {
            return Err(ProbeError::Refused {
                step: Step::Ehlo,
                reply: reply.text(),
            });
        }
        let ext = reply
            .lines
            .iter()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(|k| k.to_ascii_uppercase())
            .collect();
        Ok((reply, ext))
    })
    .await
}

/// Greeting, EHLO, STARTTLS on a fresh connection; returns the stream
/// ready for the ClientHello.
pub async fn starttls(
    tcp: tokio::net::TcpStream,
    secs: u64,
) -> Result<(tokio::net::TcpStream, SmtpFacts), ProbeError> {
    let name = ehlo_name(tcp.local_addr().map_err(|source| ProbeError::Io {
        step: Step::Connect,
        source,
    })?);
    let mut s = tokio::io::BufReader::new(tcp);
    let banner = super::within(Step::Banner, secs, read_reply(&mut s, Step::Banner)).await?;
    if banner.code != 220 {
        return Err(ProbeError::Refused {
            step: Step::Banner,
            reply: banner.text(),
        });
    }
    let (_, extensions) = ehlo(&mut s, &name, secs).await?;
    let mut facts = SmtpFacts {
        banner: banner.text(),
        extensions,
        starttls_reply: String::new(),
    };
    if !facts.extensions.iter().any(|e| e == "STARTTLS") {
        return Err(ProbeError::NoStarttls {
            extensions: facts.extensions.join(" "),
        });
    }
    let reply = super::within(Step::Starttls, secs, async {
        send(&mut s, "STARTTLS", Step::Starttls).await?;
        read_reply(&mut s, Step::Starttls).await
    })
    .await?;
    if reply.code != 220 {
        return Err(ProbeError::Refused {
            step: Step::Starttls,
            reply: reply.text(),
        });
    }
    facts.starttls_reply = reply.text();
    // RFC 3207 4.2: nothing may follow the 220 before the handshake; bytes
    // here would be fed to TLS as garbage (or be an injection attempt).
    if !s.buffer().is_empty() {
        return Err(ProbeError::BadReply {
            step: Step::Starttls,
            why: format!(
                "{} bytes followed the 220 reply to STARTTLS before the TLS handshake",
                s.buffer().len()
            ),
        });
    }
    Ok((s.into_inner(), facts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(bytes: &[u8]) -> Result<Reply, ProbeError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut r = tokio::io::BufReader::new(bytes);
        rt.block_on(read_reply(&mut r, Step::Ehlo))
    }

    #[test]
    fn multi_line_replies_and_limits() {
        let r = parse(b"250-mx.example.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n").unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.lines, ["mx.example.test", "PIPELINING", "STARTTLS"]);
        let long = format!("250 {}\r\n", "x".repeat(2000));
        assert!(matches!(
            parse(long.as_bytes()),
            Err(ProbeError::BadReply { .. })
        ));
        let many = "250-x\r\n".repeat(200);
        assert!(matches!(
            parse(many.as_bytes()),
            Err(ProbeError::BadReply { .. })
        ));
        assert!(matches!(
            parse(b"hello\r\n"),
            Err(ProbeError::BadReply { .. })
        ));
        assert!(matches!(parse(b"250-cut"), Err(ProbeError::Closed { .. })));
    }

    proptest! {
        #[test]
        fn any_reply_bytes_are_handled(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            if let Ok(r) = parse(&bytes) {
                prop_assert!(r.lines.len() <= MAX_LINES);
            }
        }
    }
}
