//! Per-call cost of the adaptive limit, with the anchors on the same
//! workload in the same run: tower's static `ConcurrencyLimit` (the floor:
//! a semaphore permit per call) and tower-resilience's adaptive layer (AIMD
//! and Vegas).
//!
//! Workload: `ready().await` + `call(()).await` around a no-op
//! `service_fn`, driven inside one `block_on` per batch so the executor's
//! cost is the same for every contender. Each contender's limit is far
//! above the one call in flight, so every call is admitted and every
//! completion is a sample.
#![allow(missing_docs)]
// A benchmark measures wall time.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use palisade_limit::{AdaptiveLimitLayer, Aimd, Gradient2, Limiter, ProbingGradient, Vegas};
use tower::{Layer, Service, ServiceExt, service_fn};

type Noop = fn(()) -> std::future::Ready<Result<(), std::io::Error>>;

fn noop() -> tower::util::ServiceFn<Noop> {
    service_fn((|()| std::future::ready(Ok(()))) as Noop)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
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

fn palisade(algorithm: impl palisade_limit::Algorithm) -> AdaptiveLimitLayer {
    AdaptiveLimitLayer::new(Limiter::builder().algorithm(algorithm).build().unwrap())
}

fn per_call(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("per_call");
    group.bench_function("tower_concurrency_limit", |b| {
        b.iter_custom(|iters| {
            run!(
                rt,
                iters,
                tower::limit::ConcurrencyLimitLayer::new(1000).layer(noop())
            )
        })
    });
    group.bench_function("palisade_gradient2", |b| {
        b.iter_custom(|iters| run!(rt, iters, palisade(Gradient2::default()).layer(noop())))
    });
    group.bench_function("palisade_probing_gradient", |b| {
        b.iter_custom(|iters| {
            run!(
                rt,
                iters,
                palisade(ProbingGradient::default()).layer(noop())
            )
        })
    });
    group.bench_function("palisade_vegas", |b| {
        b.iter_custom(|iters| run!(rt, iters, palisade(Vegas::default()).layer(noop())))
    });
    group.bench_function("palisade_aimd", |b| {
        b.iter_custom(|iters| run!(rt, iters, palisade(Aimd::default()).layer(noop())))
    });
    group.bench_function("tower_resilience_aimd", |b| {
        b.iter_custom(|iters| {
            let layer = tower_resilience::adaptive::AdaptiveLimiterLayer::new(
                tower_resilience::adaptive::Aimd::builder()
                    .initial_limit(20)
                    .min_limit(1)
                    .max_limit(1000)
                    .latency_threshold(Duration::from_secs(1))
                    .build()
                    .unwrap(),
            );
            run!(rt, iters, layer.layer(noop()))
        })
    });
    group.bench_function("tower_resilience_vegas", |b| {
        b.iter_custom(|iters| {
            let layer = tower_resilience::adaptive::AdaptiveLimiterLayer::new(
                tower_resilience::adaptive::Vegas::builder()
                    .initial_limit(20)
                    .build()
                    .unwrap(),
            );
            run!(rt, iters, layer.layer(noop()))
        })
    });
    group.finish();
}

criterion_group!(benches, per_call);
criterion_main!(benches);
