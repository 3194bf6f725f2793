//! Many threads, injected time: the admitted total equals the bound exactly.

use std::{
    sync::{Arc, Barrier},
    thread,
    time::Duration,
};

use palisade_ratelimit::{Clock, KeyedLimiter, Limiter, Quota};

const THREADS: usize = 8;
const TRIES: usize = 20_000;

fn quota() -> Quota {
    // T = 1 ms, burst 500.
    Quota::builder()
        .rate(1_000)
        .per(Duration::from_secs(1))
        .burst(500)
        .build()
        .unwrap()
}

/// Runs `THREADS` threads of `TRIES` checks each and returns the admitted total.
fn hammer(check: impl Fn() -> bool + Send + Sync + 'static) -> usize {
    let check = Arc::new(check);
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let check = check.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                (0..TRIES).filter(|_| check()).count()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

#[test]
fn direct_limiter_admits_exactly_the_bound() {
    let (clock, time) = Clock::manual();
    let limiter = Arc::new(Limiter::builder(quota()).clock(clock).build());
    for round in 0..5u64 {
        let l = limiter.clone();
        let admitted = hammer(move || l.check().allowed());
        // Round 0: the full burst. Later rounds: exactly the cells emitted
        // during the 37 ms that passed.
        let expected = if round == 0 { 500 } else { 37 };
        assert_eq!(admitted, expected, "round {round}");
        time.advance(Duration::from_millis(37));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_on_a_multi_thread_runtime() {
    let (clock, time) = Clock::manual();
    let limiter = Arc::new(Limiter::builder(quota()).clock(clock).build());
    let keyed = Arc::new(
        KeyedLimiter::builder(quota())
            .clock(Clock::manual().0)
            .max_keys(64)
            .build()
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for task in 0..64u32 {
        let limiter = limiter.clone();
        let keyed = keyed.clone();
        tasks.push(tokio::spawn(async move {
            let mut direct = 0;
            let mut per_key = 0;
            for i in 0..2_000u32 {
                direct += usize::from(limiter.check().allowed());
                // Four keys, each hit by 16 tasks.
                per_key += usize::from(keyed.check(&(task % 4)).allowed());
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            (direct, per_key)
        }));
    }
    let mut direct = 0;
    let mut per_key = 0;
    for task in tasks {
        let (d, k) = task.await.unwrap();
        direct += d;
        per_key += k;
    }
    assert_eq!(direct, 500);
    assert_eq!(per_key, 4 * 500);
    assert_eq!(keyed.len(), 4);

    time.advance(Duration::from_millis(250));
    let l = limiter.clone();
    assert_eq!(hammer(move || l.check().allowed()), 250);
}

#[test]
fn weighted_costs_never_overshoot() {
    let (clock, time) = Clock::manual();
    let limiter = Arc::new(Limiter::builder(quota()).clock(clock).build());
    let l = limiter.clone();
    // Each admitted check costs 3 cells; 500 / 3 = 166 fit in the burst.
    let admitted = hammer(move || l.check_n(3).unwrap().allowed());
    assert_eq!(admitted, 166);
    // The 2 leftover cells plus 4 emitted in 4 ms make exactly 2 more.
    time.advance(Duration::from_millis(4));
    let l = limiter.clone();
    assert_eq!(hammer(move || l.check_n(3).unwrap().allowed()), 2);
}
