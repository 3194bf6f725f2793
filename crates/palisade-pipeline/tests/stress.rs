//! Many producers, a multi-thread runtime, stages that yield, fail and
//! panic: every count reconciles exactly, and a cut mid-flight accounts for
//! every admitted item.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use palisade_pipeline::{BranchConfig, Overflow, PipelineBuilder, StageConfig, from_fn};
use tokio::sync::mpsc;

const PRODUCERS: u64 = 4;
const PER_PRODUCER: u64 = 5_000;

fn build(name: &str) -> palisade_pipeline::Pipeline<u64, u64> {
    PipelineBuilder::new(name)
        .stage(
            StageConfig::new("a")
                .concurrency(8)
                .unordered()
                .queue_capacity(16),
            from_fn(|x: u64| async move {
                tokio::task::yield_now().await;
                if x.is_multiple_of(97) {
                    return Err(tower::BoxError::from("a fails"));
                }
                Ok(x)
            }),
        )
        .stage_by_key(
            StageConfig::new("b").concurrency(4).reorder_window(16),
            |x: &u64| x % 7,
            from_fn(|x: u64| async move {
                tokio::task::yield_now().await;
                assert!(!x.is_multiple_of(101), "b panics");
                Ok::<_, std::convert::Infallible>(x)
            }),
        )
        .stage(
            StageConfig::new("c").concurrency(3),
            from_fn(|x: u64| async move { Ok::<_, std::convert::Infallible>(x + 1) }),
        )
        .build()
        .unwrap()
}

fn producers(tx: mpsc::Sender<u64>) {
    for p in 0..PRODUCERS {
        let tx = tx.clone();
        tokio::spawn(async move {
            for i in 0..PER_PRODUCER {
                if tx.send(p * PER_PRODUCER + i).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_reconcile_exactly_under_contention() {
    std::panic::set_hook(Box::new(|_| {}));
    let n = PRODUCERS * PER_PRODUCER;
    let (tx, rx) = mpsc::channel(64);
    producers(tx);
    let (h, out) = build("stress").run_channel(rx);
    let (mut ok, mut failed, mut panicked) = (0u64, 0u64, 0u64);
    let mut seen = vec![false; n as usize];
    let mut out = out;
    while let Some((seq, r)) = out.next_with_seq().await {
        assert!(
            !std::mem::replace(&mut seen[seq as usize], true),
            "item {seq} twice"
        );
        match r {
            Ok(_) => ok += 1,
            Err(e) if e.is_panic() => {
                assert_eq!(e.stage(), "b");
                panicked += 1;
            }
            Err(e) => {
                assert_eq!(e.stage(), "a");
                failed += 1;
            }
        }
    }
    let _ = std::panic::take_hook();
    let expect_failed = (0..n).filter(|x: &u64| x.is_multiple_of(97)).count() as u64;
    let expect_panicked = (0..n)
        .filter(|x: &u64| !x.is_multiple_of(97) && x.is_multiple_of(101))
        .count() as u64;
    assert_eq!(
        (failed, panicked, ok),
        (
            expect_failed,
            expect_panicked,
            n - expect_failed - expect_panicked
        )
    );
    let report = h.drain().await;
    assert_eq!(
        (report.admitted, report.completed, report.total_cut()),
        (n, n, 0)
    );
    let s = h.stats();
    assert_eq!(
        (s[0].failed, s[1].panicked),
        (expect_failed, expect_panicked)
    );
    for st in &s {
        assert_eq!(
            (st.items_in, st.items_out, st.queue_depth),
            (n, n, 0),
            "{st:?}"
        );
        assert!(st.peak_in_flight <= st.concurrency && st.peak_held <= st.reorder_window);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_mid_flight_accounts_for_every_admitted_item() {
    std::panic::set_hook(Box::new(|_| {}));
    let (tx, rx) = mpsc::channel(64);
    producers(tx);
    let (h, outs) = build("stress-cut")
        .run_fan_out(
            futures_util::stream::poll_fn({
                let mut rx = rx;
                move |cx| rx.poll_recv(cx)
            }),
            vec![
                BranchConfig::new("all"),
                BranchConfig::new("lossy")
                    .capacity(8)
                    .overflow(Overflow::DropOldest),
            ],
        )
        .unwrap();
    let mut outs = outs.into_iter();
    let all = outs.next().unwrap();
    let lossy = outs.next().unwrap();
    let read = Arc::new(AtomicU64::new(0));
    let r = read.clone();
    let reader = tokio::spawn(all.for_each(move |_| {
        r.fetch_add(1, Ordering::Relaxed);
        async {}
    }));
    // Read the lossy branch slowly.
    let slow = tokio::spawn(
        lossy
            .then(|_| tokio::time::sleep(Duration::from_micros(50)))
            .count(),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A deadline already due: everything held is cut at once.
    let report = h.drain_until(tokio::time::Instant::now()).await;
    let _ = std::panic::take_hook();
    reader.await.unwrap();
    let slow_read = slow.await.unwrap() as u64;
    assert_eq!(
        report.admitted,
        report.completed + report.total_cut(),
        "{report:?}"
    );
    for st in h.stats() {
        assert_eq!(st.items_in, st.items_out + st.cut, "{st:?}");
    }
    let b = h.branches();
    // What the distributor took from the last stage went to both branches,
    // or was held at the cut (discarded).
    assert_eq!(
        b[0].delivered + report.discarded,
        report.completed,
        "{b:?} {report:?}"
    );
    assert_eq!(read.load(Ordering::Relaxed), b[0].delivered);
    assert_eq!(b[1].delivered, slow_read + b[1].dropped + b[1].depth as u64);
}
