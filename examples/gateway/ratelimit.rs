//! `[ratelimit]`: a per-client limit and a global limit (`palisade-ratelimit`).
//!
//! Layer 5 of the stack (see `stack.rs`): after the built-in routes (probes
//! and `/metrics` are never limited) and the drain layer, before the upstream
//! choice, so a rejected request costs a few nanoseconds and never touches an
//! upstream or a breaker. Both limits are off unless configured:
//!
//! ```toml
//! [ratelimit]
//! trusted_proxies = ["10.0.0.0/8"]   # whose X-Forwarded-For is believed
//! mode = "reject"                    # or "wait": the global limit queues instead
//! shadow = false                     # true: count, never reject
//! headers = true                     # RateLimit fields on admitted responses too
//! legacy_headers = false             # X-RateLimit-Limit/Remaining/Reset
//! max_keys = 100000                  # clients tracked at most
//! # redis_url = "redis://127.0.0.1:6379/"   # share the per-client limit across gateways
//!
//! [ratelimit.per_client]
//! rate = 10
//! period = "1s"
//! burst = 20
//! key = "client_ip"                  # or "peer_ip", or "header:x-api-key"
//!
//! [ratelimit.global]
//! rate = 1000
//! period = "1s"
//! ```
//!
//! A limited request gets `429 Too Many Requests` with `Retry-After` (whole
//! seconds, rounded up, at least 1) and the IETF `RateLimit-Policy` /
//! `RateLimit` fields; metrics are `palisade_ratelimit_*{policy="per-client"}`
//! and `{policy="global"}` (see `docs/rate-limiting.md`).

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderName;
use ipnet::IpNet;
use palisade::ratelimit::http::{ClientIp, HeaderKey, Headers, HttpRateLimit, HttpRateLimitLayer};
use palisade::ratelimit::redis::{FailPolicy, RedisLimiter, RedisRateLimit, RedisRateLimitLayer};
use palisade::ratelimit::{
    KeyExtractor, KeyedLimiter, Limiter, Mode, PerKey, Quota, RateLimit, RateLimitLayer as Core,
};
use palisade::reload::Pass;
use serde::Deserialize;
use tower::Layer;
use tower::util::Either;

use crate::config::{ConfigDuration, ConfigError};

/// `[ratelimit]` section. Without `per_client` and `global` nothing is limited.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `[ratelimit.per_client]`: one budget per client key.
    pub per_client: Option<LimitConfig>,
    /// `[ratelimit.global]`: one budget for all requests together.
    pub global: Option<LimitConfig>,
    /// CIDRs (or single addresses) of the proxies in front of the gateway;
    /// only their `X-Forwarded-For` is believed (read right to left).
    pub trusted_proxies: Vec<String>,
    /// `"reject"` (429 at once) or `"wait"` (the global limit holds requests
    /// back until a cell is due; the per-client limit always rejects).
    pub mode: ModeConfig,
    /// Decide and count, but admit everything.
    pub shadow: bool,
    /// Send the `RateLimit` fields on admitted responses too (a 429 always
    /// carries them and `Retry-After`).
    pub headers: bool,
    /// Also send `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
    pub legacy_headers: bool,
    /// Most clients tracked at once (least recently seen are evicted).
    pub max_keys: usize,
    /// Key IPv6 clients by this prefix length (64 groups a subscriber's /64).
    pub ipv6_prefix: Option<u8>,
    /// Redis shared by several gateways: the per-client limit is then
    /// enforced there, across the fleet.
    pub redis_url: Option<String>,
    /// Longest wait for Redis per check.
    pub redis_budget: ConfigDuration,
    /// When Redis does not answer in time: `"open"` admits, `"closed"` rejects.
    pub redis_fail: FailConfig,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_client: None,
            global: None,
            trusted_proxies: Vec::new(),
            mode: ModeConfig::Reject,
            shadow: false,
            headers: true,
            legacy_headers: false,
            max_keys: palisade::ratelimit::DEFAULT_MAX_KEYS,
            ipv6_prefix: None,
            redis_url: None,
            redis_budget: ConfigDuration::from_millis(50),
            redis_fail: FailConfig::Open,
        }
    }
}

/// One limit: `rate` requests per `period`, `burst` at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests per period.
    pub rate: u32,
    /// The period (default 1 s).
    #[serde(default = "one_second")]
    pub period: ConfigDuration,
    /// Requests a rested client may send at once (default: `rate`).
    pub burst: Option<u32>,
    /// Per-client key: `"client_ip"` (default; honours `trusted_proxies`),
    /// `"peer_ip"` or `"header:<name>"`. Ignored for the global limit.
    #[serde(default = "client_ip")]
    pub key: String,
}

fn one_second() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}

fn client_ip() -> String {
    "client_ip".to_owned()
}

/// `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeConfig {
    /// 429 at once.
    Reject,
    /// The global limit queues requests until a cell is due.
    Wait,
}

/// `redis_fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailConfig {
    /// Admit while Redis is unavailable.
    Open,
    /// Reject while Redis is unavailable.
    Closed,
}

/// The per-client key, chosen by `per_client.key`.
#[derive(Debug, Clone)]
pub enum ClientKey {
    /// The client IP behind trusted proxies (the peer IP without any).
    Ip(ClientIp),
    /// A request header's value.
    Header(HeaderKey),
}

/// Per-client keys are strings so one limiter type serves IPs and headers.
impl<B> KeyExtractor<http::Request<B>> for ClientKey {
    type Key = ClientKeyValue;

    fn extract(&self, req: &http::Request<B>) -> Option<ClientKeyValue> {
        match self {
            Self::Ip(ip) => ip.extract(req).map(ClientKeyValue::Ip),
            Self::Header(h) => h
                .extract(req)
                .map(|v| ClientKeyValue::Header(v.as_bytes().into())),
        }
    }

    fn missing(&self) -> &'static str {
        match self {
            Self::Ip(ip) => KeyExtractor::<http::Request<B>>::missing(ip),
            Self::Header(h) => KeyExtractor::<http::Request<B>>::missing(h),
        }
    }
}

/// A per-client key value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKeyValue {
    /// An IP address.
    Ip(IpAddr),
    /// A header value.
    Header(Arc<[u8]>),
}

impl std::fmt::Display for ClientKeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(ip) => ip.fmt(f),
            Self::Header(v) => write!(f, "h:{}", String::from_utf8_lossy(v)),
        }
    }
}

/// The local policies: per client (unless it lives in Redis) and global.
/// Behind `Arc`s so a hot reload can hand the same limiter (and its state) to
/// the next stack (`reload.rs`, `palisade::reload::Carry`).
pub type Policies = (
    Option<Arc<PerKey<ClientKeyValue, ClientKey>>>,
    Option<Arc<Limiter>>,
);

/// Layer 5: Redis per-client limit (optional) → local limits (429 + fields)
/// → global wait (optional, `mode = "wait"`).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    redis: Option<RedisRateLimitLayer<ClientKey>>,
    local: HttpRateLimitLayer<Policies>,
    wait: Option<Core<Arc<Limiter>>>,
}

/// The service [`RateLimitLayer`] builds.
pub type RateLimited<S> = Either<
    RedisRateLimit<HttpRateLimit<Either<RateLimit<S, Arc<Limiter>>, S>, Policies>, ClientKey>,
    HttpRateLimit<Either<RateLimit<S, Arc<Limiter>>, S>, Policies>,
>;

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = match &self.wait {
            Some(wait) => Either::Left(wait.layer(inner)),
            None => Either::Right(inner),
        };
        let inner = self.local.layer(inner);
        match &self.redis {
            Some(redis) => Either::Left(redis.layer(inner)),
            None => Either::Right(inner),
        }
    }
}

fn quota(section: &str, limit: &LimitConfig) -> Result<Quota, ConfigError> {
    let mut builder = Quota::builder().rate(limit.rate).per(limit.period.get());
    if let Some(burst) = limit.burst {
        builder = builder.burst(burst);
    }
    builder
        .build()
        .map_err(|e| ConfigError::key(&format!("ratelimit.{section}.{}", e.field()), e))
}

fn trusted(config: &RateLimitConfig) -> Result<Vec<IpNet>, ConfigError> {
    config
        .trusted_proxies
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ConfigError::key(
                        "ratelimit.trusted_proxies",
                        format!("`{s}` is not a CIDR or an IP address"),
                    )
                })
        })
        .collect()
}

fn client_key(config: &RateLimitConfig, key: &str) -> Result<ClientKey, ConfigError> {
    let mut ip = ClientIp::new(trusted(config)?);
    if let Some(bits) = config.ipv6_prefix {
        ip = ip.ipv6_prefix(bits);
    }
    match key {
        "client_ip" => Ok(ClientKey::Ip(ip)),
        "peer_ip" => {
            let mut peer = ClientIp::new([]);
            if let Some(bits) = config.ipv6_prefix {
                peer = peer.ipv6_prefix(bits);
            }
            Ok(ClientKey::Ip(peer))
        }
        _ => match key.strip_prefix("header:").map(HeaderName::try_from) {
            Some(Ok(name)) => Ok(ClientKey::Header(HeaderKey::new(name))),
            _ => Err(ConfigError::key(
                "ratelimit.per_client.key",
                format!("`{key}`: expected \"client_ip\", \"peer_ip\" or \"header:<name>\""),
            )),
        },
    }
}

/// Checks `[ratelimit]` without building a limiter (part of
/// `Config::validate`): every check [`layer_carried`] makes.
pub fn validate(config: &RateLimitConfig) -> Result<(), ConfigError> {
    if config.max_keys == 0 {
        return Err(ConfigError::key("ratelimit.max_keys", "must be positive"));
    }
    trusted(config)?;
    if let Some(limit) = &config.per_client {
        let quota = quota("per_client", limit)?;
        client_key(config, &limit.key)?;
        if let Some(url) = &config.redis_url {
            if config.redis_budget.get().is_zero() {
                return Err(ConfigError::key(
                    "ratelimit.redis_budget",
                    "must be greater than 0",
                ));
            }
            // Redis keeps time in microseconds: a cell must be one at least.
            if quota.emission_interval() < std::time::Duration::from_micros(1) {
                return Err(ConfigError::key(
                    "ratelimit.per_client.rate",
                    "is too high for Redis (one request per microsecond at most)",
                ));
            }
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
            {
                return Err(ConfigError::key(
                    "ratelimit.redis_url",
                    format!("{url:?}: expected redis://, rediss:// or unix://"),
                ));
            }
        }
    }
    if let Some(limit) = &config.global {
        quota("global", limit)?;
    }
    Ok(())
}

/// The limiter named `name` from the previous generation when `params` are
/// equal (hot reload), else a fresh one.
fn carried<P, V>(
    carry: &mut Option<&mut Pass<'_>>,
    name: &str,
    params: P,
    build: impl FnOnce(&P) -> Result<V, ConfigError>,
) -> Result<V, ConfigError>
where
    P: PartialEq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    match carry {
        Some(pass) => pass.get_or_try_build(name, params, build),
        None => build(&params),
    }
}

/// Builds layer 5 from `[ratelimit]` (inside the runtime: the Redis
/// connection is lazy), keeping the local limiters of the previous generation whose
/// parameters are unchanged (`reload.rs`): `ratelimit.per_client` while its
/// quota, key, `trusted_proxies`, `ipv6_prefix`, `max_keys` and `shadow` are
/// equal; `ratelimit.global` while its quota, `mode` and `shadow` are.
pub fn layer_carried(
    config: &RateLimitConfig,
    mut carry: Option<&mut Pass<'_>>,
) -> Result<RateLimitLayer, ConfigError> {
    validate(config)?;
    let headers = Headers::default()
        .on_admitted(config.headers)
        .legacy(config.legacy_headers);

    let mut per_client = None;
    let mut redis = None;
    if let Some(limit) = &config.per_client {
        let quota = quota("per_client", limit)?;
        let extractor = client_key(config, &limit.key)?;
        match &config.redis_url {
            Some(url) => {
                let limiter = RedisLimiter::builder(url.clone(), quota)
                    .name("per-client")
                    .shadow(config.shadow)
                    .budget(config.redis_budget.get())
                    .fail(match config.redis_fail {
                        FailConfig::Open => FailPolicy::Open,
                        FailConfig::Closed => FailPolicy::Closed,
                    })
                    .build()
                    .map_err(|e| ConfigError::key("ratelimit.redis_url", e))?;
                // As for the local limit: a missing key header is allowed.
                let header = matches!(extractor, ClientKey::Header(_));
                let layer = RedisRateLimitLayer::new(Arc::new(limiter), extractor).headers(headers);
                redis = Some(if header { layer.allow_missing() } else { layer });
            }
            None => {
                let params = (
                    quota,
                    limit.key.clone(),
                    config.trusted_proxies.clone(),
                    config.ipv6_prefix,
                    config.max_keys,
                    config.shadow,
                );
                let policy = carried(&mut carry, "ratelimit.per_client", params, |_| {
                    let limiter = KeyedLimiter::builder(quota)
                        .name("per-client")
                        .max_keys(config.max_keys)
                        .shadow(config.shadow)
                        .build()
                        .map_err(|e| ConfigError::key(&format!("ratelimit.{}", e.field()), e))?;
                    // A client may omit the key header: it is then bounded by
                    // the global limit only. A missing peer address is a bug:
                    // 500.
                    let header = matches!(extractor, ClientKey::Header(_));
                    let policy = PerKey::new(limiter, extractor);
                    Ok(Arc::new(if header {
                        policy.allow_missing()
                    } else {
                        policy
                    }))
                })?;
                per_client = Some(policy);
            }
        }
    }

    let mut global = None;
    let mut wait = None;
    if let Some(limit) = &config.global {
        let quota = quota("global", limit)?;
        let params = (quota, config.mode, config.shadow);
        let limiter = carried(&mut carry, "ratelimit.global", params, |_| {
            Ok(Arc::new(
                Limiter::builder(quota)
                    .name("global")
                    .shadow(config.shadow)
                    .build(),
            ))
        })?;
        match config.mode {
            ModeConfig::Reject => global = Some(limiter),
            ModeConfig::Wait => wait = Some(Core::with_mode(limiter, Mode::Wait)),
        }
    }
    if per_client.is_some() || redis.is_some() || global.is_some() || wait.is_some() {
        tracing::info!(
            per_client = ?config.per_client.as_ref().map(|l| (l.rate, l.period.get(), &l.key)),
            global = ?config.global.as_ref().map(|l| (l.rate, l.period.get())),
            mode = ?config.mode,
            shadow = config.shadow,
            redis = config.redis_url.is_some(),
            "rate limiting enabled"
        );
    }
    Ok(RateLimitLayer {
        redis,
        local: HttpRateLimitLayer::new((per_client, global)).headers(headers),
        wait,
    })
}
