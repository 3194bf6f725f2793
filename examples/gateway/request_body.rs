//! The client's request body on its way to the upstream ([`RequestBody`]):
//! capped at `server.max_request_body` bytes, cut when the client pauses
//! longer than `server.body_timeout`, and telling the upstream timeout when
//! the upload has ended ([`Upload`]), so that timeout measures the upstream
//! rather than the client.
//!
//! Whatever goes wrong here is the client's doing ([`ClientBodyError`]): it
//! is answered with a 4xx, never counted as an upstream error and ignored by
//! the breaker (see `breaker.rs` and `UpstreamErrorKind::of`).

use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::StatusCode;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// A request body the client got wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyError {
    /// Longer than `server.max_request_body` (by `Content-Length`, or once
    /// a chunked body grew past it): 413.
    TooLarge,
    /// No body data for `server.body_timeout`: 408.
    Timeout,
    /// The client broke off its upload (reset, malformed chunking): 400,
    /// which usually nobody reads.
    Aborted,
}

impl ClientBodyError {
    /// The status the client is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::Aborted => StatusCode::BAD_REQUEST,
        }
    }

    /// The short response body.
    pub fn message(self) -> &'static str {
        match self {
            Self::TooLarge => "request body too large\n",
            Self::Timeout => "request body timeout\n",
            Self::Aborted => "request body aborted\n",
        }
    }

    /// The client-body error somewhere in `e`'s source chain, if any (hyper
    /// reports a failed request body as its own error with ours as the
    /// source).
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut current = Some(e);
        while let Some(e) = current {
            if let Some(c) = e.downcast_ref::<Self>() {
                return Some(*c);
            }
            current = e.source();
        }
        None
    }
}

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooLarge => "request body larger than server.max_request_body",
            Self::Timeout => "request body stalled longer than server.body_timeout",
            Self::Aborted => "request body aborted by the client",
        })
    }
}

impl std::error::Error for ClientBodyError {}

// === Upload ===

/// Set once a request body has been read to its end (or failed, or was
/// dropped): the moment the upstream timeout starts.
#[derive(Debug, Default)]
pub struct Upload {
    done: AtomicBool,
    waker: AtomicWaker,
}

impl Upload {
    /// Whether the upload is over; registers `cx` to be woken when it ends
    /// otherwise.
    pub fn poll_done(&self, cx: &mut Context<'_>) -> bool {
        if self.done.load(Ordering::Acquire) {
            return true;
        }
        self.waker.register(cx.waker());
        // Re-checked after registering: an end signalled in between would
        // otherwise go unnoticed.
        self.done.load(Ordering::Acquire)
    }

    fn finish(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }
}

// === RequestBody ===

/// The client's body as the proxy forwards it; see the module docs.
pub struct RequestBody {
    /// `None`: an empty body the gateway made itself (a retry's).
    inner: Option<Incoming>,
    /// Bytes the body may still carry.
    remaining: u64,
    /// `server.body_timeout`.
    idle: Duration,
    /// The stall timer, created when the body first has to wait.
    timer: Option<Pin<Box<Sleep>>>,
    /// Signalled at the end; `None` for a body that was empty from the start.
    upload: Option<Arc<Upload>>,
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl RequestBody {
    /// Wraps `inner`, allowing `max` bytes with pauses up to `idle`;
    /// `upload` is told when the body ends.
    pub fn new(inner: Incoming, max: u64, idle: Duration, upload: Option<Arc<Upload>>) -> Self {
        Self {
            inner: Some(inner),
            remaining: max,
            idle,
            timer: None,
            upload,
        }
    }

    /// An empty body: what a retried request without a body carries.
    pub fn empty() -> Self {
        Self {
            inner: None,
            remaining: 0,
            idle: Duration::ZERO,
            timer: None,
            upload: None,
        }
    }

    fn finish(&mut self) {
        if let Some(upload) = self.upload.take() {
            upload.finish();
        }
    }

    fn fail(&mut self, e: ClientBodyError) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.finish();
        self.timer = None;
        tracing::debug!(error = %e, "client request body failed");
        Poll::Ready(Some(Err(e)))
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        // Every field is Unpin, so no projection.
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        let ended = inner.is_end_stream();
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        return this.fail(ClientBodyError::TooLarge);
                    }
                    this.remaining -= len;
                }
                if let Some(timer) = &mut this.timer {
                    timer.as_mut().reset(Instant::now() + this.idle);
                }
                if ended {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => this.fail(ClientBodyError::Aborted),
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => this.fail(ClientBodyError::Timeout),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // A body hyper stops reading (the upstream answered early, the
        // exchange failed) ends the upload as far as the timeout cares.
        self.finish();
    }
}
