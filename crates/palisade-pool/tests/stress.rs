//! Thousands of jobs on a multi-thread runtime, with random keys, random
//! cancellation and random panics: the counts reconcile exactly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_pool::{Error, Pool};
use tower::{BoxError, Service, ServiceExt, service_fn};

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy)]
struct Job {
    id: u64,
    key: Option<u64>,
    panic: bool,
    work_us: u64,
}

#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    panicked: AtomicU64,
    timed_out: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_jobs_with_cancellation_and_panics_reconcile_exactly() {
    const N: u64 = 5000;
    let started = Arc::new(AtomicU64::new(0));
    let s = started.clone();
    let pool: Pool<Job, u64> = Pool::builder()
        .name("stress")
        .workers(4)
        .queue_capacity(256)
        .affinity(|j: &Job| j.key)
        .build_fn(move |_| {
            let started = s.clone();
            service_fn(move |j: Job| {
                started.fetch_add(1, Ordering::Relaxed);
                async move {
                    if j.work_us > 0 {
                        tokio::time::sleep(Duration::from_micros(j.work_us)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                    if j.panic {
                        panic!("job {} panicked", j.id);
                    }
                    Ok::<_, BoxError>(j.id)
                }
            })
        })
        .unwrap();
    let handle = pool.handle();
    let tally = Arc::new(Tally::default());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut callers = Vec::new();
    for id in 0..N {
        let job = Job {
            id,
            key: (rng.below(4) == 0).then(|| rng.below(8)),
            panic: rng.below(50) == 0,
            work_us: if rng.below(10) == 0 {
                rng.below(500)
            } else {
                0
            },
        };
        // One caller in eight gives up after a random short while: before
        // its job starts, while it runs, or after it ended.
        let patience = (rng.below(8) == 0).then(|| Duration::from_micros(rng.below(300)));
        let mut svc = pool.clone();
        let tally = tally.clone();
        callers.push(tokio::spawn(async move {
            // Submitted first (waiting for a slot is not cancelled here),
            // so every job counted below did reach the pool.
            svc.ready().await.unwrap();
            let call = svc.call(job);
            let result = match patience {
                Some(p) => match tokio::time::timeout(p, call).await {
                    Ok(r) => r,
                    Err(_) => {
                        tally.timed_out.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                },
                None => call.await,
            };
            match result {
                Ok(got) => {
                    assert_eq!(got, job.id);
                    assert!(!job.panic);
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let e = e.downcast_ref::<Error>().expect("a pool error");
                    assert!(matches!(e, Error::Panicked(_)), "{e:?}");
                    assert!(job.panic);
                    tally.panicked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    drop(pool);
    tokio::time::timeout(Duration::from_secs(120), async {
        for c in callers {
            c.await.expect("a caller task panicked");
        }
        handle.drain().await
    })
    .await
    .expect("the stress run ends");

    let s = handle.stats();
    let (ok, panicked, timed_out) = (
        tally.ok.load(Ordering::Relaxed),
        tally.panicked.load(Ordering::Relaxed),
        tally.timed_out.load(Ordering::Relaxed),
    );
    // Every caller either got its answer or left.
    assert_eq!(ok + panicked + timed_out, N);
    // Every job ended exactly once, one way.
    assert_eq!(s.ended(), N, "{s:?}");
    assert_eq!((s.pending, s.queued, s.busy), (0, 0, 0));
    assert_eq!((s.cut, s.refused, s.errors), (0, 0, 0));
    // A job starts once or never: skipped jobs never did.
    let started = started.load(Ordering::Relaxed);
    assert_eq!(started + s.skipped, N, "{s:?}");
    assert_eq!(started, s.ok + s.panicked + s.abandoned, "{s:?}");
    // Answers the callers saw are a subset of the pool's outcomes (a caller
    // may leave just after its job ended).
    assert!(ok <= s.ok && panicked <= s.panicked, "{s:?}");
    assert_eq!(
        s.ok - ok + (s.panicked - panicked) + s.skipped + s.abandoned,
        timed_out
    );
    // Each panic replaced that worker's service.
    assert_eq!(s.restarts, s.panicked);
    assert!(
        timed_out > 0 && panicked > 0,
        "the run exercised both: {s:?}"
    );
}
