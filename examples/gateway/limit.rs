//! `[limit]`: one adaptive concurrency limit per upstream
//! (`palisade-limit`), on by default, with no capacity configured.
//!
//! The limits are part of the upstream choice (`balance.rs`), next to the
//! breakers: an upstream whose limit is full is skipped like one whose
//! breaker is open, so its share of the traffic goes to upstreams with room,
//! and only when every upstream is full is the request answered `503` with
//! `Retry-After` (gRPC: `UNAVAILABLE`), in microseconds, without touching an
//! upstream. Each limit learns its upstream's capacity from the latency of
//! the calls it admits (by default the probing gradient), so a gateway in
//! front of an upstream offered 3x its capacity keeps delivering answers at
//! capacity instead of queueing every request past its client's patience.
//!
//! Limits are named `upstream/<index>` in `/metrics`
//! (`palisade_limit_limit{limiter="upstream/0"}`) and the logs, and are
//! carried over a reload when their section did not change (reload.rs).
//!
//! What is a drop: an upstream `503` or `429`, a gRPC `RESOURCE_EXHAUSTED`
//! or `UNAVAILABLE` head, a timeout or a connection error. An error that
//! began in the client's request body is no sample.

use http::HeaderName;
use palisade::limit::http::{DropClassifier, HttpPolicy};
use palisade::limit::{
    AdaptiveLimitLayer, Aimd, Algorithm, AtCompletion, Gradient2, Limiter, ProbingGradient, Vegas,
};
use serde::Deserialize;

use crate::config::{ConfigDuration, ConfigError};

/// `[limit]` section; every key has the library's default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitConfig {
    /// `false` leaves the upstreams unlimited (the `server.max_in_flight`
    /// cap still applies).
    pub enabled: bool,
    /// How each limit moves.
    pub algorithm: AlgorithmName,
    /// The least a limit goes down to.
    pub min_limit: usize,
    /// The most a limit goes up to.
    pub max_limit: usize,
    /// Where a limit starts (default 256: permissive, so a cold-start burst
    /// to a healthy upstream is not refused; the limit only comes down in
    /// windows where it filled and latency rose, and from 256 under 3x or
    /// 10x overload it has come down, and its backlog drained, within 2 s:
    /// palisade-limit's simulation tests).
    pub initial_limit: usize,
    /// The `Retry-After` of a refusal (rounded up to whole seconds, never
    /// 0).
    pub retry_after: ConfigDuration,
    /// Also one adaptive limit over every proxied request together, below
    /// `server.max_in_flight` (default off: the per-upstream limits protect
    /// the upstreams; this one protects what they share).
    pub global: bool,
    /// With `global`: a request header carrying the caller's deadline in
    /// milliseconds, read (a request whose deadline has passed is never
    /// started) and forwarded reduced, like `grpc-timeout` always is.
    pub deadline_header: Option<String>,
}

/// `limit.algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmName {
    /// A gradient over a periodically re-measured no-load latency (the
    /// default).
    ProbingGradient,
    /// Netflix's Gradient2 shape.
    Gradient2,
    /// Vegas: an estimated queue.
    Vegas,
    /// AIMD on drops and a 1 s latency ceiling.
    Aimd,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            algorithm: AlgorithmName::ProbingGradient,
            min_limit: 1,
            max_limit: 1000,
            initial_limit: 256,
            retry_after: ConfigDuration::from_secs(1),
            global: false,
            deadline_header: None,
        }
    }
}

/// Checks the section (the library's builders name the field). It builds
/// the algorithm only: a `Limiter` registers its metrics, and a throwaway
/// one would leave a `limiter="..."` series in `/metrics` on every reload.
pub fn validate(config: &LimitConfig) -> Result<(), ConfigError> {
    deadline_header(config)?;
    algorithm(config).map(drop)
}

fn deadline_header(config: &LimitConfig) -> Result<Option<HeaderName>, ConfigError> {
    config
        .deadline_header
        .as_deref()
        .map(|name| {
            HeaderName::try_from(name).map_err(|_| {
                ConfigError::key(
                    "limit.deadline_header",
                    format!("`{name}` is not a header name"),
                )
            })
        })
        .transpose()
}

/// The global limit (`[limit] global`), carried over a reload like the
/// per-upstream ones; `None` when off.
pub fn global_carried(
    config: &LimitConfig,
    pass: &mut palisade::reload::Pass<'_>,
) -> Result<Option<Limiter>, ConfigError> {
    if !(config.enabled && config.global) {
        return Ok(None);
    }
    pass.get_or_try_build("limit.global", config.clone(), |_| build(config, "global"))
        .map(Some)
}

/// The layer of the global limit: the caller's deadline read from
/// `grpc-timeout` (and `deadline_header`) and forwarded reduced; a drop is
/// an upstream 503/429 or an error; the slot ends at the response head (the
/// per-upstream limits hold theirs to the body's end).
pub fn global_layer(
    limiter: Limiter,
    config: &LimitConfig,
) -> AdaptiveLimitLayer<HttpPolicy, AtCompletion<DropClassifier>> {
    let mut policy = HttpPolicy::default();
    if let Ok(Some(header)) = deadline_header(config) {
        policy = policy.deadline_header(header);
    }
    AdaptiveLimitLayer::new(limiter)
        .policy(policy)
        .finish(AtCompletion(DropClassifier))
}

/// A library configuration error as the gateway's, naming the `limit.` key.
fn key_error(e: palisade_core::ConfigError) -> ConfigError {
    let field = e.field();
    ConfigError::key(
        &format!("limit.{}", field.rsplit('.').next().unwrap_or(field)),
        e.reason(),
    )
}

/// The section's algorithm, or the first invalid key.
fn algorithm(config: &LimitConfig) -> Result<Box<dyn Algorithm>, ConfigError> {
    macro_rules! algorithm {
        ($t:ty) => {
            <$t>::builder()
                .min_limit(config.min_limit)
                .max_limit(config.max_limit)
                .initial_limit(config.initial_limit)
                .build()
                .map(|a| Box::new(a) as Box<dyn Algorithm>)
                .map_err(key_error)
        };
    }
    match config.algorithm {
        AlgorithmName::ProbingGradient => algorithm!(ProbingGradient),
        AlgorithmName::Gradient2 => algorithm!(Gradient2),
        AlgorithmName::Vegas => algorithm!(Vegas),
        AlgorithmName::Aimd => algorithm!(Aimd),
    }
}

/// A limit named `name`, or the first invalid key.
fn build(config: &LimitConfig, name: &str) -> Result<Limiter, ConfigError> {
    Limiter::builder()
        .name(name)
        .algorithm(algorithm(config)?)
        .retry_after(config.retry_after.get())
        .build()
        .map_err(key_error)
}

/// One limit per upstream (`upstreams` names them for the carry-over),
/// reusing the previous generation's where nothing changed; `None` when the
/// section is off.
pub fn limits_carried(
    config: &LimitConfig,
    upstreams: &[String],
    pass: &mut palisade::reload::Pass<'_>,
) -> Result<Option<Vec<Limiter>>, ConfigError> {
    if !config.enabled {
        return Ok(None);
    }
    let mut limits = Vec::with_capacity(upstreams.len().max(1));
    for i in 0..upstreams.len().max(1) {
        let url = upstreams.get(i).cloned().unwrap_or_default();
        let name = format!("upstream/{i}");
        let params = (url, config.clone());
        limits.push(
            pass.get_or_try_build(&format!("limit.upstream/{i}"), params, |_| {
                build(config, &name)
            })?,
        );
    }
    Ok(Some(limits))
}
