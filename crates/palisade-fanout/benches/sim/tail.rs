//! The tail-latency simulation shared by the `tail_latency` bench (which
//! prints the table) and the `tail_latency` test (which asserts the
//! targets): deterministic, under paused tokio time, seeded.
//!
//! Backend: 1% of attempts take 500 ms (50x the median), the others 9-11 ms
//! (median 10 ms). The slow ones are exactly one per hundred consecutive
//! attempts, at a seeded random position in each hundred, so every stack
//! sees exactly 1% slow attempts whatever the seed.
//!
//! Percentiles: `pq` is the smallest latency that fewer than `(1 - q) * N`
//! requests exceed (rank `floor(q * N) + 1`): with exactly 1% slow
//! requests the unhedged p99 is the slow latency, the definition under
//! which "1% of calls take 50x the median" means "p99 = 50x the median". Load: 10,000 requests,
//! one every millisecond (open loop, each on its own task). Three stacks
//! over the same backend: no hedging, `tower::hedge` at p95, palisade
//! hedging at p95 with a 5% budget.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_fanout::hedge::{Delay, HedgeConfig, HedgeLayer};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

pub const REQUESTS: usize = 10_000;
pub const SLOW_FRACTION: f64 = 0.01;
pub const MEDIAN: Duration = Duration::from_millis(10);
pub const SLOW: Duration = Duration::from_millis(500);

/// One stack's results.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    /// Backend attempts beyond one per request, as a fraction of requests.
    pub extra_load: f64,
}

#[derive(Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

type Backend = tower::util::BoxCloneSyncService<u64, u64, BoxError>;

/// The backend and its attempt counter. With `brownout`, every attempt
/// started between 4 s and 6 s into the run takes the slow latency.
fn backend(seed: u64, brownout: bool) -> (Backend, Arc<AtomicU64>) {
    let origin = Instant::now();
    let rng = Arc::new(Mutex::new(SplitMix(seed)));
    let attempts = Arc::new(AtomicU64::new(0));
    let a = attempts.clone();
    let slow_at = Arc::new(Mutex::new(0u64));
    let svc = service_fn(move |req: u64| {
        let n = a.fetch_add(1, Ordering::Relaxed);
        let (slow, jitter) = {
            let mut rng = rng.lock().unwrap();
            let mut slow_at = slow_at.lock().unwrap();
            if n.is_multiple_of(100) {
                *slow_at = (rng.next_f64() * 100.0) as u64;
            }
            (n % 100 == *slow_at, rng.next_f64())
        };
        let at = origin.elapsed();
        let browned = brownout && at >= Duration::from_secs(4) && at < Duration::from_secs(6);
        let latency = if slow || browned {
            SLOW
        } else {
            Duration::from_micros(9_000 + (jitter * 2_000.0) as u64)
        };
        async move {
            tokio::time::sleep(latency).await;
            Ok::<_, BoxError>(req)
        }
    });
    (Backend::new(svc), attempts)
}

#[derive(Clone)]
struct TowerPolicy;

impl tower::hedge::Policy<u64> for TowerPolicy {
    fn clone_request(&self, req: &u64) -> Option<u64> {
        Some(*req)
    }
    fn can_retry(&self, _req: &u64) -> bool {
        true
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).floor() as usize + 1).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Drives `svc` with the open-loop load; returns the sorted latencies.
async fn drive<S>(svc: S) -> Vec<Duration>
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..REQUESTS as u64 {
        tick.tick().await;
        let svc = svc.clone();
        tasks.spawn(async move {
            let start = Instant::now();
            svc.oneshot(i)
                .await
                .map_err(Into::into)
                .expect("the backend never fails");
            start.elapsed()
        });
    }
    let mut latencies = Vec::with_capacity(REQUESTS);
    while let Some(l) = tasks.join_next().await {
        latencies.push(l.expect("no task panics"));
    }
    latencies.sort_unstable();
    latencies
}

fn row(name: &'static str, latencies: &[Duration], attempts: u64) -> Row {
    Row {
        name,
        p50: quantile(latencies, 0.50),
        p95: quantile(latencies, 0.95),
        p99: quantile(latencies, 0.99),
        p999: quantile(latencies, 0.999),
        max: *latencies.last().expect("requests ran"),
        extra_load: (attempts as f64 - REQUESTS as f64) / REQUESTS as f64,
    }
}

/// Runs the three stacks, each on a fresh paused runtime with the same
/// backend seed. With `brownout`, the backend is slow for every attempt
/// from 4 s to 6 s (a struggling backend: hedging should back off).
pub fn run(seed: u64, brownout: bool) -> Vec<Row> {
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime")
    };
    let none = rt().block_on(async {
        let (svc, attempts) = backend(seed, brownout);
        let l = drive(svc).await;
        row("no hedging", &l, attempts.load(Ordering::Relaxed))
    });
    let tower = rt().block_on(async {
        let (svc, attempts) = backend(seed, brownout);
        let hedged = tower::hedge::Hedge::new(svc, TowerPolicy, 100, 0.95, Duration::from_secs(1));
        // tower's Hedge is not Clone-friendly across tasks without a buffer
        // of its own; share one instance behind a tower Buffer.
        let shared = tower::buffer::Buffer::new(hedged, 1024);
        let l = drive(shared).await;
        row("tower::hedge p95", &l, attempts.load(Ordering::Relaxed))
    });
    let palisade = rt().block_on(async {
        let (svc, attempts) = backend(seed, brownout);
        let layer = HedgeLayer::new(
            HedgeConfig::builder()
                .delay(Delay::Percentile(0.95))
                .max_extra_load(0.05)
                .build()
                .expect("valid"),
        );
        let l = drive(layer.layer(svc)).await;
        row(
            "palisade hedge p95, 5% budget",
            &l,
            attempts.load(Ordering::Relaxed),
        )
    });
    vec![none, tower, palisade]
}

/// The table, in markdown.
pub fn table(rows: &[Row]) -> String {
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    let mut out = String::from(
        "| stack | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | extra load |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.2}% |\n",
            r.name,
            ms(r.p50),
            ms(r.p95),
            ms(r.p99),
            ms(r.p999),
            ms(r.max),
            r.extra_load * 100.0
        ));
    }
    out
}
