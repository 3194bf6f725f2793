//! Closed-state overhead, contended recording and open-state rejection, with
//! the anchors (`failsafe`, `tower-resilience`) on the same workload in the
//! same run.
//!
//! Workload: `ready().await` + `call(()).await` around a no-op
//! `service_fn`, driven inside one `block_on` per batch so the executor's
//! cost is the same for every contender.
#![allow(missing_docs)]
// A benchmark measures wall time.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::futures::CircuitBreaker as _;
use palisade_breaker::{Breaker, CircuitBreakerLayer, Config, State};
use tower::{Layer, Service, ServiceExt, service_fn};

type Noop = fn(()) -> std::future::Ready<Result<(), std::io::Error>>;

fn noop() -> tower::util::ServiceFn<Noop> {
    service_fn((|()| std::future::ready(Ok(()))) as Noop)
}

fn failing() -> tower::util::ServiceFn<Noop> {
    service_fn((|()| std::future::ready(Err(std::io::Error::other("down")))) as Noop)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn palisade(config: palisade_breaker::ConfigBuilder) -> Breaker {
    Breaker::new(config.build().unwrap())
}

fn resilience(failure_rate: f64) -> tower_resilience::circuitbreaker::CircuitBreakerLayer {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(failure_rate)
        .sliding_window_size(100)
        .minimum_number_of_calls(10)
        .wait_duration_in_open(Duration::from_secs(3600))
        .build()
        .unwrap()
}

/// Times `iters` ready+call round trips of `svc`.
macro_rules! run {
    ($rt:expr, $iters:expr, $svc:expr) => {{
        let mut svc = $svc;
        $rt.block_on(async {
            let start = Instant::now();
            for _ in 0..$iters {
                let r = svc.ready().await.unwrap().call(()).await;
                let _ = black_box(r);
            }
            start.elapsed()
        })
    }};
}

/// Times `iters` ready+call round trips of a no-op service wrapped by
/// failsafe's future-aware breaker (failsafe has no tower layer; this is how
/// its users wrap a call).
macro_rules! run_failsafe {
    ($rt:expr, $iters:expr, $cb:expr, $inner:expr) => {{
        let cb = $cb;
        let mut inner = $inner;
        $rt.block_on(async {
            let start = Instant::now();
            for _ in 0..$iters {
                let svc = inner.ready().await.unwrap();
                let r = cb.call(svc.call(())).await;
                let _ = black_box(r);
            }
            start.elapsed()
        })
    }};
}

fn closed(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("closed");
    g.bench_function("bare service_fn", |b| {
        b.iter_custom(|n| run!(rt, n, noop()))
    });
    g.bench_function("palisade (count window)", |b| {
        let layer = CircuitBreakerLayer::new(palisade(Config::builder()));
        b.iter_custom(|n| run!(rt, n, layer.layer(noop())))
    });
    g.bench_function("palisade (time window)", |b| {
        let layer = CircuitBreakerLayer::new(palisade(
            Config::builder().time_window(Duration::from_secs(10), 10),
        ));
        b.iter_custom(|n| run!(rt, n, layer.layer(noop())))
    });
    g.bench_function("palisade (count window + slow calls)", |b| {
        let layer = CircuitBreakerLayer::new(palisade(
            Config::builder().slow_call_duration(Duration::from_secs(1)),
        ));
        b.iter_custom(|n| run!(rt, n, layer.layer(noop())))
    });
    g.bench_function("failsafe", |b| {
        let cb = failsafe::Config::new().build();
        b.iter_custom(|n| run_failsafe!(rt, n, cb.clone(), noop()))
    });
    g.bench_function("tower-resilience", |b| {
        let layer = resilience(0.5);
        b.iter_custom(|n| run!(rt, n, layer.layer(noop())))
    });
    g.finish();
}

/// Two threads record into one breaker at once; reported time is wall time
/// per call on each thread.
fn contended(c: &mut Criterion) {
    fn on_two_threads(iters: u64, f: impl Fn(u64) -> Duration + Sync) -> Duration {
        std::thread::scope(|s| {
            let a = s.spawn(|| f(iters));
            let b = s.spawn(|| f(iters));
            a.join().unwrap().max(b.join().unwrap())
        })
    }
    let mut g = c.benchmark_group("contended (2 threads)");
    g.bench_function("palisade (count window)", |b| {
        let layer = CircuitBreakerLayer::new(palisade(Config::builder()));
        b.iter_custom(|n| on_two_threads(n, |n| run!(runtime(), n, layer.layer(noop()))))
    });
    g.bench_function("failsafe", |b| {
        let cb = failsafe::Config::new().build();
        b.iter_custom(|n| on_two_threads(n, |n| run_failsafe!(runtime(), n, cb.clone(), noop())))
    });
    g.bench_function("tower-resilience", |b| {
        let layer = resilience(0.5);
        b.iter_custom(|n| on_two_threads(n, |n| run!(runtime(), n, layer.layer(noop()))))
    });
    g.finish();
}

fn open(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("open (rejection)");
    g.bench_function("palisade", |b| {
        let breaker = palisade(
            Config::builder()
                .count_window(10)
                .minimum_calls(10)
                .wait_duration(Duration::from_secs(3600))
                .max_wait_duration(Duration::from_secs(3600)),
        );
        let layer = CircuitBreakerLayer::new(breaker.clone());
        run!(rt, 10, layer.layer(failing()));
        assert_eq!(breaker.state(), State::Open);
        b.iter_custom(|n| run!(rt, n, layer.layer(noop())))
    });
    g.bench_function("failsafe", |b| {
        let cb = failsafe::Config::new()
            .failure_policy(failsafe::failure_policy::consecutive_failures(
                3,
                failsafe::backoff::constant(Duration::from_secs(3600)),
            ))
            .build();
        run_failsafe!(rt, 3, cb.clone(), failing());
        assert!(!cb.is_call_permitted());
        b.iter_custom(|n| run_failsafe!(rt, n, cb.clone(), noop()))
    });
    g.bench_function("tower-resilience", |b| {
        let layer = resilience(0.5);
        run!(rt, 10, layer.layer(failing()));
        b.iter_custom(|n| run!(rt, n, layer.layer(noop())))
    });
    g.finish();
}

/// What a clock read costs (the count window with no slow-call threshold
/// never reads it; the time window and slow-call detection do).
fn clock(c: &mut Criterion) {
    use palisade_breaker::Clock;
    let mut g = c.benchmark_group("clock");
    let tokio_clock = palisade_breaker::TokioClock::new();
    g.bench_function("TokioClock::now (tokio test-util on)", |b| {
        b.iter(|| black_box(tokio_clock.now()))
    });
    g.bench_function("std::time::Instant::now", |b| {
        b.iter(|| black_box(Instant::now()))
    });
    g.finish();
}

criterion_group!(benches, closed, contended, open, clock);
criterion_main!(benches);
