//! Hedged requests with scripted replicas under paused time, and the budget
//! over long heavy-tailed runs.

mod support;

use std::time::Duration;

use palisade_fanout::hedge::{Delay, Hedge, HedgeConfig, HedgeLayer, hedge_if};
use support::{Mock, SplitMix, err, ok, timed};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);

/// Fixed delay, a generous budget (the floor), `attempts` attempts.
fn fixed(delay_ms: u64, attempts: usize) -> HedgeConfig {
    HedgeConfig::builder()
        .delay(Delay::Fixed(Duration::from_millis(delay_ms)))
        .max_attempts(attempts)
        .min_hedges_per_sec(1000.0)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_slow_primary_is_beaten_by_the_hedge_on_the_other_replica() {
    let (slow, fast) = (Mock::new([ok(100, 0)]), Mock::new([ok(10, 1)]));
    let mut svc = Hedge::over([slow.clone(), fast.clone()], fixed(20, 2));
    let hedger = svc.hedger().clone();
    let (out, took) = timed(ServiceExt::<()>::ready(&mut svc).await.unwrap().call(())).await;
    assert_eq!(out.unwrap(), 1);
    assert_eq!(took, 30 * MS);
    assert_eq!(slow.stats.called_at_ms(), [0]);
    assert_eq!(fast.stats.called_at_ms(), [20]);
    assert_eq!(slow.stats.cancelled(), 1);
    let stats = hedger.stats();
    assert_eq!((stats.primaries, stats.hedges, stats.hedges_won), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_fast_primary_sends_no_hedge() {
    let (a, b) = (Mock::new([ok(10, 0)]), Mock::new([ok(10, 1)]));
    let mut svc = Hedge::over([a.clone(), b.clone()], fixed(20, 2));
    let (out, took) = timed(ServiceExt::<()>::ready(&mut svc).await.unwrap().call(())).await;
    assert_eq!(out.unwrap(), 0);
    assert_eq!(took, 10 * MS);
    assert_eq!(b.stats.calls(), 0);
    assert_eq!(svc.hedger().stats().hedges, 0);
}

#[tokio::test(start_paused = true)]
async fn primaries_rotate_over_the_replicas_and_hedges_go_to_the_next() {
    let (a, b) = (Mock::new([ok(100, 0)]), Mock::new([ok(100, 1)]));
    let mut svc = Hedge::over([a.clone(), b.clone()], fixed(20, 2));
    let first = ServiceExt::<()>::ready(&mut svc).await.unwrap().call(());
    let second = ServiceExt::<()>::ready(&mut svc).await.unwrap().call(());
    let ((x, y), took) = timed(async { tokio::join!(first, second) }).await;
    // Each primary wins at 100 ms, before its hedge (sent at 20 ms) would.
    assert_eq!((x.unwrap(), y.unwrap()), (0, 1));
    assert_eq!(took, 100 * MS);
    assert_eq!(a.stats.called_at_ms(), [0, 20]);
    assert_eq!(b.stats.called_at_ms(), [0, 20]);
}

#[tokio::test(start_paused = true)]
async fn a_retryable_error_waits_for_the_attempt_still_running() {
    // The primary fails at 25 ms, after the hedge went out at 20 ms; the
    // hedge answers at 35 ms and wins.
    let (a, b) = (Mock::new([err(25)]), Mock::new([ok(15, 1)]));
    let mut svc = Hedge::over([a, b], fixed(20, 2));
    let (out, took) = timed(ServiceExt::<()>::ready(&mut svc).await.unwrap().call(())).await;
    assert_eq!(out.unwrap(), 1);
    assert_eq!(took, 35 * MS);
}

#[tokio::test(start_paused = true)]
async fn an_early_error_sends_the_next_attempt_at_once() {
    let (a, b) = (Mock::new([err(5)]), Mock::new([ok(10, 1)]));
    let mut svc = Hedge::over([a, b.clone()], fixed(50, 2));
    let (out, took) = timed(ServiceExt::<()>::ready(&mut svc).await.unwrap().call(())).await;
    assert_eq!(out.unwrap(), 1);
    assert_eq!(b.stats.called_at_ms(), [5]);
    assert_eq!(took, 15 * MS);
}

#[tokio::test(start_paused = true)]
async fn when_every_attempt_fails_the_last_failure_is_returned() {
    let (a, b) = (Mock::new([err(30)]), Mock::new([err(40)]));
    let mut svc = Hedge::over([a, b], fixed(10, 2));
    let (out, took) = timed(ServiceExt::<()>::ready(&mut svc).await.unwrap().call(())).await;
    assert!(out.is_err());
    assert_eq!(took, 50 * MS);
}

#[tokio::test(start_paused = true)]
async fn max_attempts_sends_one_more_attempt_per_delay() {
    let replicas = [
        Mock::new([ok(100, 0)]),
        Mock::new([ok(100, 1)]),
        Mock::new([ok(15, 2)]),
    ];
    let mut svc = Hedge::over(replicas.clone(), fixed(20, 3));
    let (out, took) = timed(ServiceExt::<()>::ready(&mut svc).await.unwrap().call(())).await;
    assert_eq!(out.unwrap(), 2);
    assert_eq!(took, 55 * MS);
    assert_eq!(replicas[1].stats.called_at_ms(), [20]);
    assert_eq!(replicas[2].stats.called_at_ms(), [40]);
    assert_eq!(
        replicas[0].stats.cancelled() + replicas[1].stats.cancelled(),
        2
    );
    assert_eq!(svc.hedger().stats().hedges, 2);
}

#[tokio::test(start_paused = true)]
async fn requests_the_policy_rejects_are_never_hedged() {
    let slow = Mock::new([ok(100, 0)]);
    let mut svc = HedgeLayer::new(fixed(20, 2))
        .policy(hedge_if(|req: &u32| req.is_multiple_of(2)))
        .layer(slow.clone());
    let (out, took) = timed(ServiceExt::<u32>::ready(&mut svc).await.unwrap().call(1)).await;
    assert_eq!(out.unwrap(), 0);
    assert_eq!(took, 100 * MS);
    assert_eq!(slow.stats.calls(), 1);
    let (_, took) = timed(ServiceExt::<u32>::ready(&mut svc).await.unwrap().call(2)).await;
    assert_eq!(took, 100 * MS);
    assert_eq!(slow.stats.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_response_future_cancels_every_attempt() {
    let (a, b) = (Mock::new([ok(100, 0)]), Mock::new([ok(100, 1)]));
    let mut svc = Hedge::over([a.clone(), b.clone()], fixed(10, 2));
    let fut = ServiceExt::<()>::ready(&mut svc).await.unwrap().call(());
    let _ = tokio::time::timeout(30 * MS, fut).await;
    assert_eq!((a.stats.calls(), b.stats.calls()), (1, 1));
    assert_eq!(a.stats.live() + b.stats.live(), 0);
    assert_eq!(a.stats.cancelled() + b.stats.cancelled(), 2);
}

#[tokio::test(start_paused = true)]
async fn percentile_delay_waits_for_min_samples_then_tracks_every_attempt() {
    let svc = service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, BoxError>(ms)
    });
    let layer = HedgeLayer::new(
        HedgeConfig::builder()
            .delay(Delay::Percentile(0.9))
            .min_samples(10)
            .min_hedges_per_sec(100.0)
            .build()
            .unwrap(),
    );
    let hedger = layer.hedger().clone();
    let mut svc = layer.layer(svc);
    assert_eq!(hedger.current_delay(), None);
    for i in 1..=10u64 {
        svc.ready().await.unwrap().call(i).await.unwrap();
    }
    // Ten samples 1..=10 ms: the 90th percentile is 9 ms (bucket upper
    // bound at microsecond resolution).
    tokio::time::advance(200 * MS).await;
    let d = hedger.current_delay().expect("enough samples");
    assert!(
        d >= 9 * MS && d <= 9 * MS + Duration::from_micros(9000 / 32),
        "{d:?}"
    );
    assert_eq!(hedger.stats().hedges, 0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_losers_are_recorded_at_their_elapsed_time() {
    // Calls take 100 ms, 1000 ms, 1 ms. The first request (no samples yet,
    // no hedge) puts 100 ms in the window, so the p50 delay is 100 ms. The
    // second request's primary (1000 ms) is beaten by its hedge (1 ms) at
    // 101 ms and cancelled. Recording only completions would leave
    // {100, 1} and a p50 of 1 ms; recording the loser at its elapsed time
    // gives {100, 101, 1} and keeps the p50 at 100 ms.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let svc = service_fn(move |_: ()| {
        let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let ms = [100, 1000, 1][n % 3];
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, BoxError>(ms)
        }
    });
    let layer = HedgeLayer::new(
        HedgeConfig::builder()
            .delay(Delay::Percentile(0.5))
            .min_samples(1)
            .min_hedges_per_sec(1000.0)
            .build()
            .unwrap(),
    );
    let hedger = layer.hedger().clone();
    let mut svc = layer.layer(svc);
    let (out, took) = timed(ServiceExt::<()>::ready(&mut svc).await.unwrap().call(())).await;
    assert_eq!((out.unwrap(), took), (100, 100 * MS));
    tokio::time::advance(200 * MS).await;
    let (out, took) = timed(ServiceExt::<()>::ready(&mut svc).await.unwrap().call(())).await;
    assert_eq!(out.unwrap(), 1);
    // Hedged after the p50 (100 ms, at its bucket's upper bound), answered 1 ms later.
    assert!(took >= 101 * MS && took <= 105 * MS, "{took:?}");
    assert_eq!(hedger.stats().hedges_won, 1);
    tokio::time::advance(200 * MS).await;
    let d = hedger.current_delay().unwrap();
    assert!(d >= 100 * MS && d <= 105 * MS, "{d:?}");
}

/// A heavy-tailed backend: 99% of attempts take 8-12 ms, 1% take 500 ms
/// (50x the median), drawn per attempt from a seeded generator.
fn heavy_tailed(
    seed: u64,
) -> impl Service<(), Response = u64, Error = BoxError, Future: Send> + Clone {
    let rng = std::sync::Arc::new(std::sync::Mutex::new(SplitMix(seed)));
    service_fn(move |_: ()| {
        let r = {
            let mut rng = rng.lock().unwrap();
            (rng.next_f64(), rng.next_f64())
        };
        async move {
            let us = if r.0 < 0.01 {
                500_000
            } else {
                8_000 + (r.1 * 4_000.0) as u64
            };
            tokio::time::sleep(Duration::from_micros(us)).await;
            Ok::<_, BoxError>(us)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn over_10000_heavy_tailed_requests_hedges_stay_within_the_budget() {
    let layer = HedgeLayer::new(
        HedgeConfig::builder()
            .delay(Delay::Percentile(0.95))
            .max_extra_load(0.05)
            .build()
            .unwrap(),
    );
    let hedger = layer.hedger().clone();
    let mut svc = layer.layer(heavy_tailed(7));
    let mut slow = 0;
    for _ in 0..10_000 {
        let (_, took) = timed(ServiceExt::<()>::ready(&mut svc).await.unwrap().call(())).await;
        if took >= 400 * MS {
            slow += 1;
        }
    }
    let s = hedger.stats();
    assert_eq!(s.primaries, 10_000);
    // The budget's invariant, summed over consecutive whole windows: never
    // more than 5% of the primaries.
    assert!(s.hedges <= 500, "{s:?}");
    assert!(s.hedges > 100, "hedging happened: {s:?}");
    assert!(s.hedges_won > 50, "{s:?}");
    // Without hedging ~100 requests take 500 ms; with it only those whose
    // primary and hedge were both slow, or that found the budget empty.
    assert!(slow < 20, "slow requests: {slow}, {s:?}");
}

#[tokio::test(start_paused = true)]
async fn with_every_backend_slow_the_hedge_rate_falls_to_the_budget() {
    // Every attempt takes 100 ms; the fixed delay of 10 ms wants a hedge
    // for every request. 1000 requests in sequence take 100 s: ten budget
    // windows of ~100 primaries, 5 hedges each.
    let slow = Mock::new([ok(100, 0)]);
    let layer = HedgeLayer::new(
        HedgeConfig::builder()
            .delay(Delay::Fixed(10 * MS))
            .max_extra_load(0.05)
            .build()
            .unwrap(),
    );
    let hedger = layer.hedger().clone();
    let mut svc = layer.layer(slow.clone());
    for _ in 0..1000 {
        let (out, _) = timed(ServiceExt::<()>::ready(&mut svc).await.unwrap().call(())).await;
        out.unwrap();
    }
    let s = hedger.stats();
    assert!(s.hedges <= 50, "{s:?}");
    assert!(s.hedges >= 45, "{s:?}");
    assert_eq!(s.hedges + s.budget_exhausted, 1000);
    assert_eq!(slow.stats.calls() as u64, 1000 + s.hedges);

    // With no fraction at all, only the floor: 1 hedge per second.
    let slow = Mock::new([ok(100, 0)]);
    let layer = HedgeLayer::new(
        HedgeConfig::builder()
            .delay(Delay::Fixed(10 * MS))
            .max_extra_load(0.0)
            .min_hedges_per_sec(1.0)
            .build()
            .unwrap(),
    );
    let hedger = layer.hedger().clone();
    let mut svc = layer.layer(slow);
    for _ in 0..1000 {
        timed(ServiceExt::<()>::ready(&mut svc).await.unwrap().call(()))
            .await
            .0
            .unwrap();
    }
    let s = hedger.stats();
    // 100 s at 1 per second, window by window.
    assert!(s.hedges <= 100, "{s:?}");
    assert!(s.hedges >= 90, "{s:?}");
}

#[test]
fn config_errors_name_the_field() {
    let b = HedgeConfig::builder;
    assert_eq!(
        b().max_attempts(1).build().unwrap_err().field(),
        "max_attempts"
    );
    assert_eq!(
        b().max_extra_load(1.5).build().unwrap_err().field(),
        "max_extra_load"
    );
    assert_eq!(
        b().max_extra_load(-0.1).build().unwrap_err().field(),
        "max_extra_load"
    );
    assert_eq!(
        b().delay(Delay::Percentile(1.0))
            .build()
            .unwrap_err()
            .field(),
        "delay.percentile"
    );
    assert_eq!(
        b().min_hedges_per_sec(f64::NAN)
            .build()
            .unwrap_err()
            .field(),
        "min_hedges_per_sec"
    );
    assert_eq!(
        b().budget_window(Duration::ZERO)
            .build()
            .unwrap_err()
            .field(),
        "budget_window"
    );
    assert_eq!(
        b().latency_window(Duration::ZERO)
            .build()
            .unwrap_err()
            .field(),
        "latency_window"
    );
    assert_eq!(
        b().min_samples(0).build().unwrap_err().field(),
        "min_samples"
    );
    assert!(b().build().is_ok());
}

#[tokio::test(start_paused = true)]
async fn an_unready_replica_does_not_hold_the_primaries_of_the_others() {
    let stuck = Mock::new([ok(1, 0)]).ready(support::Ready::Never);
    let fine = Mock::new([ok(10, 1)]);
    let mut svc = Hedge::over([stuck.clone(), fine.clone()], fixed(50, 2));
    for _ in 0..3 {
        let (out, took) = timed(ServiceExt::<()>::ready(&mut svc).await.unwrap().call(())).await;
        assert_eq!(out.unwrap(), 1);
        assert_eq!(took, 10 * MS);
    }
    assert_eq!(stuck.stats.calls(), 0);
}
