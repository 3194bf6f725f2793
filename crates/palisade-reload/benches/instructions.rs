//! Instruction counts per operation (steady on a busy machine, unlike wall
//! time): each `op_*` function runs its operation `N` times; callgrind
//! counts the instructions inside it.
//!
//! ```text
//! cargo bench -p palisade-reload --bench instructions --no-run
//! BIN=$(ls -t target/release/deps/instructions-* | grep -v '\.d$' | head -1)
//! for op in shared_load arc_swap_load std_rwlock_read tokio_rwlock_read watch_borrow \
//!           service_bare service_reloadable service_reloadable_stamped publish_held_0 publish_held_64; do
//!   f=$op; case $op in service_reloadable_stamped) f=service_reloadable;; publish_*) f=publish;; esac
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$op --toggle-collect="*op_$f*" $BIN $op >/dev/null 2>&1
//!   echo "$op $(callgrind_annotate /tmp/cg.$op | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1/100000}')"
//! done
//! ```
//!
//! One thread only: callgrind runs threads one at a time, so contention is
//! not measured here (see the criterion bench `reload` for that).

#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll, Waker};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use palisade_reload::{Reloader, Shared};
use tower::Service;

const N: u64 = 100_000;

#[derive(Debug, Clone)]
struct Config {
    rate: u64,
    _name: String,
}

fn config() -> Config {
    Config {
        rate: 100,
        _name: "gateway".into(),
    }
}

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
        _ => unreachable!(),
    }
}

#[inline(never)]
fn op_shared_load(s: &Shared<Config>) -> u64 {
    (0..N).map(|_| black_box(s).load().rate).sum()
}

#[inline(never)]
fn op_arc_swap_load(s: &ArcSwap<Config>) -> u64 {
    (0..N).map(|_| black_box(s).load().rate).sum()
}

#[inline(never)]
fn op_std_rwlock_read(s: &std::sync::RwLock<Config>) -> u64 {
    (0..N).map(|_| black_box(s).read().unwrap().rate).sum()
}

#[inline(never)]
fn op_tokio_rwlock_read(s: &tokio::sync::RwLock<Config>) -> u64 {
    (0..N)
        .map(|_| black_box(s).read().now_or_never().map_or(0, |g| g.rate))
        .sum()
}

#[inline(never)]
fn op_watch_borrow(s: &tokio::sync::watch::Receiver<Config>) -> u64 {
    (0..N).map(|_| black_box(s).borrow().rate).sum()
}

#[inline(never)]
fn op_service_bare(s: &mut Echo) -> u64 {
    (0..N).map(|n| one_request(black_box(&mut *s), n)).sum()
}

#[inline(never)]
fn op_service_reloadable<S>(s: &mut S) -> u64
where
    S: Service<http::Request<u64>, Response = u64, Error = Infallible>,
    S::Future: Unpin,
{
    (0..N).map(|n| one_request(black_box(&mut *s), n)).sum()
}

#[inline(never)]
fn op_publish(s: &Shared<Config>, v: &Config) {
    for _ in 0..N {
        s.publish(v.clone());
    }
}

fn main() {
    let op = std::env::args().nth(1).unwrap_or_default();
    let sum = match op.as_str() {
        "shared_load" => op_shared_load(&Shared::new(config())),
        "arc_swap_load" => op_arc_swap_load(&ArcSwap::from_pointee(config())),
        "std_rwlock_read" => op_std_rwlock_read(&std::sync::RwLock::new(config())),
        "tokio_rwlock_read" => op_tokio_rwlock_read(&tokio::sync::RwLock::new(config())),
        "watch_borrow" => {
            let (_tx, rx) = tokio::sync::watch::channel(config());
            op_watch_borrow(&rx)
        }
        "service_bare" => op_service_bare(&mut Echo),
        "service_reloadable" | "service_reloadable_stamped" => {
            // One function for both (identical code would be folded into one
            // symbol anyway); the flag differs at run time.
            let reloader = Reloader::builder(|_: &u8| Ok::<_, Infallible>(Echo))
                .build(1)
                .unwrap();
            if op == "service_reloadable" {
                op_service_reloadable(&mut reloader.service().stamp_requests(false))
            } else {
                op_service_reloadable(&mut reloader.service())
            }
        }
        "publish_held_0" => {
            let s = Shared::new(config());
            op_publish(&s, &config());
            0
        }
        "publish_held_64" => {
            let s = Shared::new(config());
            let held: Vec<_> = (0..64).map(|_| s.load()).collect();
            op_publish(&s, &config());
            drop(held);
            0
        }
        // `cargo bench` runs every bench target with `--bench`: nothing to do.
        _ => 0,
    };
    black_box(sum);
}
