//! Both windows against a plain reference model.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;

fn counts(outcomes: impl Iterator<Item = (bool, bool)>) -> WindowCounts {
    let mut c = WindowCounts::default();
    for (failure, slow) in outcomes {
        c.calls += 1;
        c.failures += u64::from(failure);
        c.slow_calls += u64::from(slow);
    }
    c
}

#[test]
fn count_window_evicts_the_oldest() {
    let w = Window::new(SlidingWindow::Count { size: 3 });
    w.record(0, true, false);
    w.record(0, true, false);
    w.record(0, false, false);
    assert_eq!(
        w.counts(0),
        WindowCounts {
            calls: 3,
            failures: 2,
            slow_calls: 0
        }
    );
    // The fourth outcome evicts the first failure.
    w.record(0, false, true);
    assert_eq!(
        w.counts(0),
        WindowCounts {
            calls: 3,
            failures: 1,
            slow_calls: 1
        }
    );
    w.clear();
    assert_eq!(w.counts(0), WindowCounts::default());
}

#[test]
fn time_window_expires_whole_buckets() {
    // 4 buckets of 10 ns.
    let w = Window::new(SlidingWindow::Time {
        duration: std::time::Duration::from_nanos(40),
        buckets: 4,
    });
    w.record(5, true, false);
    w.record(15, false, false);
    assert_eq!(w.counts(39).calls, 2);
    // At 40 the bucket [0, 10) leaves the window.
    assert_eq!(
        w.counts(40),
        WindowCounts {
            calls: 1,
            failures: 0,
            slow_calls: 0
        }
    );
    // A jump past the whole window empties it.
    assert_eq!(w.counts(1_000).calls, 0);
}

#[derive(Debug, Clone)]
struct Step {
    advance: u64,
    failure: bool,
    slow: bool,
    read_only: bool,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            0u64..40,
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(advance, failure, slow, read_only)| Step {
                advance,
                failure,
                slow,
                read_only,
            }),
        0..300,
    )
}

proptest! {
    #[test]
    fn count_window_matches_model(size in 1u32..20, steps in steps()) {
        let w = Window::new(SlidingWindow::Count { size });
        let mut model: VecDeque<(bool, bool)> = VecDeque::new();
        for step in steps {
            if !step.read_only {
                let returned = w.record(0, step.failure, step.slow);
                model.push_back((step.failure, step.slow));
                if model.len() > size as usize {
                    model.pop_front();
                }
                if let Some(c) = returned {
                    prop_assert_eq!(c, counts(model.iter().copied()));
                }
            }
            prop_assert_eq!(w.counts(0), counts(model.iter().copied()));
        }
    }

    #[test]
    fn time_window_matches_model(buckets in 1u32..8, width in 1u64..20, steps in steps()) {
        let w = Window::new(SlidingWindow::Time {
            duration: std::time::Duration::from_nanos(width * u64::from(buckets)),
            buckets,
        });
        let mut model: Vec<(u64, bool, bool)> = Vec::new();
        let mut now = 0u64;
        for step in steps {
            now += step.advance;
            // The model: an outcome counts while its bucket index is among
            // the last `buckets` indexes.
            let current = now / width;
            let live = |t: u64| t / width + u64::from(buckets) > current;
            if !step.read_only {
                let returned = w.record(now, step.failure, step.slow);
                model.push((now, step.failure, step.slow));
                let expected = counts(model.iter().filter(|m| live(m.0)).map(|m| (m.1, m.2)));
                prop_assert_eq!(returned, Some(expected));
            }
            let expected = counts(model.iter().filter(|m| live(m.0)).map(|m| (m.1, m.2)));
            prop_assert_eq!(w.counts(now), expected);
        }
    }
}
