//! Every interleaving of admission, release and the queue hand-off
//! (`--cfg palisade_loom`; run by `scripts/loom.sh`). Each model asserts an
//! invariant the module docs claim.

use loom::thread;

use super::*;
use crate::algorithm::Fixed;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

fn limiter(limit: usize, mode: Mode) -> Limiter {
    Limiter::builder()
        .algorithm(Fixed::new(limit))
        .mode(mode)
        .build()
        .unwrap()
}

/// A release racing a caller that finds the limit full and queues: the
/// freed slot always reaches the caller (no lost wake-up), and exactly one
/// slot is held at the end.
#[test]
fn a_release_racing_an_enqueue_is_never_lost() {
    model(|| {
        let limiter = limiter(1, Mode::Queue);
        let held = limiter.try_acquire(0).unwrap();
        let releaser = thread::spawn(move || drop(held));
        let shared = limiter.shared().clone();
        // Either the fast path or the join sees the freed slot, or the
        // caller queues and the release hands the slot over.
        let (reserved, waiter) = match shared.try_reserve() {
            Some(r) => (Some(r), None),
            None => match shared.enqueue() {
                Enqueued::Took(r) => (Some(r), None),
                Enqueued::Waiting(w) => (None, Some(w)),
                Enqueued::Full => panic!("room in the queue"),
            },
        };
        releaser.join().unwrap();
        if let Some(waiter) = &waiter {
            assert_eq!(
                waiter.state.load(SeqCst),
                GRANTED,
                "the freed slot reached the waiter"
            );
        }
        assert_eq!(shared.counts.waiting(), 0);
        // One slot held: by the reservation, or granted to the waiter.
        assert_eq!(shared.counts.in_flight(), 1);
        drop(reserved);
        if let Some(waiter) = waiter {
            // A granted, never-taken slot goes back through the release.
            assert!(
                waiter
                    .state
                    .compare_exchange(GRANTED, TAKEN, SeqCst, SeqCst)
                    .is_ok()
            );
            shared.release();
        }
        assert_eq!(shared.counts.in_flight(), 0);
    });
}

/// Two callers racing for the last slot while a third call ends: the
/// in-flight count never exceeds the limit, and every slot comes back.
#[test]
fn admissions_never_exceed_the_limit() {
    model(|| {
        let limiter = limiter(1, Mode::Reject);
        let held = limiter.try_acquire(0).unwrap();
        let a = {
            let limiter = limiter.clone();
            thread::spawn(move || {
                let permit = limiter.try_acquire(0).ok();
                assert!(limiter.in_flight() <= 1);
                permit.is_some()
            })
        };
        let b = {
            let limiter = limiter.clone();
            thread::spawn(move || {
                drop(held);
                let permit = limiter.try_acquire(0).ok();
                assert!(limiter.in_flight() <= 1);
                permit.is_some()
            })
        };
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert!(a || b, "the released slot was taken by one of them");
        assert_eq!(limiter.in_flight(), 0, "every permit was given back");
    });
}
