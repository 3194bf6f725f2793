//! `[breaker]`: one circuit breaker per upstream (`palisade-breaker`).
//!
//! The breakers are part of the upstream choice (`balance.rs`, layer 6 in
//! `stack.rs`), one per upstream, keyed by `Upstream::index`, so each
//! upstream opens and closes on its own; they wrap the timeout, so a
//! timeout or a connection error counts as a failure like a 5xx answer. An
//! open breaker takes its upstream out of the rotation; only when every
//! upstream refuses is the request answered `503 Service Unavailable` with
//! `Retry-After` (rounded up to whole seconds), without an upstream call.
//! Breakers are named `upstream/<index>` in `/metrics`
//! (`palisade_breaker_state{breaker="upstream/0"}`: 0 closed, 1 open,
//! 2 half-open) and in the logs.
//!
//! What counts: a 5xx answer (or `failure_statuses`), a timeout, a
//! connection error. What does not: an error that began in the client's
//! request body (too large, stalled, aborted; see `request_body.rs`), which
//! is `Ignored` ([`UpstreamClassifier`]) so slow or aborting clients cannot
//! open a breaker for everyone.

use std::sync::Arc;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use palisade::breaker::http::HttpClassifier;
use palisade::breaker::{
    Breaker, Classify, Config as BreakerSettings, KeyedBreakers, KeyedCircuitBreakerLayer, Outcome,
};
use serde::Deserialize;
use tower::BoxError;

use crate::config::{ConfigDuration, ConfigError};
use crate::proxy::Upstream;

/// `[breaker]` section; every key has the library's default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// `false` passes every request (the breakers still exist, disabled).
    pub enabled: bool,
    /// Count-based window: the last `window_size` calls.
    pub window_size: u32,
    /// Time-based window instead: the calls of the last `window_duration`
    /// (kept in `window_buckets` buckets).
    pub window_duration: Option<ConfigDuration>,
    /// Buckets of the time-based window.
    pub window_buckets: u32,
    /// Failure rate in (0, 1] that opens the breaker.
    pub failure_rate_threshold: f64,
    /// Open after this many failures in a row instead of by rate.
    pub consecutive_failures: Option<u32>,
    /// Calls the window must hold before the rates count.
    pub minimum_calls: u32,
    /// Calls at least this long count as slow.
    pub slow_call_duration: Option<ConfigDuration>,
    /// Slow-call rate in (0, 1] that opens the breaker.
    pub slow_call_rate_threshold: f64,
    /// Wait before the first probe.
    pub wait_duration: ConfigDuration,
    /// Growth of the wait per re-opening (>= 1).
    pub wait_multiplier: f64,
    /// Cap of the wait.
    pub max_wait_duration: ConfigDuration,
    /// Waits are shortened by up to this random fraction, in [0, 1).
    pub wait_jitter: f64,
    /// Concurrent probes in the half-open state.
    pub half_open_probes: u32,
    /// Longest half-open round before re-opening.
    pub max_half_open_duration: ConfigDuration,
    /// Upstream statuses counted as failures; empty = every 5xx.
    pub failure_statuses: Vec<u16>,
}

/// The library's defaults (see `docs/circuit-breaker.md`).
impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window_size: 100,
            window_duration: None,
            window_buckets: 10,
            failure_rate_threshold: 0.5,
            consecutive_failures: None,
            minimum_calls: 20,
            slow_call_duration: None,
            slow_call_rate_threshold: 1.0,
            wait_duration: ConfigDuration::from_secs(5),
            wait_multiplier: 2.0,
            max_wait_duration: ConfigDuration::from_secs(60),
            wait_jitter: 0.1,
            half_open_probes: 5,
            max_half_open_duration: ConfigDuration::from_secs(30),
            failure_statuses: Vec::new(),
        }
    }
}

/// The key of a request: the index of the upstream chosen for it.
fn upstream_index<B>(req: &Request<B>) -> usize {
    req.extensions()
        .get::<Upstream>()
        .map_or(usize::MAX, |u| u.index)
}

/// The layer: one breaker per upstream.
pub type BreakerLayer =
    KeyedCircuitBreakerLayer<usize, fn(&Request<Incoming>) -> usize, UpstreamClassifier>;

/// The proxied requests' classifier: [`HttpClassifier`] for answers and
/// upstream errors, `Ignored` for errors of the client's own body.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamClassifier(HttpClassifier);

impl<B> Classify<http::Response<B>, BoxError> for UpstreamClassifier {
    fn classify(&self, result: &Result<http::Response<B>, BoxError>) -> Outcome {
        match result {
            Err(e) if crate::request_body::ClientBodyError::find(&**e).is_some() => {
                Outcome::Ignored
            }
            // The gateway's own connection cap: nothing was asked of the
            // upstream.
            Err(e)
                if matches!(
                    e.downcast_ref::<crate::proxy::ProxyError>(),
                    Some(crate::proxy::ProxyError::PoolExhausted)
                ) =>
            {
                Outcome::Ignored
            }
            // Answered by another upstream after this one refused the
            // connection (`failover.rs`): this one failed.
            Ok(res)
                if res
                    .extensions()
                    .get::<crate::failover::FailedOver>()
                    .is_some() =>
            {
                Outcome::Failure
            }
            _ => self.0.classify(result),
        }
    }
}

impl UpstreamClassifier {
    /// The outcome of a call `Proxy` made itself (a failover retry).
    pub fn classify_proxied<B>(
        &self,
        result: &Result<http::Response<B>, crate::proxy::ProxyError>,
    ) -> Outcome {
        match result {
            Err(crate::proxy::ProxyError::Client(_) | crate::proxy::ProxyError::PoolExhausted) => {
                Outcome::Ignored
            }
            Err(_) => Outcome::Failure,
            Ok(res) if self.0.is_failure(res.status()) => Outcome::Failure,
            Ok(_) => Outcome::Success,
        }
    }
}

/// The same breakers around the `[batch]` upstream calls (their requests
/// carry no client body), so a batch's outcome counts for its upstream.
pub type BatchBreakerLayer = KeyedCircuitBreakerLayer<
    usize,
    fn(&Request<http_body_util::Empty<bytes::Bytes>>) -> usize,
    HttpClassifier,
>;

/// [`BatchBreakerLayer`] over the breakers of `proxied`.
pub fn for_batches(
    proxied: &BreakerLayer,
    config: &BreakerConfig,
) -> Result<BatchBreakerLayer, ConfigError> {
    let key_fn: fn(&Request<http_body_util::Empty<bytes::Bytes>>) -> usize = upstream_index;
    Ok(
        KeyedCircuitBreakerLayer::from_breakers(proxied.breakers().clone(), key_fn)
            .classifier(classifier(config)?),
    )
}

/// The gateway's key for a field palisade-breaker names.
fn key(field: &str) -> String {
    match field {
        "sliding_window.size" => "breaker.window_size".to_owned(),
        "sliding_window.duration" => "breaker.window_duration".to_owned(),
        "sliding_window.buckets" => "breaker.window_buckets".to_owned(),
        other => format!("breaker.{other}"),
    }
}

/// Checks `[breaker]` (part of `Config::validate`): the settings and the
/// classifier [`layer_carried`] builds, without creating a breaker.
pub fn validate(config: &BreakerConfig) -> Result<(), ConfigError> {
    settings(config)?;
    classifier(config)?;
    Ok(())
}

/// palisade-breaker's settings from `[breaker]`.
fn settings(config: &BreakerConfig) -> Result<BreakerSettings, ConfigError> {
    let mut b = BreakerSettings::builder()
        .name("upstream")
        .failure_rate_threshold(config.failure_rate_threshold)
        .minimum_calls(config.minimum_calls)
        .slow_call_rate_threshold(config.slow_call_rate_threshold)
        .wait_duration(config.wait_duration.get())
        .wait_multiplier(config.wait_multiplier)
        .max_wait_duration(config.max_wait_duration.get())
        .wait_jitter(config.wait_jitter)
        .half_open_probes(config.half_open_probes)
        .max_half_open_duration(config.max_half_open_duration.get());
    b = match config.window_duration {
        Some(d) => b.time_window(d.get(), config.window_buckets),
        None => b.count_window(config.window_size),
    };
    if let Some(k) = config.consecutive_failures {
        b = b.consecutive_failures(k);
    }
    if let Some(d) = config.slow_call_duration {
        b = b.slow_call_duration(d.get());
    }
    b.build()
        .map_err(|e| ConfigError::key(&key(e.field()), e.reason()))
}

/// The breakers of `layer`, one per upstream in index order (for the
/// breaker-aware choice, `balance.rs`).
pub fn breakers(layer: &BreakerLayer, upstreams: usize) -> Vec<palisade::breaker::Breaker> {
    (0..upstreams).map(|i| layer.breakers().get(&i)).collect()
}

/// The proxied path's classifier from `[breaker]` (validated).
pub fn upstream_classifier(config: &BreakerConfig) -> Result<UpstreamClassifier, ConfigError> {
    Ok(UpstreamClassifier(classifier(config)?))
}

/// Breaker settings compared by their parameters (a carry-over key).
#[derive(Clone)]
struct SameSettings(BreakerSettings);

impl PartialEq for SameSettings {
    fn eq(&self, other: &Self) -> bool {
        self.0.same_parameters(&other.0)
    }
}

/// Builds one breaker per upstream from `[breaker]` through the reload's
/// carry-over set (`reload.rs`; start-up is its first pass): the breaker of upstream `i` is
/// the previous generation's, with its state, while that upstream's URL,
/// the `[breaker]` settings and `enabled` are unchanged; a fresh one
/// otherwise.
pub fn layer_carried(
    config: &BreakerConfig,
    upstreams: &[String],
    pass: &mut palisade::reload::Pass<'_>,
) -> Result<BreakerLayer, ConfigError> {
    let settings = settings(config)?;
    let classifier = UpstreamClassifier(classifier(config)?);
    let mut breakers = KeyedBreakers::new(settings.clone(), upstreams.len().max(1))
        .map_err(|e| ConfigError::key(&key(e.field()), e.reason()))?;
    for (i, url) in upstreams.iter().enumerate() {
        let params = (url.clone(), SameSettings(settings.clone()), config.enabled);
        let breaker = pass.get_or_build(&format!("breaker.upstream/{i}"), params, |_| {
            let b = Breaker::new(
                settings
                    .clone()
                    .with_name(format!("{}/{i}", settings.name())),
            );
            if !config.enabled {
                b.disable();
            }
            b
        });
        breakers = breakers
            .with_breaker(i, breaker)
            .map_err(|e| ConfigError::key(&key(e.field()), e.reason()))?;
    }
    let key_fn: fn(&Request<Incoming>) -> usize = upstream_index;
    Ok(KeyedCircuitBreakerLayer::from_breakers(Arc::new(breakers), key_fn).classifier(classifier))
}

/// What counts as a failure: `breaker.failure_statuses`, or every 5xx.
fn classifier(config: &BreakerConfig) -> Result<HttpClassifier, ConfigError> {
    Ok(if config.failure_statuses.is_empty() {
        HttpClassifier::server_errors()
    } else {
        let mut statuses = Vec::with_capacity(config.failure_statuses.len());
        for (i, code) in config.failure_statuses.iter().enumerate() {
            let status = StatusCode::from_u16(*code).map_err(|_| {
                ConfigError::key(
                    &format!("breaker.failure_statuses[{i}]"),
                    format!("{code} is not an HTTP status"),
                )
            })?;
            statuses.push(status);
        }
        HttpClassifier::from_statuses(statuses)
    })
}
