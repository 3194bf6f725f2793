//! palisade-reload's read, per-request and publish costs against the anchors
//! the issue names, same binary, same workload.
//!
//! ```text
//! cargo bench -p palisade-reload --bench reload -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - `read/{1,2}t/*`: one read of a small config (take a snapshot, read a
//!   field, drop it) with 1 thread, and with a second thread reading the
//!   same value in a loop meanwhile (contention on the lock word or
//!   reference count). Anchors: `tokio::sync::RwLock` (the seed's shared
//!   state; the uncontended `read().await` path, polled once),
//!   `std::sync::RwLock`, `arc_swap::ArcSwap::load` (direct) and
//!   `tokio::sync::watch::Receiver::borrow`.
//! - `service/*`: poll_ready + call + poll of a ready inner service, bare
//!   and behind `Reloadable` (with and without the `ServedBy` extension).
//! - `publish/*`: one publication while N snapshots are held (arc-swap's
//!   writers settle the readers' debts), against the anchors' writes.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use palisade_reload::{Reloader, Shared};
use tower::Service;

/// A small configuration, read one field at a time.
#[derive(Debug, Clone)]
struct Config {
    rate: u64,
    _name: String,
    _upstreams: Vec<String>,
}

fn config() -> Config {
    Config {
        rate: 100,
        _name: "gateway".into(),
        _upstreams: vec!["http://127.0.0.1:9000".into()],
    }
}

/// Runs `read` for `iters` iterations on this thread while `contenders`
/// other threads run `contend` in a loop; returns this thread's time.
fn contended<R, C>(iters: u64, contenders: usize, read: R, contend: C) -> Duration
where
    R: Fn() -> u64,
    C: Fn() -> u64 + Send + Sync + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let contend = Arc::new(contend);
    let started = Arc::new(std::sync::Barrier::new(contenders + 1));
    let threads: Vec<_> = (0..contenders)
        .map(|_| {
            let stop = stop.clone();
            let contend = contend.clone();
            let started = started.clone();
            std::thread::spawn(move || {
                started.wait();
                let mut sum = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    sum = sum.wrapping_add(contend());
                }
                black_box(sum);
            })
        })
        .collect();
    started.wait();
    #[allow(clippy::disallowed_methods)] // a benchmark measures wall time
    let start = Instant::now();
    let mut sum = 0u64;
    for _ in 0..iters {
        sum = sum.wrapping_add(read());
    }
    let elapsed = start.elapsed();
    black_box(sum);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    elapsed
}

fn read(c: &mut Criterion) {
    for contenders in [0usize, 1] {
        let mut group = c.benchmark_group(format!("read/{}t", contenders + 1));

        let shared = Shared::new(config());
        group.bench_function("palisade_shared", |b| {
            b.iter_custom(|iters| {
                let s = shared.clone();
                let other = shared.clone();
                contended(
                    iters,
                    contenders,
                    move || black_box(s.load().rate),
                    move || other.load().rate,
                )
            })
        });

        let swap = Arc::new(ArcSwap::from_pointee(config()));
        group.bench_function("arc_swap_direct", |b| {
            b.iter_custom(|iters| {
                let s = swap.clone();
                let other = swap.clone();
                contended(
                    iters,
                    contenders,
                    move || black_box(s.load().rate),
                    move || other.load().rate,
                )
            })
        });

        let tokio_lock = Arc::new(tokio::sync::RwLock::new(config()));
        group.bench_function("tokio_rwlock", |b| {
            b.iter_custom(|iters| {
                let s = tokio_lock.clone();
                let other = tokio_lock.clone();
                contended(
                    iters,
                    contenders,
                    move || black_box(s.read().now_or_never().map_or(0, |g| g.rate)),
                    move || other.read().now_or_never().map_or(0, |g| g.rate),
                )
            })
        });

        let std_lock = Arc::new(std::sync::RwLock::new(config()));
        group.bench_function("std_rwlock", |b| {
            b.iter_custom(|iters| {
                let s = std_lock.clone();
                let other = std_lock.clone();
                contended(
                    iters,
                    contenders,
                    move || black_box(s.read().unwrap().rate),
                    move || other.read().unwrap().rate,
                )
            })
        });

        let (tx, rx) = tokio::sync::watch::channel(config());
        group.bench_function("tokio_watch_borrow", |b| {
            b.iter_custom(|iters| {
                let s = rx.clone();
                let other = rx.clone();
                contended(
                    iters,
                    contenders,
                    move || black_box(s.borrow().rate),
                    move || other.borrow().rate,
                )
            })
        });
        drop(tx);
        group.finish();
    }
}

/// An inner service that is always ready and answers at once.
#[derive(Debug, Clone)]
struct Echo;

impl Service<http::Request<u64>> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<u64>) -> Self::Future {
        ready(Ok(*req.body()))
    }
}

fn one_request<S>(service: &mut S, n: u64) -> u64
where
    S: Service<http::Request<u64>, Response = u64, Error = Infallible>,
    S::Future: Unpin,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    let mut fut = service.call(http::Request::new(n));
    match std::pin::Pin::new(&mut fut).poll(&mut cx) {
        Poll::Ready(Ok(v)) => v,
        _ => unreachable!("Echo answers at once"),
    }
}

use std::future::Future;

fn service(c: &mut Criterion) {
    let mut group = c.benchmark_group("service");
    group.bench_function("bare", |b| {
        let mut s = Echo;
        let mut n = 0;
        b.iter(|| {
            n += 1;
            one_request(&mut s, black_box(n))
        })
    });
    let reloader = Reloader::builder(|_: &u8| Ok::<_, Infallible>(Echo))
        .build(1)
        .unwrap();
    group.bench_function("reloadable_no_extension", |b| {
        let mut s = reloader.service().stamp_requests(false);
        let mut n = 0;
        b.iter(|| {
            n += 1;
            one_request(&mut s, black_box(n))
        })
    });
    group.bench_function("reloadable", |b| {
        let mut s = reloader.service();
        let mut n = 0;
        b.iter(|| {
            n += 1;
            one_request(&mut s, black_box(n))
        })
    });
    group.finish();
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for held in [0usize, 8, 64, 1024] {
        let shared = Shared::new(config());
        group.bench_function(format!("palisade_shared/held_{held}"), |b| {
            // Snapshots held on this thread (arc-swap debts for the first
            // few, then full references) and on another thread.
            let snapshots: Vec<_> = (0..held).map(|_| shared.load()).collect();
            let value = Arc::new(config());
            b.iter(|| shared.publish(Config::clone(&value)));
            drop(snapshots);
        });
    }
    let swap = ArcSwap::from_pointee(config());
    group.bench_function("arc_swap_direct/held_8", |b| {
        let guards: Vec<_> = (0..8).map(|_| swap.load()).collect();
        b.iter(|| swap.store(Arc::new(config())));
        drop(guards);
    });
    let tokio_lock = tokio::sync::RwLock::new(config());
    group.bench_function("tokio_rwlock", |b| {
        b.iter(|| *tokio_lock.try_write().unwrap() = config())
    });
    let std_lock = std::sync::RwLock::new(config());
    group.bench_function("std_rwlock", |b| {
        b.iter(|| *std_lock.write().unwrap() = config())
    });
    let (tx, _rx) = tokio::sync::watch::channel(config());
    group.bench_function("tokio_watch_send", |b| b.iter(|| tx.send_replace(config())));
    group.finish();
}

criterion_group!(benches, read, service, publish);
criterion_main!(benches);
