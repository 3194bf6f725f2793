//! The metrics a pool emits, read back through a debugging recorder (the
//! only recorder of this test binary, hence one test).

mod common;

use std::collections::HashMap;

use common::{Fate, Log, MS, Task, worker};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use palisade_pool::{CpuPool, Pool, metric_names as names};
use tower::{Service, ServiceExt};

#[tokio::test(start_paused = true)]
async fn jobs_restarts_and_gauges_are_counted_with_the_pool_label() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let log = Log::default();
    let l = log.clone();
    let mut pool: Pool<Task, u32> = Pool::builder()
        .name("m")
        .workers(1)
        .build_fn(move |i| worker(i, l.clone()))
        .unwrap();
    let fates = [Fate::Ok, Fate::Fail, Fate::Panic, Fate::Ok, Fate::Ok];
    let mut futs = Vec::new();
    for (id, fate) in (0..).zip(fates) {
        pool.ready().await.unwrap();
        futs.push(pool.call(Task { id, dur: MS, fate }));
    }
    // One more, dropped before it starts.
    pool.ready().await.unwrap();
    drop(pool.call(Task::ok(9, MS)));
    for f in futs {
        let _ = f.await;
    }
    let handle = pool.handle();
    drop(pool);
    handle.drain().await;

    let cpu = CpuPool::builder()
        .name("c")
        .threads(1)
        .queue_capacity(0)
        .build()
        .unwrap();
    assert_eq!(cpu.run(|| 1).await.unwrap(), 1);
    assert!(cpu.run(|| -> u32 { panic!("boom") }).await.is_err());

    let mut counters: HashMap<(String, String), u64> = HashMap::new();
    let mut gauges: HashMap<String, f64> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        match value {
            DebugValue::Counter(n) => {
                *counters
                    .entry((key.name().to_owned(), labels.join(",")))
                    .or_default() += n;
            }
            DebugValue::Gauge(g) => {
                gauges.insert(
                    format!("{}{{{}}}", key.name(), labels.join(",")),
                    g.into_inner(),
                );
            }
            DebugValue::Histogram(_) => {}
        }
    }
    let count = |name: &str, labels: &str| {
        counters
            .get(&(name.to_owned(), labels.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(count(names::JOBS, "pool=m,outcome=ok"), 3);
    assert_eq!(count(names::JOBS, "pool=m,outcome=error"), 1);
    assert_eq!(count(names::JOBS, "pool=m,outcome=panic"), 1);
    assert_eq!(count(names::JOBS, "pool=m,outcome=skipped"), 1);
    assert_eq!(count(names::WORKER_RESTARTS, "pool=m,reason=panic"), 1);
    assert_eq!(count(names::WORKER_RESTARTS, "pool=m,reason=dead"), 0);
    assert_eq!(gauges[&format!("{}{{pool=m}}", names::QUEUED)], 0.0);
    assert_eq!(gauges[&format!("{}{{pool=m}}", names::BUSY_WORKERS)], 0.0);
    assert_eq!(count(names::CPU_JOBS, "pool=c,outcome=ok"), 1);
    assert_eq!(count(names::CPU_JOBS, "pool=c,outcome=panic"), 1);
    assert_eq!(gauges[&format!("{}{{pool=c}}", names::CPU_RUNNING)], 0.0);
    assert_eq!(gauges[&format!("{}{{pool=c}}", names::CPU_QUEUED)], 0.0);
}
