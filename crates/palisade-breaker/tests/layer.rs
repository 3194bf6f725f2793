//! The tower layer driven step by step with `tower_test::mock`.

mod support;

use std::time::Duration;

use futures_util::FutureExt;
use palisade_breaker::{
    CircuitBreakerLayer, KeyedCircuitBreakerLayer, Outcome, ReadyMode, Rejected, State,
    WindowCounts, classify_fn,
};
use support::{Log, build, builder};
use tokio::time::advance;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;
use tower_test::{assert_request_eq, mock::Mock};

const SEC: Duration = Duration::from_secs(1);

fn rejected(error: tower::BoxError) -> Rejected {
    *error.downcast_ref::<Rejected>().expect("a rejection")
}

#[tokio::test(start_paused = true)]
async fn open_fails_fast_and_poll_ready_keeps_delegating() {
    let b = build(
        builder(&Log::default())
            .count_window(2)
            .minimum_calls(2)
            .wait_duration(10 * SEC),
    );
    let (mut svc, mut handle) =
        mock::spawn_with(|m: Mock<&str, &str>| CircuitBreakerLayer::new(b.clone()).layer(m));

    // Readiness is the inner service's.
    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    handle.allow(100);
    assert!(svc.poll_ready().is_ready());

    for _ in 0..2 {
        let fut = svc.call("a");
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req, "a");
        send.send_error("boom");
        assert_eq!(fut.await.unwrap_err().to_string(), "boom");
        assert!(svc.poll_ready().is_ready());
    }
    assert_eq!(b.state(), State::Open);

    // Open: still ready (never poisoned), the call is rejected at once and
    // never reaches the inner service.
    assert!(svc.poll_ready().is_ready());
    let err = svc
        .call("b")
        .now_or_never()
        .expect("fails fast")
        .unwrap_err();
    assert_eq!(
        rejected(err),
        Rejected::Open {
            retry_after: 10 * SEC
        }
    );
    assert!(handle.poll_request().is_pending());

    // And readiness still follows the inner service while open (a clone
    // starts without the inner service's reservation).
    let mut other = mock::Spawn::new(svc.get_ref().clone());
    handle.allow(0);
    assert!(other.poll_ready().is_pending());
    handle.allow(1);
    assert!(other.is_woken());
    assert!(other.poll_ready().is_ready());

    // After the wait a probe goes through and closes the breaker.
    advance(10 * SEC).await;
    let fut = svc.call("probe");
    assert_request_eq!(handle, "probe").send_response("ok");
    assert_eq!(fut.await.unwrap(), "ok");
    assert_eq!(b.state(), State::HalfOpen); // 1 of 5 probes
}

#[tokio::test(start_paused = true)]
async fn services_from_one_layer_share_one_breaker() {
    let b = build(builder(&Log::default()).count_window(2).minimum_calls(2));
    let layer = CircuitBreakerLayer::new(b.clone());
    let failing = tower::service_fn(|_: ()| async { Err::<(), _>("down") });
    // Two services, as if built per connection.
    let mut first = layer.layer(failing);
    let mut second = layer.clone().layer(failing);
    let _ = first.ready().await.unwrap().call(()).await;
    let _ = second.ready().await.unwrap().call(()).await;
    assert_eq!(b.state(), State::Open);
    let err = first.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(matches!(rejected(err), Rejected::Open { .. }));
    assert_eq!(layer.breaker().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn dropped_response_future_is_neither_success_nor_failure() {
    let b = build(
        builder(&Log::default())
            .count_window(2)
            .minimum_calls(2)
            .wait_duration(SEC)
            .half_open_probes(1),
    );
    let (mut svc, mut handle) =
        mock::spawn_with(|m: Mock<&str, &str>| CircuitBreakerLayer::new(b.clone()).layer(m));
    handle.allow(100);
    assert!(svc.poll_ready().is_ready());
    drop(svc.call("cancelled"));
    let _unanswered = handle.next_request().await.unwrap();
    assert_eq!(b.counts(), WindowCounts::default());

    b.force_open();
    b.reset();
    for _ in 0..2 {
        assert!(svc.poll_ready().is_ready());
        let fut = svc.call("x");
        assert_request_eq!(handle, "x").send_error("boom");
        let _ = fut.await;
    }
    advance(SEC).await;
    // The probe is cancelled: its slot comes back and the next call probes.
    assert!(svc.poll_ready().is_ready());
    let probe = svc.call("probe 1");
    let _in_flight = handle.next_request().await.unwrap();
    assert!(svc.poll_ready().is_ready());
    assert!(matches!(
        rejected(svc.call("extra").now_or_never().unwrap().unwrap_err()),
        Rejected::HalfOpenSaturated { .. }
    ));
    drop(probe);
    let probe = svc.call("probe 2");
    assert_request_eq!(handle, "probe 2").send_response("ok");
    probe.await.unwrap();
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn custom_classifier_ignores_and_fails_responses() {
    let b = build(builder(&Log::default()).count_window(10).minimum_calls(2));
    let classifier = classify_fn(|r: &Result<u16, tower::BoxError>| match r {
        Ok(404) => Outcome::Ignored,
        Ok(s) if *s >= 500 => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    });
    let mut svc = CircuitBreakerLayer::new(b.clone())
        .classifier(classifier)
        .layer(tower::service_fn(|status: u16| async move {
            Ok::<_, tower::BoxError>(status)
        }));
    svc.ready().await.unwrap().call(404).await.unwrap();
    svc.ready().await.unwrap().call(200).await.unwrap();
    assert_eq!(
        b.counts(),
        WindowCounts {
            calls: 1,
            failures: 0,
            slow_calls: 0
        }
    );
    svc.ready().await.unwrap().call(503).await.unwrap();
    assert_eq!(
        b.counts(),
        WindowCounts {
            calls: 2,
            failures: 1,
            slow_calls: 0
        }
    );
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn wait_mode_is_pending_while_open_and_reserves_probe_slots() {
    let b = build(
        builder(&Log::default())
            .count_window(1)
            .minimum_calls(1)
            .wait_duration(10 * SEC)
            .half_open_probes(1),
    );
    let layer = CircuitBreakerLayer::new(b.clone()).ready_mode(ReadyMode::WaitWhileOpen);
    let (mut first, mut handle) = mock::spawn_with(|m: Mock<&str, &str>| layer.layer(m));
    handle.allow(100);
    assert!(first.poll_ready().is_ready());
    let fut = first.call("a");
    assert_request_eq!(handle, "a").send_error("boom");
    let _ = fut.await;
    assert_eq!(b.state(), State::Open);

    assert!(first.poll_ready().is_pending());
    advance(10 * SEC - Duration::from_millis(1)).await;
    assert!(!first.is_woken());
    advance(Duration::from_millis(1)).await;
    assert!(first.is_woken(), "woken when the wait elapses");
    // Ready now: the only probe slot is reserved by this service.
    assert!(first.poll_ready().is_ready());
    assert_eq!(b.state(), State::HalfOpen);

    let mut second = tower_test::mock::Spawn::new(first.get_ref().clone());
    assert!(second.poll_ready().is_pending());
    // Dropping the service that holds the reservation frees the slot and
    // wakes the waiter.
    drop(first);
    assert!(second.is_woken());
    assert!(second.poll_ready().is_ready());
    let fut = second.call("probe");
    assert_request_eq!(handle, "probe").send_response("ok");
    fut.await.unwrap();
    assert_eq!(b.state(), State::Closed);

    // Forced open: pending until the handle resets it.
    b.force_open();
    assert!(second.poll_ready().is_pending());
    b.reset();
    assert!(second.is_woken());
    assert!(second.poll_ready().is_ready());
}

// Before the fix, a permit reserved while closed stayed "ready" after the
// breaker opened: a balancer's ready cache could still send a call through.
#[tokio::test(start_paused = true)]
async fn wait_mode_revalidates_a_permit_reserved_before_the_breaker_opened() {
    let b = build(
        builder(&Log::default())
            .count_window(1)
            .minimum_calls(1)
            .wait_duration(10 * SEC),
    );
    let layer = CircuitBreakerLayer::new(b.clone()).ready_mode(ReadyMode::WaitWhileOpen);
    let (mut svc, mut handle) = mock::spawn_with(|m: Mock<&str, &str>| layer.layer(m));
    handle.allow(100);
    // Reserved while closed, then the breaker opens under it.
    assert!(svc.poll_ready().is_ready());
    b.force_open();
    assert!(
        svc.poll_ready().is_pending(),
        "a stale reservation is not readiness"
    );
    b.reset();
    assert!(svc.is_woken());
    assert!(svc.poll_ready().is_ready());

    // Ready, then opened between `poll_ready` and `call`: the call is
    // rejected without reaching the service.
    b.force_open();
    let err = svc.call("late").await.unwrap_err();
    assert_eq!(err.downcast_ref::<Rejected>(), Some(&Rejected::ForcedOpen));
    assert!(handle.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_isolate_keys_and_bound_their_number() {
    let config = builder(&Log::default())
        .name("upstream")
        .count_window(2)
        .minimum_calls(2)
        .build()
        .unwrap();
    let layer =
        KeyedCircuitBreakerLayer::new(config, 2, |req: &(&'static str, bool)| req.0).unwrap();
    let mut svc = layer.layer(tower::service_fn(|(_, fail): (&str, bool)| async move {
        if fail { Err("down") } else { Ok(()) }
    }));
    for _ in 0..2 {
        let _ = svc.ready().await.unwrap().call(("a", true)).await;
    }
    let breakers = layer.breakers();
    assert_eq!(breakers.get_existing(&"a").unwrap().state(), State::Open);
    assert_eq!(breakers.get_existing(&"a").unwrap().name(), "upstream/a");
    // Key "b" has its own, closed breaker.
    svc.ready().await.unwrap().call(("b", false)).await.unwrap();
    assert_eq!(breakers.get_existing(&"b").unwrap().state(), State::Closed);
    assert!(matches!(
        rejected(
            svc.ready()
                .await
                .unwrap()
                .call(("a", false))
                .await
                .unwrap_err()
        ),
        Rejected::Open { .. }
    ));
    // A third key exceeds max_keys. Before the fix it shared the overflow
    // breaker with every later key, so one failing newcomer opened it for
    // all of them. Now it evicts the least recently used idle closed
    // breaker ("b"); the open "a" keeps its state.
    svc.ready().await.unwrap().call(("c", false)).await.unwrap();
    assert_eq!(breakers.len(), 2);
    assert!(breakers.get_existing(&"b").is_none());
    assert_eq!(breakers.get_existing(&"c").unwrap().counts().calls, 1);
    assert_eq!(breakers.get_existing(&"a").unwrap().state(), State::Open);
    svc.ready().await.unwrap().call(("d", false)).await.unwrap();
    assert!(breakers.get_existing(&"c").is_none());
    assert_eq!(breakers.get_existing(&"d").unwrap().name(), "upstream/d");
    assert_eq!(breakers.evictions(), 2);
    assert_eq!(breakers.overflow().counts().calls, 0);

    // A breaker with a call in flight is not idle, an open one is kept:
    // with nothing evictable, a new key falls back to the overflow breaker.
    let held = breakers.get(&"d");
    svc.ready().await.unwrap().call(("e", false)).await.unwrap();
    assert!(breakers.get_existing(&"e").is_none());
    assert_eq!(breakers.overflow().counts().calls, 1);
    assert_eq!(breakers.overflow().name(), "upstream/overflow");
    assert_eq!(breakers.evictions(), 2);
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn keys_given_up_front_exist_before_the_first_call() {
    use palisade_breaker::KeyedBreakers;
    use std::sync::Arc;

    let config = builder(&Log::default()).name("up").build().unwrap();
    assert_eq!(
        KeyedBreakers::new(config.clone(), 2)
            .unwrap()
            .with_keys([0usize, 1, 2])
            .unwrap_err()
            .field(),
        "max_keys"
    );
    let breakers = Arc::new(
        KeyedBreakers::new(config, 3)
            .unwrap()
            .with_keys([0usize, 1])
            .unwrap(),
    );
    assert_eq!(breakers.len(), 2);
    assert_eq!(breakers.get_existing(&1).unwrap().name(), "up/1");
    let layer = KeyedCircuitBreakerLayer::from_breakers(breakers.clone(), |req: &usize| *req);
    let mut svc = layer.layer(tower::service_fn(|_: usize| async {
        Ok::<_, std::io::Error>(())
    }));
    svc.ready().await.unwrap().call(1).await.unwrap();
    svc.ready().await.unwrap().call(7).await.unwrap();
    assert_eq!(breakers.get_existing(&7).unwrap().counts().calls, 1);
    svc.ready().await.unwrap().call(8).await.unwrap();
    assert_eq!(breakers.get_existing(&1).unwrap().counts().calls, 1);
    // 0, 1 and 7 fill max_keys = 3: key 8 evicts the idle dynamic key 7;
    // keys given up front are never evicted.
    assert!(breakers.get_existing(&7).is_none());
    assert_eq!(breakers.get_existing(&8).unwrap().counts().calls, 1);
    assert!(breakers.get_existing(&0).is_some());
    assert_eq!(breakers.evictions(), 1);
    assert_eq!(breakers.overflow().counts().calls, 0);
}
