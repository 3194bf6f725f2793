//! Metric names and values, with a global debugging recorder (this test
//! binary holds a single test so the recorder is installed once).

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use palisade_breaker::{Breaker, Config, State, metrics as names};

#[tokio::test(start_paused = true)]
async fn state_gauge_outcomes_rejections_transitions() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let b = Breaker::new(
        Config::builder()
            .name("api")
            .count_window(2)
            .minimum_calls(2)
            .wait_jitter(0.0)
            .slow_call_duration(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    b.try_acquire().unwrap().success();
    let slow = b.try_acquire().unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    slow.failure();
    let _ = b.try_acquire().unwrap_err();
    let _ = b.try_acquire().unwrap_err();
    assert_eq!(b.state(), State::Open);
    drop(Breaker::clone(&b)); // handles do not count as calls

    // One snapshot: the debugging recorder hands out counter deltas.
    let snapshot = snapshotter.snapshot().into_vec();
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<&DebugValue> {
        snapshot.iter().find_map(|(key, _, _, value)| {
            let key = key.key();
            let matches = key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v));
            matches.then_some(value)
        })
    };
    assert_eq!(
        value(names::STATE, &[("breaker", "api")]),
        Some(&DebugValue::Gauge(1.0.into()))
    );
    let calls = |outcome| value(names::CALLS, &[("breaker", "api"), ("outcome", outcome)]);
    assert_eq!(calls("success"), Some(&DebugValue::Counter(1)));
    assert_eq!(calls("failure"), Some(&DebugValue::Counter(1)));
    assert_eq!(
        value(names::SLOW_CALLS, &[("breaker", "api")]),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        value(names::REJECTED, &[("breaker", "api")]),
        Some(&DebugValue::Counter(2))
    );
    assert_eq!(
        value(
            names::TRANSITIONS,
            &[("breaker", "api"), ("from", "closed"), ("to", "open")]
        ),
        Some(&DebugValue::Counter(1))
    );
}
