//! `[cpu]`: the demo upstream's CPU-bound route `/cpu/{ms}`, served through
//! palisade-pool's [`CpuPool`] so the spinning never runs on the reactor
//! that also serves the gateway's proxied requests and `/healthz`.
//!
//! At most `cpu.threads` requests spin at once and `cpu.queue` more wait
//! for a thread; one more is refused at once with `503` and
//! `Retry-After: 1` (palisade-pool's HTTP mapping), never queued without
//! limit. The answer names the work done: `spun {ms}ms: {hash}`.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use palisade::pool::{CpuPool, Error};
use serde::Deserialize;

use crate::body::Body;
use crate::config::ConfigError;

/// `[cpu]` section (see `docs/gateway.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CpuConfig {
    /// Requests spinning at once; unset: the machine's cores.
    pub threads: Option<usize>,
    /// Requests admitted beyond those, waiting for a thread.
    pub queue: usize,
    /// Longest spin one request may ask for, in milliseconds.
    pub max_ms: u64,
}

impl Default for CpuConfig {
    fn default() -> Self {
        Self {
            threads: None,
            queue: 0,
            max_ms: 10_000,
        }
    }
}

/// The `/cpu/{ms}` route of the demo upstream.
#[derive(Debug, Clone)]
pub struct CpuRoute {
    pool: CpuPool,
    max_ms: u64,
}

/// Checks `[cpu]` without starting its threads (part of
/// `Config::validate`): the checks `CpuPool::builder().build()` makes.
pub fn validate(config: &CpuConfig) -> Result<(), ConfigError> {
    if config.max_ms == 0 {
        return Err(ConfigError::key("cpu.max_ms", "must be greater than 0"));
    }
    let max = tokio::sync::Semaphore::MAX_PERMITS / 2;
    match config.threads {
        Some(0) => return Err(ConfigError::key("cpu.threads", "must be at least 1")),
        Some(n) if n > max => return Err(ConfigError::key("cpu.threads", "is too large")),
        _ => {}
    }
    if config.queue > max {
        return Err(ConfigError::key("cpu.queue", "is too large"));
    }
    Ok(())
}

/// Builds the route's pool; a bad `[cpu]` value names its key.
pub fn route(config: &CpuConfig) -> Result<CpuRoute, ConfigError> {
    validate(config)?;
    let mut builder = CpuPool::builder()
        .name("demo-cpu")
        .queue_capacity(config.queue);
    if let Some(threads) = config.threads {
        builder = builder.threads(threads);
    }
    let pool = builder
        .build()
        .map_err(|e| ConfigError::key(&format!("cpu.{}", e.field()), e.reason()))?;
    Ok(CpuRoute {
        pool,
        max_ms: config.max_ms,
    })
}

impl CpuRoute {
    /// Answers `/cpu/{ms}`: `ms` is the path's tail.
    pub async fn handle(&self, ms: &str) -> Response<Body> {
        let Ok(ms) = ms.parse::<u64>() else {
            return text(
                StatusCode::BAD_REQUEST,
                "cpu time must be whole milliseconds\n".to_owned(),
            );
        };
        if ms > self.max_ms {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "at most {}ms of cpu per request (cpu.max_ms)\n",
                    self.max_ms
                ),
            );
        }
        // Admission is decided here, not when a thread frees up: over the
        // bound the answer is an immediate 503.
        match self
            .pool
            .try_run(move || spin(Duration::from_millis(ms)))
            .await
        {
            Ok(hash) => text(StatusCode::OK, format!("spun {ms}ms: {hash:016x}\n")),
            Err(e) => {
                let mut res: Response<Body> = palisade::pool::http::error_response(&e);
                let msg = match e {
                    Error::Overloaded => "cpu pool full\n",
                    Error::Panicked(_) => "cpu job panicked\n",
                    _ => "cpu pool closed\n",
                };
                *res.body_mut() = Body::from(msg);
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                res
            }
        }
    }
}

/// Hashes for `time` of real CPU time on the calling thread.
fn spin(time: Duration) -> u64 {
    // The wall clock on purpose: this burns real CPU for the time asked,
    // whatever tokio's clock says.
    #[allow(clippy::disallowed_methods)]
    let start = std::time::Instant::now();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    loop {
        for i in 0..4096u64 {
            h = (h ^ i).wrapping_mul(0x0100_0000_01b3);
        }
        if start.elapsed() >= time {
            return std::hint::black_box(h);
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
