//! palisade-pool against its anchors, same binary, same workloads.
//!
//! ```text
//! cargo bench -p palisade-pool --bench pool -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Printed first (not criterion: exact numbers need no repetition):
//! - `skew`: a deterministic paused-time simulation. 4 workers, 2,000 jobs
//!   arriving one every 0.7 ms; 1% of them (every 100th) take 100 ms, the
//!   rest 1 ms (about 71% utilisation). Latency = answer - arrival, exact
//!   in virtual time, for `Pool`, the seed's round-robin design (job `i`
//!   to worker `i % 4`'s own channel), and `tower::buffer::Buffer` over
//!   `tower::balance::p2c::Balance` of four `ConcurrencyLimit(1)` workers.
//! - `cpu-latency`: the latency of an async tick on the runtime (every 1 ms a
//!   timer fires and a task answers a ping; reported: how late past its
//!   deadline) while 400 CPU jobs of about 2 ms
//!   each run: inline on the runtime (blocking the reactor), through
//!   `CpuPool`, one `spawn_blocking` per job (the seed), `rayon` direct.
//!   Wall clock; the machine's cores matter (printed).
//!
//! Then criterion:
//! - `overhead/*`: 1,000 trivial jobs submitted at once and awaited, per
//!   job: `Pool` (4 workers), a bare `tokio::spawn` per job, `Buffer`.
//! - `cpu/*`: 1,000 CPU jobs of about 10 µs: `CpuPool::map`, one
//!   `spawn_blocking` per job (the seed), `spawn_blocking` behind a
//!   semaphore (the offload's first design), `rayon` `par_iter` direct,
//!   and one `rayon::spawn` + oneshot per job.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]
// Wall-clock measurement and busy waits are what a benchmark is for.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use palisade_pool::{CpuPool, Pool};
use rayon::prelude::*;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tower::{BoxError, ServiceExt, service_fn};

const WORKERS: usize = 4;
const JOBS: usize = 2000;
const FAST: Duration = Duration::from_millis(1);
const SLOW: Duration = Duration::from_millis(100);
const ARRIVAL: Duration = Duration::from_micros(700);

fn duration_of(i: usize) -> Duration {
    if i % 100 == 37 { SLOW } else { FAST }
}

// === the skewed workload, in virtual time ===

struct Summary {
    p50: Duration,
    p99: Duration,
    max: Duration,
    total: Duration,
}

fn summarize(mut lat: Vec<Duration>, total: Duration) -> Summary {
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    Summary {
        p50: at(0.50),
        p99: at(0.99),
        max: *lat.last().unwrap(),
        total,
    }
}

fn paused_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Feeds the jobs at their arrival times to `submit`, which answers a
/// future resolving when the job is done; returns the latencies and the
/// makespan.
async fn drive<S, F>(mut submit: S) -> Summary
where
    S: FnMut(Duration) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let t0 = Instant::now();
    let lat = Arc::new(Mutex::new(Vec::with_capacity(JOBS)));
    let mut tasks = Vec::with_capacity(JOBS);
    for i in 0..JOBS {
        tokio::time::sleep_until(t0 + ARRIVAL * i as u32).await;
        let arrived = Instant::now();
        let done = submit(duration_of(i));
        let lat = lat.clone();
        tasks.push(tokio::spawn(async move {
            done.await;
            lat.lock().unwrap().push(arrived.elapsed());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = t0.elapsed();
    let lat = std::mem::take(&mut *lat.lock().unwrap());
    summarize(lat, total)
}

async fn sleeper(d: Duration) -> Result<(), BoxError> {
    tokio::time::sleep(d).await;
    Ok(())
}

fn skew_pool() -> Summary {
    paused_rt().block_on(async {
        let pool: Pool<Duration, ()> = Pool::builder()
            .workers(WORKERS)
            .queue_capacity(JOBS)
            .build_fn(|_| service_fn(sleeper))
            .unwrap();
        drive(|d| {
            let call = pool.clone().oneshot(d);
            async move { call.await.unwrap() }
        })
        .await
    })
}

/// The seed's design: each job dealt round-robin to one worker's channel.
fn skew_round_robin() -> Summary {
    paused_rt().block_on(async {
        let mut txs = Vec::new();
        for _ in 0..WORKERS {
            let (tx, mut rx) = mpsc::unbounded_channel::<(Duration, oneshot::Sender<()>)>();
            tokio::spawn(async move {
                while let Some((d, done)) = rx.recv().await {
                    tokio::time::sleep(d).await;
                    let _ = done.send(());
                }
            });
            txs.push(tx);
        }
        let mut next = 0;
        drive(|d| {
            let (done, rx) = oneshot::channel();
            txs[next % WORKERS].send((d, done)).unwrap();
            next += 1;
            async move { rx.await.unwrap() }
        })
        .await
    })
}

/// tower's answer: a Buffer in front of a p2c Balance over four
/// single-concurrency workers.
fn skew_buffer_balance() -> Summary {
    use tower::balance::p2c::Balance;
    use tower::discover::ServiceList;
    use tower::limit::ConcurrencyLimit;
    use tower::load::{CompleteOnResponse, PendingRequests};
    paused_rt().block_on(async {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                PendingRequests::new(
                    ConcurrencyLimit::new(service_fn(sleeper), 1),
                    CompleteOnResponse::default(),
                )
            })
            .collect();
        let balance = Balance::new(ServiceList::new(workers));
        let buffer = tower::buffer::Buffer::new(balance, JOBS);
        drive(|d| {
            // Boxed with its type written out: rustc cannot prove the
            // Buffer future Send through the generic `drive` otherwise.
            let call: std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>,
            > = Box::pin(buffer.clone().oneshot(d));
            async move { call.await.unwrap() }
        })
        .await
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn skew_report() {
    println!(
        "\n== skew: 4 workers, {JOBS} jobs every 0.7 ms, 1% take 100 ms, 99% 1 ms (virtual time) =="
    );
    println!("| design | p50 ms | p99 ms | max ms | total ms |");
    println!("|---|---|---|---|---|");
    let rows = [
        ("palisade Pool", skew_pool()),
        ("round-robin channels (seed)", skew_round_robin()),
        ("tower Buffer + p2c Balance", skew_buffer_balance()),
    ];
    for (name, s) in &rows {
        println!(
            "| {name} | {} | {} | {} | {} |",
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            ms(s.total)
        );
    }
    let ratio = rows[1].1.p99.as_secs_f64() / rows[0].1.p99.as_secs_f64();
    println!("p99 round-robin / Pool: {ratio:.1}x (target: at least 5x)");
}

// === CPU work ===

/// About `iters` rounds of integer hashing.
fn hash_work(seed: u64, iters: u64) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for i in 0..iters {
        h = (h ^ i).wrapping_mul(0x0100_0000_01b3);
    }
    black_box(h)
}

/// Iterations that take about `target` on this machine.
fn calibrate(target: Duration) -> u64 {
    let probe = 1_000_000;
    let start = std::time::Instant::now();
    hash_work(1, probe);
    let per = start.elapsed().as_secs_f64() / probe as f64;
    ((target.as_secs_f64() / per) as u64).max(1)
}

fn pct(lat: &mut [Duration], q: f64) -> Duration {
    lat.sort_unstable();
    lat[((lat.len() as f64 * q).ceil() as usize).saturating_sub(1)]
}

/// Runs `load` (which starts CPU jobs and waits for them) while a ping task
/// on the same runtime is asked every 1 ms; returns the ping latencies
/// (p50, p99, max) and the load's duration.
fn with_pings<F, Fut>(
    rt: &tokio::runtime::Runtime,
    load: F,
) -> (Duration, Duration, Duration, Duration)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
        tokio::spawn(async move {
            while let Some(reply) = rx.recv().await {
                let _ = reply.send(());
            }
        });
        let stop = tokio_util_stop();
        let pinger = {
            let stop = stop.clone();
            tokio::spawn(async move {
                // Timer lateness: how long after its deadline a 1 ms tick
                // actually runs. A blocked reactor shows here even when no
                // task could observe it (no coordinated omission).
                let mut lat = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let due = std::time::Instant::now() + Duration::from_millis(1);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let (reply, answered) = oneshot::channel();
                    tx.send(reply).unwrap();
                    answered.await.unwrap();
                    lat.push(std::time::Instant::now().saturating_duration_since(due));
                }
                lat
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let start = std::time::Instant::now();
        load().await;
        let took = start.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut lat = pinger.await.unwrap();
        let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
        (p50, p99, *lat.last().unwrap(), took)
    })
}

fn tokio_util_stop() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}

fn cpu_latency_report() {
    const N: u64 = 400;
    let iters = calibrate(Duration::from_millis(2));
    let cores = palisade_pool::default_parallelism();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "\n== cpu-latency: {N} CPU jobs of ~2 ms, async 1 ms tick, {cores} cores, {cores} runtime threads =="
    );
    println!("| CPU jobs run by | tick late p50 ms | p99 ms | max ms | CPU work took ms |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, r: (Duration, Duration, Duration, Duration)| {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {} |",
            r.0.as_secs_f64() * 1000.0,
            r.1.as_secs_f64() * 1000.0,
            r.2.as_secs_f64() * 1000.0,
            ms(r.3)
        );
    };
    row(
        "inline on the runtime (blocks the reactor)",
        with_pings(&rt, || async {
            let tasks: Vec<_> = (0..N)
                .map(|i| tokio::spawn(async move { hash_work(i, iters) }))
                .collect();
            for t in tasks {
                black_box(t.await.unwrap());
            }
        }),
    );
    let cpu = CpuPool::new();
    row(
        "palisade CpuPool (threads = cores)",
        with_pings(&rt, || async {
            let out = cpu.map(0..N, move |i| hash_work(i, iters)).await;
            black_box(out);
        }),
    );
    row(
        "one spawn_blocking per job (seed)",
        with_pings(&rt, || async {
            let tasks: Vec<_> = (0..N)
                .map(|i| tokio::task::spawn_blocking(move || hash_work(i, iters)))
                .collect();
            for t in tasks {
                black_box(t.await.unwrap());
            }
        }),
    );
    row(
        "rayon par_iter (global pool, threads = cores)",
        with_pings(&rt, || async {
            let (tx, rx) = oneshot::channel();
            rayon::spawn(move || {
                let v: Vec<u64> = (0..N)
                    .into_par_iter()
                    .map(|i| hash_work(i, iters))
                    .collect();
                let _ = tx.send(v);
            });
            black_box(rx.await.unwrap());
        }),
    );
}

// === criterion groups ===

fn overhead(c: &mut Criterion) {
    const N: u64 = 1000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("overhead");
    g.throughput(Throughput::Elements(N));
    let trivial = |x: u64| async move { Ok::<_, BoxError>(black_box(x)) };

    let pool: Pool<u64, u64> = rt.block_on(async {
        Pool::builder()
            .workers(WORKERS)
            .build_fn(move |_| service_fn(trivial))
            .unwrap()
    });
    g.bench_function("pool", |b| {
        b.to_async(&rt).iter(|| async {
            let calls = (0..N).map(|i| pool.clone().oneshot(i));
            black_box(futures_util::future::try_join_all(calls).await.unwrap());
        });
    });
    g.bench_function("tokio_spawn", |b| {
        b.to_async(&rt).iter(|| async {
            let tasks: Vec<_> = (0..N).map(|i| tokio::spawn(trivial(i))).collect();
            for t in tasks {
                black_box(t.await.unwrap().unwrap());
            }
        });
    });
    let buffer = rt.block_on(async { tower::buffer::Buffer::new(service_fn(trivial), 1024) });
    g.bench_function("tower_buffer", |b| {
        b.to_async(&rt).iter(|| async {
            let calls = (0..N).map(|i| buffer.clone().oneshot(i));
            black_box(futures_util::future::try_join_all(calls).await.unwrap());
        });
    });
    g.finish();
}

fn cpu(c: &mut Criterion) {
    const N: u64 = 1000;
    let iters = calibrate(Duration::from_micros(10));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("cpu");
    g.throughput(Throughput::Elements(N));
    let pool = CpuPool::new();
    g.bench_function("cpupool_map", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(pool.map(0..N, move |i| hash_work(i, iters)).await);
        });
    });
    g.bench_function("spawn_blocking_per_job", |b| {
        b.to_async(&rt).iter(|| async {
            let tasks: Vec<_> = (0..N)
                .map(|i| tokio::task::spawn_blocking(move || hash_work(i, iters)))
                .collect();
            for t in tasks {
                black_box(t.await.unwrap());
            }
        });
    });
    // The offload's first design, kept as an anchor: tokio's blocking pool
    // behind a semaphore of `cores` permits.
    let permits = Arc::new(tokio::sync::Semaphore::new(
        palisade_pool::default_parallelism(),
    ));
    g.bench_function("spawn_blocking_behind_permit", |b| {
        b.to_async(&rt).iter(|| async {
            let jobs = (0..N).map(|i| {
                let permits = permits.clone();
                async move {
                    let permit = permits.acquire_owned().await.unwrap();
                    tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        hash_work(i, iters)
                    })
                    .await
                    .unwrap()
                }
            });
            black_box(futures_util::future::join_all(jobs).await);
        });
    });
    g.bench_function("rayon_par_iter", |b| {
        b.iter(|| {
            let v: Vec<u64> = (0..N)
                .into_par_iter()
                .map(|i| hash_work(i, iters))
                .collect();
            black_box(v)
        });
    });
    g.bench_function("rayon_spawn_per_job", |b| {
        b.to_async(&rt).iter(|| async {
            let rxs: Vec<_> = (0..N)
                .map(|i| {
                    let (tx, rx) = oneshot::channel();
                    rayon::spawn(move || {
                        let _ = tx.send(hash_work(i, iters));
                    });
                    rx
                })
                .collect();
            for rx in rxs {
                black_box(rx.await.unwrap());
            }
        });
    });
    g.finish();
}

fn main() {
    skew_report();
    cpu_latency_report();
    let mut c = Criterion::default().configure_from_args();
    overhead(&mut c);
    cpu(&mut c);
    c.final_summary();
}
