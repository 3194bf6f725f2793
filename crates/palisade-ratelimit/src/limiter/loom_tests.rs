//! Every interleaving of the GCRA compare-and-swap loops (`--cfg palisade_loom`; run
//! by `scripts/loom.sh`).

use std::sync::Arc;
use std::time::Duration;

use loom::thread;

use super::*;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// One cell per second, burst 2, on a hand-set clock at 0.
fn limiter() -> Limiter {
    let quota = Quota::builder()
        .rate(1)
        .per(Duration::from_secs(1))
        .burst(2)
        .build()
        .unwrap();
    Limiter::builder(quota).clock(Clock::manual().0).build()
}

const SEC: u64 = 1_000_000_000;

/// A check, a wait-mode reservation and its refund racing: the TAT word is
/// the whole state, so whatever the order the result is the sequential one.
/// The check is admitted (there are two cells), the reservation is due at
/// once or in a second depending on the order, and after the refund exactly
/// the check's cell is spent.
#[test]
fn check_racing_reserve_and_refund_keeps_the_tat_exact() {
    model(|| {
        let l = Arc::new(limiter());
        let other = {
            let l = l.clone();
            thread::spawn(move || l.check())
        };
        let wait = l.reserve(1, u64::MAX).expect("no bound");
        l.refund(1);
        let decision = other.join().unwrap();
        assert!(decision.allowed());
        assert_eq!(wait, 0, "two cells: the booking is due at once either way");
        assert_eq!(l.state.tat.load(Ordering::Relaxed), SEC);
    });
}

/// Two reservations racing past `max_wait`: each books a distinct slot or
/// none, never the same one twice, and a refused booking leaves no trace.
#[test]
fn reservations_book_distinct_slots_within_max_wait() {
    model(|| {
        let l = Arc::new(limiter());
        assert!(l.check().allowed());
        assert!(l.check().allowed());
        // Both cells spent: the next slots are at 1 s and 2 s.
        let other = {
            let l = l.clone();
            thread::spawn(move || l.reserve(1, SEC).ok())
        };
        let mine = l.reserve(1, SEC).ok();
        let theirs = other.join().unwrap();
        let mut booked: Vec<u64> = [mine, theirs].into_iter().flatten().collect();
        booked.sort_unstable();
        // Only the 1 s slot is within max_wait: exactly one booking.
        assert_eq!(booked, vec![SEC]);
        assert_eq!(l.state.tat.load(Ordering::Relaxed), 3 * SEC);
    });
}
