//! The tower layer, step by step with `tower_test::mock`, under paused time.

use std::{task::Poll, time::Duration};

use palisade_ratelimit::{
    Clock, KeyedLimiter, Limiter, PerKey, Quota, RateLimitLayer, RateLimited, key_fn,
};
use tower_test::mock::{self, Spawn};

/// 1 cell per 100 ms, burst `burst`, on tokio time.
fn limiter(burst: u32) -> Limiter {
    let quota = Quota::builder()
        .rate(10)
        .per(Duration::from_secs(1))
        .burst(burst)
        .build()
        .unwrap();
    Limiter::builder(quota).clock(Clock::tokio()).build()
}

fn is_ready<T>(poll: Poll<Result<(), T>>) -> bool {
    match poll {
        Poll::Ready(Ok(())) => true,
        Poll::Ready(Err(_)) => panic!("poll_ready failed"),
        Poll::Pending => false,
    }
}

#[tokio::test(start_paused = true)]
async fn reject_mode_delegates_readiness_and_rejects_in_call() {
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(RateLimitLayer::new(limiter(2)));

    // poll_ready is the inner service's readiness, nothing more.
    handle.allow(0);
    assert!(!is_ready(svc.poll_ready()));
    handle.allow(10);
    assert!(svc.is_woken());
    assert!(is_ready(svc.poll_ready()));

    for req in ["a", "b"] {
        assert!(is_ready(svc.poll_ready()));
        let fut = svc.call(req);
        let (seen, send) = handle.next_request().await.unwrap();
        assert_eq!(seen, req);
        send.send_response("ok");
        assert_eq!(fut.await.unwrap(), "ok");
    }

    // Third request: rejected at once, the inner service never sees it.
    assert!(is_ready(svc.poll_ready()));
    let err = svc.call("c").await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(limited.policy(), "global");
    assert_eq!(limited.retry_after(), Duration::from_millis(100));
    assert!(handle.poll_request().is_pending());

    // A clone built from the same layer shares the exhausted state.
    let mut clone = svc.clone();
    assert!(is_ready(clone.poll_ready()));
    assert!(clone.call("d").await.is_err());

    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(is_ready(clone.poll_ready()));
    let fut = clone.call("e");
    let (seen, send) = handle.next_request().await.unwrap();
    assert_eq!(seen, "e");
    send.send_response("ok");
    assert_eq!(fut.await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn services_built_per_connection_share_one_limiter() {
    let layer = RateLimitLayer::new(limiter(1));
    let (mut first, mut h1) = mock::spawn_layer::<&str, &str, _>(layer.clone());
    let (mut second, mut h2) = mock::spawn_layer::<&str, &str, _>(layer);
    assert!(is_ready(first.poll_ready()));
    let fut = first.call("a");
    h1.next_request().await.unwrap().1.send_response("ok");
    fut.await.unwrap();
    assert!(is_ready(second.poll_ready()));
    assert!(second.call("b").await.is_err());
    assert!(h2.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn wait_mode_pends_until_a_cell_is_due_and_call_consumes_it() {
    let (mut svc, mut handle) =
        mock::spawn_layer::<&str, &str, _>(RateLimitLayer::wait(limiter(1)));

    assert!(is_ready(svc.poll_ready()));
    // Ready again without a call: the reservation is kept, not doubled.
    assert!(is_ready(svc.poll_ready()));
    let fut = svc.call("a");
    let (seen, send) = handle.next_request().await.unwrap();
    assert_eq!(seen, "a");
    send.send_response("ok");
    fut.await.unwrap();

    // The next cell is due in 100 ms.
    assert!(!is_ready(svc.poll_ready()));
    tokio::time::advance(Duration::from_millis(99)).await;
    assert!(!svc.is_woken());
    assert!(!is_ready(svc.poll_ready()));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(svc.is_woken());
    assert!(is_ready(svc.poll_ready()));

    // A clone starts with nothing reserved: the cell above belongs to `svc`,
    // so the clone books the one after it.
    let mut clone = svc.clone();
    assert!(!is_ready(clone.poll_ready()));

    let fut = svc.call("b");
    let (seen, send) = handle.next_request().await.unwrap();
    assert_eq!(seen, "b");
    send.send_response("ok");
    fut.await.unwrap();

    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(clone.is_woken());
    assert!(is_ready(clone.poll_ready()));
}

#[tokio::test(start_paused = true)]
async fn wait_mode_wakes_waiters_one_at_a_time() {
    let layer = RateLimitLayer::wait(limiter(1));
    let (mut first, _handle) = mock::spawn_layer::<&str, &str, _>(layer.clone());
    assert!(is_ready(first.poll_ready()));

    let mut waiters: Vec<Spawn<_>> = (0..3)
        .map(|_| mock::spawn_layer::<&str, &str, _>(layer.clone()))
        .map(|(svc, handle)| {
            std::mem::forget(handle);
            svc
        })
        .collect();
    for waiter in &mut waiters {
        assert!(!is_ready(waiter.poll_ready()));
    }
    // Each waiter booked its own slot (100, 200, 300 ms): each tick of the
    // clock wakes exactly one of them.
    for due in 0..3 {
        tokio::time::advance(Duration::from_millis(100)).await;
        for (i, waiter) in waiters.iter_mut().enumerate() {
            assert_eq!(waiter.is_woken(), i == due, "tick {due}, waiter {i}");
        }
        assert!(is_ready(waiters[due].poll_ready()));
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_a_waiting_service_gives_its_cell_back() {
    let layer = RateLimitLayer::wait(limiter(1));
    let (mut first, _h1) = mock::spawn_layer::<&str, &str, _>(layer.clone());
    assert!(is_ready(first.poll_ready()));
    let (mut second, _h2) = mock::spawn_layer::<&str, &str, _>(layer.clone());
    assert!(!is_ready(second.poll_ready())); // booked the 100 ms slot
    drop(second);
    drop(first); // its reserved (due) cell is given back too

    let (mut third, _h3) = mock::spawn_layer::<&str, &str, _>(layer);
    assert!(is_ready(third.poll_ready()));
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "without poll_ready")]
async fn wait_mode_call_without_ready_panics() {
    let (mut svc, _handle) = mock::spawn_layer::<&str, &str, _>(RateLimitLayer::wait(limiter(1)));
    drop(svc.call("a"));
}

#[tokio::test(start_paused = true)]
async fn keyed_policy_in_wait_mode_is_checked_in_call() {
    let keyed = KeyedLimiter::builder(Quota::per_second(1).unwrap())
        .clock(Clock::tokio())
        .build()
        .unwrap();
    let policy = PerKey::new(keyed, key_fn(|req: &&str| Some(req.to_string())));
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(RateLimitLayer::wait(policy));
    assert!(is_ready(svc.poll_ready()));
    let fut = svc.call("a");
    handle.next_request().await.unwrap().1.send_response("ok");
    fut.await.unwrap();
    assert!(is_ready(svc.poll_ready()));
    assert!(svc.call("a").await.is_err());
}

// Before the fix tuples did not forward the reservation: `wait((a, b))` was
// Ready at once and the second call failed with RateLimited in `call`.
#[tokio::test(start_paused = true)]
async fn wait_mode_with_a_tuple_books_every_member_and_waits_for_the_slowest() {
    let fast = Limiter::builder(
        Quota::builder()
            .rate(100)
            .per(Duration::from_secs(1))
            .burst(1)
            .build()
            .unwrap(),
    )
    .name("fast")
    .clock(Clock::tokio())
    .build();
    let layer = RateLimitLayer::wait((fast, limiter(1)));
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(layer.clone());
    assert!(is_ready(svc.poll_ready()));
    let fut = svc.call("a");
    handle.next_request().await.unwrap().1.send_response("ok");
    fut.await.unwrap();

    // Next cells: 10 ms for `fast`, 100 ms for the other: wait for both.
    assert!(!is_ready(svc.poll_ready()));
    tokio::time::advance(Duration::from_millis(99)).await;
    assert!(!svc.is_woken());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(svc.is_woken());
    assert!(is_ready(svc.poll_ready()));
    let fut = svc.call("b");
    handle.next_request().await.unwrap().1.send_response("ok");
    fut.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn wait_mode_tuple_with_a_keyed_member_checks_it_in_call_and_gives_the_booking_back() {
    let keyed = KeyedLimiter::builder(Quota::per_second(1).unwrap())
        .name("per-key")
        .clock(Clock::tokio())
        .build()
        .unwrap();
    let per_key = PerKey::new(keyed, key_fn(|req: &&str| Some(req.to_string())));
    let layer = RateLimitLayer::wait((per_key, limiter(2)));
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(layer.clone());
    assert!(is_ready(svc.poll_ready()));
    let fut = svc.call("a");
    handle.next_request().await.unwrap().1.send_response("ok");
    fut.await.unwrap();
    // The key is spent: rejected in call, and the global cell booked for it
    // is given back.
    assert!(is_ready(svc.poll_ready()));
    let err = svc.call("a").await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<RateLimited>().unwrap().policy(),
        "per-key"
    );
    // Burst 2, one used: the next key still gets a due cell.
    assert!(is_ready(svc.poll_ready()));
    let fut = svc.call("b");
    handle.next_request().await.unwrap().1.send_response("ok");
    fut.await.unwrap();
}

// Before the fix the wait was unbounded: the third caller booked a cell
// 200 ms out (and a thousandth would book 100 s out).
#[tokio::test(start_paused = true)]
async fn wait_mode_rejects_beyond_max_wait_without_booking() {
    let layer = RateLimitLayer::wait(limiter(1)).max_wait(Duration::from_millis(150));
    let (mut first, mut h1) = mock::spawn_layer::<&str, &str, _>(layer.clone());
    assert!(is_ready(first.poll_ready()));
    let (mut second, _h2) = mock::spawn_layer::<&str, &str, _>(layer.clone());
    assert!(!is_ready(second.poll_ready())); // due in 100 ms
    let (mut third, mut h3) = mock::spawn_layer::<&str, &str, _>(layer.clone());
    // Due in 200 ms > 150 ms: ready at once, and the call is rejected.
    assert!(is_ready(third.poll_ready()));
    let err = third.call("c").await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
    assert_eq!(limited.retry_after(), Duration::from_millis(200));
    assert!(h3.poll_request().is_pending());
    // Nothing was booked for it: the next free cell after `second` is at
    // 200 ms, so a new caller can book it once 50 ms have passed.
    tokio::time::advance(Duration::from_millis(50)).await;
    assert!(!is_ready(third.poll_ready()));
    let fut = first.call("a");
    h1.next_request().await.unwrap().1.send_response("ok");
    fut.await.unwrap();
}

#[test]
fn the_default_max_wait_is_five_seconds() {
    assert_eq!(palisade_ratelimit::DEFAULT_MAX_WAIT, Duration::from_secs(5));
    let layer = RateLimitLayer::wait(limiter(1));
    assert!(format!("{layer:?}").contains("max_wait: 5s"));
}

/// An `Arc`'d policy shared by two stacks (two generations of a hot reload)
/// charges one budget.
#[tokio::test(start_paused = true)]
async fn an_arc_policy_is_shared_by_two_stacks() {
    let shared = std::sync::Arc::new(limiter(1));
    let (first, mut h1) = mock::spawn_layer::<&str, &str, _>(RateLimitLayer::new(shared.clone()));
    let (second, mut h2) = mock::spawn_layer::<&str, &str, _>(RateLimitLayer::new(shared));
    let (mut first, mut second) = (first, second);
    h1.allow(1);
    h2.allow(1);
    assert!(matches!(first.poll_ready(), Poll::Ready(Ok(()))));
    let reply = first.call("a");
    let (_, send) = h1.next_request().await.unwrap();
    send.send_response("ok");
    assert_eq!(reply.await.unwrap(), "ok");
    // The one cell is spent: the other stack is limited too.
    assert!(second.poll_ready().is_ready());
    let err = second.call("b").await.unwrap_err();
    assert!(err.is::<RateLimited>(), "{err}");
}
