//! The full state machine under paused time, with exact assertions.

mod support;

use std::time::Duration;

use palisade_breaker::{Outcome, Reason, Rejected, State, WindowCounts};
use support::{Log, build, builder, fail, ok};
use tokio::time::advance;

use State::*;

const SEC: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn opens_as_soon_as_minimum_calls_is_reached() {
    let log = Log::default();
    let b = build(
        builder(&log)
            .count_window(10)
            .minimum_calls(4)
            .failure_rate_threshold(0.5),
    );
    ok(&b);
    fail(&b);
    fail(&b);
    // 2 failures of 3 calls is over the threshold, but below the minimum.
    assert_eq!(b.state(), Closed);
    // The 4th call (a success) reaches the minimum: 2/4 = 0.5 opens, long
    // before the window of 10 is full.
    ok(&b);
    assert_eq!(b.state(), Open);
    assert_eq!(log.steps(), vec![(Closed, Open, Reason::FailureRate)]);
    let t = &log.all()[0];
    assert_eq!(
        t.counts,
        Some(WindowCounts {
            calls: 4,
            failures: 2,
            slow_calls: 0
        })
    );
    assert_eq!(t.wait, Some(Duration::from_secs(5)));
}

#[tokio::test(start_paused = true)]
async fn ring_evicts_the_oldest_outcome() {
    let log = Log::default();
    let b = build(
        builder(&log)
            .count_window(4)
            .minimum_calls(4)
            .failure_rate_threshold(0.5),
    );
    fail(&b);
    ok(&b);
    ok(&b);
    ok(&b); // [F S S S] 1/4
    ok(&b); // [S S S S] the failure is evicted
    assert_eq!(
        b.counts(),
        WindowCounts {
            calls: 4,
            failures: 0,
            slow_calls: 0
        }
    );
    fail(&b); // [S S S F] 1/4
    assert_eq!(b.state(), Closed);
    fail(&b); // [S S F F] 2/4
    assert_eq!(b.state(), Open);
    assert_eq!(log.steps(), vec![(Closed, Open, Reason::FailureRate)]);
}

#[tokio::test(start_paused = true)]
async fn open_rejects_with_exact_retry_after_then_half_opens_lazily() {
    let log = Log::default();
    let b = build(
        builder(&log)
            .count_window(2)
            .minimum_calls(2)
            .wait_duration(10 * SEC)
            .half_open_probes(1),
    );
    fail(&b);
    fail(&b);
    assert_eq!(
        b.try_acquire().unwrap_err(),
        Rejected::Open {
            retry_after: 10 * SEC
        }
    );
    advance(4 * SEC).await;
    assert_eq!(
        b.try_acquire().unwrap_err(),
        Rejected::Open {
            retry_after: 6 * SEC
        }
    );
    advance(6 * SEC - Duration::from_nanos(1)).await;
    assert_eq!(
        b.try_acquire().unwrap_err(),
        Rejected::Open {
            retry_after: Duration::from_nanos(1)
        }
    );
    advance(Duration::from_nanos(1)).await;
    // No call yet: the transition is lazy.
    assert_eq!(b.state(), Open);
    let probe = b.try_acquire().expect("the first probe");
    assert!(probe.is_probe());
    assert_eq!(b.state(), HalfOpen);
    probe.success();
    assert_eq!(b.state(), Closed);
    assert_eq!(
        log.steps(),
        vec![
            (Closed, Open, Reason::FailureRate),
            (Open, HalfOpen, Reason::WaitElapsed),
            (HalfOpen, Closed, Reason::ProbesSucceeded),
        ]
    );
    // A clean close empties the window.
    assert_eq!(b.counts(), WindowCounts::default());
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_n_and_closes_once_enough_succeed() {
    let log = Log::default();
    let b = build(
        builder(&log)
            .count_window(2)
            .minimum_calls(2)
            .wait_duration(SEC)
            .half_open_probes(3)
            .failure_rate_threshold(0.5),
    );
    fail(&b);
    fail(&b);
    advance(SEC).await;
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    let p3 = b.try_acquire().unwrap();
    assert!(matches!(
        b.try_acquire().unwrap_err(),
        Rejected::HalfOpenSaturated { retry_after } if retry_after == SEC
    ));
    p1.success();
    assert_eq!(b.state(), HalfOpen);
    // 2 successes of 3: even if the last fails, 1/3 < 0.5, so it closes now.
    p2.success();
    assert_eq!(b.state(), Closed);
    // The last probe's outcome belongs to the finished round: not counted.
    p3.failure();
    assert_eq!(b.counts(), WindowCounts::default());
    assert_eq!(b.state(), Closed);
    assert_eq!(
        log.all()[2].counts,
        Some(WindowCounts {
            calls: 2,
            failures: 0,
            slow_calls: 0
        })
    );
}

#[tokio::test(start_paused = true)]
async fn probe_failure_rate_reopens() {
    let log = Log::default();
    let b = build(
        builder(&log)
            .count_window(2)
            .minimum_calls(2)
            .wait_duration(SEC)
            .wait_multiplier(1.0)
            .half_open_probes(4)
            .failure_rate_threshold(0.5),
    );
    fail(&b);
    fail(&b);
    advance(SEC).await;
    let probes: Vec<_> = (0..4).map(|_| b.try_acquire().unwrap()).collect();
    let mut probes = probes.into_iter();
    probes.next().unwrap().success();
    probes.next().unwrap().failure();
    probes.next().unwrap().success();
    // 1 failure, 1 outstanding: 2/4 is still possible.
    assert_eq!(b.state(), HalfOpen);
    probes.next().unwrap().failure();
    assert_eq!(b.state(), Open);
    assert_eq!(log.steps()[2], (HalfOpen, Open, Reason::ProbesFailed));
    assert_eq!(
        b.try_acquire().unwrap_err(),
        Rejected::Open { retry_after: SEC }
    );
}

#[tokio::test(start_paused = true)]
async fn wait_grows_exponentially_is_capped_and_resets_on_clean_close() {
    let log = Log::default();
    let b = build(
        builder(&log)
            .count_window(1)
            .minimum_calls(1)
            .wait_duration(10 * SEC)
            .wait_multiplier(2.0)
            .max_wait_duration(35 * SEC)
            .half_open_probes(1),
    );
    fail(&b);
    let mut waits = vec![];
    for _ in 0..4 {
        let Rejected::Open { retry_after } = b.try_acquire().unwrap_err() else {
            panic!("open")
        };
        waits.push(retry_after.as_secs());
        assert_eq!(b.consecutive_openings(), waits.len() as u32);
        advance(retry_after).await;
        fail(&b); // the probe fails: re-open with a longer wait
    }
    assert_eq!(waits, vec![10, 20, 35, 35]);
    let Rejected::Open { retry_after } = b.try_acquire().unwrap_err() else {
        panic!("open")
    };
    advance(retry_after).await;
    ok(&b); // a clean close
    assert_eq!(b.state(), Closed);
    assert_eq!(b.consecutive_openings(), 0);
    fail(&b);
    assert_eq!(
        b.try_acquire().unwrap_err(),
        Rejected::Open {
            retry_after: 10 * SEC
        }
    );
}

#[tokio::test(start_paused = true)]
async fn jitter_shortens_within_bounds_and_is_reproducible() {
    let waits = |seed| {
        let b = build(
            support::builder(&Log::default())
                .count_window(1)
                .minimum_calls(1)
                .wait_duration(10 * SEC)
                .wait_jitter(0.5)
                .jitter_seed(seed),
        );
        fail(&b);
        b.try_acquire().unwrap_err().retry_after().unwrap()
    };
    let a = waits(7);
    assert_eq!(a, waits(7));
    assert!(a > 5 * SEC && a <= 10 * SEC, "{a:?}");
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_mode() {
    let log = Log::default();
    let b = build(
        builder(&log)
            .consecutive_failures(3)
            .half_open_probes(2)
            .wait_duration(SEC),
    );
    fail(&b);
    fail(&b);
    ok(&b); // breaks the run
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), Closed);
    fail(&b);
    assert_eq!(b.state(), Open);
    assert_eq!(
        log.steps(),
        vec![(Closed, Open, Reason::ConsecutiveFailures)]
    );
    // In this mode one failed probe re-opens.
    advance(SEC).await;
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    p1.failure();
    assert_eq!(b.state(), Open);
    drop(p2);
    advance(2 * SEC).await;
    ok(&b);
    assert_eq!(b.state(), HalfOpen);
    ok(&b);
    assert_eq!(b.state(), Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_by_rate() {
    let log = Log::default();
    let b = build(
        builder(&log)
            .count_window(4)
            .minimum_calls(2)
            .slow_call_duration(SEC)
            .slow_call_rate_threshold(0.5),
    );
    let slow = b.try_acquire().unwrap();
    advance(SEC).await; // exactly the slow-call duration counts as slow
    slow.success();
    assert_eq!(
        b.counts(),
        WindowCounts {
            calls: 1,
            failures: 0,
            slow_calls: 1
        }
    );
    let fast = b.try_acquire().unwrap();
    advance(SEC - Duration::from_nanos(1)).await;
    fast.success();
    assert_eq!(b.state(), Open);
    assert_eq!(log.steps(), vec![(Closed, Open, Reason::SlowCallRate)]);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let log = Log::default();
    let b = build(
        builder(&log)
            .time_window(10 * SEC, 10)
            .minimum_calls(3)
            .failure_rate_threshold(1.0),
    );
    fail(&b);
    advance(SEC).await;
    fail(&b);
    advance(9 * SEC).await;
    // The first failure's bucket has expired, the second's has not.
    assert_eq!(
        b.counts(),
        WindowCounts {
            calls: 1,
            failures: 1,
            slow_calls: 0
        }
    );
    fail(&b);
    assert_eq!(b.state(), Closed);
    fail(&b);
    assert_eq!(b.state(), Open);
}

#[tokio::test(start_paused = true)]
async fn forced_states_and_reset() {
    let log = Log::default();
    let b = build(builder(&log).count_window(2).minimum_calls(2));
    b.force_open();
    assert_eq!(b.state(), ForcedOpen);
    advance(3600 * SEC).await;
    assert_eq!(b.try_acquire().unwrap_err(), Rejected::ForcedOpen);
    b.disable();
    fail(&b);
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), Disabled);
    assert_eq!(b.counts(), WindowCounts::default());
    b.metrics_only();
    fail(&b);
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), MetricsOnly);
    assert_eq!(
        b.counts(),
        WindowCounts {
            calls: 2,
            failures: 2,
            slow_calls: 0
        }
    );
    b.reset();
    assert_eq!(b.state(), Closed);
    assert_eq!(b.counts(), WindowCounts::default());
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), Open);
    b.reset();
    assert_eq!(b.state(), Closed);
    ok(&b);
    assert_eq!(
        log.steps(),
        vec![
            (Closed, ForcedOpen, Reason::Manual),
            (ForcedOpen, Disabled, Reason::Manual),
            (Disabled, MetricsOnly, Reason::Manual),
            (MetricsOnly, Closed, Reason::Manual),
            (Closed, Open, Reason::FailureRate),
            (Open, Closed, Reason::Manual),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_or_ignored_probe_gives_its_slot_back() {
    let b = build(
        builder(&Log::default())
            .count_window(1)
            .minimum_calls(1)
            .wait_duration(SEC)
            .half_open_probes(1),
    );
    fail(&b);
    advance(SEC).await;
    let probe = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop(probe); // cancelled
    let probe = b.try_acquire().expect("the slot came back");
    probe.record(Outcome::Ignored);
    let probe = b.try_acquire().expect("the slot came back again");
    probe.success();
    assert_eq!(b.state(), Closed);
}

#[tokio::test(start_paused = true)]
async fn hung_probe_cannot_keep_the_breaker_half_open() {
    let log = Log::default();
    let b = build(
        builder(&log)
            .count_window(1)
            .minimum_calls(1)
            .wait_duration(SEC)
            .half_open_probes(1)
            .max_half_open_duration(30 * SEC),
    );
    fail(&b);
    advance(SEC).await;
    let hung = b.try_acquire().unwrap();
    advance(29 * SEC).await;
    assert_eq!(
        b.try_acquire().unwrap_err(),
        Rejected::HalfOpenSaturated { retry_after: SEC }
    );
    advance(SEC).await;
    // The round timed out: the next call re-opens, with the grown wait.
    assert_eq!(
        b.try_acquire().unwrap_err(),
        Rejected::Open {
            retry_after: 2 * SEC
        }
    );
    assert_eq!(log.steps()[2], (HalfOpen, Open, Reason::HalfOpenTimeout));
    // The hung probe finally answers: its round is over, it changes nothing.
    hung.success();
    assert_eq!(b.state(), Open);
    advance(2 * SEC).await;
    ok(&b);
    assert_eq!(b.state(), Closed);
}

#[tokio::test(start_paused = true)]
async fn outcomes_from_an_ended_closed_period_are_dropped() {
    let b = build(
        builder(&Log::default())
            .count_window(4)
            .minimum_calls(2)
            .wait_duration(SEC),
    );
    let late = b.try_acquire().unwrap();
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), Open);
    advance(SEC).await;
    // Default 5 probes at 0.5: 3 successes close; 2 more calls land in the
    // new closed window.
    for _ in 0..5 {
        ok(&b);
    }
    assert_eq!(b.state(), Closed);
    late.failure();
    assert_eq!(
        b.counts(),
        WindowCounts {
            calls: 2,
            failures: 0,
            slow_calls: 0
        }
    );
}

// Before the fix, `counts()` kept returning the window from before the
// opening (2 calls, 2 failures) for the whole half-open round.
#[tokio::test(start_paused = true)]
async fn counts_while_half_open_are_the_rounds_own() {
    let b = build(
        builder(&Log::default())
            .count_window(2)
            .minimum_calls(2)
            .wait_duration(SEC)
            .half_open_probes(3),
    );
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), Open);
    assert_eq!(
        b.counts(),
        WindowCounts {
            calls: 2,
            failures: 2,
            slow_calls: 0
        },
        "open: the window that opened it"
    );
    advance(SEC).await;
    let probe = b.try_acquire().unwrap();
    assert_eq!(b.state(), HalfOpen);
    assert_eq!(
        b.counts(),
        WindowCounts::default(),
        "a new round starts empty"
    );
    probe.record(Outcome::Success);
    assert_eq!(
        b.counts(),
        WindowCounts {
            calls: 1,
            failures: 0,
            slow_calls: 0
        }
    );
    assert_eq!(b.state(), HalfOpen);
}
