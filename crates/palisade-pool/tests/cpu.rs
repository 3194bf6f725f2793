//! The CPU offload on real blocking threads. Every wait is bounded.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use futures_util::FutureExt;
use palisade_pool::{CpuPool, Error};
use tower::{Service, ServiceExt};

const BOUND: Duration = Duration::from_secs(30);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f).await.expect("bounded wait")
}

/// A job that blocks its thread until the test releases it.
fn gate() -> (mpsc::Sender<()>, impl FnOnce() -> u32 + Send + 'static) {
    let (tx, rx) = mpsc::channel::<()>();
    (tx, move || {
        rx.recv_timeout(BOUND).expect("the test releases the gate");
        1
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_runs_at_most_threads_at_once_and_keeps_item_order() {
    let cpu = CpuPool::builder().threads(3).build().unwrap();
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let out = bounded(cpu.map(0..64u64, move |x| {
        let c = n.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(c, Ordering::SeqCst);
        // Enough work that jobs overlap.
        let mut h = x;
        for i in 0..200_000u64 {
            h = h.wrapping_mul(31).wrapping_add(i);
        }
        n.fetch_sub(1, Ordering::SeqCst);
        std::hint::black_box(h);
        x * 2
    }))
    .await;
    let got: Vec<u64> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(got, (0..64).map(|x| x * 2).collect::<Vec<_>>());
    assert!(
        peak.load(Ordering::SeqCst) <= 3,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(cpu.stats().ok, 64);
    assert_eq!(cpu.stats().in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_an_error_for_that_caller_only() {
    let cpu = CpuPool::builder().threads(2).build().unwrap();
    let out = bounded(cpu.map([1u32, 0, 3], |x| {
        assert!(x != 0, "zero is not allowed");
        10 / x
    }))
    .await;
    assert_eq!(*out[0].as_ref().unwrap(), 10);
    match &out[1] {
        Err(Error::Panicked(msg)) => assert_eq!(&**msg, "zero is not allowed"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(*out[2].as_ref().unwrap(), 3);
    let s = cpu.stats();
    assert_eq!((s.ok, s.panicked), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_dropped_before_it_starts_never_runs() {
    let cpu = CpuPool::builder().threads(1).build().unwrap();
    let (release, blocker) = gate();
    let first = tokio::spawn(cpu.run(blocker));
    // Wait until the blocker holds the one thread.
    bounded(async {
        while cpu.stats().in_flight == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let mut second = Box::pin(cpu.run(move || r.store(true, Ordering::SeqCst)));
    // Admitted, waiting for the thread...
    assert!((&mut second).now_or_never().is_none());
    assert_eq!(cpu.stats().in_flight, 2);
    // ...and dropped: it must never run.
    drop(second);
    release.send(()).unwrap();
    assert_eq!(bounded(first).await.unwrap().unwrap(), 1);
    assert_eq!(bounded(cpu.run(|| 2)).await.unwrap(), 2);
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(cpu.stats().ok, 2);
    assert_eq!(cpu.stats().skipped, 1);
    assert_eq!(cpu.stats().in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_run_sheds_load_when_threads_and_queue_are_full() {
    let cpu = CpuPool::builder()
        .threads(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    let (release, blocker) = gate();
    let first = cpu.try_run(blocker);
    let second = cpu.try_run(|| 2);
    let third = cpu.try_run(|| 3);
    assert!(matches!(bounded(third).await, Err(Error::Overloaded)));
    assert_eq!(cpu.stats().overloaded, 1);
    let first = tokio::spawn(first);
    let second = tokio::spawn(second);
    release.send(()).unwrap();
    assert_eq!(bounded(first).await.unwrap().unwrap(), 1);
    assert_eq!(bounded(second).await.unwrap().unwrap(), 2);
    assert_eq!(bounded(cpu.try_run(|| 4)).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_is_pending_when_full_and_ready_when_a_job_ends() {
    let cpu = CpuPool::builder()
        .threads(1)
        .queue_capacity(0)
        .build()
        .unwrap();
    let (release, blocker) = gate();
    let blocker = std::sync::Mutex::new(Some(blocker));
    let mut svc = cpu.service(move |x: u32| match x {
        0 => blocker.lock().unwrap().take().expect("one blocker")(),
        x => x * 10,
    });
    bounded(svc.ready()).await.unwrap();
    let running = tokio::spawn(svc.call(0));
    // The only admission is taken: a clone starts unreserved and waits.
    let mut other = svc.clone();
    assert!(other.ready().now_or_never().is_none());
    let waiter = tokio::spawn(async move {
        other.ready().await.unwrap();
        other.call(5).await.unwrap()
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    release.send(()).unwrap();
    assert_eq!(bounded(running).await.unwrap().unwrap(), 1);
    assert_eq!(bounded(waiter).await.unwrap(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pool_refuses_new_jobs() {
    let cpu = CpuPool::builder().threads(1).build().unwrap();
    cpu.close();
    assert!(matches!(
        bounded(cpu.run(|| 1)).await,
        Err(Error::Closed(_))
    ));
    assert!(matches!(
        bounded(cpu.try_run(|| 1)).await,
        Err(Error::Closed(_))
    ));
}
