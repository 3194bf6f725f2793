//! The limiter's two counts in one atomic word: calls holding a slot
//! (`in_flight`, the low 32 bits) and calls waiting in the queue
//! (`waiting`, the high 32 bits).
//!
//! **Why one word:** a release and a caller joining the queue must never
//! miss each other (a free slot next to a waiter that nobody wakes). With
//! two counters that needs a store-then-load on each side and a total order
//! over them; with one word both are read-modify-writes of the same
//! location, and every such write sees the one before it. So either the
//! release comes first, and the joining caller sees the free slot and takes
//! it instead of queueing; or the join comes first, and the release sees
//! `waiting > 0` and runs the grant loop.
//!
//! **The invariant:** `in_flight` only grows by a compare-and-swap that saw
//! it below the limit it was given, so no admission makes `in_flight`
//! exceed that limit.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};

use crate::sync::AtomicU64;

const ONE_WAITING: u64 = 1 << 32;
const IN_FLIGHT: u64 = ONE_WAITING - 1;

/// The two counts.
#[derive(Debug, Default)]
pub(crate) struct Counts(AtomicU64);

/// What [`Counts::join_or_take`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Joined {
    /// A slot was free and nobody waited: it was taken.
    Took,
    /// Counted as waiting.
    Queued,
}

fn in_flight(word: u64) -> usize {
    (word & IN_FLIGHT) as usize
}

fn waiting(word: u64) -> usize {
    (word >> 32) as usize
}

impl Counts {
    /// Calls holding a slot.
    pub(crate) fn in_flight(&self) -> usize {
        in_flight(self.0.load(Relaxed))
    }

    /// Calls waiting.
    pub(crate) fn waiting(&self) -> usize {
        waiting(self.0.load(Relaxed))
    }

    /// The fast path: takes a slot if one is free under `limit` and nobody
    /// waits (no barging past the queue).
    #[inline]
    pub(crate) fn try_take(&self, limit: usize) -> bool {
        self.update(|word| (waiting(word) == 0 && in_flight(word) < limit).then(|| word + 1))
            .is_some()
    }

    /// The grant loop's step: takes a slot for a waiter if one is free under
    /// `limit` (the waiter still counts as waiting until it leaves).
    pub(crate) fn take_for_waiter(&self, limit: usize) -> bool {
        self.update(|word| (in_flight(word) < limit).then(|| word + 1))
            .is_some()
    }

    /// A caller that found no slot: takes one if it is free now and nobody
    /// waits, else counts it as waiting.
    pub(crate) fn join_or_take(&self, limit: usize) -> Joined {
        let word = self
            .update(|word| {
                Some(if waiting(word) == 0 && in_flight(word) < limit {
                    word + 1
                } else {
                    word + ONE_WAITING
                })
            })
            .expect("always updates");
        if waiting(word) == 0 && in_flight(word) < limit {
            Joined::Took
        } else {
            Joined::Queued
        }
    }

    /// Gives a slot back; returns how many wait (the caller runs the grant
    /// loop if any do).
    #[inline]
    pub(crate) fn release(&self) -> (usize, usize) {
        let before = self.0.fetch_sub(1, AcqRel);
        debug_assert!(in_flight(before) > 0, "released more slots than taken");
        (in_flight(before) - 1, waiting(before))
    }

    /// A waiter left the queue (granted, shed, timed out, cancelled).
    pub(crate) fn leave_queue(&self) {
        let before = self.0.fetch_sub(ONE_WAITING, AcqRel);
        debug_assert!(waiting(before) > 0, "left a queue nobody was in");
    }

    /// Applies `f` until it sticks; returns the word it changed, or `None`
    /// when `f` declined.
    #[inline]
    fn update(&self, f: impl Fn(u64) -> Option<u64>) -> Option<u64> {
        let mut current = self.0.load(Acquire);
        loop {
            let next = f(current)?;
            match self.0.compare_exchange_weak(current, next, AcqRel, Acquire) {
                Ok(_) => return Some(current),
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counts_move_together_and_apart() {
        let c = Counts::default();
        assert!(c.try_take(2));
        assert!(c.try_take(2));
        assert!(!c.try_take(2));
        assert_eq!(c.join_or_take(2), Joined::Queued);
        assert_eq!((c.in_flight(), c.waiting()), (2, 1));
        // a waiter blocks the fast path even with a slot free
        assert_eq!(c.release(), (1, 1));
        assert!(!c.try_take(2));
        assert!(c.take_for_waiter(2));
        c.leave_queue();
        assert_eq!((c.in_flight(), c.waiting()), (2, 0));
        assert_eq!(c.release(), (1, 0));
        assert_eq!(c.join_or_take(2), Joined::Took);
        assert_eq!((c.in_flight(), c.waiting()), (2, 0));
    }
}
