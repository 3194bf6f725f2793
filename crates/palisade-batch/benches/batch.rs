//! palisade-batch against tower-batch-control (and against no batching), same
//! binary, same workload, same parameters.
//!
//! ```text
//! cargo bench -p palisade-batch --bench batch -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - `throughput/*`: 256 callers on a 2-worker runtime, each calling in a
//!   loop; max 64 items, 4 batches in flight, 1 ms max latency; the inner
//!   service does the same per-item work for both. One criterion iteration
//!   is one item, so the reported time is per item and the throughput is
//!   items/s.
//! - `latency/*`: one caller, an inner service with a fixed per-call cost
//!   (a spin of 20 µs, or `BATCH_BENCH_COST_US` µs; 0 shows the batcher's
//!   own fixed cost per call): unbatched, palisade (opportunistic and timer)
//!   and tower-batch-control.
//! - After the groups, the mean batch size at 256 callers and the memory per
//!   queued item (RSS growth over 200,000 queued items) are printed.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade_batch::{BatchLayer, Flush};
use tokio::sync::oneshot;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_batch_control::{BatchControl, RequestWeight};

const CALLERS: u64 = 256;
const MAX_ITEMS: usize = 64;
const IN_FLIGHT: usize = 4;
const LATENCY: Duration = Duration::from_millis(1);

/// The per-item work both inner services do.
fn work(x: u64) -> u64 {
    black_box(x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17))
}

/// A fixed per-call cost for the latency benchmark: a spin, so the cost does
/// not depend on the timer's millisecond granularity.
#[allow(clippy::disallowed_methods)] // a busy wait needs the wall clock
fn spin(d: Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

// === the inner services ===

/// Batch counters, to report the mean batch size.
#[derive(Default)]
struct Fill {
    batches: AtomicU64,
    items: AtomicU64,
}

fn palisade_inner(
    fill: Arc<Fill>,
    cost: Duration,
) -> impl Service<Vec<u64>, Response = Vec<u64>, Error = Infallible, Future: Send> + Clone + Send + 'static
{
    service_fn(move |batch: Vec<u64>| {
        fill.batches.fetch_add(1, Ordering::Relaxed);
        fill.items.fetch_add(batch.len() as u64, Ordering::Relaxed);
        if !cost.is_zero() {
            spin(cost);
        }
        std::future::ready(Ok(batch.into_iter().map(work).collect()))
    })
}

/// tower-batch-control's protocol: the inner service gets items one by one
/// and a `Flush`, and must route each result to its item's future itself.
#[derive(Clone, Copy)]
struct Job(u64);

impl RequestWeight for Job {}

/// Items waiting for the next `Flush`, with where to send each result.
type Pending = Vec<(u64, oneshot::Sender<u64>)>;

struct TbcInner {
    pending: Arc<Mutex<Pending>>,
    fill: Arc<Fill>,
    cost: Duration,
}

impl Service<BatchControl<Job>> for TbcInner {
    type Response = u64;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: BatchControl<Job>) -> Self::Future {
        match req {
            BatchControl::Item(Job(x)) => {
                let (tx, rx) = oneshot::channel();
                self.pending.lock().unwrap().push((x, tx));
                Box::pin(async move { rx.await.map_err(Into::into) })
            }
            BatchControl::Flush => {
                let batch = std::mem::take(&mut *self.pending.lock().unwrap());
                if !batch.is_empty() {
                    self.fill.batches.fetch_add(1, Ordering::Relaxed);
                    self.fill
                        .items
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if !self.cost.is_zero() {
                        spin(self.cost);
                    }
                }
                for (x, tx) in batch {
                    let _ = tx.send(work(x));
                }
                Box::pin(std::future::ready(Ok(0)))
            }
        }
    }
}

/// tower-batch-control with an inner service that answers every item when
/// it arrives and ignores `Flush`.
struct Immediate;

impl Service<BatchControl<Job>> for Immediate {
    type Response = u64;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u64, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: BatchControl<Job>) -> Self::Future {
        std::future::ready(Ok(match req {
            BatchControl::Item(Job(x)) => work(x),
            BatchControl::Flush => 0,
        }))
    }
}

fn tbc_inner(fill: Arc<Fill>, cost: Duration) -> TbcInner {
    TbcInner {
        pending: Arc::default(),
        fill,
        cost,
    }
}

// === drivers ===

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `total` items through `svc` from `CALLERS` concurrent callers;
/// returns the wall time.
async fn drive<S>(svc: S, total: u64) -> Duration
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    let start = tokio::time::Instant::now();
    let per_caller = total.div_ceil(CALLERS);
    let mut tasks = Vec::with_capacity(CALLERS as usize);
    for c in 0..CALLERS {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_caller {
                let x = c * per_caller + i;
                let y = svc.ready().await.unwrap().call(x).await.unwrap();
                debug_assert_eq!(y, work(x));
                black_box(y);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// Adapts tower-batch-control's `Batch<_, Job>` to `Service<u64>`.
fn tbc_service(
    fill: Arc<Fill>,
    cost: Duration,
) -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    let batch =
        tower_batch_control::Batch::new(tbc_inner(fill, cost), MAX_ITEMS, IN_FLIGHT, LATENCY);
    tower::util::MapRequest::new(batch, Job)
}

fn palisade_service(
    fill: Arc<Fill>,
    cost: Duration,
    flush: Flush,
) -> palisade_batch::Batch<u64, u64> {
    BatchLayer::builder()
        .max_items(MAX_ITEMS)
        .max_in_flight(IN_FLIGHT)
        .max_latency(LATENCY)
        .flush(flush)
        .build()
        .unwrap()
        .layer(palisade_inner(fill, cost))
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("throughput");
    g.throughput(Throughput::Elements(1));
    for (name, flush) in [
        ("palisade_opportunistic", Flush::Opportunistic),
        ("palisade_timer", Flush::Timer),
    ] {
        let fill = Arc::new(Fill::default());
        let svc = rt.block_on(async { palisade_service(fill.clone(), Duration::ZERO, flush) });
        g.bench_function(name, |b| {
            b.iter_custom(|iters| on_worker(&rt, drive(svc.clone(), iters.max(CALLERS))))
        });
        report_fill(name, &fill);
    }
    let fill = Arc::new(Fill::default());
    let svc = rt.block_on(async { tbc_service(fill.clone(), Duration::ZERO) });
    g.bench_function("tower_batch_control", |b| {
        b.iter_custom(|iters| on_worker(&rt, drive(svc.clone(), iters.max(CALLERS))))
    });
    report_fill("tower_batch_control", &fill);
    // Its machinery alone: an inner service that answers each item at once,
    // so nothing waits for a flush (not batching any more; an upper bound).
    let svc = rt.block_on(async {
        let batch = tower_batch_control::Batch::new(Immediate, MAX_ITEMS, IN_FLIGHT, LATENCY);
        tower::util::MapRequest::new(batch, Job)
    });
    g.bench_function("tower_batch_control_answer_on_item", |b| {
        b.iter_custom(|iters| on_worker(&rt, drive(svc.clone(), iters.max(CALLERS))))
    });
    g.finish();
}

fn report_fill(name: &str, fill: &Fill) {
    let batches = fill.batches.load(Ordering::Relaxed).max(1);
    let items = fill.items.load(Ordering::Relaxed);
    eprintln!(
        "batch fill {name}: mean {:.1} items/batch over {batches} batches",
        items as f64 / batches as f64
    );
}

/// One caller, sequential calls: the latency each adds over the inner cost.
fn latency(c: &mut Criterion) {
    let cost = Duration::from_micros(
        std::env::var("BATCH_BENCH_COST_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let rt = runtime();
    let mut g = c.benchmark_group("latency");
    let fill = Arc::new(Fill::default());
    let unbatched = palisade_inner(fill.clone(), cost);
    g.bench_function("unbatched", |b| {
        b.iter_custom(|iters| {
            let mut svc = unbatched.clone();
            rt.block_on(async {
                // On a worker thread, as a server's request task would be.
                tokio::spawn(async move {
                    let start = tokio::time::Instant::now();
                    for x in 0..iters {
                        let out = svc.ready().await.unwrap().call(vec![x]).await.unwrap();
                        black_box(out);
                    }
                    start.elapsed()
                })
                .await
                .unwrap()
            })
        })
    });
    for (name, flush) in [
        ("palisade_opportunistic", Flush::Opportunistic),
        ("palisade_timer", Flush::Timer),
    ] {
        let svc = rt.block_on(async { palisade_service(fill.clone(), cost, flush) });
        g.bench_function(name, |b| {
            b.iter_custom(|iters| on_worker(&rt, sequential(svc.clone(), iters)))
        });
    }
    let svc = rt.block_on(async { tbc_service(fill.clone(), cost) });
    g.bench_function("tower_batch_control", |b| {
        b.iter_custom(|iters| on_worker(&rt, sequential(svc.clone(), iters)))
    });
    g.finish();
}

/// Runs `f` as a task on a runtime worker thread (not on the thread that
/// blocks on the runtime), as a server's request task runs.
fn on_worker<F>(rt: &tokio::runtime::Runtime, f: F) -> Duration
where
    F: Future<Output = Duration> + Send + 'static,
{
    rt.block_on(async { tokio::spawn(f).await.unwrap() })
}

async fn sequential<S>(mut svc: S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let start = tokio::time::Instant::now();
    for x in 0..iters {
        black_box(svc.ready().await.unwrap().call(x).await.unwrap());
    }
    start.elapsed()
}

/// RSS growth per queued item while the inner service is not ready.
fn memory(_: &mut Criterion) {
    const N: usize = 200_000;
    let rt = runtime();
    rt.block_on(async {
        let (inner, mut handle) = tower_test::mock::pair::<Vec<u64>, Vec<u64>>();
        handle.allow(0);
        let mut svc = BatchLayer::builder()
            .queue_capacity(N)
            .build()
            .unwrap()
            .layer(inner);
        let before = rss();
        let mut futs = Vec::with_capacity(N);
        let futs_bytes = N * std::mem::size_of::<palisade_batch::ResponseFuture<u64>>();
        for x in 0..N as u64 {
            futs.push(svc.ready().await.unwrap().call(x));
        }
        tokio::task::yield_now().await;
        let grown = rss().saturating_sub(before).saturating_sub(futs_bytes);
        eprintln!(
            "memory per queued item (palisade, u64 request): {} B (RSS growth, caller futures excluded)",
            grown / N
        );
        drop(futs);
    });
}

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

criterion_group!(benches, throughput, latency, memory);
criterion_main!(benches);
