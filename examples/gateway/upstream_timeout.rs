//! Layer 8: the request's body limits and the upstream timeout.
//!
//! [`UpstreamTimeout`] turns the client's body into a [`RequestBody`]
//! (`server.max_request_body`, `server.body_timeout`) and answers a
//! `Content-Length` over the cap with 413 before reading any of it. Its
//! timer, `upstream.timeout`, measures the upstream: it starts once the
//! request body has been read to its end (at once for a request without a
//! body) and stops at the response head, so a slow upload is the body
//! timeout's business and never a 504 charged to the upstream.
//!
//! Differences from `tower::timeout::Timeout`: the timer starts at the end
//! of the upload rather than at `call`; the error on expiry is the same
//! `tower::timeout::error::Elapsed`, so the 504 mapping and the breaker's
//! view of a timeout are unchanged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, header};
use http_body::Body as _;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::timeout::error::Elapsed;
use tower::{BoxError, Layer, Service};

use crate::config::Config;
use crate::proxy::ProxyError;
use crate::request_body::{ClientBodyError, RequestBody, Upload};

/// The settings of [`UpstreamTimeout`], from a validated [`Config`].
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeoutLayer {
    timeout: Duration,
    max_body: u64,
    body_timeout: Duration,
}

impl UpstreamTimeoutLayer {
    /// `upstream.timeout`, `server.max_request_body`, `server.body_timeout`.
    pub fn new(config: &Config) -> Self {
        Self {
            timeout: config.upstream.timeout.get(),
            max_body: config.server.max_request_body,
            body_timeout: config.server.body_timeout.get(),
        }
    }
}

impl<S> Layer<S> for UpstreamTimeoutLayer {
    type Service = UpstreamTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UpstreamTimeout {
            inner,
            settings: *self,
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct UpstreamTimeout<S> {
    inner: S,
    settings: UpstreamTimeoutLayer,
}

impl<S> Service<Request<Incoming>> for UpstreamTimeout<S>
where
    S: Service<Request<RequestBody>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = UpstreamTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let s = self.settings;
        let (parts, body) = req.into_parts();
        // Most requests carry no body: no length to check, and their timer
        // starts now, with no shared upload state to allocate.
        let upload = if body.is_end_stream() {
            None
        } else {
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|len| len > s.max_body) {
                // Answered before a byte of the body is read or forwarded
                // (the client may be waiting on `Expect: 100-continue`).
                return UpstreamTimeoutFuture::Rejected {
                    error: Some(ProxyError::Client(ClientBodyError::TooLarge)),
                };
            }
            Some(Arc::new(Upload::default()))
        };
        let body = RequestBody::new(body, s.max_body, s.body_timeout, upload.clone());
        UpstreamTimeoutFuture::Waiting {
            inner: self.inner.call(Request::from_parts(parts, body)),
            upload,
            sleep: tokio::time::sleep(s.timeout),
            timeout: s.timeout,
        }
    }
}

pin_project! {
    /// Response future of [`UpstreamTimeout`].
    #[project = UpstreamTimeoutProj]
    #[derive(Debug)]
    pub enum UpstreamTimeoutFuture<F> {
        /// Forwarded; the timer runs once `upload` (if any) is done.
        Waiting {
            #[pin]
            inner: F,
            upload: Option<Arc<Upload>>,
            #[pin]
            sleep: Sleep,
            timeout: Duration,
        },
        /// Refused before forwarding.
        Rejected { error: Option<ProxyError> },
    }
}

impl<F, T, E> Future for UpstreamTimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            UpstreamTimeoutProj::Waiting {
                inner,
                upload,
                mut sleep,
                timeout,
            } => {
                if let Some(up) = upload
                    && up.poll_done(cx)
                {
                    // The upstream's time starts now.
                    sleep.as_mut().reset(Instant::now() + *timeout);
                    *upload = None;
                }
                if let Poll::Ready(result) = inner.poll(cx) {
                    return Poll::Ready(result.map_err(Into::into));
                }
                if upload.is_none() && sleep.poll(cx).is_ready() {
                    return Poll::Ready(Err(Elapsed::new().into()));
                }
                Poll::Pending
            }
            UpstreamTimeoutProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .expect("UpstreamTimeoutFuture polled after completion")
                .into())),
        }
    }
}
