//! Every interleaving of the windows' lock-free paths (`--cfg palisade_loom`; run by
//! `scripts/loom.sh`).

use std::sync::Arc;

use loom::thread;

use super::*;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

fn slot_totals(w: &CountWindow) -> WindowCounts {
    let mut c = WindowCounts::default();
    for slot in w.slots.iter() {
        let v = slot.load(Ordering::Acquire);
        if v != EMPTY {
            c.calls += 1;
            c.failures += u64::from(v & FAILED != 0);
            c.slow_calls += u64::from(v & SLOW != 0);
        }
    }
    c
}

/// The invariant the module doc claims: at quiescence the aggregate equals
/// what the slots hold, even when `clear` (a `reset()` from Closed, or any
/// clear in MetricsOnly) races recorders. Before the fix `clear` stored
/// zeros, and a record that had swapped its slot before the clear added its
/// delta after it: one call (and one failure) no slot holds, for good.
#[test]
fn count_window_clear_racing_a_record_keeps_the_aggregate_exact() {
    model(|| {
        let w = Arc::new(CountWindow::new(2));
        w.record(false, false);
        let recorder = {
            let w = w.clone();
            thread::spawn(move || {
                w.record(true, false);
            })
        };
        w.clear();
        recorder.join().unwrap();
        assert_eq!(w.agg.load(), slot_totals(&w));
        w.record(true, false);
        w.record(true, false);
        assert_eq!(w.agg.load(), slot_totals(&w));
        assert_eq!(w.agg.load().calls, 2);
    });
}

/// Two records into the newest bucket while the head moves to it: both
/// count. Before the fix the head CAS winner published the head and then
/// emptied the bucket, wiping out a record the other thread had already put
/// there.
#[test]
fn time_window_records_at_a_bucket_edge_are_never_lost() {
    model(|| {
        let w = Arc::new(TimeWindow::new(4, 1));
        let other = {
            let w = w.clone();
            thread::spawn(move || {
                w.record(1, true, false);
            })
        };
        w.record(1, false, false);
        other.join().unwrap();
        assert_eq!(
            w.agg.load(),
            WindowCounts {
                calls: 2,
                failures: 1,
                slow_calls: 0
            }
        );
    });
}

/// Clearing while the head advances and a record lands: totals stay equal to
/// the buckets.
#[test]
fn time_window_clear_racing_an_advance_keeps_the_aggregate_exact() {
    model(|| {
        let w = Arc::new(TimeWindow::new(2, 1));
        w.record(0, true, false);
        let other = {
            let w = w.clone();
            thread::spawn(move || {
                w.record(1, true, false);
            })
        };
        w.clear();
        other.join().unwrap();
        let mut buckets = WindowCounts::default();
        for b in w.buckets.iter() {
            buckets.calls += b.calls.load(Ordering::Acquire);
            buckets.failures += b.failures.load(Ordering::Acquire);
            buckets.slow_calls += b.slow.load(Ordering::Acquire);
        }
        assert_eq!(w.agg.load(), buckets);
        assert!(buckets.calls <= 1);
    });
}
