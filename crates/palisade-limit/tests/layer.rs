//! The tower layer driven step by step with `tower_test::mock`: reservation
//! in `poll_ready`, clones, cancellation, panics, deadlines, and the HTTP
//! layer's body-end release and gRPC answers.
#![cfg(feature = "http")]

use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use palisade_limit::http::{HttpPolicy, layer as http_layer};
use palisade_limit::{
    AdaptiveLimitLayer, Aimd, Deadline, Fixed, Limiter, Mode, Overloaded, Reason,
};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock::{self, Mock};

fn fixed(limit: usize) -> palisade_limit::LimiterBuilder {
    Limiter::builder().algorithm(Fixed::new(limit))
}

fn overloaded(error: tower::BoxError) -> Overloaded {
    error
        .downcast_ref::<Overloaded>()
        .expect("an Overloaded")
        .clone()
}

#[tokio::test(start_paused = true)]
async fn poll_ready_reserves_call_consumes_and_clones_start_unreserved() {
    let limiter = fixed(1).build().unwrap();
    let (mut svc, mut handle) =
        mock::spawn_with(|m: Mock<&str, &str>| AdaptiveLimitLayer::new(limiter.clone()).layer(m));
    handle.allow(10);
    assert!(svc.poll_ready().is_ready());
    assert_eq!(limiter.in_flight(), 1, "reserved in poll_ready");
    // A second service from the same layer shares the limit: full, so its
    // readiness is a refusal, and the inner service is never called.
    let mut other =
        AdaptiveLimitLayer::new(limiter.clone()).layer(tower::service_fn(|_: &str| async {
            Ok::<_, tower::BoxError>("never")
        }));
    let err = other.ready().await.unwrap().call("x").await.unwrap_err();
    assert_eq!(overloaded(err).reason(), Reason::LimitReached);

    let fut = svc.call("a");
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, "a");
    assert_eq!(
        limiter.in_flight(),
        1,
        "the reservation became the call's permit"
    );
    send.send_response("ok");
    assert_eq!(fut.await.unwrap(), "ok");
    assert_eq!(limiter.in_flight(), 0);

    // A reserved service dropped unused gives its slot back.
    assert!(svc.poll_ready().is_ready());
    assert_eq!(limiter.in_flight(), 1);
    drop(svc);
    assert_eq!(limiter.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_and_a_panicking_inner_service_give_the_slot_back() {
    let limiter = fixed(2).build().unwrap();
    let (mut svc, mut handle) =
        mock::spawn_with(|m: Mock<&str, &str>| AdaptiveLimitLayer::new(limiter.clone()).layer(m));
    handle.allow(10);
    assert!(svc.poll_ready().is_ready());
    let fut = svc.call("a");
    let _pending = handle.next_request().await.unwrap();
    drop(fut);
    assert_eq!(limiter.in_flight(), 0, "cancelled: slot back, no sample");

    let layer = AdaptiveLimitLayer::new(limiter.clone());
    let mut panics = layer.layer(tower::service_fn(|_: ()| async {
        panic!("inner future panics");
        #[allow(unreachable_code)]
        Ok::<(), tower::BoxError>(())
    }));
    let fut = panics.ready().await.unwrap().call(());
    let caught = std::panic::AssertUnwindSafe(fut).catch_unwind().await;
    assert!(caught.is_err());
    assert_eq!(limiter.in_flight(), 0, "a panic unwinds through the permit");
}

#[tokio::test(start_paused = true)]
async fn queue_mode_waits_in_poll_ready_and_is_woken_by_the_release() {
    let limiter = fixed(1).mode(Mode::Queue).build().unwrap();
    let (mut svc, mut handle) =
        mock::spawn_with(|m: Mock<&str, &str>| AdaptiveLimitLayer::new(limiter.clone()).layer(m));
    handle.allow(10);
    let held = limiter.try_acquire(0).unwrap();
    assert!(svc.poll_ready().is_pending());
    assert_eq!(limiter.queued(), 1);
    assert!(!svc.is_woken());
    held.record(palisade_limit::Outcome::Ignored);
    assert!(svc.is_woken(), "the release wakes the waiter");
    assert!(svc.poll_ready().is_ready());
    assert_eq!((limiter.in_flight(), limiter.queued()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_is_never_started_and_a_live_one_is_forwarded_reduced() {
    let limiter = fixed(4).build().unwrap();
    let (mut svc, mut handle) = mock::spawn_with(|m: Mock<Request<()>, Response<Full<Bytes>>>| {
        http_layer(limiter.clone(), HttpPolicy::default()).layer(m)
    });
    handle.allow(10);

    // The Deadline extension has passed: refused, the inner service never sees it.
    let mut late = Request::new(());
    late.extensions_mut()
        .insert(Deadline(tokio::time::Instant::now()));
    assert!(svc.poll_ready().is_ready());
    let err = svc.call(late).await.unwrap_err();
    assert_eq!(overloaded(err).reason(), Reason::DeadlineExceeded);
    assert_eq!(limiter.in_flight(), 0);

    // grpc-timeout 500m: forwarded as is (no time passed), with the
    // Deadline extension for the layers below.
    let req = Request::builder()
        .header("grpc-timeout", "500m")
        .body(())
        .unwrap();
    assert!(svc.poll_ready().is_ready());
    let fut = svc.call(req);
    let (seen, send) = handle.next_request().await.unwrap();
    assert_eq!(seen.headers()["grpc-timeout"], "500m");
    assert_eq!(
        seen.extensions().get::<Deadline>().unwrap().0,
        tokio::time::Instant::now() + Duration::from_millis(500)
    );
    send.send_response(Response::new(Full::new(Bytes::new())));
    fut.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_forwards_its_timeout_less_its_wait() {
    let limiter = fixed(1).mode(Mode::Queue).build().unwrap();
    let (mut svc, mut handle) = mock::spawn_with(|m: Mock<Request<()>, Response<Full<Bytes>>>| {
        http_layer(
            limiter.clone(),
            HttpPolicy::default().deadline_header(http::HeaderName::from_static("x-timeout-ms")),
        )
        .layer(m)
    });
    handle.allow(10);
    let held = limiter.try_acquire(0).unwrap();
    assert!(svc.poll_ready().is_pending());
    tokio::time::advance(Duration::from_millis(30)).await;
    drop(held);
    assert!(svc.poll_ready().is_ready());
    let req = Request::builder()
        .header("x-timeout-ms", "200")
        .body(())
        .unwrap();
    let fut = svc.call(req);
    let (seen, send) = handle.next_request().await.unwrap();
    assert_eq!(seen.headers()["x-timeout-ms"], "170");
    send.send_response(Response::new(Full::new(Bytes::new())));
    fut.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn http_holds_the_slot_until_the_body_ends_and_503_is_a_drop() {
    let limiter = Limiter::builder()
        .algorithm(
            Aimd::builder()
                .min_limit(1)
                .initial_limit(10)
                .max_limit(10)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    type Chunks = BoxBody<Bytes, std::convert::Infallible>;
    let (mut svc, mut handle) = mock::spawn_with(|m: Mock<Request<()>, Response<Chunks>>| {
        http_layer(limiter.clone(), HttpPolicy::default()).layer(m)
    });
    handle.allow(10);
    assert!(svc.poll_ready().is_ready());
    let fut = svc.call(Request::new(()));
    let (_, send) = handle.next_request().await.unwrap();
    let frames = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"a"))),
        Ok(http_body::Frame::data(Bytes::from_static(b"b"))),
    ];
    send.send_response(Response::new(
        StreamBody::new(futures_util::stream::iter(frames)).boxed(),
    ));
    let response = fut.await.unwrap();
    assert_eq!(limiter.in_flight(), 1, "the body still streams");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ab");
    assert_eq!(limiter.in_flight(), 0, "released at the body's end");
    assert_eq!(limiter.limit(), 10);

    // An upstream 503 is a drop: AIMD backs off (10 * 0.9 = 9).
    assert!(svc.poll_ready().is_ready());
    let fut = svc.call(Request::new(()));
    let (_, send) = handle.next_request().await.unwrap();
    let mut busy = Response::new(Chunks::default());
    *busy.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    send.send_response(busy);
    assert_eq!(fut.await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!((limiter.in_flight(), limiter.limit()), (0, 9));
}

#[tokio::test(start_paused = true)]
async fn a_refused_grpc_call_is_answered_unavailable_in_band() {
    let limiter = fixed(1).build().unwrap();
    let (mut svc, mut handle) = mock::spawn_with(|m: Mock<Request<()>, Response<Full<Bytes>>>| {
        http_layer(limiter.clone(), HttpPolicy::default()).layer(m)
    });
    handle.allow(10);
    let _held = limiter.try_acquire(0).unwrap();
    let req = Request::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    assert!(svc.poll_ready().is_ready());
    let response = svc.call(req).now_or_never().unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(response.headers()["grpc-retry-pushback-ms"], "1000");
    // and plain HTTP gets the error, which palisade's error_response maps
    assert!(svc.poll_ready().is_ready());
    let err = svc.call(Request::new(())).await.unwrap_err();
    assert_eq!(overloaded(err).retry_after(), Duration::from_secs(1));
}
