//! Spread and fan_out_fan_in: the window bound, order, readiness before
//! each item, fail-fast cancellation.

mod support;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use palisade_fanout::ItemFailed;
use palisade_fanout::spread::{Failure, Order, SpreadLayer, fan_out_fan_in, try_fan_out_fan_in};
use support::{Mock, err, ok, poll_once, timed};
use tower::{BoxError, Layer, ServiceExt};

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn in_flight_never_exceeds_the_concurrency() {
    // Latencies 1..=7 ms cycling, so completions interleave.
    let mock = Mock::new((1..=7).map(|ms| ok(ms, ms as u32)));
    let svc = SpreadLayer::new(4).unwrap().layer(mock.clone());
    let (out, _) = timed(svc.oneshot(0..100u32)).await;
    let out = out.unwrap();
    assert_eq!(out.len(), 100);
    assert_eq!(mock.stats.max_live(), 4);
    assert_eq!(mock.stats.calls(), 100);
}

#[tokio::test(start_paused = true)]
async fn results_come_in_input_order_or_completion_order() {
    // Item i takes (5 - i) * 10 ms: completion order is the reverse.
    let script = [ok(50, 0), ok(40, 1), ok(30, 2), ok(20, 3), ok(10, 4)];
    let svc = SpreadLayer::new(5).unwrap().layer(Mock::new(script));
    let (out, took) = timed(svc.oneshot(0..5u32)).await;
    let idx: Vec<usize> = out.unwrap().iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, [0, 1, 2, 3, 4]);
    assert_eq!(took, 50 * MS);

    let svc = SpreadLayer::new(5)
        .unwrap()
        .order(Order::Completion)
        .layer(Mock::new(script));
    let (out, _) = timed(svc.oneshot(0..5u32)).await;
    let idx: Vec<usize> = out.unwrap().iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, [4, 3, 2, 1, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_freed_slot_is_refilled_at_once_whatever_the_order() {
    // n = 2; item 0 takes 100 ms, the others 10 ms each: items 1..=9 run
    // one after another in the second slot while item 0 is still running.
    let mut script = vec![ok(100, 0)];
    script.extend((1..10).map(|i| ok(10, i)));
    let mock = Mock::new(script);
    let svc = SpreadLayer::new(2).unwrap().layer(mock.clone());
    let (out, took) = timed(svc.oneshot(0..10u32)).await;
    assert_eq!(out.unwrap().len(), 10);
    assert_eq!(took, 100 * MS);
    assert_eq!(
        mock.stats.called_at_ms(),
        [0, 0, 10, 20, 30, 40, 50, 60, 70, 80]
    );
}

#[tokio::test(start_paused = true)]
async fn no_item_is_pulled_before_the_service_is_ready() {
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    handle.allow(0);
    let pulled = Rc::new(Cell::new(0));
    let p = pulled.clone();
    let items = (0..3u32).inspect(move |_| p.set(p.get() + 1));
    let svc = SpreadLayer::new(2).unwrap().layer(mock);
    let mut fut = Box::pin(svc.oneshot(items));

    assert!(poll_once(fut.as_mut()).is_pending());
    assert_eq!(
        pulled.get(),
        0,
        "nothing pulled while the service is not ready"
    );

    handle.allow(1);
    assert!(poll_once(fut.as_mut()).is_pending());
    assert_eq!(pulled.get(), 1);
    let (req, send) = handle.next_request().await.expect("first item");
    assert_eq!(req, 0);

    handle.allow(2);
    assert!(poll_once(fut.as_mut()).is_pending());
    // The window (2) is full: the third item stays in the iterator.
    assert_eq!(pulled.get(), 2);
    send.send_response(10);
    assert!(poll_once(fut.as_mut()).is_pending());
    assert_eq!(pulled.get(), 3);
    let (_, send1) = handle.next_request().await.unwrap();
    let (_, send2) = handle.next_request().await.unwrap();
    send1.send_response(11);
    send2.send_response(12);
    let out = match poll_once(fut.as_mut()) {
        std::task::Poll::Ready(out) => out.unwrap(),
        std::task::Poll::Pending => panic!("every item answered"),
    };
    let values: Vec<u32> = out.into_iter().map(|(_, r)| r.unwrap()).collect();
    assert_eq!(values, [10, 11, 12]);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_stops_at_the_first_failure_and_cancels_the_rest() {
    let mock = Mock::new([ok(100, 0), ok(100, 1), err(5), ok(100, 3)]);
    let pulled = Rc::new(Cell::new(0));
    let p = pulled.clone();
    let items = (0..10u32).inspect(move |_| p.set(p.get() + 1));
    let svc = SpreadLayer::new(3)
        .unwrap()
        .failure(Failure::FailFast)
        .layer(mock.clone());
    let (out, took) = timed(svc.oneshot(items)).await;
    let e = out.unwrap_err();
    assert_eq!(
        e.downcast_ref::<ItemFailed>().expect("ItemFailed").index(),
        2
    );
    assert_eq!(took, 5 * MS);
    assert_eq!(pulled.get(), 3);
    assert_eq!(mock.stats.calls(), 3);
    assert_eq!(mock.stats.cancelled(), 2);
    assert_eq!(mock.stats.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn collect_all_keeps_every_failure() {
    let svc = SpreadLayer::new(2)
        .unwrap()
        .layer(Mock::new([ok(1, 0), err(1), ok(1, 2)]));
    let (out, _) = timed(svc.oneshot(0..3u32)).await;
    let ok: Vec<bool> = out.unwrap().iter().map(|(_, r)| r.is_ok()).collect();
    assert_eq!(ok, [true, false, true]);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_response_future_cancels_the_items_in_flight() {
    let mock = Mock::new([ok(100, 0)]);
    let svc = SpreadLayer::new(3).unwrap().layer(mock.clone());
    let _ = tokio::time::timeout(10 * MS, svc.oneshot(0..10u32)).await;
    assert_eq!(mock.stats.calls(), 3);
    assert_eq!(mock.stats.live(), 0);
    assert_eq!(mock.stats.cancelled(), 3);
}

#[tokio::test(start_paused = true)]
async fn fan_out_fan_in_keeps_n_in_flight_and_input_order() {
    let live = Rc::new(Cell::new(0usize));
    let max = Rc::new(Cell::new(0usize));
    let (l, m) = (live.clone(), max.clone());
    let (out, took) = timed(fan_out_fan_in(0..20u64, 5, move |i| {
        let (l, m) = (l.clone(), m.clone());
        async move {
            l.set(l.get() + 1);
            m.set(m.get().max(l.get()));
            tokio::time::sleep(Duration::from_millis(20 - i)).await;
            l.set(l.get() - 1);
            i * 2
        }
    }))
    .await;
    assert_eq!(out, (0..20).map(|i| i * 2).collect::<Vec<_>>());
    assert_eq!(max.get(), 5);
    assert!(took < 20 * 20 * MS);
}

#[tokio::test(start_paused = true)]
async fn try_fan_out_fan_in_fails_fast() {
    let started = Rc::new(Cell::new(0));
    let s = started.clone();
    let (out, took) = timed(try_fan_out_fan_in(0..100u64, 4, move |i| {
        s.set(s.get() + 1);
        async move {
            tokio::time::sleep(Duration::from_millis(if i == 1 { 5 } else { 50 })).await;
            if i == 1 {
                Err(BoxError::from("item 1"))
            } else {
                Ok(i)
            }
        }
    }))
    .await;
    assert_eq!(out.unwrap_err().to_string(), "item 1");
    assert_eq!(took, 5 * MS);
    assert_eq!(started.get(), 4);
}

#[test]
fn concurrency_zero_is_a_config_error() {
    assert_eq!(SpreadLayer::new(0).unwrap_err().field(), "concurrency");
}

#[tokio::test(start_paused = true)]
async fn an_inner_readiness_error_ends_the_call() {
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    handle.send_error("broken");
    let svc = SpreadLayer::new(2).unwrap().layer(mock);
    let (out, _) = timed(svc.oneshot(0..3u32)).await;
    assert_eq!(out.unwrap_err().to_string(), "broken");
}
