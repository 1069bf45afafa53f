//! A minimal blocking HTTP/1.1 client for the CLI commands that talk to
//! the running server (`gatehouse reload`, `gatehouse log level ...`):
//! one request per connection, bounded in time and size.

use crate::config::Config;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE: u64 = 8 << 20;

/// Why the call failed, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the configuration has no [admin] section, so the server has no admin API to call\n  = hint: add [admin] (listen = \"127.0.0.1:9925\") and restart, or send SIGHUP to reload"
    )]
    NoAdmin,
    #[error("{0}")]
    Token(#[from] super::token::TokenError),
    #[error(
        "cannot reach the admin API at {addr}: {source}\n  = hint: is `gatehouse serve` running with this configuration?"
    )]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("admin API at {addr}: {detail}")]
    Protocol {
        addr: std::net::SocketAddr,
        detail: String,
    },
}

/// A response: status code and body text.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends `method path` with the configured token.
pub fn call(cfg: &Config, method: &str, path: &str) -> Result<Response, ClientError> {
    let admin = cfg.admin.as_ref().ok_or(ClientError::NoAdmin)?;
    let token = super::token::read(&cfg.admin_token_file())?;
    let addr = *admin.listen.get_ref();
    request(addr, method, path, Some(&token))
}

/// One request to `addr`.
pub fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<Response, ClientError> {
    let connect = |source| ClientError::Connect { addr, source };
    let protocol = |detail: String| ClientError::Protocol { addr, detail };
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(connect)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(connect)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(connect)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(|e| protocol(format!("sending the request: {e}")))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|e| protocol(format!("reading the response: {e}")))?;
    parse(&raw).ok_or_else(|| protocol("malformed HTTP response".into()))
}

/// Parses a `Connection: close` response (Content-Length or read to
/// end; chunked bodies are decoded).
fn parse(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(raw.get(..split)?).ok()?;
    let body = raw.get(split + 4..)?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Some(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(b.get(..eol)?).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = b.get(eol + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "abc"));
        let r = parse(
            b"HTTP/1.1 422 X\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (422, "abcde"));
        assert!(parse(b"garbage").is_none());
        assert!(parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_none());
    }
}
