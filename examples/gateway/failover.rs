//! Retrying a request on another upstream after a connect error, within a
//! retry budget ([`Failover`]).
//!
//! A connect error means nothing of the request was sent, so any request
//! (whatever its method, its body still unread) can go to another upstream.
//! `Proxy` asks [`Failover::alternative`] for the next upstream in rotation
//! whose breaker grants a permit, and the budget bounds how many such
//! retries there are: at least `upstream.retry_budget_min` per
//! `upstream.retry_budget_window`, plus `upstream.retry_budget_ratio` of
//! the window's requests, so during an outage retries cannot multiply the
//! load (the first attempts already fail fast on a refused connect).
//!
//! The failed upstream's breaker still records the failure: the response
//! carries a [`FailedOver`] extension that `breaker::UpstreamClassifier`
//! counts as a failure of the first choice, and the connect error is counted
//! in `gateway_upstream_errors_total` as before. Counted in
//! `gateway_upstream_retries_total{outcome="retried"|"budget_exhausted"}`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade::breaker::{Breaker, Permit};
use tokio::time::Instant;

use crate::balance::{Upstream, Upstreams};
use crate::breaker::UpstreamClassifier;
use crate::config::UpstreamConfig;
use crate::pool::HostPool;
use crate::proxy::UpstreamErrorKind;
use crate::telemetry::UpstreamMetrics;

/// Metric: retries on another upstream, by outcome.
pub const RETRIES_TOTAL: &str = "gateway_upstream_retries_total";

/// Response extension: the request was sent to another upstream after
/// upstream `0` (an index) refused the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedOver(pub usize);

/// What `Proxy` needs to retry elsewhere; shared by every clone.
pub struct Failover {
    upstreams: Arc<Upstreams>,
    pools: Arc<[Arc<HostPool>]>,
    classifier: UpstreamClassifier,
    breakers: Arc<[Breaker]>,
    metrics: Arc<UpstreamMetrics>,
    budget: Arc<RetryBudget>,
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
            "Requests retried on another upstream after a connect error, by outcome (retried, budget_exhausted)."
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
            retried: self.retried.clone(),
            exhausted: self.exhausted.clone(),
        }
    }

    /// After upstream `failed` refused the connection: the next upstream in
    /// rotation whose breaker admits a call, if the budget allows a retry.
    /// Counts the retry or its refusal, and the connect error when it is
    /// retried (otherwise the error itself reaches the choice, which counts
    /// it).
    pub fn alternative(&self, failed: usize) -> Option<Alternative> {
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
                self.metrics.record(failed, UpstreamErrorKind::Connect);
                self.retried.increment(1);
                tracing::debug!(from = %list[failed].authority, to = %list[i].authority, "connect failed, retrying on another upstream");
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
