//! Metric names and values, with a global debugging recorder (this test
//! binary holds a single test so the recorder is installed once).

mod support;

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use palisade_fanout::hedge::{Delay, Hedge, HedgeConfig};
use palisade_fanout::metric_names as names;
use palisade_fanout::scatter::{FirstOk, Scatter};
use support::{Mock, err, ok, timed};
use tower::{Service, ServiceExt};

#[tokio::test(start_paused = true)]
async fn hedge_and_scatter_counters() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    // Hedging: a floor of 0.1 hedges per second over the 10 s window is a
    // budget of one hedge; the first request (primary on the slow replica)
    // spends it and wins, the second (on the fast one) needs none.
    let config = HedgeConfig::builder()
        .name("api")
        .delay(Delay::Fixed(Duration::from_millis(10)))
        .max_extra_load(0.0)
        .min_hedges_per_sec(0.1)
        .build()
        .unwrap();
    let mut hedge = Hedge::over([Mock::new([ok(100, 0)]), Mock::new([ok(5, 1)])], config);
    for _ in 0..2 {
        let (out, _) = timed(ServiceExt::<()>::ready(&mut hedge).await.unwrap().call(())).await;
        out.unwrap();
    }

    // Scatter: FirstOk over a failing and a winning branch, a third cancelled.
    let scatter = Scatter::builder([
        Mock::new([err(1)]),
        Mock::new([ok(2, 1)]),
        Mock::new([ok(50, 2)]),
    ])
    .name("reads")
    .build(FirstOk)
    .unwrap();
    let (out, _) = timed(scatter.oneshot(())).await;
    out.unwrap();

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
    let api = [("hedge", "api")];
    assert_eq!(
        value(names::HEDGE_PRIMARIES, &api),
        Some(&DebugValue::Counter(2))
    );
    assert_eq!(
        value(names::HEDGE_SENT, &api),
        Some(&DebugValue::Counter(1))
    );
    // The first primary went to the slow replica: its hedge won. The second
    // went to the fast one and needed none.
    assert_eq!(value(names::HEDGE_WON, &api), Some(&DebugValue::Counter(1)));
    assert_eq!(
        value(names::HEDGE_BUDGET_EXHAUSTED, &api),
        Some(&DebugValue::Counter(0))
    );
    assert_eq!(
        value(names::HEDGE_DELAY, &api),
        Some(&DebugValue::Gauge(0.01.into()))
    );
    let branch = |outcome| {
        value(
            names::SCATTER_BRANCHES,
            &[("scatter", "reads"), ("outcome", outcome)],
        )
    };
    assert_eq!(branch("ok"), Some(&DebugValue::Counter(1)));
    assert_eq!(branch("service"), Some(&DebugValue::Counter(1)));
    assert_eq!(branch("cancelled"), Some(&DebugValue::Counter(1)));
    assert_eq!(
        value(
            names::SCATTER_CALLS,
            &[("scatter", "reads"), ("outcome", "ok")]
        ),
        Some(&DebugValue::Counter(1))
    );
}
