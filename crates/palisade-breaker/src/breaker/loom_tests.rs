//! Every interleaving of the breaker's lock-free paths (`--cfg palisade_loom`; run by
//! `scripts/loom.sh`). Each model asserts an invariant the code's comments
//! claim.

use std::sync::Arc as StdArc;
use std::sync::atomic::AtomicU64 as StdAtomicU64;
use std::time::Duration;

use loom::thread;

use super::*;
use crate::clock::Clock;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(f);
}

/// A clock the model sets by hand (not modelled: it only moves between
/// phases of a model, never concurrently).
#[derive(Debug, Clone, Default)]
struct Hand(StdArc<StdAtomicU64>);

impl Clock for Hand {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

fn breaker(clock: &Hand) -> Breaker {
    Breaker::new(
        Config::builder()
            .name("loom")
            .count_window(2)
            .minimum_calls(2)
            .failure_rate_threshold(0.5)
            .wait_duration(Duration::from_secs(1))
            .wait_jitter(0.0)
            .half_open_probes(1)
            .clock(clock.clone())
            .build()
            .unwrap(),
    )
}

/// Closed-path recording racing a transition and a `reset()` (which clears
/// the window): whatever the order, the reset wins (the late recorder's
/// transition is refused because its state word is stale), and the window
/// the breaker ends with holds at most the racing outcome, counted once.
#[test]
fn closed_recording_racing_open_and_reset() {
    model(|| {
        let clock = Hand::default();
        let b = breaker(&clock);
        b.try_acquire().unwrap().failure();
        let permit = b.try_acquire().unwrap();
        let recorder = thread::spawn(move || permit.failure());
        b.reset();
        recorder.join().unwrap();
        let word = b.shared.state.load(Ordering::Acquire);
        // Either the failure opened the breaker first and the reset closed
        // it, or the reset came first and the stale outcome was dropped or
        // kept whole; never a breaker opened after the reset.
        assert_eq!(state_of(word), State::Closed);
        let counts = b.counts();
        assert!(counts.calls <= 1, "{counts:?}");
        assert_eq!(counts.calls, counts.failures);
    });
}

/// The half-open probe slots: two callers race for the one slot after the
/// wait; exactly one gets a probe, the transition to HalfOpen happens once,
/// and a late release of the slot from the previous round frees nothing.
#[test]
fn half_open_admits_exactly_the_configured_probes() {
    model(|| {
        let clock = Hand::default();
        let b = breaker(&clock);
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), State::Open);
        clock.0.store(2_000_000_000, Ordering::SeqCst);
        let other = {
            let b = b.clone();
            thread::spawn(move || b.try_acquire())
        };
        let mine = b.try_acquire();
        let theirs = other.join().unwrap();
        // Both permits are still held: exactly one caller has the slot.
        let probes = [&mine, &theirs]
            .iter()
            .filter(|p| p.as_ref().is_ok_and(Permit::is_probe))
            .count();
        assert_eq!(probes, 1, "{mine:?} {theirs:?}");
        assert!(matches!(
            [&mine, &theirs].iter().find(|p| p.is_err()),
            Some(Err(Rejected::HalfOpenSaturated { .. }))
        ));
        drop((mine, theirs));
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(generation_of(b.shared.state.load(Ordering::Acquire)), 2);
    });
}
