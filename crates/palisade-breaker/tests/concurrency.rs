//! Many callers at once: exactly N probes, consistent windows.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_breaker::{Breaker, CircuitBreakerLayer, Rejected, State, WindowCounts};
use support::{Log, ManualClock, build, builder, fail};
use tokio::sync::{Semaphore, mpsc};
use tower::{Layer, ServiceExt};

const CALLERS: usize = 1_000;
const PROBES: u32 = 7;

/// Sends 1,000 concurrent calls through a half-open breaker whose inner
/// service holds every call until released; exactly `PROBES` reach it.
async fn one_round(b: &Breaker, advance: impl AsyncFnOnce()) {
    fail(b);
    fail(b);
    assert_eq!(b.state(), State::Open);
    advance().await;

    let reached = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let inner = {
        let (reached, gate) = (reached.clone(), gate.clone());
        tower::service_fn(move |_: ()| {
            let (reached, gate) = (reached.clone(), gate.clone());
            async move {
                reached.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let svc = CircuitBreakerLayer::new(b.clone()).layer(inner);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for _ in 0..CALLERS {
        let (svc, tx) = (svc.clone(), tx.clone());
        tokio::spawn(async move {
            let result = svc.oneshot(()).await;
            tx.send(result).unwrap();
        });
    }
    let mut saturated = 0;
    for _ in 0..CALLERS - PROBES as usize {
        let err = rx.recv().await.unwrap().unwrap_err();
        assert!(matches!(
            err.downcast_ref::<Rejected>(),
            Some(Rejected::HalfOpenSaturated { .. })
        ));
        saturated += 1;
    }
    assert_eq!(saturated, CALLERS - PROBES as usize);
    assert_eq!(reached.load(Ordering::SeqCst), PROBES as usize);
    assert_eq!(b.state(), State::HalfOpen);
    gate.add_permits(PROBES as usize);
    for _ in 0..PROBES {
        rx.recv().await.unwrap().unwrap();
    }
    assert_eq!(reached.load(Ordering::SeqCst), PROBES as usize);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn thousand_callers_while_half_open_paused_time() {
    let b = build(
        builder(&Log::default())
            .count_window(2)
            .minimum_calls(2)
            .wait_duration(Duration::from_secs(1))
            .half_open_probes(PROBES),
    );
    for _ in 0..20 {
        one_round(&b, async || {
            tokio::time::advance(Duration::from_secs(1)).await
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_callers_while_half_open_on_two_threads() {
    let clock = ManualClock::default();
    let b = build(
        builder(&Log::default())
            .clock(clock.clone())
            .count_window(2)
            .minimum_calls(2)
            .wait_duration(Duration::from_secs(1))
            .half_open_probes(PROBES),
    );
    for _ in 0..20 {
        let clock = clock.clone();
        one_round(&b, async move || clock.advance(Duration::from_secs(1))).await;
    }
}

#[test]
fn threads_racing_for_probe_slots_get_exactly_n() {
    let clock = ManualClock::default();
    let b = build(
        builder(&Log::default())
            .clock(clock.clone())
            .count_window(1)
            .minimum_calls(1)
            .wait_duration(Duration::from_secs(1))
            .half_open_probes(PROBES),
    );
    for round in 0..50 {
        fail(&b);
        clock.advance(Duration::from_secs(1));
        let permits: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..500)
                            .filter_map(|_| b.try_acquire().ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(permits.len(), PROBES as usize, "round {round}");
        // Cancel three: exactly three more are admitted.
        let mut permits = permits.into_iter();
        for p in permits.by_ref().take(3) {
            drop(p);
        }
        let again: Vec<_> = (0..100).filter_map(|_| b.try_acquire().ok()).collect();
        assert_eq!(again.len(), 3);
        for p in permits.chain(again) {
            p.success();
        }
        assert_eq!(b.state(), State::Closed, "round {round}");
    }
}

#[test]
fn concurrent_recording_leaves_consistent_windows() {
    for window in [
        palisade_breaker::SlidingWindow::Count { size: 100 },
        palisade_breaker::SlidingWindow::Time {
            duration: Duration::from_secs(10),
            buckets: 10,
        },
    ] {
        let clock = ManualClock::default();
        let b = build(
            builder(&Log::default())
                .clock(clock.clone())
                .sliding_window(window),
        );
        b.metrics_only();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (b, clock) = (&b, &clock);
                s.spawn(move || {
                    let mut x = t + 1;
                    for i in 0..20_000u64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let permit = b.try_acquire().unwrap();
                        if x % 3 == 0 {
                            permit.failure();
                        } else {
                            permit.success();
                        }
                        if t == 0 && i % 1000 == 0 {
                            clock.advance(Duration::from_millis(700));
                        }
                    }
                });
            }
        });
        // Overwrite everything: the totals must be exact again (no drift).
        clock.advance(Duration::from_secs(60));
        for _ in 0..100 {
            b.try_acquire().unwrap().success();
        }
        assert_eq!(
            b.counts(),
            WindowCounts {
                calls: 100,
                failures: 0,
                slow_calls: 0
            },
            "{window:?}"
        );
    }
}
