//! Deadlines and classes read from HTTP requests.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::{Extensions, HeaderMap, HeaderValue, Method, Request, Uri};
use palisade_core::grpc;
use tokio::time::Instant;

use crate::policy::{Deadline, RequestPolicy};

/// The parts of a request a class function reads.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The header fields.
    pub headers: &'a HeaderMap,
    /// The extensions.
    pub extensions: &'a Extensions,
}

type ClassFn = Arc<dyn Fn(Head<'_>) -> usize + Send + Sync>;

/// Reads a request's deadline and class.
///
/// The deadline is the earliest of: the [`Deadline`] extension, the
/// `grpc-timeout` header (on by default), and the
/// [`deadline_header`](Self::deadline_header) (milliseconds; none by
/// default). Once the request is admitted, the time left is forwarded in the
/// same places (`grpc-timeout` only if the request had one), so the layers
/// below and the upstream see the reduced budget. The class comes from
/// [`classes`](Self::classes) (class 0 without it). gRPC requests are
/// refused in band.
#[derive(Clone, Default)]
pub struct HttpPolicy {
    ignore_grpc_timeout: bool,
    header: Option<HeaderName>,
    class: Option<ClassFn>,
}

impl fmt::Debug for HttpPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpPolicy")
            .field("grpc_timeout", &!self.ignore_grpc_timeout)
            .field("deadline_header", &self.header)
            .field("classes", &self.class.is_some())
            .finish()
    }
}

impl HttpPolicy {
    /// Also reads (and forwards) a deadline in `header`, as whole
    /// milliseconds (e.g. `x-request-timeout-ms: 800`).
    pub fn deadline_header(mut self, header: HeaderName) -> Self {
        self.header = Some(header);
        self
    }

    /// Whether `grpc-timeout` is read (default true).
    pub fn grpc_timeout(mut self, read: bool) -> Self {
        self.ignore_grpc_timeout = !read;
        self
    }

    /// Classes requests with `class`: an index into the limiter's classes,
    /// highest priority first.
    pub fn classes(mut self, class: impl Fn(Head<'_>) -> usize + Send + Sync + 'static) -> Self {
        self.class = Some(Arc::new(class));
        self
    }

    fn timeout_in(&self, headers: &HeaderMap) -> Option<Duration> {
        let grpc = (!self.ignore_grpc_timeout)
            .then(|| {
                headers
                    .get(&grpc::GRPC_TIMEOUT)
                    .and_then(grpc::parse_timeout)
            })
            .flatten();
        let header = self.header.as_ref().and_then(|name| {
            let ms: u64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
            Some(Duration::from_millis(ms))
        });
        match (grpc, header) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<B> RequestPolicy<Request<B>> for HttpPolicy {
    fn class(&self, req: &Request<B>) -> usize {
        self.class.as_ref().map_or(0, |class| {
            class(Head {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                extensions: req.extensions(),
            })
        })
    }

    fn deadline(&self, req: &Request<B>, waited: Duration) -> Option<Instant> {
        let from_headers = self.timeout_in(req.headers()).map(|timeout| {
            let now = Instant::now();
            (now + timeout).checked_sub(waited).unwrap_or(now)
        });
        let from_extension = req.extensions().get::<Deadline>().map(|d| d.0);
        match (from_headers, from_extension) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn propagate(&self, req: &mut Request<B>, remaining: Duration) {
        req.extensions_mut()
            .insert(Deadline(Instant::now() + remaining));
        let headers = req.headers_mut();
        if !self.ignore_grpc_timeout && headers.contains_key(&grpc::GRPC_TIMEOUT) {
            headers.insert(grpc::GRPC_TIMEOUT.clone(), grpc::timeout_value(remaining));
        }
        if let Some(name) = &self.header
            && headers.contains_key(name)
        {
            let ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
            headers.insert(name.clone(), HeaderValue::from(ms));
        }
    }

    fn in_band(&self, req: &Request<B>) -> bool {
        grpc::is_grpc(req.headers())
    }
}
