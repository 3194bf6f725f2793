//! Stress: readers on a multi-thread runtime and on plain threads while a
//! writer publishes continuously. No torn reads (the fields of a value
//! always agree with each other and with its version), no version going
//! backwards for a reader, no reader blocked (every reader finishes, bounded
//! by a timeout, and each made progress while the writer ran).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_reload::Shared;

/// Three fields derived from one number: a torn read would mix two versions.
#[derive(Debug)]
struct Value {
    n: u64,
    double: u64,
    text: String,
}

impl Value {
    fn new(n: u64) -> Self {
        Self {
            n,
            double: n * 2,
            text: n.to_string(),
        }
    }

    fn check(&self, version: u64) {
        assert_eq!(self.double, self.n * 2, "torn read");
        assert_eq!(self.text, self.n.to_string(), "torn read");
        // Version v holds n = v - 1.
        assert_eq!(self.n + 1, version, "value and version disagree");
    }
}

const WRITES: u64 = 20_000;
/// Reads each reader must make while the writer runs: the writer keeps
/// publishing until all have, so reads and writes really overlap.
const OVERLAP: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_see_a_torn_value() {
    let shared = Shared::new(Value::new(0));
    // The final version, once the writer stopped (0 while it runs).
    let last_version = Arc::new(AtomicU64::new(0));
    const READERS: usize = 8;
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..READERS).map(|_| AtomicU64::new(0)).collect());
    let read = |i: usize,
                shared: Shared<Value>,
                last_version: Arc<AtomicU64>,
                progress: Arc<Vec<AtomicU64>>| {
        let mut last = 0;
        move || -> bool {
            let final_version = last_version.load(Ordering::Acquire);
            let snap = shared.load();
            snap.check(snap.version());
            assert!(snap.version() >= last, "version went backwards");
            last = snap.version();
            if final_version == 0 {
                progress[i].fetch_add(1, Ordering::Relaxed);
            }
            final_version != 0 && last == final_version
        }
    };
    let mut tasks = Vec::new();
    for i in 0..READERS - 2 {
        let mut step = read(i, shared.clone(), last_version.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            while !step() {
                tokio::task::yield_now().await;
            }
        }));
    }
    // Plain threads read without ever yielding to a runtime.
    let threads: Vec<_> = (READERS - 2..READERS)
        .map(|i| {
            let mut step = read(i, shared.clone(), last_version.clone(), progress.clone());
            std::thread::spawn(move || while !step() {})
        })
        .collect();
    let writer = {
        let shared = shared.clone();
        let progress = progress.clone();
        let last_version = last_version.clone();
        tokio::task::spawn_blocking(move || {
            let mut n = 0;
            while n < WRITES || progress.iter().any(|p| p.load(Ordering::Relaxed) < OVERLAP) {
                n += 1;
                assert_eq!(shared.publish(Value::new(n)), n + 1);
                if n % 64 == 0 {
                    std::thread::yield_now();
                }
            }
            last_version.store(n + 1, Ordering::Release);
            n + 1
        })
    };
    let final_version = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer finished")
        .unwrap();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a reader was blocked")
            .unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
    for p in progress.iter() {
        assert!(p.load(Ordering::Relaxed) >= OVERLAP);
    }
    assert_eq!(shared.version(), final_version);
    shared.load().check(final_version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_held_across_writes_stays_whole() {
    let shared = Shared::new(Value::new(0));
    let held = shared.load_full();
    let writer = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            for n in 1..=1_000 {
                shared.publish(Value::new(n));
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .unwrap()
        .unwrap();
    held.check(1);
    assert_eq!(held.version(), 1);
    shared.load().check(1_001);
}
