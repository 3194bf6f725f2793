//! Thousands of callers on a multi-thread runtime, a fifth of them giving up
//! at random moments: sent, answered and cancelled counts reconcile exactly.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade_batch::{BatchLayer, metric_names};
use tower::{Layer, Service, ServiceExt, service_fn};

const CALLERS: u32 = 8_000;

/// A small deterministic generator (xorshift), so a failure reproduces.
fn rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Counter values by name; one snapshot for all (a snapshot drains what it
/// reads).
fn counters(snapshotter: &Snapshotter) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            *out.entry(key.key().name().to_owned()).or_default() += n;
        }
    }
    out
}

#[test]
fn counts_reconcile_under_random_cancellation() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sent: Arc<Mutex<Vec<u32>>> = Arc::default();
        let log = sent.clone();
        let inner = service_fn(move |batch: Vec<u32>| {
            log.lock().unwrap().extend(&batch);
            let yields = batch[0] % 3;
            async move {
                for _ in 0..yields {
                    tokio::task::yield_now().await;
                }
                Ok::<_, std::convert::Infallible>(
                    batch
                        .iter()
                        .map(|x| u64::from(*x) * 3)
                        .collect::<Vec<u64>>(),
                )
            }
        });
        let layer = BatchLayer::builder()
            .max_items(32)
            .max_in_flight(3)
            .queue_capacity(256)
            .build()
            .unwrap();
        let handle = layer.handle();
        let svc = layer.layer(inner);
        let mut tasks = Vec::new();
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        for id in 0..CALLERS {
            let r = rand(&mut seed);
            // One in five callers gives up after 0..4 yields.
            let cancel_after = r.is_multiple_of(5).then_some(r / 5 % 4);
            let mut svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                // Every caller gets its item queued; some then give up.
                let fut = svc.ready().await.expect("ready").call(id);
                drop(svc);
                match cancel_after {
                    None => Some(fut.await.expect("a caller that waits is answered")),
                    Some(n) => {
                        let mut fut = std::pin::pin!(fut);
                        for _ in 0..n {
                            if let std::task::Poll::Ready(r) = futures_util::poll!(fut.as_mut()) {
                                return Some(r.expect("answered"));
                            }
                            tokio::task::yield_now().await;
                        }
                        // An answer that arrived during the last yield is
                        // this caller's, not a cancellation.
                        match futures_util::poll!(fut.as_mut()) {
                            std::task::Poll::Ready(r) => Some(r.expect("answered")),
                            std::task::Poll::Pending => None,
                        }
                    }
                }
            }));
        }
        drop(svc);
        let mut answered = HashSet::new();
        let mut cancelled = 0u32;
        for (id, t) in tasks.into_iter().enumerate() {
            let outcome = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("every caller finishes")
                .unwrap();
            match outcome {
                Some(v) => {
                    assert_eq!(v, id as u64 * 3, "caller {id} got another caller's result");
                    answered.insert(id as u32);
                }
                None => cancelled += 1,
            }
        }
        let report = tokio::time::timeout(Duration::from_secs(30), handle.drain())
            .await
            .expect("the batcher drains");
        assert_eq!(report.cut, 0);
        assert_eq!(handle.pending(), 0);

        let sent = sent.lock().unwrap().clone();
        let sent_set: HashSet<u32> = sent.iter().copied().collect();
        assert_eq!(sent_set.len(), sent.len(), "an item was sent twice");
        assert_eq!(answered.len() as u32 + cancelled, CALLERS);
        assert!(
            answered.is_subset(&sent_set),
            "an answered item was never sent"
        );
        // What was sent beyond the answered items belongs to callers that
        // gave up after their item had left the queue.
        let sent_then_cancelled = sent.len() - answered.len();
        assert!(sent_then_cancelled <= cancelled as usize);
        assert!(
            cancelled > CALLERS / 10,
            "the schedule cancels about a fifth ({cancelled})"
        );

        // The batcher's own counts agree exactly: every caller was either
        // sent or skipped, and every sent item whose caller left was
        // discarded, not answered.
        let c = counters(&snapshotter);
        let [items, skipped, discarded] = [
            metric_names::ITEMS,
            metric_names::CANCELLED,
            metric_names::DISCARDED,
        ]
        .map(|name| c.get(name).copied().unwrap_or(0));
        assert_eq!(items, sent.len() as u64);
        assert_eq!(items + skipped, u64::from(CALLERS));
        // Of the sent items, each caller that waited got its answer; a
        // discarded result belongs to a caller that left after its item was
        // sent. (A result can also land the instant before its caller drops
        // the future; only that caller could tell, so that share is the
        // slack of this inequality.)
        assert!(answered.len() as u64 + discarded <= items);
        assert!(discarded <= sent_then_cancelled as u64);
        assert!(skipped <= u64::from(cancelled));
    });
}
