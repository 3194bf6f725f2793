//! The one response body type of the gateway: either an upstream body
//! streamed through untouched, or a small body the gateway wrote itself
//! (built-in routes, error responses). An enum instead of a boxed trait
//! object keeps the proxied path free of allocations.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

pin_project! {
    /// Response body: streamed upstream body or a complete gateway body.
    #[project = BodyProj]
    #[derive(Debug)]
    pub enum Body {
        /// Streamed from a peer frame by frame (never buffered whole).
        Stream { #[pin] inner: Incoming },
        /// Complete in memory; `None` once sent.
        Full { data: Option<Bytes> },
    }
}

impl Body {
    /// An empty body.
    pub const fn empty() -> Self {
        Body::Full { data: None }
    }

    /// A streamed body.
    pub fn stream(inner: Incoming) -> Self {
        Body::Stream { inner }
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
        match self.project() {
            BodyProj::Stream { inner } => inner.poll_frame(cx),
            BodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Stream { inner } => inner.is_end_stream(),
            Body::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Stream { inner } => inner.size_hint(),
            Body::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
