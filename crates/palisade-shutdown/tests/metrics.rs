//! The documented metrics are emitted with the documented names and labels.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use palisade_shutdown::{Drain, Phase, Shutdown, Trigger, metric_names};
use tower::{Service, ServiceExt};

/// Name, labels and value of one recorded metric.
type Entry = (String, Vec<(String, String)>, DebugValue);

fn value(snapshot: &[Entry], name: &str, labels: &[(&str, &str)]) -> Option<DebugValue> {
    snapshot
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels.len() == l.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| match v {
            DebugValue::Counter(c) => DebugValue::Counter(*c),
            DebugValue::Gauge(g) => DebugValue::Gauge(*g),
            DebugValue::Histogram(h) => DebugValue::Histogram(h.clone()),
        })
}

#[test]
fn shutdown_and_drain_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let shutdown = Shutdown::new();
            let drain = Drain::new();
            let mut svc = tower::ServiceBuilder::new().layer(drain.layer()).service_fn(
                |ms: u64| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok::<_, std::convert::Infallible>(())
                },
            );
            let slow = tokio::spawn(svc.ready().await.unwrap().call(2_000));
            let stuck = tokio::spawn(svc.ready().await.unwrap().call(60_000));
            tokio::task::yield_now().await;
            shutdown
                .add_phase(Phase::new("drain", Duration::from_secs(5)).action(
                    move |ctx| async move {
                        tokio::select! {
                            () = drain.drain() => {}
                            () = ctx.expired() => ctx.cut(format!("{} request(s)", drain.in_flight())),
                        }
                    },
                ))
                .unwrap();
            shutdown.start(Trigger::Signal("SIGTERM"));
            let run = tokio::spawn({
                let shutdown = shutdown.clone();
                async move { shutdown.run().await }
            });
            tokio::task::yield_now().await;
            assert!(svc.ready().await.unwrap().call(1).await.is_err());
            let outcome = run.await.unwrap();
            assert_eq!(outcome.phases[0].cut, vec!["1 request(s)"]);
            slow.await.unwrap().unwrap();
            stuck.abort();
        });
    });

    let snapshot: Vec<Entry> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, v)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            (key.name().to_string(), labels, v)
        })
        .collect();

    assert_eq!(
        value(&snapshot, metric_names::STARTED, &[("trigger", "SIGTERM")]),
        Some(DebugValue::Counter(1))
    );
    assert_eq!(
        value(&snapshot, metric_names::DRAIN_STARTED, &[]),
        Some(DebugValue::Counter(1))
    );
    assert_eq!(
        value(&snapshot, metric_names::REJECTED, &[]),
        Some(DebugValue::Counter(1))
    );
    // Two in flight at drain start, the slow one finished at 2s, the stuck
    // one was released when its task was aborted after the outcome.
    assert_eq!(
        value(&snapshot, metric_names::IN_FLIGHT, &[]),
        Some(DebugValue::Gauge(0.0.into()))
    );
    assert_eq!(
        value(&snapshot, metric_names::PHASE, &[("phase", "drain")]),
        Some(DebugValue::Gauge(0.0.into()))
    );
    assert_eq!(
        value(&snapshot, metric_names::CUT, &[("phase", "drain")]),
        Some(DebugValue::Counter(1))
    );
    match value(
        &snapshot,
        metric_names::PHASE_DURATION,
        &[("phase", "drain"), ("status", "deadline_exceeded")],
    ) {
        Some(DebugValue::Histogram(samples)) => {
            assert_eq!(samples.len(), 1);
            assert_eq!(samples[0].into_inner(), 5.0);
        }
        other => panic!("phase duration histogram missing: {other:?}"),
    }
}
