//! Rate limiter benchmarks, each with its anchor in the same run.
//!
//! `cargo bench -p palisade-ratelimit --bench ratelimit -- --warm-up-time 1 --measurement-time 3`
//!
//! Groups: `clock` (why the TSC clock), `direct` (one limit vs governor),
//! `keyed` (1 / 1,000 / 100,000 keys vs governor keyed), `contended` (2
//! threads on one limit), `layer` (ready + call around a no-op service vs
//! tower's RateLimit and tower-resilience) and `http_layer` (vs
//! tower_governor). Memory per tracked key is printed first.

#![allow(missing_docs, clippy::disallowed_methods)]

use std::{
    convert::Infallible,
    future::Future,
    hint::black_box,
    num::NonZeroU32,
    pin::pin,
    sync::{Arc, Barrier},
    task::{Context, Poll, Waker},
    thread,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, criterion_group};
use palisade_ratelimit::{
    Clock, KeyedLimiter, Limiter, Quota, RateLimitLayer,
    http::{Headers, HttpRateLimitLayer},
};
use tower::{Layer, Service};

// === memory per key (resident set growth; the workspace forbids the unsafe
// code a counting allocator would need) ===

fn rss_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn memory_per_key() {
    const KEYS: u64 = 1_000_000;
    let before = rss_bytes();
    let ours = KeyedLimiter::builder(huge_quota())
        .max_keys(2 * KEYS as usize)
        .build()
        .unwrap();
    for key in 0..KEYS {
        ours.check(&key);
    }
    let ours_bytes = rss_bytes() - before;
    assert_eq!(ours.len() as u64, KEYS);
    drop(ours);
    let before = rss_bytes();
    let theirs = governor::RateLimiter::keyed(governor_huge());
    for key in 0..KEYS {
        let _ = theirs.check_key(&key);
    }
    let theirs_bytes = rss_bytes() - before;
    println!(
        "memory per tracked u64 key (RSS growth over {KEYS} keys): palisade {:.1} B, governor keyed {:.1} B",
        ours_bytes as f64 / KEYS as f64,
        theirs_bytes as f64 / KEYS as f64
    );
    drop(theirs);
}

// === quotas: large enough that every benchmarked check is admitted ===

fn huge_quota() -> Quota {
    Quota::builder()
        .rate(1_000_000_000)
        .per(Duration::from_secs(1))
        .burst(1_000_000_000)
        .build()
        .unwrap()
}

fn governor_huge() -> governor::Quota {
    governor::Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap())
        .allow_burst(NonZeroU32::new(1_000_000_000).unwrap())
}

fn clocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock");
    g.bench_function("std_instant_now", |b| b.iter(|| black_box(Instant::now())));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    g.bench_function("tokio_instant_now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    let quanta = quanta::Clock::new();
    g.bench_function("quanta_now", |b| b.iter(|| black_box(quanta.now())));
    let fast = Clock::fast();
    g.bench_function("palisade_fast", |b| b.iter(|| black_box(fast.now_nanos())));
    let tokio = Clock::tokio();
    g.bench_function("palisade_tokio", |b| {
        b.iter(|| black_box(tokio.now_nanos()))
    });
    g.finish();
}

fn direct(c: &mut Criterion) {
    let mut g = c.benchmark_group("direct");
    let ours = Limiter::new(huge_quota());
    g.bench_function("palisade", |b| b.iter(|| black_box(ours.check().allowed())));
    let theirs = governor::RateLimiter::direct(governor_huge());
    g.bench_function("governor", |b| b.iter(|| black_box(theirs.check().is_ok())));
    g.finish();
}

fn keyed(c: &mut Criterion) {
    let mut g = c.benchmark_group("keyed");
    for n in [1u64, 1_000, 100_000] {
        // A scrambled walk over the keys so consecutive checks hit different shards.
        let keys: Vec<u64> = (0..n)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let ours = KeyedLimiter::builder(huge_quota())
            .max_keys(200_000)
            .build()
            .unwrap();
        let theirs = governor::RateLimiter::keyed(governor_huge());
        for k in &keys {
            ours.check(k);
            let _ = theirs.check_key(k);
        }
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("palisade", n), &keys, |b, keys| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(ours.check(&keys[i]).allowed())
            })
        });
        assert_eq!(ours.len() as u64, n);
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("governor", n), &keys, |b, keys| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(theirs.check_key(&keys[i]).is_ok())
            })
        });
    }
    g.finish();
}

/// Nanoseconds per check per thread with two threads on one limiter.
fn two_threads(iters: u64, check: Arc<dyn Fn() + Send + Sync>) -> Duration {
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let check = check.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    check();
                }
                start.elapsed()
            })
        })
        .collect();
    let total: Duration = handles.into_iter().map(|h| h.join().unwrap()).sum();
    total / 2
}

fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("contended");
    let ours = Arc::new(Limiter::new(huge_quota()));
    g.bench_function("palisade_2_threads", |b| {
        let ours = ours.clone();
        b.iter_custom(|iters| {
            let ours = ours.clone();
            two_threads(
                iters,
                Arc::new(move || {
                    black_box(ours.check());
                }),
            )
        })
    });
    let theirs = Arc::new(governor::RateLimiter::direct(governor_huge()));
    g.bench_function("governor_2_threads", |b| {
        let theirs = theirs.clone();
        b.iter_custom(|iters| {
            let theirs = theirs.clone();
            two_threads(iters, Arc::new(move || drop(black_box(theirs.check()))))
        })
    });
    g.finish();
}

/// One `poll_ready` + `call` + poll of the response future, all ready at once.
#[inline]
fn drive<S, R>(svc: &mut S, req: R)
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(res)) => drop(black_box(res)),
        _ => panic!("not admitted at once"),
    }
}

fn noop() -> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone + Send {
    tower::service_fn(|req: u64| std::future::ready(Ok::<_, Infallible>(req)))
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("layer");

    let mut bare = noop();
    g.bench_function("bare_service_fn", |b| {
        b.iter(|| drive(&mut bare, black_box(1)))
    });

    let mut ours = RateLimitLayer::new(Limiter::new(huge_quota())).layer(noop());
    g.bench_function("palisade_reject", |b| {
        b.iter(|| drive(&mut ours, black_box(1)))
    });

    let mut ours_wait = RateLimitLayer::wait(Limiter::new(huge_quota())).layer(noop());
    g.bench_function("palisade_wait", |b| {
        b.iter(|| drive(&mut ours_wait, black_box(1)))
    });

    let mut tower_rl =
        tower::limit::RateLimitLayer::new(u64::MAX, Duration::from_secs(1)).layer(noop());
    g.bench_function("tower_ratelimit", |b| {
        b.iter(|| drive(&mut tower_rl, black_box(1)))
    });

    let resilience = tower_resilience::ratelimiter::RateLimiterLayer::per_second(usize::MAX / 4)
        .build()
        .unwrap();
    let mut resilience = resilience.layer(noop());
    g.bench_function("tower_resilience", |b| {
        b.iter(|| drive(&mut resilience, black_box(1)))
    });
    g.finish();
}

type Req = http::Request<()>;
type Res = http::Response<axum::body::Body>;

fn http_noop() -> impl Service<Req, Response = Res, Error = Infallible> + Clone {
    tower::service_fn(|_req: Req| std::future::ready(Ok::<_, Infallible>(Res::default())))
}

fn http_layer(c: &mut Criterion) {
    let mut g = c.benchmark_group("http_layer");
    let mut bare = http_noop();
    g.bench_function("bare", |b| b.iter(|| drive(&mut bare, Req::new(()))));

    let mut ours = HttpRateLimitLayer::new(Limiter::new(huge_quota()))
        .headers(Headers::none())
        .layer(http_noop());
    g.bench_function("palisade", |b| b.iter(|| drive(&mut ours, Req::new(()))));

    let mut ours_headers = HttpRateLimitLayer::new(Limiter::new(huge_quota())).layer(http_noop());
    g.bench_function("palisade_ietf_headers", |b| {
        b.iter(|| drive(&mut ours_headers, Req::new(())))
    });

    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(tower_governor::key_extractor::GlobalKeyExtractor)
        .finish()
        .unwrap();
    let mut theirs = tower_governor::GovernorLayer::new(config).layer(http_noop());
    g.bench_function("tower_governor", |b| {
        b.iter(|| drive(&mut theirs, Req::new(())))
    });
    g.finish();
}

criterion_group!(benches, clocks, direct, keyed, contended, layer, http_layer);

fn main() {
    memory_per_key();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
