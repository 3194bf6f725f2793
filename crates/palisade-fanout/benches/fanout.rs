//! Per-call overhead of scatter and spread against the hand-written
//! equivalents over the same ready services, in the same binary.
//!
//! `cargo bench -p palisade-fanout --bench fanout -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::StreamExt;
use futures_util::future::{join_all, select_ok};
use palisade_fanout::scatter::{All, FirstOk, Scatter};
use palisade_fanout::spread::{SpreadLayer, fan_out_fan_in};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

fn ready_service() -> impl Service<
    u64,
    Response = u64,
    Error = BoxError,
    Future = std::future::Ready<Result<u64, BoxError>>,
> + Clone {
    service_fn(|x: u64| std::future::ready(Ok::<_, BoxError>(x + 1)))
}

fn scatter(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for n in [2usize, 8] {
        let services: Vec<_> = (0..n).map(|_| ready_service()).collect();
        let mut g = c.benchmark_group(format!("scatter/{n}_branches"));

        let mut all = Scatter::builder(services.clone()).build(All).unwrap();
        g.bench_function("palisade All", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let out = ServiceExt::<u64>::ready(&mut all)
                        .await
                        .unwrap()
                        .call(black_box(1))
                        .await;
                    black_box(out.unwrap());
                })
            })
        });
        let mut hand = services.clone();
        g.bench_function("join_all (hand-written)", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut calls = Vec::with_capacity(n);
                    for svc in hand.iter_mut() {
                        calls.push(svc.ready().await.unwrap().call(black_box(1)));
                    }
                    black_box(join_all(calls).await);
                })
            })
        });

        let mut first = Scatter::builder(services.clone()).build(FirstOk).unwrap();
        g.bench_function("palisade FirstOk", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let out = ServiceExt::<u64>::ready(&mut first)
                        .await
                        .unwrap()
                        .call(black_box(1))
                        .await;
                    black_box(out.unwrap());
                })
            })
        });
        let mut hand = services.clone();
        g.bench_function("select_ok (hand-written)", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut calls = Vec::with_capacity(n);
                    for svc in hand.iter_mut() {
                        calls.push(svc.ready().await.unwrap().call(black_box(1)));
                    }
                    black_box(select_ok(calls).await.unwrap());
                })
            })
        });
        g.finish();
    }
}

fn spread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    const ITEMS: u64 = 1000;
    const N: usize = 16;
    let mut g = c.benchmark_group("spread/1000_items_16_in_flight");

    let mut spread = SpreadLayer::new(N).unwrap().layer(ready_service());
    g.bench_function("palisade Spread", |b| {
        b.iter(|| {
            rt.block_on(async {
                let out = ServiceExt::<std::ops::Range<u64>>::ready(&mut spread)
                    .await
                    .unwrap()
                    .call(0..ITEMS)
                    .await;
                black_box(out.unwrap());
            })
        })
    });
    g.bench_function("palisade fan_out_fan_in", |b| {
        b.iter(|| {
            rt.block_on(async {
                let svc = ready_service();
                let out = fan_out_fan_in(0..ITEMS, N, |i| svc.clone().oneshot(i)).await;
                black_box(out);
            })
        })
    });
    g.bench_function("buffer_unordered (hand-written)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let svc = ready_service();
                let out: Vec<_> = futures_util::stream::iter(0..ITEMS)
                    .map(|i| svc.clone().oneshot(i))
                    .buffer_unordered(N)
                    .collect()
                    .await;
                black_box(out);
            })
        })
    });
    g.bench_function("tower CallAll", |b| {
        b.iter(|| {
            rt.block_on(async {
                let out: Vec<_> = ready_service()
                    .call_all(futures_util::stream::iter(0..ITEMS))
                    .collect()
                    .await;
                black_box(out);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, scatter, spread);
criterion_main!(benches);
