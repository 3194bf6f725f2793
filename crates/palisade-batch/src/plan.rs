//! The batcher's decisions as pure functions: when a batch goes out and how
//! much goes in it. No clock, no locks, no channels; unit tests at the end.

use crate::config::Flush;
use crate::message::Reason;

/// What the worker holds when it decides whether to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Staged {
    /// Items waiting (cancelled ones included until they are skipped).
    pub(crate) items: usize,
    /// Their total weight.
    pub(crate) weight: u64,
    /// Whether the oldest item has waited `max_latency` (`Flush::Timer`).
    pub(crate) deadline_passed: bool,
    /// Whether the batcher is closing (flush everything, wait for nothing).
    pub(crate) closing: bool,
}

/// The limits a batch is formed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_items: usize,
    pub(crate) max_weight: Option<u64>,
}

/// Whether a batch should go out now (given a free slot and a ready inner
/// service), and why.
pub(crate) fn trigger(flush: Flush, limits: Limits, staged: Staged) -> Option<Reason> {
    if staged.items == 0 {
        return None;
    }
    if staged.items >= limits.max_items {
        return Some(Reason::Size);
    }
    if limits.max_weight.is_some_and(|max| staged.weight >= max) {
        return Some(Reason::Weight);
    }
    if staged.closing {
        return Some(Reason::Shutdown);
    }
    match flush {
        Flush::Opportunistic => Some(Reason::Opportunistic),
        Flush::Timer if staged.deadline_passed => Some(Reason::Latency),
        Flush::Timer => None,
    }
}

/// Whether an item of weight `w` joins a batch that already holds `items`
/// items weighing `weight`, and if not, which limit stops it. The first item
/// always joins, however heavy: an oversized item goes out alone rather than
/// never.
pub(crate) fn admit(limits: Limits, items: usize, weight: u64, w: u64) -> Result<(), Reason> {
    if items >= limits.max_items {
        return Err(Reason::Size);
    }
    if items > 0
        && limits
            .max_weight
            .is_some_and(|max| weight.saturating_add(w) > max)
    {
        return Err(Reason::Weight);
    }
    Ok(())
}

/// The reason recorded for a formed batch: the limit that closed it if one
/// did, else what triggered it.
pub(crate) fn reason(
    limits: Limits,
    triggered: Reason,
    items: usize,
    stopped_by: Option<Reason>,
) -> Reason {
    if triggered == Reason::Retry {
        return Reason::Retry;
    }
    match stopped_by {
        Some(limit) => limit,
        None if items >= limits.max_items => Reason::Size,
        None => triggered,
    }
}

/// Splits `n` requests of a failed batch into the sizes of its two halves
/// for bisection (the first half is never the smaller one).
pub(crate) fn halves(n: usize) -> (usize, usize) {
    let first = n.div_ceil(2);
    (first, n - first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_items: 4,
        max_weight: Some(10),
    };

    fn staged(items: usize, weight: u64) -> Staged {
        Staged {
            items,
            weight,
            deadline_passed: false,
            closing: false,
        }
    }

    #[test]
    fn nothing_staged_never_triggers() {
        for flush in [Flush::Opportunistic, Flush::Timer] {
            let s = Staged {
                closing: true,
                deadline_passed: true,
                ..staged(0, 0)
            };
            assert_eq!(trigger(flush, L, s), None);
        }
    }

    #[test]
    fn full_batches_go_out_in_both_modes() {
        for flush in [Flush::Opportunistic, Flush::Timer] {
            assert_eq!(trigger(flush, L, staged(4, 1)), Some(Reason::Size));
            assert_eq!(trigger(flush, L, staged(2, 10)), Some(Reason::Weight));
        }
    }

    #[test]
    fn opportunistic_sends_at_once_timer_waits_for_the_deadline() {
        assert_eq!(
            trigger(Flush::Opportunistic, L, staged(1, 1)),
            Some(Reason::Opportunistic)
        );
        assert_eq!(trigger(Flush::Timer, L, staged(1, 1)), None);
        let late = Staged {
            deadline_passed: true,
            ..staged(1, 1)
        };
        assert_eq!(trigger(Flush::Timer, L, late), Some(Reason::Latency));
    }

    #[test]
    fn closing_flushes_without_waiting() {
        let s = Staged {
            closing: true,
            ..staged(1, 1)
        };
        assert_eq!(trigger(Flush::Timer, L, s), Some(Reason::Shutdown));
        assert_eq!(trigger(Flush::Opportunistic, L, s), Some(Reason::Shutdown));
    }

    #[test]
    fn admit_stops_at_size_and_weight_but_takes_an_oversized_first_item() {
        assert_eq!(admit(L, 0, 0, 50), Ok(()));
        assert_eq!(admit(L, 1, 50, 1), Err(Reason::Weight));
        assert_eq!(admit(L, 2, 6, 4), Ok(()));
        assert_eq!(admit(L, 2, 6, 5), Err(Reason::Weight));
        assert_eq!(admit(L, 4, 4, 1), Err(Reason::Size));
        let unweighted = Limits {
            max_items: 2,
            max_weight: None,
        };
        assert_eq!(admit(unweighted, 1, u64::MAX, u64::MAX), Ok(()));
    }

    #[test]
    fn reason_prefers_the_limit_that_closed_the_batch() {
        assert_eq!(reason(L, Reason::Latency, 4, None), Reason::Size);
        assert_eq!(
            reason(L, Reason::Opportunistic, 2, Some(Reason::Weight)),
            Reason::Weight
        );
        assert_eq!(
            reason(L, Reason::Opportunistic, 2, None),
            Reason::Opportunistic
        );
        assert_eq!(reason(L, Reason::Retry, 4, None), Reason::Retry);
    }

    #[test]
    fn halves_cover_the_batch() {
        assert_eq!(halves(2), (1, 1));
        assert_eq!(halves(5), (3, 2));
        for n in 2..100 {
            let (a, b) = halves(n);
            assert_eq!(a + b, n);
            assert!(a >= b && b >= 1);
        }
    }
}
