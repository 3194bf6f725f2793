//! The pool's contract, one behaviour per test, under paused time.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{Fate, Log, MS, Task, bounded, pool_error, worker};
use futures_util::FutureExt;
use palisade_pool::{Closed, Error, Pool, PoolStats};
use tokio::time::{Instant, advance};
use tower::{BoxError, Service, ServiceExt, service_fn};

type TaskPool = Pool<Task, u32>;

fn pool(workers: usize, queue: usize, log: &Log) -> TaskPool {
    let log = log.clone();
    Pool::builder()
        .workers(workers)
        .queue_capacity(queue)
        .build_fn(move |i| worker(i, log.clone()))
        .unwrap()
}

/// Reserves a slot and submits: the response future, not yet awaited.
async fn submit(p: &mut TaskPool, t: Task) -> palisade_pool::ResponseFuture<u32> {
    bounded(p.ready()).await.unwrap();
    p.call(t)
}

/// Lets the spawned workers run until they all wait on a timer.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_starts_at_once_while_another_worker_is_stuck_on_a_long_job() {
    let log = Log::default();
    let mut p = pool(2, 16, &log);
    let t0 = Instant::now();
    let slow = tokio::spawn(submit(&mut p.clone(), Task::ok(1, Duration::from_secs(60))).await);
    settle().await;
    // Later jobs, one after another, all go to the idle worker: none waits
    // for the 60 s job.
    for id in 2..=5u32 {
        let at = Instant::now();
        let fut = submit(&mut p, Task::ok(id, 10 * MS)).await;
        assert_eq!(bounded(fut).await.unwrap(), id);
        assert_eq!(Instant::now() - at, 10 * MS, "job {id} waited");
    }
    let entries = log.entries();
    assert_eq!(entries[0], (entries[0].0, 1, t0));
    for (k, (w, id, start)) in entries[1..].iter().enumerate() {
        assert_ne!(*w, entries[0].0, "job {id} ran on the stuck worker");
        assert_eq!(
            *start,
            t0 + 10 * MS * k as u32,
            "job {id} did not start at once"
        );
    }
    assert_eq!(bounded(slow).await.unwrap().unwrap(), 1);
    assert_eq!(Instant::now() - t0, Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_job_fails_alone_and_the_pool_keeps_serving() {
    let log = Log::default();
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let l = log.clone();
    let mut p: TaskPool = Pool::builder()
        .workers(1)
        .build_fn(move |i| {
            m.fetch_add(1, Ordering::SeqCst);
            worker(i, l.clone())
        })
        .unwrap();
    let boom = submit(
        &mut p,
        Task {
            id: 1,
            dur: MS,
            fate: Fate::Panic,
        },
    )
    .await;
    let after = submit(&mut p, Task::ok(2, MS)).await;
    match pool_error(bounded(boom).await.unwrap_err()) {
        Error::Panicked(msg) => assert_eq!(&*msg, "job 1 panicked"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(bounded(after).await.unwrap(), 2);
    // The panicked service was replaced by a fresh one (no delay: a panic
    // is the job's fault, not a dead service).
    assert_eq!(made.load(Ordering::SeqCst), 2);
    let s = p.handle().stats();
    assert_eq!((s.ok, s.panicked, s.restarts), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn an_inner_error_reaches_the_caller_unchanged() {
    let log = Log::default();
    let mut p = pool(1, 4, &log);
    let fut = submit(
        &mut p,
        Task {
            id: 7,
            dur: MS,
            fate: Fate::Fail,
        },
    )
    .await;
    let err = bounded(fut).await.unwrap_err();
    assert!(err.downcast_ref::<Error>().is_none());
    assert_eq!(err.to_string(), "job 7 failed");
    assert_eq!(p.handle().stats().errors, 1);
}

/// A service that is ready `lives` times, then fails `poll_ready` (dead).
struct Mortal {
    id: usize,
    lives: usize,
}

impl Service<u32> for Mortal {
    type Response = (usize, u32);
    type Error = BoxError;
    type Future = std::future::Ready<Result<(usize, u32), BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.lives == 0 {
            return Poll::Ready(Err("connection lost".into()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u32) -> Self::Future {
        self.lives -= 1;
        std::future::ready(Ok((self.id, x)))
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_worker_is_replaced_from_the_factory_with_backoff() {
    let made = Arc::new(std::sync::Mutex::new(Vec::new()));
    let m = made.clone();
    let mut n = 0;
    let p: Pool<u32, (usize, u32)> = Pool::builder()
        .workers(1)
        .restart_backoff(10 * MS, 25 * MS)
        .build_fn(move |_| {
            n += 1;
            m.lock().unwrap().push(Instant::now());
            // The first three services die after one job; then healthy.
            Mortal {
                id: n,
                lives: if n <= 3 { 1 } else { usize::MAX },
            }
        })
        .unwrap();
    let t0 = Instant::now();
    let mut answers = Vec::new();
    for x in 0..5u32 {
        answers.push(bounded(p.clone().oneshot(x)).await.unwrap());
    }
    assert_eq!(answers, [(1, 0), (2, 1), (3, 2), (4, 3), (4, 4)]);
    // Each service served a job before dying, so each replacement starts
    // the backoff over: 10 ms every time.
    let times: Vec<Duration> = made.lock().unwrap().iter().map(|t| *t - t0).collect();
    assert_eq!(times, [Duration::ZERO, 10 * MS, 20 * MS, 30 * MS]);
    let s = p.handle().stats();
    assert_eq!((s.ok, s.restarts, s.factory_failures), (5, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn a_service_dying_at_once_backs_off_exponentially_up_to_the_cap() {
    let made = Arc::new(std::sync::Mutex::new(Vec::new()));
    let m = made.clone();
    let mut n = 0;
    let p: Pool<u32, (usize, u32)> = Pool::builder()
        .workers(1)
        .restart_backoff(10 * MS, 25 * MS)
        .build_fn(move |_| {
            n += 1;
            m.lock().unwrap().push(Instant::now());
            // Four services dead on arrival, then a healthy one.
            Mortal {
                id: n,
                lives: if n <= 4 { 0 } else { usize::MAX },
            }
        })
        .unwrap();
    let t0 = Instant::now();
    assert_eq!(bounded(p.clone().oneshot(9)).await.unwrap(), (5, 9));
    let times: Vec<Duration> = made.lock().unwrap().iter().map(|t| *t - t0).collect();
    // Delays 10, 20, 25 (capped), 25.
    assert_eq!(times, [Duration::ZERO, 10 * MS, 30 * MS, 55 * MS, 80 * MS]);
    assert_eq!(Instant::now() - t0, 80 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_factory_that_keeps_failing_closes_the_pool_with_a_clear_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let factory = service_fn(move |_i: usize| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Err::<Mortal, BoxError>("database unreachable".into()) }
    });
    let mut p: Pool<u32, (usize, u32)> = Pool::builder()
        .workers(1)
        .restart_backoff(10 * MS, 1000 * MS)
        .max_factory_failures(3)
        .build(factory)
        .unwrap();
    let t0 = Instant::now();
    bounded(p.ready()).await.unwrap();
    let queued = p.call(1);
    let err = pool_error(bounded(queued).await.unwrap_err());
    // Attempts at 0, 10 and 30 ms; the third failure gives up.
    assert_eq!(Instant::now() - t0, 30 * MS);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    match &err {
        Error::Closed(Closed::FactoryFailed(e)) => {
            assert_eq!(e.to_string(), "database unreachable")
        }
        other => panic!("expected FactoryFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("factory keeps failing"), "{err}");
    // New calls are refused with the same reason, not left waiting.
    let refused = pool_error(bounded(p.ready()).await.unwrap_err());
    assert!(matches!(refused, Error::Closed(Closed::FactoryFailed(_))));
    let s = p.handle().stats();
    assert_eq!((s.refused, s.factory_failures, s.pending), (1, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn a_job_whose_caller_left_before_it_started_is_skipped_not_run() {
    let log = Log::default();
    let mut p = pool(1, 16, &log);
    let first = submit(&mut p, Task::ok(1, 100 * MS)).await;
    let gone = submit(&mut p, Task::ok(2, MS)).await;
    let third = submit(&mut p, Task::ok(3, MS)).await;
    settle().await;
    drop(gone);
    assert_eq!(bounded(first).await.unwrap(), 1);
    assert_eq!(bounded(third).await.unwrap(), 3);
    assert_eq!(log.ids(), [1, 3]);
    let s = p.handle().stats();
    assert_eq!((s.ok, s.skipped, s.pending), (2, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_caller_leaving_a_running_job_frees_its_worker() {
    let log = Log::default();
    let mut p = pool(1, 16, &log);
    let t0 = Instant::now();
    let long = submit(&mut p, Task::ok(1, Duration::from_secs(60))).await;
    let next = submit(&mut p, Task::ok(2, MS)).await;
    settle().await;
    advance(5 * MS).await;
    drop(long);
    assert_eq!(bounded(next).await.unwrap(), 2);
    assert_eq!(Instant::now() - t0, 6 * MS);
    let s = p.handle().stats();
    assert_eq!((s.ok, s.abandoned), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_is_pending_then_ready_when_a_job_leaves_it() {
    let log = Log::default();
    let mut p = pool(1, 1, &log);
    let running = submit(&mut p, Task::ok(1, 10 * MS)).await;
    settle().await; // the worker took job 1: the queue is empty again
    let queued = submit(&mut p, Task::ok(2, 10 * MS)).await;
    let t0 = Instant::now();
    // Queue full: Pending, and the waiting task is woken when job 2
    // leaves the queue.
    let mut probe = p.clone();
    assert!(probe.ready().now_or_never().is_none());
    drop(probe);
    let ready_at = tokio::spawn(async move {
        p.ready().await.unwrap();
        Instant::now()
    });
    settle().await;
    assert!(!ready_at.is_finished());
    assert_eq!(bounded(running).await.unwrap(), 1);
    assert_eq!(bounded(ready_at).await.unwrap() - t0, 10 * MS);
    assert_eq!(bounded(queued).await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn clones_start_unreserved_and_a_dropped_reservation_is_given_back() {
    let log = Log::default();
    let mut p = pool(1, 1, &log);
    let running = submit(&mut p, Task::ok(1, 10 * MS)).await;
    settle().await;
    bounded(p.ready()).await.unwrap(); // holds the only slot
    let mut clone = p.clone();
    assert!(
        clone.ready().now_or_never().is_none(),
        "a clone must start unreserved"
    );
    drop(p);
    bounded(clone.ready()).await.unwrap();
    assert_eq!(bounded(clone.call(Task::ok(2, MS))).await.unwrap(), 2);
    assert_eq!(bounded(running).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn close_runs_the_queued_jobs_then_stops_the_workers() {
    let log = Log::default();
    let mut p = pool(1, 16, &log);
    let futs: Vec<_> = {
        let mut v = Vec::new();
        for id in 1..=3 {
            v.push(submit(&mut p, Task::ok(id, 10 * MS)).await);
        }
        v
    };
    let handle = p.handle();
    let t0 = Instant::now();
    let report = bounded(handle.drain()).await;
    assert_eq!((report.finished, report.cut), (3, 0));
    assert_eq!(Instant::now() - t0, 30 * MS);
    for (id, fut) in (1..).zip(futs) {
        assert_eq!(fut.await.unwrap(), id);
    }
    let refused = pool_error(p.ready().await.unwrap_err());
    assert!(matches!(refused, Error::Closed(Closed::Shutdown)));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_runs_the_queue_and_ends_the_workers() {
    let log = Log::default();
    let mut p = pool(2, 16, &log);
    let handle = p.handle();
    let mut futs = Vec::new();
    for id in 1..=4 {
        futs.push(submit(&mut p, Task::ok(id, 10 * MS)).await);
    }
    drop(p);
    let t0 = Instant::now();
    for (id, fut) in (1..).zip(futs) {
        assert_eq!(bounded(fut).await.unwrap(), id);
    }
    assert_eq!(Instant::now() - t0, 20 * MS);
    let report = bounded(handle.drain()).await;
    assert_eq!(report, palisade_pool::DrainReport::default());
}

#[tokio::test(start_paused = true)]
async fn drain_until_cuts_running_and_queued_jobs_at_the_deadline() {
    let log = Log::default();
    let mut p = pool(1, 16, &log);
    let handle = p.handle();
    let fast = submit(&mut p, Task::ok(1, 10 * MS)).await;
    let slow = submit(&mut p, Task::ok(2, Duration::from_secs(60))).await;
    let queued = submit(&mut p, Task::ok(3, MS)).await;
    let t0 = Instant::now();
    let report = bounded(handle.drain_until(t0 + Duration::from_secs(1))).await;
    assert_eq!(Instant::now() - t0, Duration::from_secs(1));
    assert_eq!((report.finished, report.cut), (1, 2));
    assert_eq!(fast.await.unwrap(), 1);
    assert!(matches!(pool_error(slow.await.unwrap_err()), Error::Cut));
    assert!(matches!(pool_error(queued.await.unwrap_err()), Error::Cut));
    assert_eq!(log.ids(), [1, 2]);
    let s: PoolStats = handle.stats();
    assert_eq!((s.ok, s.cut, s.pending, s.ended()), (1, 2, 0, 3));
}

#[tokio::test(start_paused = true)]
async fn the_shutdown_phase_reports_finished_and_cut_jobs() {
    use palisade_shutdown::{Shutdown, Trigger};
    for (dur, expect_cut) in [(10 * MS, false), (Duration::from_secs(10), true)] {
        let log = Log::default();
        let mut p = pool(1, 16, &log);
        let shutdown = Shutdown::new();
        shutdown
            .add_phase(p.handle().drain_phase("pool", Duration::from_secs(1)))
            .unwrap();
        let mut futs = Vec::new();
        for id in 1..=3 {
            futs.push(submit(&mut p, Task::ok(id, dur)).await);
        }
        shutdown.start(Trigger::Requested);
        let outcome = bounded(shutdown.run()).await;
        let phase = &outcome.phases[0];
        if expect_cut {
            assert_eq!(phase.finished, vec!["0 pool job(s) finished".to_owned()]);
            assert_eq!(phase.cut, vec!["3 pool job(s) cut".to_owned()]);
        } else {
            assert!(outcome.is_clean(), "{outcome}");
            assert_eq!(phase.finished, vec!["3 pool job(s) finished".to_owned()]);
        }
        for fut in futs {
            let r = fut.await;
            assert_eq!(r.is_err(), expect_cut);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn keyed_jobs_run_in_order_on_one_worker_and_unkeyed_ones_anywhere() {
    let log = Log::default();
    let l = log.clone();
    // Key: the job id's tens (11, 12, 13 share key 1); ids below 10: none.
    let mut p: TaskPool = Pool::builder()
        .workers(3)
        .affinity(|t: &Task| (t.id >= 10).then_some(t.id / 10))
        .build_fn(move |i| worker(i, l.clone()))
        .unwrap();
    let mut futs = Vec::new();
    for (id, ms) in [
        (11, 30),
        (1, 5),
        (21, 5),
        (12, 1),
        (2, 5),
        (13, 1),
        (22, 1),
        (3, 5),
    ] {
        futs.push(submit(&mut p, Task::ok(id, ms * MS)).await);
    }
    for fut in futs {
        bounded(fut).await.unwrap();
    }
    let entries = log.entries();
    for key in [1, 2] {
        let runs: Vec<(usize, u32)> = entries
            .iter()
            .filter(|(_, id, _)| *id >= 10 && id / 10 == key)
            .map(|(w, id, _)| (*w, *id))
            .collect();
        let ids: Vec<u32> = runs.iter().map(|r| r.1).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted, "key {key} ran out of order");
        assert!(
            runs.iter().all(|r| r.0 == runs[0].0),
            "key {key} moved: {runs:?}"
        );
    }
    assert_eq!(entries.len(), 8);
}

#[tokio::test(start_paused = true)]
async fn invalid_settings_name_the_field() {
    let cases: [(_, &str); 5] = [
        (Pool::<u32, ()>::builder().workers(0), "workers"),
        (Pool::builder().queue_capacity(0), "queue_capacity"),
        (
            Pool::builder().restart_backoff(10 * MS, MS),
            "restart_backoff",
        ),
        (
            Pool::builder().max_factory_failures(0),
            "max_factory_failures",
        ),
        (Pool::builder().name(""), "name"),
    ];
    for (builder, field) in cases {
        let err = builder
            .build_fn(|_| service_fn(|x: u32| async move { Ok::<_, BoxError>(x) }))
            .unwrap_err();
        assert_eq!(err.field(), field);
    }
    let err = palisade_pool::CpuPool::builder()
        .threads(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "threads");
}

#[tokio::test(start_paused = true)]
async fn the_head_of_line_gap_versus_round_robin_is_exact() {
    // 4 workers; job 0 takes 1 s, jobs 1..=8 take 10 ms each. Dealt
    // round-robin, jobs 4 and 8 would wait behind job 0 (1 s); here every
    // short job ends by 30 ms.
    let log = Log::default();
    let mut p = pool(4, 64, &log);
    let t0 = Instant::now();
    let mut futs = Vec::new();
    futs.push(submit(&mut p, Task::ok(0, Duration::from_secs(1))).await);
    for id in 1..=8 {
        futs.push(submit(&mut p, Task::ok(id, 10 * MS)).await);
    }
    let slow = futs.remove(0);
    for fut in futs {
        bounded(fut).await.unwrap();
    }
    // 8 short jobs on 3 free workers: ceil(8 / 3) = 3 rounds of 10 ms.
    assert_eq!(Instant::now() - t0, 30 * MS);
    bounded(slow).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn without_replace_on_panic_the_worker_keeps_its_service() {
    let log = Log::default();
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let l = log.clone();
    let mut p: TaskPool = Pool::builder()
        .workers(1)
        .replace_on_panic(false)
        .build_fn(move |i| {
            m.fetch_add(1, Ordering::SeqCst);
            worker(i, l.clone())
        })
        .unwrap();
    let boom = submit(
        &mut p,
        Task {
            id: 1,
            dur: MS,
            fate: Fate::Panic,
        },
    )
    .await;
    let after = submit(&mut p, Task::ok(2, MS)).await;
    assert!(matches!(
        pool_error(bounded(boom).await.unwrap_err()),
        Error::Panicked(_)
    ));
    assert_eq!(bounded(after).await.unwrap(), 2);
    assert_eq!(made.load(Ordering::SeqCst), 1);
    assert_eq!(p.handle().stats().restarts, 0);
}
