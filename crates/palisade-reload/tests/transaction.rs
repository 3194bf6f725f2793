//! The reload transaction: any failure leaves the old version serving, with
//! the error naming the field; the health gate rolls back; metrics count
//! each result exactly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade_reload::{ReloadError, Reloader, Stage, metrics};
use tower::{BoxError, ServiceExt, service_fn};

#[derive(Debug, Clone, PartialEq)]
struct Config {
    upstream: &'static str,
    timeout_ms: u64,
}

type Svc = tower::util::BoxCloneSyncService<http::Request<()>, &'static str, BoxError>;

fn build(config: &Config) -> Result<Svc, BoxError> {
    if config.timeout_ms == 0 {
        return Err("invalid configuration: `upstream.timeout`: must be greater than 0".into());
    }
    let upstream = config.upstream;
    Ok(Svc::new(service_fn(
        move |_req: http::Request<()>| async move { Ok::<_, BoxError>(upstream) },
    )))
}

/// One reading of the recorder (a reading resets counters and gauges, so
/// each test reads once per check and counters read as deltas).
struct Reading(Vec<(metrics_util::CompositeKey, DebugValue)>);

fn read(snapshotter: &Snapshotter) -> Reading {
    Reading(
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, _, _, v)| (k, v))
            .collect(),
    )
}

impl Reading {
    fn value(&self, name: &str, result: Option<&str>) -> Option<&DebugValue> {
        self.0.iter().find_map(|(key, v)| {
            let k = key.key();
            let matches = k.name() == name
                && k.labels().any(|l| l.key() == "reload" && l.value() == "t")
                && result.is_none_or(|r| k.labels().any(|l| l.key() == "result" && l.value() == r));
            matches.then_some(v)
        })
    }

    fn counter(&self, result: &str) -> u64 {
        match self.value(metrics::RELOADS, Some(result)) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            other => panic!("{other:?}"),
        }
    }

    fn version(&self) -> f64 {
        match self.value(metrics::VERSION, None) {
            Some(DebugValue::Gauge(g)) => g.into_inner(),
            other => panic!("{other:?}"),
        }
    }
}

fn start(health_fails: Option<Arc<AtomicBool>>) -> (Reloader<Config, Svc>, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let reloader = ::metrics::with_local_recorder(&recorder, || {
        let mut b = Reloader::builder(build).name("t");
        if let Some(fails) = health_fails {
            b = b.health_check(move |generation| {
                let fails = fails.load(Ordering::SeqCst);
                let upstream = generation.config().upstream;
                async move {
                    if fails {
                        Err(format!("upstream {upstream} is not healthy").into())
                    } else {
                        Ok(())
                    }
                }
            });
        }
        b.build(Config {
            upstream: "a",
            timeout_ms: 100,
        })
        .unwrap()
    });
    (reloader, snapshotter)
}

async fn served(reloader: &Reloader<Config, Svc>) -> &'static str {
    reloader
        .service()
        .oneshot(http::Request::new(()))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_load_failure_keeps_the_old_version() {
    let (reloader, metrics) = start(None);
    let err = reloader
        .reload_with(|| {
            Err::<Config, _>(
                "invalid config file x.toml: key `ratelimit.rate` (line 3): expected an integer",
            )
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReloadError::Rejected {
                stage: Stage::Load,
                serving: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("`ratelimit.rate`"), "{err}");
    assert_eq!(err.result(), "rejected");
    assert_eq!(reloader.current().version(), 1);
    assert_eq!(served(&reloader).await, "a");
    let m = read(&metrics);
    assert_eq!(m.counter("rejected"), 1);
    assert_eq!(m.counter("applied"), 0);
    assert_eq!(m.version(), 1.0);
}

#[tokio::test]
async fn a_build_failure_keeps_the_old_version() {
    let (reloader, metrics) = start(None);
    let err = reloader
        .apply(Config {
            upstream: "b",
            timeout_ms: 0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReloadError::Rejected {
                stage: Stage::Build,
                serving: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("`upstream.timeout`"), "{err}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(
        source,
        "invalid configuration: `upstream.timeout`: must be greater than 0"
    );
    assert_eq!(reloader.current().version(), 1);
    assert_eq!(reloader.current().config().upstream, "a");
    assert_eq!(served(&reloader).await, "a");
    assert_eq!(read(&metrics).counter("rejected"), 1);
}

#[tokio::test]
async fn a_valid_reload_swaps_and_counts() {
    let (reloader, metrics) = start(None);
    let service = reloader.service();
    let mut watcher = reloader.watch();
    let v = reloader
        .apply(Config {
            upstream: "b",
            timeout_ms: 100,
        })
        .await
        .unwrap();
    assert_eq!(v, 2);
    let seen = futures_util::FutureExt::now_or_never(watcher.changed()).expect("woken");
    assert_eq!((seen.version(), seen.config().upstream), (2, "b"));
    // A service made before the reload switches on its next poll_ready.
    assert_eq!(service.oneshot(http::Request::new(())).await.unwrap(), "b");
    let m = read(&metrics);
    assert_eq!(m.counter("applied"), 1);
    assert_eq!(m.counter("rejected"), 0);
    assert_eq!(m.version(), 2.0);
}

#[tokio::test]
async fn a_failed_health_check_rolls_back() {
    let fails = Arc::new(AtomicBool::new(true));
    let (reloader, metrics) = start(Some(fails.clone()));
    let err = reloader
        .apply(Config {
            upstream: "b",
            timeout_ms: 100,
        })
        .await
        .unwrap_err();
    match &err {
        ReloadError::RolledBack {
            failed, restored, ..
        } => {
            assert_eq!((*failed, *restored), (2, 3));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("upstream b is not healthy"),
        "{err}"
    );
    assert_eq!(err.serving(), 3);
    // Version 3 carries version 1's value again; versions never go back.
    let current = reloader.current();
    assert_eq!(current.version(), 3);
    assert_eq!(current.config().upstream, "a");
    assert_eq!(served(&reloader).await, "a");
    let m = read(&metrics);
    assert_eq!(m.counter("rolled_back"), 1);
    assert_eq!(m.counter("applied"), 0);
    assert_eq!(m.version(), 3.0);

    // A healthy reload then applies.
    fails.store(false, Ordering::SeqCst);
    let v = reloader
        .apply(Config {
            upstream: "c",
            timeout_ms: 100,
        })
        .await
        .unwrap();
    assert_eq!(v, 4);
    assert_eq!(served(&reloader).await, "c");
    let m = read(&metrics);
    assert_eq!(m.counter("applied"), 1);
    assert_eq!(m.version(), 4.0);
}

#[tokio::test]
async fn the_initial_build_failure_is_an_error() {
    let err = Reloader::builder(build)
        .build(Config {
            upstream: "a",
            timeout_ms: 0,
        })
        .unwrap_err();
    assert!(matches!(
        err,
        ReloadError::Rejected {
            stage: Stage::Build,
            serving: 0,
            ..
        }
    ));
}
