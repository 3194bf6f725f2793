//! palisade-pipeline against the seed's one-task design and against
//! hand-written channel chains, same binary, same workload.
//!
//! ```text
//! cargo bench -p palisade-pipeline --bench pipeline -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - `three_1ms_stages/*`: three async stages that each sleep 1 ms, 1,000
//!   items, on a paused-time runtime. The time criterion reports is the
//!   *virtual* time the run took (`iter_custom`), so the throughput is items
//!   per virtual second: what the design allows, without timer granularity
//!   or CPU noise. `seed`: one task runs every stage of an item in series,
//!   item after item. `palisade/c1` and `palisade/c8`: one stage per task,
//!   concurrency 1 and 8 per stage.
//! - `noop_overhead/*`: three no-op stages, 10,000 items, real time on a
//!   current-thread runtime: the per-item cost of moving items through
//!   three stages. `channels`: a hand-written chain of `tokio::sync::mpsc`
//!   channels (capacity 64) and one task per stage; `buffered`: one stream
//!   chained with `StreamExt::buffered(1)` per stage (no extra tasks);
//!   `palisade`: the pipeline, concurrency 1, ordered, queue 64.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use palisade_pipeline::{PipelineBuilder, StageConfig, from_fn};
use tokio::sync::mpsc;

const STAGE: Duration = Duration::from_millis(1);
const SLOW_ITEMS: u64 = 1_000;
const NOOP_ITEMS: u64 = 10_000;
const QUEUE: usize = 64;

async fn slow_stage(x: u64) -> Result<u64, Infallible> {
    tokio::time::sleep(STAGE).await;
    Ok(x + 1)
}

async fn noop(x: u64) -> Result<u64, Infallible> {
    Ok(black_box(x) + 1)
}

fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The seed's design: one task, every stage of an item in series.
async fn seed(n: u64) -> u64 {
    let (tx, mut rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        for i in 0..n {
            tx.send(i).await.unwrap();
        }
    });
    let mut sum = 0;
    while let Some(x) = rx.recv().await {
        let x = slow_stage(x).await.unwrap();
        let x = slow_stage(x).await.unwrap();
        sum += slow_stage(x).await.unwrap();
    }
    sum
}

async fn palisade<F, Fut>(n: u64, concurrency: usize, stage: F) -> u64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<u64, Infallible>> + Send + 'static,
{
    let config = |name: &str| {
        StageConfig::new(name)
            .concurrency(concurrency)
            .queue_capacity(QUEUE)
    };
    let (_h, out) = PipelineBuilder::new("bench")
        .stage(config("a"), from_fn(stage.clone()))
        .stage(config("b"), from_fn(stage.clone()))
        .stage(config("c"), from_fn(stage))
        .build()
        .unwrap()
        .run(futures_util::stream::iter(0..n));
    out.fold(0, |sum, r| async move { sum + r.unwrap() }).await
}

/// A hand-written chain: one task and one bounded channel per stage.
async fn channels(n: u64) -> u64 {
    let (tx, mut rx) = mpsc::channel::<u64>(QUEUE);
    tokio::spawn(async move {
        for i in 0..n {
            tx.send(i).await.unwrap();
        }
    });
    for _ in 0..3 {
        let (next_tx, next_rx) = mpsc::channel(QUEUE);
        let mut input = std::mem::replace(&mut rx, next_rx);
        tokio::spawn(async move {
            while let Some(x) = input.recv().await {
                let y = noop(x).await.unwrap();
                if next_tx.send(y).await.is_err() {
                    return;
                }
            }
        });
    }
    let mut sum = 0;
    while let Some(x) = rx.recv().await {
        sum += x;
    }
    sum
}

/// One stream, `buffered(1)` per stage, on the caller's task.
async fn buffered(n: u64) -> u64 {
    futures_util::stream::iter(0..n)
        .map(noop)
        .buffered(1)
        .map(|r| noop(r.unwrap()))
        .buffered(1)
        .map(|r| noop(r.unwrap()))
        .buffered(1)
        .fold(0, |sum, r| async move { sum + r.unwrap() })
        .await
}

fn three_1ms_stages(c: &mut Criterion) {
    let mut g = c.benchmark_group("three_1ms_stages");
    g.throughput(Throughput::Elements(SLOW_ITEMS));
    g.sample_size(10);
    // Virtual time: each iteration's duration is what the paused clock
    // advanced, which the design alone determines.
    g.bench_function("seed", |b| {
        b.iter_custom(|iters| {
            let rt = paused();
            rt.block_on(async {
                let start = tokio::time::Instant::now();
                for _ in 0..iters {
                    black_box(seed(SLOW_ITEMS).await);
                }
                start.elapsed()
            })
        });
    });
    for conc in [1usize, 8] {
        g.bench_function(BenchmarkId::new("palisade", format!("c{conc}")), |b| {
            b.iter_custom(|iters| {
                let rt = paused();
                rt.block_on(async {
                    let start = tokio::time::Instant::now();
                    for _ in 0..iters {
                        black_box(palisade(SLOW_ITEMS, conc, slow_stage).await);
                    }
                    start.elapsed()
                })
            });
        });
    }
    g.finish();
}

fn noop_overhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("noop_overhead");
    g.throughput(Throughput::Elements(NOOP_ITEMS));
    let rt = current_thread();
    g.bench_function("channels", |b| b.iter(|| rt.block_on(channels(NOOP_ITEMS))));
    g.bench_function("buffered", |b| b.iter(|| rt.block_on(buffered(NOOP_ITEMS))));
    g.bench_function("palisade", |b| {
        b.iter(|| rt.block_on(palisade(NOOP_ITEMS, 1, noop)))
    });
    g.finish();
}

criterion_group!(benches, three_1ms_stages, noop_overhead);
criterion_main!(benches);
