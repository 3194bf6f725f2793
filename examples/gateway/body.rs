//! The one response body type of the gateway: either a peer's body streamed
//! through untouched, or a small body the gateway wrote itself (built-in
//! routes, error responses). An enum instead of a boxed trait object keeps
//! the proxied path free of allocations.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use palisade::limit::{Outcome, Permit};

use crate::pool::Lease;

/// Response body: a streamed peer body or a complete gateway body.
#[derive(Debug)]
pub enum Body {
    /// Streamed from a peer frame by frame (never buffered whole). `lease`
    /// is the upstream connection the body arrives on: it goes back to the
    /// pool once the body has been read to its end.
    Stream {
        /// The peer's body.
        inner: Incoming,
        /// The pooled upstream connection carrying it, if any.
        lease: Option<Lease>,
        /// The upstream's adaptive-limit slot, held until the body ends
        /// (a success sample then; dropped mid-stream, no sample).
        slot: Option<Permit>,
    },
    /// Complete in memory; `None` once sent.
    Full {
        /// The bytes still to send.
        data: Option<Bytes>,
    },
}

impl Body {
    /// An empty body.
    pub const fn empty() -> Self {
        Body::Full { data: None }
    }

    /// A streamed body not tied to a pooled connection.
    pub fn stream(inner: Incoming) -> Self {
        Body::Stream {
            inner,
            lease: None,
            slot: None,
        }
    }

    /// An upstream body; `lease` returns to the pool at the body's end.
    pub fn upstream(inner: Incoming, lease: Lease) -> Self {
        Body::Stream {
            inner,
            lease: Some(lease),
            slot: None,
        }
    }

    /// Holds an upstream's adaptive-limit slot until the body ends; gives
    /// it back when there is nothing left to stream (the caller records it
    /// at once).
    pub fn hold(&mut self, permit: Permit) -> Option<Permit> {
        match self {
            Body::Stream { inner, slot, .. } if !http_body::Body::is_end_stream(inner) => {
                *slot = Some(permit);
                None
            }
            _ => Some(permit),
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Full {
            data: (!b.is_empty()).then_some(b),
        }
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Bytes::from_static(s.as_bytes()).into()
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Bytes::from(s).into()
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Bytes::from(v).into()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // Every field is Unpin (`Incoming` included), so no projection.
        match self.get_mut() {
            Body::Stream { inner, lease, slot } => {
                let frame = Pin::new(&mut *inner).poll_frame(cx);
                // Hand the connection back as soon as its response is
                // complete, not when hyper gets around to dropping the body.
                let ended = matches!(frame, Poll::Ready(None)) || inner.is_end_stream();
                if ended && let Some(lease) = lease.take() {
                    lease.release();
                }
                if ended && let Some(slot) = slot.take() {
                    slot.record(Outcome::Success);
                } else if matches!(frame, Poll::Ready(Some(Err(_)))) {
                    // A broken body is no latency sample.
                    slot.take();
                }
                frame
            }
            Body::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Stream { inner, .. } => inner.is_end_stream(),
            Body::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Stream { inner, .. } => inner.size_hint(),
            Body::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // A body hyper never polled because it was empty from the start (204,
        // 304, HEAD, `content-length: 0`) still leaves a reusable connection.
        // One dropped mid-stream does not: its lease closes the connection.
        if let Body::Stream { inner, lease, .. } = self
            && http_body::Body::is_end_stream(inner)
            && let Some(lease) = lease.take()
        {
            lease.release();
        }
    }
}
