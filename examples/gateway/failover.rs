//! Retrying a request on another upstream, within a retry budget
//! ([`Failover`]).
//!
//! Two kinds of request may go to another upstream once their first one
//! failed them:
//! - any request, after a connect error: nothing of it was sent (its body
//!   is still unread);
//! - with `upstream.retry_idempotent` (on by default), an idempotent
//!   request without a body ([`Replay::of`]: GET, HEAD, OPTIONS, TRACE, PUT,
//!   DELETE), after it was sent: when the connection failed before the
//!   response head, or the upstream answered a status listed in
//!   `upstream.retry_statuses` (none by default). Its head is kept for that
//!   (one header map copy per such request, measured in docs/benchmarks.md);
//!   a request with a body is never resent once any of it was sent.
//!
//! `Proxy` asks [`Failover::alternative`] for the next upstream in rotation
//! whose breaker grants a permit, and the budget bounds how many retries
//! there are: at least `upstream.retry_budget_min` per
//! `upstream.retry_budget_window`, plus `upstream.retry_budget_ratio` of
//! the window's requests, so during an outage retries cannot multiply the
//! load. One retry per request at most.
//!
//! The failed upstream's breaker still records the failure: the response
//! carries a [`FailedOver`] extension that `breaker::UpstreamClassifier`
//! counts as a failure of the first choice, and a connection error is
//! counted in `gateway_upstream_errors_total` as if it had not been retried.
//! Counted in `gateway_upstream_retries_total{outcome="retried"|"budget_exhausted"}`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body::Body as _;
use palisade::breaker::{Breaker, Permit};
use tokio::time::Instant;

use crate::balance::{Upstream, Upstreams};
use crate::breaker::UpstreamClassifier;
use crate::config::UpstreamConfig;
use crate::pool::HostPool;
use crate::proxy::UpstreamErrorKind;
use crate::request_body::RequestBody;
use crate::telemetry::UpstreamMetrics;

/// Metric: retries on another upstream, by outcome.
pub const RETRIES_TOTAL: &str = "gateway_upstream_retries_total";

/// Response extension: the request was sent to another upstream after
/// upstream `0` (an index) failed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedOver(pub usize);

/// Why a request is retried on another upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The connection failed: refused ([`UpstreamErrorKind::Connect`]) or
    /// broken before the response head ([`UpstreamErrorKind::Protocol`]).
    Failed(UpstreamErrorKind),
    /// The upstream answered one of `upstream.retry_statuses`.
    Status,
}

// === Replay ===

/// The head of an idempotent request without a body, kept to send it again.
///
/// The fields are kept as a list, not a `HeaderMap` clone: the copy is made
/// for every such request and used only by the rare retry, and a map clone
/// is two allocations (its index table and its entries) and a larger
/// future to move, where the list is one. The map is rebuilt only when a
/// retry happens.
#[derive(Debug)]
pub struct Replay {
    method: Method,
    uri: Uri,
    fields: Vec<(HeaderName, HeaderValue)>,
}

impl Replay {
    /// A copy of `req`'s head if it may be sent twice: an idempotent method
    /// (RFC 9110 9.2.2) and no body.
    pub fn of(req: &Request<RequestBody>) -> Option<Self> {
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        if !idempotent || !req.body().is_end_stream() {
            return None;
        }
        Some(Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            fields: req
                .headers()
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        })
    }

    /// The request, once more.
    pub fn request(&self) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        let headers = req.headers_mut();
        headers.reserve(self.fields.len());
        // `append`: a field sent as several lines stays several lines, in
        // their order (`iter` yields each value of a name in turn).
        for (name, value) in &self.fields {
            headers.append(name.clone(), value.clone());
        }
        req
    }
}

/// What `Proxy` needs to retry elsewhere; shared by every clone.
pub struct Failover {
    upstreams: Arc<Upstreams>,
    pools: Arc<[Arc<HostPool>]>,
    classifier: UpstreamClassifier,
    breakers: Arc<[Breaker]>,
    metrics: Arc<UpstreamMetrics>,
    budget: Arc<RetryBudget>,
    idempotent: bool,
    statuses: Arc<[StatusCode]>,
    retried: metrics::Counter,
    exhausted: metrics::Counter,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// The upstream a retry goes to, with its breaker's permit.
#[derive(Debug)]
pub struct Alternative {
    /// Where to send.
    pub upstream: Upstream,
    /// Its pool.
    pub pool: Arc<HostPool>,
    /// Its breaker's permit, recorded with the retry's outcome.
    pub permit: Permit,
    /// How to classify that outcome.
    pub classifier: UpstreamClassifier,
}

impl Failover {
    /// Retries over `upstreams` (guarded by `breakers`, in index order)
    /// within the budget of `[upstream]`.
    pub fn new(
        upstreams: Arc<Upstreams>,
        pools: Arc<[Arc<HostPool>]>,
        breakers: Vec<Breaker>,
        classifier: UpstreamClassifier,
        metrics: Arc<UpstreamMetrics>,
        config: &UpstreamConfig,
    ) -> Self {
        metrics::describe_counter!(
            RETRIES_TOTAL,
            "Requests retried on another upstream (after a connect error, or idempotent ones after a failure once sent), by outcome (retried, budget_exhausted)."
        );
        Self {
            upstreams,
            pools,
            classifier,
            breakers: breakers.into(),
            metrics,
            budget: Arc::new(RetryBudget::new(
                config.retry_budget_ratio,
                config.retry_budget_min,
                config.retry_budget_window.get(),
            )),
            idempotent: config.retry_idempotent,
            statuses: config
                .retry_statuses
                .iter()
                .filter_map(|s| StatusCode::from_u16(*s).ok())
                .collect(),
            retried: metrics::counter!(RETRIES_TOTAL, "outcome" => "retried"),
            exhausted: metrics::counter!(RETRIES_TOTAL, "outcome" => "budget_exhausted"),
        }
    }

    /// The same failover (one retry budget, the same breakers) over other
    /// pools: a thread-per-core worker's own (`workers.rs`).
    pub fn with_pools(&self, pools: Arc<[Arc<HostPool>]>) -> Self {
        Self {
            upstreams: self.upstreams.clone(),
            pools,
            classifier: self.classifier,
            breakers: self.breakers.clone(),
            metrics: self.metrics.clone(),
            budget: self.budget.clone(),
            idempotent: self.idempotent,
            statuses: self.statuses.clone(),
            retried: self.retried.clone(),
            exhausted: self.exhausted.clone(),
        }
    }

    /// Whether idempotent requests are retried once sent
    /// (`upstream.retry_idempotent`).
    pub fn retries_idempotent(&self) -> bool {
        self.idempotent
    }

    /// Whether an idempotent request answered `status` is retried.
    pub fn retries_status(&self, status: StatusCode) -> bool {
        status.is_server_error() && self.statuses.contains(&status)
    }

    /// After upstream `failed` failed a request (`why`): the next upstream
    /// in rotation whose breaker admits a call, if the budget allows a
    /// retry. Counts the retry or its refusal, and the connection error when
    /// it is retried (otherwise the error itself reaches the choice, which
    /// counts it).
    pub fn alternative(&self, failed: usize, why: Why) -> Option<Alternative> {
        let list = self.upstreams.list();
        let n = list.len();
        if n < 2 {
            return None;
        }
        if !self.budget.try_withdraw(self.upstreams.requests()) {
            self.exhausted.increment(1);
            tracing::debug!(upstream = %list[failed].authority, "retry budget exhausted");
            return None;
        }
        for k in 1..n {
            let i = (failed + k) % n;
            if let Ok(permit) = self.breakers[i].try_acquire() {
                if let Why::Failed(kind) = why {
                    self.metrics.record(failed, kind);
                }
                self.retried.increment(1);
                tracing::debug!(from = %list[failed].authority, to = %list[i].authority, why = ?why, "retrying on another upstream");
                return Some(Alternative {
                    upstream: list[i].clone(),
                    pool: self.pools[i].clone(),
                    permit,
                    classifier: self.classifier,
                });
            }
        }
        None
    }
}

// === RetryBudget ===

/// At least `min` retries per `window`, plus `ratio` of the requests of the
/// current window. Only the retry path takes the lock; the request count is
/// the rotation's counter, which every request bumps anyway.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min: u64,
    window: Duration,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    requests_at_start: usize,
    retries: u64,
}

impl RetryBudget {
    /// A budget (validated: `ratio` in 0..=1, `window` > 0).
    pub fn new(ratio: f64, min: u64, window: Duration) -> Self {
        Self {
            ratio,
            min,
            window,
            state: Mutex::new(Window {
                start: None,
                requests_at_start: 0,
                retries: 0,
            }),
        }
    }

    /// Takes one retry if the budget has one; `requests` is the total
    /// number of requests so far.
    pub fn try_withdraw(&self, requests: usize) -> bool {
        let now = Instant::now();
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if w.start.is_none_or(|s| now.duration_since(s) >= self.window) {
            // The request that failed belongs to the new window.
            w.start = Some(now);
            w.requests_at_start = requests.saturating_sub(1);
            w.retries = 0;
        }
        let seen = requests.saturating_sub(w.requests_at_start) as f64;
        let allowed = self.min.saturating_add((self.ratio * seen) as u64);
        if w.retries < allowed {
            w.retries += 1;
            true
        } else {
            false
        }
    }
}
