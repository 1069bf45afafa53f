//! Streaming bodies: nothing is ever buffered whole.
//!
//! Both directions are `StreamBody`s: a frame read from one side is handed
//! to the other as soon as it arrives, so an `RPC_IN_DATA` channel that
//! declares 1 GiB holds at most hyper's read buffer plus one frame, and the
//! `RPC_OUT_DATA` response flows down while the request still flows up
//! (RPC over HTTP, MS-RPCH 2.1.2.1: the two channels are long-lived
//! half-duplex streams). Each body carries:
//!
//! * a byte limit (the route's `max_body_size`; the declared
//!   Content-Length was checked up front, this catches chunked bodies);
//! * an idle timer (`channel_idle_timeout`): no frame for that long ends
//!   the stream with an error, which closes the channel on both sides;
//! * an optional `Lease` dropped when the body ends, which returns the
//!   backend connection to its pool (only after a complete response) and
//!   decrements the server's outstanding-request count;
//! * a byte count the HttpProxy log reads (given to the end hook, or kept
//!   in a shared counter for the request body, which hyper consumes).

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type the proxy passes around.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A small complete body (error pages, refusals).
pub fn full(text: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(text.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// No body. `Empty` and the closure are zero-sized: boxing them does not
/// allocate (every bodiless request gets one).
pub fn empty() -> ProxyBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why a streamed body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("body larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("no data for {0:?}: channel idle timeout")]
    Idle(Duration),
}

/// Something to run when the body is dropped, told whether it ended
/// cleanly and how many data bytes passed.
pub trait OnEnd: Send {
    fn finish(self, complete: bool, bytes: u64);
}

/// No end hook.
impl OnEnd for () {
    fn finish(self, _: bool, _: u64) {}
}

/// A body passed through with a limit, an idle timer, a byte counter and
/// an end hook (a type parameter, so a proxied response costs no box).
pub struct Streamed<B, H: OnEnd = ()> {
    inner: B,
    limit: u64,
    seen: u64,
    idle: Duration,
    /// A frame passed since the timer was last set. The timer is only
    /// armed (lazily) when the body has to wait, from that moment, so a
    /// body whose frames are ready at once never reads the clock or
    /// touches the timer wheel.
    progressed: bool,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    counter: Option<Arc<AtomicU64>>,
    on_end: Option<H>,
    complete: bool,
}

impl<B> Streamed<B> {
    pub fn new(inner: B, limit: u64, idle: Duration) -> Self {
        Streamed::ending(inner, limit, idle, None)
    }
}

impl<B, H: OnEnd> Streamed<B, H> {
    /// A body whose end (complete or not, and the bytes passed) is
    /// reported to `on_end` when it is dropped.
    pub fn ending(inner: B, limit: u64, idle: Duration, on_end: Option<H>) -> Self {
        Streamed {
            inner,
            limit,
            seen: 0,
            idle,
            progressed: true,
            timer: None,
            counter: None,
            on_end,
            complete: false,
        }
    }

    /// Also adds the data bytes to `counter` as they pass (for a body
    /// handed to hyper, whose end the proxy does not see).
    pub fn counted(mut self, counter: Arc<AtomicU64>) -> Self {
        self.counter = Some(counter);
        self
    }
}

impl<B, H: OnEnd> Drop for Streamed<B, H> {
    fn drop(&mut self) {
        if let Some(hook) = self.on_end.take() {
            hook.finish(self.complete, self.seen);
        }
    }
}

impl<B: Body, H: OnEnd> Streamed<B, H> {
    /// Marks an empty body complete: hyper may never poll it.
    pub fn checked(mut self) -> Self {
        if self.inner.is_end_stream() {
            self.complete = true;
        }
        self
    }
}

impl<B, H> Body for Streamed<B, H>
where
    B: Body<Data = Bytes> + Unpin,
    H: OnEnd + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.seen = this.seen.saturating_add(n);
                    if let Some(c) = &this.counter {
                        c.fetch_add(n, Ordering::Relaxed);
                    }
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(Box::new(StreamError::TooLarge(this.limit)))));
                    }
                }
                this.progressed = true;
                // hyper stops polling a body once its declared length
                // has been sent: the final `None` may never be asked for.
                if this.inner.is_end_stream() {
                    this.complete = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.complete = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.progressed {
                    this.progressed = false;
                    let deadline = tokio::time::Instant::now() + this.idle;
                    match &mut this.timer {
                        Some(t) => t.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let Some(timer) = &mut this.timer else {
                    return Poll::Pending;
                };
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(Box::new(StreamError::Idle(this.idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // The exact length passes through, so the backend (and the
        // client) see the declared Content-Length, not chunking.
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One frame, then silence.
    struct Stalls(bool);

    impl Body for Stalls {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.0 {
                Poll::Pending
            } else {
                self.0 = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"abc")))))
            }
        }
    }

    #[tokio::test]
    async fn a_silent_body_ends_after_the_idle_timeout() {
        let counter = Arc::new(AtomicU64::new(0));
        let mut b =
            Streamed::new(Stalls(false), 10, Duration::from_millis(150)).counted(counter.clone());
        let start = tokio::time::Instant::now();
        assert!(b.frame().await.unwrap().is_ok());
        let err = b.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("channel idle timeout"), "{err}");
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(counter.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_cut() {
        let mut b = Streamed::new(Stalls(false), 2, Duration::from_secs(5));
        let err = b.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("limit of 2 bytes"), "{err}");
    }
}
