//! Layer 6: choosing the upstream ([`ChooseUpstream`]), following the
//! circuit breakers.
//!
//! On the proxied path the choice and the breakers are one step: the
//! balancer (`upstream.balance`) names an upstream, and the first one from
//! there in rotation order whose breaker grants a call
//! ([`Breaker::try_acquire`]) gets the request, so an open
//! breaker takes its upstream out of rotation at once and its share of the
//! traffic goes to the others (a rejection costs no upstream call, so this
//! needs no retry budget). Only when every breaker refuses is the request
//! answered `503` with the `Retry-After` of the last refusal. Once an open
//! breaker's wait is over, its next turn in the rotation is a half-open
//! probe. The permit is recorded when the response head (or the error)
//! arrives, classified by `breaker::UpstreamClassifier`; a cancelled call is
//! neither success nor failure.
//!
//! The balancer: `p2c` (default) looks at two upstreams, the next in
//! rotation and one other picked by a hash of the rotation counter, and
//! names the one with fewer requests awaiting their response head (ties go
//! to the rotation, so an idle gateway is round robin); `round_robin` names
//! the next in rotation. Why this and not tower's `p2c::Balance` over
//! `PeakEwma`: see `docs/architecture.md` (measured there).
//!
//! Without breakers (the `[batch]` path, whose breaker layer sits below the
//! choice) the balancer's choice is final.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use http::Request;
use http::uri::{Authority, Uri};
use palisade::breaker::{Breaker, Classify, Outcome, Permit};
use palisade::limit::Limiter;
use palisade::limit::http::DropClassifier;
use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

use crate::breaker::UpstreamClassifier;
use crate::config::Balance;
use crate::proxy::{ErrorChain, UpstreamErrorKind};
use crate::telemetry::UpstreamMetrics;

// === Upstream ===

/// The upstream chosen for a request, set as a request extension by
/// [`ChooseUpstream`]; `Proxy` moves it to the response extensions for the
/// access log (only while the `gateway::access` target is enabled).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Position in the configured upstream list; stable key for
    /// per-upstream state (a circuit breaker per upstream).
    pub index: usize,
    /// `host:port` the request is sent to.
    pub authority: Authority,
}

/// The configured upstreams, shared by every clone of [`ChooseUpstream`].
#[derive(Debug)]
pub struct Upstreams {
    list: Vec<Upstream>,
    next: AtomicUsize,
    balance: Balance,
    /// Per upstream: requests sent to it that have no response head yet
    /// (`p2c` only; each on its own cache line, every request touches one).
    pending: Box<[Pending]>,
}

/// One upstream's count of requests awaiting a response head.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Pending(AtomicUsize);

impl Upstreams {
    /// Upstreams from validated base URIs (`http://host:port`), balanced by
    /// `balance`.
    pub fn new(uris: &[Uri], balance: Balance) -> Self {
        let list = uris
            .iter()
            .enumerate()
            .map(|(index, uri)| Upstream {
                index,
                authority: uri
                    .authority()
                    .cloned()
                    .expect("validated upstream has an authority"),
            })
            .collect();
        Self {
            pending: uris.iter().map(|_| Pending::default()).collect(),
            list,
            next: AtomicUsize::new(0),
            balance,
        }
    }

    /// The balancer's pick for the next request (before the breakers have
    /// their say).
    fn pick(&self) -> usize {
        let n = self.list.len();
        let start = self.next();
        let a = start % n;
        if n == 1 || self.balance == Balance::RoundRobin {
            return a;
        }
        // The other candidate: any upstream but `a`, spread by a
        // multiplicative hash of the counter (no RNG state to share).
        let mix = (start as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let b = (a + 1 + (mix as usize) % (n - 1)) % n;
        let load = |i: usize| self.pending[i].0.load(Ordering::Relaxed);
        if load(b) < load(a) { b } else { a }
    }

    /// The upstreams, in configuration order.
    pub fn list(&self) -> &[Upstream] {
        &self.list
    }

    /// The next position of the rotation; Relaxed is enough, the counter
    /// orders nothing else.
    fn next(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Requests chosen for so far (the rotation's counter; the retry budget
    /// reads it).
    pub fn requests(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }
}

// === ChooseUpstreamLayer ===

/// Layer that applies [`ChooseUpstream`].
#[derive(Clone)]
pub struct ChooseUpstreamLayer {
    upstreams: Arc<Upstreams>,
    /// One breaker per upstream (by index).
    breakers: Option<Arc<[Breaker]>>,
    /// One adaptive concurrency limit per upstream (by index).
    limits: Option<Arc<[Limiter]>>,
    outcome: Arc<Outcomes>,
}

/// What a finished request is recorded into, shared by every request's
/// future through one reference count: the classifier is large, and a copy
/// per request would be moved with the future by every layer above.
struct Outcomes {
    metrics: Arc<UpstreamMetrics>,
    /// How calls are classified for the breakers (with breakers only).
    classifier: Option<UpstreamClassifier>,
}

impl fmt::Debug for ChooseUpstreamLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChooseUpstreamLayer")
            .field("upstreams", &self.upstreams.list.len())
            .field("breakers", &self.breakers.is_some())
            .field("limits", &self.limits.is_some())
            .finish()
    }
}

impl ChooseUpstreamLayer {
    /// Round robin over `upstreams` (must not be empty).
    pub fn new(upstreams: Arc<Upstreams>, metrics: Arc<UpstreamMetrics>) -> Self {
        assert!(!upstreams.list.is_empty(), "at least one upstream");
        Self {
            upstreams,
            breakers: None,
            limits: None,
            outcome: Arc::new(Outcomes {
                metrics,
                classifier: None,
            }),
        }
    }

    /// Round robin over the upstreams whose breaker admits the call:
    /// `breakers[i]` guards upstream `i`.
    pub fn with_breakers(mut self, breakers: Vec<Breaker>, classifier: UpstreamClassifier) -> Self {
        assert_eq!(
            breakers.len(),
            self.upstreams.list.len(),
            "one breaker per upstream"
        );
        self.breakers = Some(breakers.into());
        self.outcome = Arc::new(Outcomes {
            metrics: self.outcome.metrics.clone(),
            classifier: Some(classifier),
        });
        self
    }

    /// Also skips the upstreams whose adaptive limit is full: `limits[i]`
    /// limits upstream `i`.
    pub fn with_limits(mut self, limits: Vec<Limiter>) -> Self {
        assert_eq!(
            limits.len(),
            self.upstreams.list.len(),
            "one limit per upstream"
        );
        self.limits = Some(limits.into());
        self
    }
}

impl<S> Layer<S> for ChooseUpstreamLayer {
    type Service = ChooseUpstream<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ChooseUpstream {
            inner,
            upstreams: self.upstreams.clone(),
            breakers: self.breakers.clone(),
            limits: self.limits.clone(),
            outcome: self.outcome.clone(),
        }
    }
}

// === ChooseUpstream ===

/// Picks the upstream (see the module docs) and records it as the
/// [`Upstream`] request extension; counts and logs upstream failures of the
/// layers below.
#[derive(Clone)]
pub struct ChooseUpstream<S> {
    inner: S,
    upstreams: Arc<Upstreams>,
    breakers: Option<Arc<[Breaker]>>,
    limits: Option<Arc<[Limiter]>>,
    outcome: Arc<Outcomes>,
}

impl<S: fmt::Debug> fmt::Debug for ChooseUpstream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChooseUpstream")
            .field("inner", &self.inner)
            .field("breakers", &self.breakers.is_some())
            .finish()
    }
}

impl<S> ChooseUpstream<S> {
    /// The upstream for the next request with its limit and breaker
    /// permits, or the last refusal when every upstream refuses (its limit
    /// is full or its breaker open).
    fn choose(&self) -> Result<Chosen, BoxError> {
        let n = self.upstreams.list.len();
        let first = self.upstreams.pick();
        if self.breakers.is_none() && self.limits.is_none() {
            return Ok((first, None, None));
        }
        let mut refused: Option<BoxError> = None;
        for k in 0..n {
            let i = (first + k) % n;
            // The limit first: a full limit costs no breaker permit.
            let limit = match &self.limits {
                Some(limits) => match limits[i].try_acquire(0) {
                    Ok(permit) => Some(permit),
                    Err(overloaded) => {
                        refused = Some(overloaded.into());
                        continue;
                    }
                },
                None => None,
            };
            match self.breakers.as_ref().map(|b| b[i].try_acquire()) {
                Some(Ok(permit)) => return Ok((i, Some(permit), limit)),
                None => return Ok((i, None, limit)),
                // The limit's permit goes back unsampled with `limit`.
                Some(Err(rejected)) => refused = Some(rejected.into()),
            }
        }
        Err(refused.expect("at least one upstream"))
    }
}

/// An upstream's index, its breaker permit and its limit permit.
type Chosen = (usize, Option<Permit>, Option<palisade::limit::Permit>);

impl<S, B> Service<Request<B>> for ChooseUpstream<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    UpstreamClassifier: Classify<S::Response, BoxError>,
    DropClassifier: Classify<S::Response, BoxError>,
    S::Response: HoldSlot,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ChooseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let (index, permit, limit) = match self.choose() {
            Ok(chosen) => chosen,
            Err(rejected) => {
                return ChooseFuture::Rejected {
                    rejected: Some(rejected),
                };
            }
        };
        req.extensions_mut()
            .insert(self.upstreams.list[index].clone());
        ChooseFuture::Chosen {
            inner: self.inner.call(req),
            index,
            permit,
            limit,
            upstreams: InFlight::new(self.upstreams.clone(), index),
            outcome: self.outcome.clone(),
        }
    }
}

pin_project! {
    /// Response future of [`ChooseUpstream`]; dropping it unfinished
    /// cancels the breaker permit (neither success nor failure).
    #[project = ChooseProj]
    pub enum ChooseFuture<F> {
        /// Forwarded to upstream `index`.
        Chosen {
            #[pin]
            inner: F,
            index: usize,
            permit: Option<Permit>,
            limit: Option<palisade::limit::Permit>,
            upstreams: InFlight,
            outcome: Arc<Outcomes>,
        },
        /// Every upstream refused (full limit or open breaker).
        Rejected { rejected: Option<BoxError> },
    }
}

impl<F> fmt::Debug for ChooseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Chosen { index, .. } => write!(f, "ChooseFuture::Chosen({index})"),
            Self::Rejected { .. } => f.write_str("ChooseFuture::Rejected"),
        }
    }
}

impl<F, T, E> Future for ChooseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    UpstreamClassifier: Classify<T, BoxError>,
    DropClassifier: Classify<T, BoxError>,
    T: HoldSlot,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ChooseProj::Chosen {
                inner,
                index,
                permit,
                limit,
                upstreams,
                outcome,
            } => {
                let mut result = ready!(inner.poll(cx)).map_err(Into::into);
                upstreams.done();
                // An upstream 503/429 or a timeout is a drop, at the head;
                // a client's own body failure is no sample; a success holds
                // its slot until its body ends, where the body can carry it.
                if let Some(limit) = limit.take() {
                    let outcome = match &result {
                        Err(e) if UpstreamErrorKind::of(&**e).is_none() => Outcome::Ignored,
                        // Answered by another upstream after this one failed
                        // it (`failover.rs`), as the breaker counts it: a drop
                        // here, and no slot held for the other's body.
                        Ok(response) if response.failed_over() => Outcome::Failure,
                        result => DropClassifier.classify(result),
                    };
                    let limit = match (&mut result, outcome) {
                        (Ok(response), Outcome::Success) => response.hold(limit),
                        _ => Some(limit),
                    };
                    if let Some(limit) = limit {
                        limit.record(outcome);
                    }
                }
                if let (Some(permit), Some(classifier)) = (permit.take(), &outcome.classifier) {
                    permit.record(classifier.classify(&result));
                }
                if let Err(e) = &result
                    && let Some(kind) = UpstreamErrorKind::of(&**e)
                {
                    outcome.metrics.record(*index, kind);
                    let upstream = &upstreams.upstreams.list[*index].authority;
                    tracing::warn!(%upstream, kind = kind.as_str(), error = %ErrorChain(&**e), "upstream request failed");
                }
                Poll::Ready(result)
            }
            ChooseProj::Rejected { rejected } => Poll::Ready(Err(rejected
                .take()
                .expect("ChooseFuture polled after completion"))),
        }
    }
}

// === HoldSlot ===

/// A response that can carry its upstream's adaptive-limit slot until its
/// body ends (so a streamed body counts as in flight); one that cannot
/// gives it back, and the slot ends at the head.
pub trait HoldSlot {
    /// Takes `permit` along, or gives it back.
    fn hold(&mut self, permit: palisade::limit::Permit) -> Option<palisade::limit::Permit>;

    /// Whether another upstream answered after the chosen one failed.
    fn failed_over(&self) -> bool;
}

impl HoldSlot for http::Response<crate::body::Body> {
    fn hold(&mut self, permit: palisade::limit::Permit) -> Option<palisade::limit::Permit> {
        self.body_mut().hold(permit)
    }

    fn failed_over(&self) -> bool {
        self.extensions()
            .get::<crate::failover::FailedOver>()
            .is_some()
    }
}

impl HoldSlot for http::Response<hyper::body::Incoming> {
    fn hold(&mut self, permit: palisade::limit::Permit) -> Option<palisade::limit::Permit> {
        Some(permit)
    }

    fn failed_over(&self) -> bool {
        false
    }
}

// === InFlight ===

/// Counts a request in its upstream's pending requests (`p2c`) from the
/// choice until its response head, or until its future is dropped.
#[derive(Debug)]
pub struct InFlight {
    upstreams: Arc<Upstreams>,
    index: usize,
    counted: bool,
}

impl InFlight {
    fn new(upstreams: Arc<Upstreams>, index: usize) -> Self {
        let counted = upstreams.balance == Balance::P2c && upstreams.list.len() > 1;
        if counted {
            upstreams.pending[index].0.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            upstreams,
            index,
            counted,
        }
    }

    fn done(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.upstreams.pending[self.index]
                .0
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.done();
    }
}
