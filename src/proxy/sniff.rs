//! The client connection's I/O wrapper: detects an HTTP/1.1 request head
//! carrying both Content-Length and
//! Transfer-Encoding, which hyper silently repairs (it drops the length,
//! decodes chunked and closes the connection afterwards, as RFC 9112 §6.3
//! allows). Issue 7 wants such requests refused with 400, like the
//! conflicting-length case hyper already refuses, so the raw bytes are
//! watched on their way into hyper.
//!
//! The scan is a line state machine over every byte read: for each line
//! only its first bytes are kept (enough to recognise the two field
//! names); an empty line ends a head. When one head held both fields the
//! connection's flag is set before hyper parses that head, so the handler
//! of that request sees it. A chunked body that itself contains such a
//! "head" could set the flag too; hyper closes a connection after a real
//! CL+TE request, so the flag is only consulted for chunked requests, and
//! a false positive costs one 400 on a request that looked like smuggling.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const KEEP: usize = 20;

pub struct SniffIo<T> {
    inner: T,
    flag: Arc<AtomicBool>,
    line: [u8; KEEP],
    line_len: usize,
    saw_cl: bool,
    saw_te: bool,
    /// Off for HTTP/2 (binary frames; no Transfer-Encoding there).
    enabled: bool,
}

impl<T> SniffIo<T> {
    pub fn new(inner: T, flag: Arc<AtomicBool>, enabled: bool) -> Self {
        SniffIo {
            enabled,
            inner,
            flag,
            line: [0; KEEP],
            line_len: 0,
            saw_cl: false,
            saw_te: false,
        }
    }

    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = self.line.get(..self.line_len.min(KEEP)).unwrap_or(&[]);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if self.line_len <= 1 && line.is_empty() {
                    if self.saw_cl && self.saw_te {
                        self.flag.store(true, Ordering::Relaxed);
                    }
                    self.saw_cl = false;
                    self.saw_te = false;
                } else if starts_ci(line, b"content-length:") {
                    self.saw_cl = true;
                } else if starts_ci(line, b"transfer-encoding:") {
                    self.saw_te = true;
                }
                self.line_len = 0;
            } else {
                if let Some(slot) = self.line.get_mut(self.line_len) {
                    *slot = b;
                }
                self.line_len = self.line_len.saturating_add(1);
            }
        }
    }
}

fn starts_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.get(..prefix.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
}

impl<T: AsyncRead + Unpin> AsyncRead for SniffIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.enabled
            && let Poll::Ready(Ok(())) = r
            && buf.filled().len() > before
        {
            let new = buf.filled().get(before..).unwrap_or(&[]);
            self.scan(new);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SniffIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(chunks: &[&[u8]]) -> bool {
        let flag = Arc::new(AtomicBool::new(false));
        let mut s = SniffIo::new((), flag.clone(), true);
        for c in chunks {
            s.scan(c);
        }
        flag.load(Ordering::Relaxed)
    }

    #[test]
    fn both_fields_in_one_head_are_seen_even_when_split() {
        assert!(flagged(&[
            b"POST / HTTP/1.1\r\nContent-Len",
            b"gth: 4\r\ntransfer-encoding: chunked\r\n",
            b"\r\n"
        ]));
        assert!(!flagged(&[
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }
}
