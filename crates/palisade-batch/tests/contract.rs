//! One test per promise of the batcher, under paused time with exact
//! virtual times.

mod common;

use std::time::Duration;

use common::{Boom, Fate, Scripted, bounded};
use palisade_batch::{Batch, BatchLayer, Closed, Error, Flush};
use tokio::time::{Instant, advance, sleep};
use tower::{BoxError, Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

fn batch_error(e: BoxError) -> Error {
    *e.downcast::<Error>()
        .expect("a batch call fails with palisade_batch::Error")
}

async fn call(svc: &mut Batch<u32, u32>, x: u32) -> palisade_batch::ResponseFuture<u32> {
    svc.ready().await.expect("ready").call(x)
}

#[tokio::test(start_paused = true)]
async fn low_load_item_goes_out_at_once_and_costs_only_the_inner_latency() {
    let inner = Scripted::new(5 * MS);
    let log = inner.log.clone();
    let mut svc = BatchLayer::builder().build().unwrap().layer(inner);
    let start = Instant::now();
    let fut = call(&mut svc, 7).await;
    assert_eq!(bounded(fut).await.unwrap(), 70);
    assert_eq!(start.elapsed(), 5 * MS);
    assert_eq!(log.timed(), vec![(Duration::ZERO, vec![7])]);
}

#[tokio::test(start_paused = true)]
async fn timer_mode_waits_max_latency_for_a_partial_batch() {
    let inner = Scripted::new(5 * MS);
    let log = inner.log.clone();
    let mut svc = BatchLayer::builder()
        .flush(Flush::Timer)
        .max_latency(2 * MS)
        .build()
        .unwrap()
        .layer(inner);
    let start = Instant::now();
    let fut = call(&mut svc, 7).await;
    assert_eq!(bounded(fut).await.unwrap(), 70);
    assert_eq!(start.elapsed(), 7 * MS);
    assert_eq!(log.timed(), vec![(2 * MS, vec![7])]);
}

#[tokio::test(start_paused = true)]
async fn timer_mode_sends_a_full_batch_at_once_and_measures_from_the_first_item() {
    let inner = Scripted::new(MS);
    let log = inner.log.clone();
    let mut svc = BatchLayer::builder()
        .flush(Flush::Timer)
        .max_items(3)
        .max_latency(10 * MS)
        .build()
        .unwrap()
        .layer(inner);
    let mut futs = Vec::new();
    for x in 0..4 {
        futs.push(call(&mut svc, x).await);
    }
    // The fourth item's batch goes out 10 ms after the fourth item, the
    // first of that batch, though the fifth joins 4 ms later.
    tokio::task::yield_now().await;
    advance(4 * MS).await;
    futs.push(call(&mut svc, 4).await);
    let got: Vec<u32> = bounded(futures_util::future::try_join_all(futs))
        .await
        .unwrap();
    assert_eq!(got, vec![0, 10, 20, 30, 40]);
    assert_eq!(
        log.timed(),
        vec![(Duration::ZERO, vec![0, 1, 2]), (10 * MS, vec![3, 4])]
    );
}

#[tokio::test(start_paused = true)]
async fn items_pile_up_behind_the_batch_in_flight_group_commit() {
    let inner = Scripted::new(10 * MS);
    let log = inner.log.clone();
    let svc = BatchLayer::builder()
        .max_in_flight(1)
        .build()
        .unwrap()
        .layer(inner);
    let mut callers = Vec::new();
    for x in 0..10u32 {
        let svc = svc.clone();
        callers.push(tokio::spawn(async move {
            sleep(MS * x).await;
            svc.oneshot(x).await.unwrap()
        }));
    }
    for (x, c) in callers.into_iter().enumerate() {
        assert_eq!(bounded(c).await.unwrap(), x as u32 * 10);
    }
    assert_eq!(
        log.timed(),
        vec![
            (Duration::ZERO, vec![0]),
            (10 * MS, vec![1, 2, 3, 4, 5, 6, 7, 8, 9])
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn at_most_max_in_flight_batches_run_at_once() {
    let inner = Scripted::new(10 * MS);
    let log = inner.log.clone();
    let mut svc = BatchLayer::builder()
        .max_in_flight(2)
        .max_items(2)
        .build()
        .unwrap()
        .layer(inner);
    let mut futs = Vec::new();
    for x in 0..7 {
        futs.push(call(&mut svc, x).await);
    }
    bounded(futures_util::future::try_join_all(futs))
        .await
        .unwrap();
    assert_eq!(
        log.timed(),
        vec![
            (Duration::ZERO, vec![0, 1]),
            (Duration::ZERO, vec![2, 3]),
            (10 * MS, vec![4, 5]),
            (10 * MS, vec![6]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn weight_limit_closes_batches_and_an_oversized_item_goes_alone() {
    let inner = Scripted::new(MS);
    let log = inner.log.clone();
    let mut svc = BatchLayer::builder()
        .max_in_flight(1)
        .max_weight(10, |x: &u32| u64::from(*x))
        .build()
        .unwrap()
        .layer(inner);
    let mut futs = Vec::new();
    for x in [6, 5, 4, 20, 1] {
        futs.push(call(&mut svc, x).await);
    }
    let got = bounded(futures_util::future::try_join_all(futs))
        .await
        .unwrap();
    assert_eq!(got, vec![60, 50, 40, 200, 10]);
    assert_eq!(log.batches(), vec![vec![6], vec![5, 4], vec![20], vec![1]]);
}

#[tokio::test(start_paused = true)]
async fn dedup_sends_each_key_once_and_answers_every_caller() {
    let inner = Scripted::new(MS);
    let log = inner.log.clone();
    let mut svc = BatchLayer::builder()
        .dedup(|x: &u32| *x)
        .build()
        .unwrap()
        .layer(inner);
    let mut futs = Vec::new();
    for x in [1, 2, 1, 3, 2, 1] {
        futs.push(call(&mut svc, x).await);
    }
    let got = bounded(futures_util::future::try_join_all(futs))
        .await
        .unwrap();
    assert_eq!(got, vec![10, 20, 10, 30, 20, 10]);
    assert_eq!(log.batches(), vec![vec![1, 2, 3]]);
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_leaves_before_its_item_is_sent_is_skipped() {
    let inner = Scripted::new(10 * MS);
    let log = inner.log.clone();
    let mut svc = BatchLayer::builder()
        .max_in_flight(1)
        .build()
        .unwrap()
        .layer(inner);
    let a = call(&mut svc, 1).await;
    tokio::task::yield_now().await; // `a` goes out alone
    let b = call(&mut svc, 2).await;
    let c = call(&mut svc, 3).await;
    drop(b);
    assert_eq!(bounded(a).await.unwrap(), 10);
    assert_eq!(bounded(c).await.unwrap(), 30);
    assert_eq!(log.batches(), vec![vec![1], vec![3]]);
    // Its queue slot came back: the whole capacity is free again.
    let handle = svc.handle();
    assert_eq!(handle.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_leaves_after_its_item_was_sent_does_not_disturb_the_batch() {
    let inner = Scripted::new(10 * MS);
    let log = inner.log.clone();
    let mut svc = BatchLayer::builder().build().unwrap().layer(inner);
    let a = call(&mut svc, 1).await;
    let b = call(&mut svc, 2).await;
    advance(MS).await; // both were sent together
    drop(a);
    assert_eq!(bounded(b).await.unwrap(), 20);
    assert_eq!(log.batches(), vec![vec![1, 2]]);
    assert_eq!(svc.handle().pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_inner_error_fails_only_its_batch_and_reaches_every_caller() {
    let inner = Scripted::with_script(MS, |b| {
        if b.contains(&13) {
            Fate::Fail
        } else {
            Fate::Answer
        }
    });
    let mut svc = BatchLayer::builder().build().unwrap().layer(inner);
    let a = call(&mut svc, 13).await;
    let b = call(&mut svc, 1).await;
    for fut in [a, b] {
        let err = batch_error(bounded(fut).await.unwrap_err());
        let Error::Failed(shared) = &err else {
            panic!("expected Failed, got {err:?}")
        };
        assert!(shared.inner().is::<Boom>());
        let source = std::error::Error::source(&err).expect("the inner error is the source");
        assert_eq!(source.to_string(), "boom");
    }
    let c = call(&mut svc, 2).await;
    assert_eq!(bounded(c).await.unwrap(), 20);
}

#[tokio::test(start_paused = true)]
async fn an_inner_panic_in_call_or_future_is_a_typed_error_and_the_batcher_keeps_serving() {
    for fate in [Fate::PanicInCall, Fate::PanicInFuture] {
        let inner = Scripted::with_script(
            MS,
            move |b| {
                if b.contains(&13) { fate } else { Fate::Answer }
            },
        );
        let mut svc = BatchLayer::builder().build().unwrap().layer(inner);
        let a = call(&mut svc, 13).await;
        let b = call(&mut svc, 1).await;
        for fut in [a, b] {
            match batch_error(bounded(fut).await.unwrap_err()) {
                Error::Panicked(msg) => assert!(msg.contains("panicked"), "{msg}"),
                other => panic!("expected Panicked, got {other:?}"),
            }
        }
        let c = call(&mut svc, 2).await;
        assert_eq!(bounded(c).await.unwrap(), 20, "{fate:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_result_count_mismatch_is_a_typed_error_for_every_caller() {
    let inner = Scripted::with_script(MS, |_| Fate::Short);
    let mut svc = BatchLayer::builder().build().unwrap().layer(inner);
    let a = call(&mut svc, 1).await;
    let b = call(&mut svc, 2).await;
    let c = call(&mut svc, 3).await;
    for fut in [a, b, c] {
        match batch_error(bounded(fut).await.unwrap_err()) {
            Error::LengthMismatch { sent, received } => assert_eq!((sent, received), (3, 2)),
            other => panic!("expected LengthMismatch, got {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn bisection_isolates_the_poison_item() {
    let inner = Scripted::with_script(MS, |b| {
        if b.contains(&5) {
            Fate::Fail
        } else {
            Fate::Answer
        }
    });
    let log = inner.log.clone();
    let mut svc = BatchLayer::builder()
        .bisect(3)
        .build()
        .unwrap()
        .layer(inner);
    let mut futs = Vec::new();
    for x in 0..8 {
        futs.push(call(&mut svc, x).await);
    }
    let mut got = Vec::new();
    for fut in futs {
        got.push(bounded(fut).await.map_err(batch_error));
    }
    for (x, r) in got.iter().enumerate() {
        if x == 5 {
            assert!(matches!(r, Err(Error::Failed(_))), "{r:?}");
        } else {
            assert_eq!(r.as_ref().ok(), Some(&(x as u32 * 10)));
        }
    }
    let mut batches = log.batches();
    batches.sort();
    assert_eq!(
        batches,
        vec![
            vec![0, 1, 2, 3],
            vec![0, 1, 2, 3, 4, 5, 6, 7],
            vec![4],
            vec![4, 5],
            vec![4, 5, 6, 7],
            vec![5],
            vec![6, 7],
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn bisection_stops_at_its_depth() {
    let inner = Scripted::with_script(MS, |b| {
        if b.contains(&0) {
            Fate::Fail
        } else {
            Fate::Answer
        }
    });
    let mut svc = BatchLayer::builder()
        .bisect(1)
        .build()
        .unwrap()
        .layer(inner);
    let mut futs = Vec::new();
    for x in 0..4 {
        futs.push(call(&mut svc, x).await);
    }
    let mut ok = Vec::new();
    for fut in futs {
        ok.push(bounded(fut).await.is_ok());
    }
    // One level: [0, 1] fails whole, [2, 3] succeeds.
    assert_eq!(ok, vec![false, false, true, true]);
}

#[tokio::test(start_paused = true)]
async fn an_inner_poll_ready_failure_fails_the_waiting_callers_and_closes_the_batcher() {
    let (inner, mut handle) = tower_test::mock::pair::<Vec<u32>, Vec<u32>>();
    handle.allow(0);
    let mut svc = BatchLayer::builder().build().unwrap().layer(inner);
    let a = call(&mut svc, 1).await;
    let b = call(&mut svc, 2).await;
    tokio::task::yield_now().await;
    handle.send_error(Boom);
    for fut in [a, b] {
        match batch_error(bounded(fut).await.unwrap_err()) {
            Error::Closed(Closed::InnerFailed(e)) => assert!(e.inner().is::<Boom>()),
            other => panic!("expected Closed(InnerFailed), got {other:?}"),
        }
    }
    // From then on the batcher says it is closed, and why.
    let err = bounded(svc.ready()).await.unwrap_err();
    assert!(matches!(
        batch_error(err),
        Error::Closed(Closed::InnerFailed(_))
    ));
    bounded(svc.handle().drain()).await;
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_is_pending_until_a_slot_frees() {
    let (inner, mut handle) = tower_test::mock::pair::<Vec<u32>, Vec<u32>>();
    handle.allow(0);
    let svc = BatchLayer::builder()
        .queue_capacity(2)
        .build()
        .unwrap()
        .layer(inner);
    let mut svc = tower_test::mock::Spawn::new(svc);
    assert!(svc.poll_ready().is_ready());
    let a = svc.call(1);
    assert!(svc.poll_ready().is_ready());
    let b = svc.call(2);
    assert!(svc.poll_ready().is_pending());
    // The inner service becomes ready: both items leave the queue in one
    // batch, freeing both slots.
    handle.allow(1);
    let (batch, respond) = bounded(handle.next_request()).await.unwrap();
    assert_eq!(batch, vec![1, 2]);
    assert!(svc.is_woken());
    assert!(svc.poll_ready().is_ready());
    respond.send_response(vec![10, 20]);
    assert_eq!(bounded(a).await.unwrap(), 10);
    assert_eq!(bounded(b).await.unwrap(), 20);
}

#[tokio::test(start_paused = true)]
async fn clones_start_unreserved_and_a_dropped_reservation_frees_its_slot() {
    let (inner, mut handle) = tower_test::mock::pair::<Vec<u32>, Vec<u32>>();
    handle.allow(0);
    let svc = BatchLayer::builder()
        .queue_capacity(1)
        .build()
        .unwrap()
        .layer(inner);
    let mut first = tower_test::mock::Spawn::new(svc);
    assert!(first.poll_ready().is_ready());
    let mut clone = tower_test::mock::Spawn::new(first.get_ref().clone());
    assert!(
        clone.poll_ready().is_pending(),
        "the one slot is the original's"
    );
    drop(first);
    assert!(clone.is_woken());
    assert!(clone.poll_ready().is_ready());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_flushes_and_answers_everything() {
    let inner = Scripted::new(MS);
    let log = inner.log.clone();
    let mut svc = BatchLayer::builder()
        .flush(Flush::Timer)
        .max_latency(Duration::from_secs(3600))
        .build()
        .unwrap()
        .layer(inner);
    let handle = svc.handle();
    let mut futs = Vec::new();
    for x in 0..3 {
        futs.push(call(&mut svc, x).await);
    }
    let start = Instant::now();
    drop(svc);
    let got = bounded(futures_util::future::try_join_all(futs))
        .await
        .unwrap();
    assert_eq!(got, vec![0, 10, 20]);
    // Flushed at once, not after the hour-long timer.
    assert_eq!(start.elapsed(), MS);
    assert_eq!(log.batches(), vec![vec![0, 1, 2]]);
    let report = bounded(handle.drain()).await;
    assert_eq!(report.cut, 0);
}

#[tokio::test(start_paused = true)]
async fn a_closed_batcher_refuses_new_items_with_a_clear_error() {
    let inner = Scripted::new(MS);
    let mut svc = BatchLayer::builder().build().unwrap().layer(inner);
    let mut reserved = svc.clone();
    reserved.ready().await.unwrap();
    let handle = svc.handle();
    handle.close();
    let err = svc.ready().await.unwrap_err();
    assert!(matches!(batch_error(err), Error::Closed(Closed::Shutdown)));
    // A slot reserved before the close cannot sneak an item in either.
    let err = bounded(reserved.call(1)).await.unwrap_err();
    assert!(matches!(batch_error(err), Error::Closed(Closed::Shutdown)));
    let report = bounded(handle.drain()).await;
    assert_eq!((report.flushed, report.cut), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn drain_until_flushes_queued_items_within_the_deadline() {
    let inner = Scripted::new(10 * MS);
    let layer = BatchLayer::builder()
        .flush(Flush::Timer)
        .max_latency(Duration::from_secs(3600))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(inner);
    let mut futs = Vec::new();
    for x in 0..5 {
        futs.push(call(&mut svc, x).await);
    }
    let start = Instant::now();
    let report = bounded(handle.drain_until(start + Duration::from_secs(1))).await;
    assert_eq!((report.flushed, report.cut), (5, 0));
    assert_eq!(start.elapsed(), 10 * MS);
    for (x, fut) in futs.into_iter().enumerate() {
        assert_eq!(fut.await.unwrap(), x as u32 * 10);
    }
}

#[tokio::test(start_paused = true)]
async fn the_shutdown_phase_flushes_and_reports_or_cuts_at_its_deadline() {
    use palisade_shutdown::{Shutdown, Trigger};
    for (latency, expect_cut) in [(10 * MS, false), (Duration::from_secs(10), true)] {
        let inner = Scripted::new(latency);
        let layer = BatchLayer::builder()
            .flush(Flush::Timer)
            .max_latency(Duration::from_secs(3600))
            .max_items(2)
            .max_in_flight(1)
            .build()
            .unwrap();
        let shutdown = Shutdown::new();
        shutdown
            .add_phase(layer.handle().drain_phase("flush", Duration::from_secs(1)))
            .unwrap();
        let mut svc = layer.layer(inner);
        let mut futs = Vec::new();
        for x in 0..3 {
            futs.push(call(&mut svc, x).await);
        }
        shutdown.start(Trigger::Requested);
        let start = Instant::now();
        let outcome = bounded(shutdown.run()).await;
        let phase = &outcome.phases[0];
        let results: Vec<_> = futures_util::future::join_all(futs).await;
        if expect_cut {
            // Cut at the deadline: the batch in flight and the queued item
            // are answered with Cut, none is lost.
            assert_eq!(start.elapsed(), Duration::from_secs(1));
            assert_eq!(phase.cut, vec!["3 batch item(s) cut".to_owned()]);
            assert_eq!(phase.finished, vec!["0 batch item(s) flushed".to_owned()]);
            for r in results {
                assert!(matches!(batch_error(r.unwrap_err()), Error::Cut));
            }
        } else {
            assert!(outcome.is_clean(), "{outcome}");
            assert_eq!(start.elapsed(), 20 * MS);
            assert_eq!(phase.finished, vec!["3 batch item(s) flushed".to_owned()]);
            let got: Vec<u32> = results.into_iter().map(Result::unwrap).collect();
            assert_eq!(got, vec![0, 10, 20]);
        }
    }
}

#[test]
fn a_worker_whose_runtime_shuts_down_answers_its_callers() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (inner, _handle) = tower_test::mock::pair::<Vec<u32>, Vec<u32>>();
    let fut = rt.block_on(async {
        let mut svc = BatchLayer::builder().build().unwrap().layer(inner);
        let fut = svc.ready().await.unwrap().call(1);
        tokio::task::yield_now().await;
        // Polled later, on another runtime.
        Some(fut)
    });
    drop(rt);
    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fut = fut.expect("queued");
    let err = other.block_on(async { bounded(fut).await.unwrap_err() });
    let err = batch_error(err);
    assert!(matches!(err, Error::Closed(Closed::WorkerGone)), "{err:?}");
}

#[test]
fn invalid_configuration_names_the_field() {
    let field = |b: palisade_batch::BatchLayerBuilder<u32, u32>| b.build().unwrap_err().field();
    assert_eq!(field(BatchLayer::builder().max_items(0)), "max_items");
    assert_eq!(
        field(BatchLayer::builder().max_in_flight(0)),
        "max_in_flight"
    );
    assert_eq!(
        field(BatchLayer::builder().queue_capacity(0)),
        "queue_capacity"
    );
    assert_eq!(
        field(BatchLayer::builder().max_latency(Duration::ZERO)),
        "max_latency"
    );
    assert_eq!(
        field(BatchLayer::builder().max_weight(0, |_| 1)),
        "max_weight"
    );
    assert_eq!(field(BatchLayer::builder().bisect(0)), "bisect");
    assert_eq!(field(BatchLayer::builder().bisect(17)), "bisect");
    assert_eq!(field(BatchLayer::builder().name("")), "name");
    let err = BatchLayer::<u32, u32>::builder()
        .max_items(0)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid batch configuration: `max_items` must be at least 1"
    );
}
