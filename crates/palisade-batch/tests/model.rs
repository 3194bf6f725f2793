//! Property tests: random arrival schedules, inner latencies, limits,
//! cancellations, de-duplication and poison items, under paused time. Each
//! run is checked against the rules a batcher must keep, as a plain model:
//! the queue is FIFO and every batch is a run of it; limits hold; a timer
//! batch that is not full goes out exactly at its first item's deadline; an
//! opportunistic item with a free slot goes out the instant it arrives; every
//! caller still waiting gets exactly its own result.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_batch::{BatchLayer, Error, Flush};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt};

#[derive(Debug, Clone)]
struct Case {
    flush: Flush,
    max_items: usize,
    max_weight: Option<u64>,
    max_latency_ms: u64,
    /// `None`: more slots than items, so no item ever waits for one.
    max_in_flight: Option<usize>,
    /// Inner latency in ms, by first request of the batch.
    latencies_ms: Vec<u64>,
    /// Per item: ms after the previous item, and whether (and after how many
    /// ms) its caller gives up.
    items: Vec<(u64, Option<u64>)>,
    /// De-duplication on `id % keys`.
    dedup_keys: Option<u32>,
    /// Keys the inner service fails every batch for.
    poison: Vec<u32>,
    bisect: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(Flush::Opportunistic), Just(Flush::Timer)],
        1usize..12,
        prop_oneof![Just(None), (3u64..20).prop_map(Some)],
        1u64..6,
        prop_oneof![Just(None), (1usize..4).prop_map(Some)],
        prop::collection::vec(0u64..8, 1..5),
        prop::collection::vec(
            (
                0u64..4,
                prop_oneof![4 => Just(None), 1 => (0u64..10).prop_map(Some)],
            ),
            1..60,
        ),
        prop_oneof![Just(None), (1u32..8).prop_map(Some)],
        prop::collection::vec(0u32..60, 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(
                flush,
                max_items,
                max_weight,
                lat,
                in_flight,
                latencies_ms,
                items,
                dedup_keys,
                poison,
                bisect,
            )| Case {
                flush,
                max_items,
                max_weight,
                max_latency_ms: lat,
                max_in_flight: in_flight,
                latencies_ms,
                items,
                dedup_keys,
                poison,
                bisect,
            },
        )
}

fn weight(id: u32) -> u64 {
    u64::from(id % 5) + 1
}

/// What the inner service saw: (virtual ms since start, requests).
type Batches = Vec<(u64, Vec<u32>)>;
type Log = Arc<Mutex<Batches>>;

#[derive(Clone)]
struct Inner {
    log: Log,
    start: Instant,
    latencies_ms: Arc<Vec<u64>>,
    poison: Arc<HashSet<u32>>,
    keys: Option<u32>,
}

fn key(keys: Option<u32>, id: u32) -> u32 {
    keys.map_or(id, |k| id % k)
}

impl Service<Vec<u32>> for Inner {
    type Response = Vec<u64>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Vec<u64>, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: Vec<u32>) -> Self::Future {
        let now = self.start.elapsed().as_millis() as u64;
        self.log.lock().unwrap().push((now, batch.clone()));
        let latency = self.latencies_ms[batch[0] as usize % self.latencies_ms.len()];
        let fail = batch
            .iter()
            .any(|id| self.poison.contains(&key(self.keys, *id)));
        let keys = self.keys;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(latency)).await;
            if fail {
                return Err("poison in batch".into());
            }
            // The answer depends only on the key, as a de-duplicated lookup's must.
            Ok(batch
                .iter()
                .map(|id| u64::from(key(keys, *id)) * 10 + 1)
                .collect())
        })
    }
}

/// One caller's fate.
#[derive(Debug)]
struct Seen {
    id: u32,
    /// Push order (call() queues synchronously, so this is queue order).
    seq: u64,
    enqueued_ms: u64,
    result: Option<Result<u64, Error>>,
}

fn run(case: &Case) -> (Vec<Seen>, Batches, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let start = Instant::now();
        let log: Log = Arc::default();
        let inner = Inner {
            log: log.clone(),
            start,
            latencies_ms: Arc::new(case.latencies_ms.clone()),
            poison: Arc::new(case.poison.iter().copied().collect()),
            keys: case.dedup_keys,
        };
        let mut b = BatchLayer::<u32, u64>::builder()
            .flush(case.flush)
            .max_items(case.max_items)
            .max_latency(Duration::from_millis(case.max_latency_ms))
            .max_in_flight(case.max_in_flight.unwrap_or(10_000))
            .queue_capacity(10_000);
        if let Some(w) = case.max_weight {
            b = b.max_weight(w, |id: &u32| weight(*id));
        }
        if let Some(k) = case.dedup_keys {
            b = b.dedup(move |id: &u32| id % k);
        }
        if case.bisect {
            b = b.bisect(4);
        }
        let layer = b.build().unwrap();
        let handle = layer.handle();
        let svc = layer.layer(inner);
        let seq = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let mut at = 0;
        for (id, &(gap, cancel)) in case.items.iter().enumerate() {
            at += gap;
            let mut svc = svc.clone();
            let seq = seq.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                let svc = svc.ready().await.unwrap();
                let fut = svc.call(id as u32);
                let seq = seq.fetch_add(1, Ordering::Relaxed);
                let enqueued_ms = start.elapsed().as_millis() as u64;
                let result = match cancel {
                    Some(after) => {
                        tokio::select! {
                            r = fut => Some(r),
                            () = tokio::time::sleep(Duration::from_millis(after)) => None,
                        }
                    }
                    None => Some(fut.await),
                };
                Seen {
                    id: id as u32,
                    seq,
                    enqueued_ms,
                    result: result.map(|r| r.map_err(|e| *e.downcast::<Error>().unwrap())),
                }
            }));
        }
        drop(svc);
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(
                tokio::time::timeout(Duration::from_secs(3600), t)
                    .await
                    .expect("a caller was never answered")
                    .unwrap(),
            );
        }
        tokio::time::timeout(Duration::from_secs(3600), handle.drain())
            .await
            .expect("the batcher never finished");
        let pending = handle.pending();
        let log = log.lock().unwrap().clone();
        (seen, log, pending)
    })
}

fn check(
    case: &Case,
    seen: &[Seen],
    log: &[(u64, Vec<u32>)],
    pending: u64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(pending, 0);
    let poisoned = |id: u32| case.poison.contains(&key(case.dedup_keys, id));
    let by_id: HashMap<u32, &Seen> = seen.iter().map(|s| (s.id, s)).collect();
    let cancelled = |id: u32| by_id[&id].result.is_none();

    // Limits, and one request per key per batch.
    for (_, batch) in log {
        prop_assert!(!batch.is_empty());
        prop_assert!(
            batch.len() <= case.max_items,
            "batch {:?} over max_items",
            batch
        );
        if let Some(max) = case.max_weight
            && batch.len() > 1
        {
            let w: u64 = batch.iter().map(|id| weight(*id)).sum();
            prop_assert!(w <= max, "batch {:?} weighs {} > {}", batch, w, max);
        }
        let keys: HashSet<u32> = batch.iter().map(|id| key(case.dedup_keys, *id)).collect();
        prop_assert_eq!(keys.len(), batch.len(), "a key twice in {:?}", batch);
    }

    // Every caller still waiting got exactly its own result.
    for s in seen {
        let Some(result) = &s.result else { continue };
        let expect = u64::from(key(case.dedup_keys, s.id)) * 10 + 1;
        match result {
            Ok(v) => {
                prop_assert_eq!(*v, expect);
                prop_assert!(!poisoned(s.id), "poison item {} succeeded", s.id);
            }
            Err(Error::Failed(_)) => {
                // Fails only in a batch with poison; with bisection, only
                // the poison items themselves (depth 4 isolates any item of a
                // batch of at most 16).
                prop_assert!(
                    poisoned(s.id) || !case.bisect,
                    "item {} failed despite bisection",
                    s.id
                );
            }
            Err(other) => prop_assert!(false, "item {} got {:?}", s.id, other),
        }
    }

    // The rest needs one send per item: no dedup merging, no retries.
    if case.dedup_keys.is_some() || !case.poison.is_empty() {
        return Ok(());
    }
    // FIFO: the batches, in send order, are consecutive runs of the queue
    // (cancelled items may or may not have been sent).
    let mut order: Vec<&Seen> = seen.iter().collect();
    order.sort_by_key(|s| s.seq);
    let sent: Vec<u32> = log.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    let sent_set: HashSet<u32> = sent.iter().copied().collect();
    prop_assert_eq!(sent_set.len(), sent.len(), "an item was sent twice");
    let expected: Vec<u32> = order
        .iter()
        .map(|s| s.id)
        .filter(|id| sent_set.contains(id))
        .collect();
    prop_assert_eq!(&sent, &expected, "batches are not FIFO runs of the queue");
    for s in seen {
        if !cancelled(s.id) {
            prop_assert!(
                sent_set.contains(&s.id),
                "item {} answered but never sent",
                s.id
            );
        }
    }

    // Timing, when no item ever waits for a batch slot.
    if case.max_in_flight.is_some() {
        return Ok(());
    }
    let sent_at: HashMap<u32, (u64, usize)> = log
        .iter()
        .enumerate()
        .flat_map(|(i, (t, b))| b.iter().map(move |id| (*id, (*t, i))))
        .collect();
    for s in seen.iter().filter(|s| sent_set.contains(&s.id)) {
        let (t, _) = sent_at[&s.id];
        prop_assert!(t >= s.enqueued_ms);
        match case.flush {
            Flush::Opportunistic => prop_assert_eq!(t, s.enqueued_ms, "item {} waited", s.id),
            Flush::Timer => prop_assert!(
                t <= s.enqueued_ms + case.max_latency_ms,
                "item {} waited {} ms > max_latency {} ms",
                s.id,
                t - s.enqueued_ms,
                case.max_latency_ms
            ),
        }
    }
    let no_cancellation = seen.iter().all(|s| s.result.is_some());
    if case.flush == Flush::Timer && no_cancellation {
        // A partial batch goes out exactly at its first item's deadline,
        // never earlier. (A cancelled item may start a deadline and then be
        // skipped, so this needs a run without cancellations.)
        let next_of: HashMap<u32, u32> = order.windows(2).map(|w| (w[0].id, w[1].id)).collect();
        for (t, batch) in log {
            let last = *batch.last().expect("batches are not empty");
            // Full by weight: it reached the limit, or the next item did
            // not fit.
            let full_by_weight = case.max_weight.is_some_and(|max| {
                let w: u64 = batch.iter().map(|id| weight(*id)).sum();
                w >= max
                    || next_of
                        .get(&last)
                        .is_some_and(|next| w + weight(*next) > max)
            });
            if batch.len() < case.max_items && !full_by_weight {
                let first = by_id[&batch[0]].enqueued_ms;
                prop_assert_eq!(
                    *t,
                    first + case.max_latency_ms,
                    "partial batch {:?} sent early or late",
                    batch
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn batches_keep_every_rule(case in case()) {
        let (seen, log, pending) = run(&case);
        check(&case, &seen, &log, pending)?;
    }
}
