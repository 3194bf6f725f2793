//! The swappable service step by step (tower-test): new requests go to the
//! newest generation, a request in flight finishes on its own, the serving
//! version is stamped, and a reload unsticks a service that was not ready.

use std::future::poll_fn;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_reload::{Reloader, ServedBy};
use tower::Service;
use tower_test::mock;

type Mock = mock::Mock<http::Request<&'static str>, &'static str>;

fn ready_now<S: Service<R>, R>(s: &mut S) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    matches!(s.poll_ready(&mut cx), Poll::Ready(Ok(())))
}

#[tokio::test]
async fn in_flight_requests_finish_on_their_generation() {
    let (one, mut h1) = mock::pair::<http::Request<&'static str>, &'static str>();
    let (two, mut h2) = mock::pair::<http::Request<&'static str>, &'static str>();
    let reloader = Reloader::builder(move |which: &u8| {
        Ok::<Mock, tower::BoxError>(if *which == 1 {
            one.clone()
        } else {
            two.clone()
        })
    })
    .build(1u8)
    .unwrap();
    let mut service = reloader.service();

    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    let first = service.call(http::Request::new("first"));
    let (req, first_reply) = tokio::time::timeout(Duration::from_secs(5), h1.next_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*req.body(), "first");
    assert_eq!(
        req.extensions().get::<ServedBy>(),
        Some(&ServedBy { version: 1 })
    );

    // Reload while `first` is in flight.
    assert_eq!(reloader.apply(2).await.unwrap(), 2);
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    assert_eq!(service.version(), 2);
    let second = service.call(http::Request::new("second"));
    let (req, second_reply) = tokio::time::timeout(Duration::from_secs(5), h2.next_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*req.body(), "second");
    assert_eq!(
        req.extensions().get::<ServedBy>(),
        Some(&ServedBy { version: 2 })
    );

    // The old generation answers the request it took.
    first_reply.send_response("from one");
    second_reply.send_response("from two");
    assert_eq!(first.await.unwrap(), "from one");
    assert_eq!(second.await.unwrap(), "from two");
    // Nothing else reached either generation.
    assert!(
        futures_util::FutureExt::now_or_never(h1.next_request()).is_none(),
        "no other request reached the old generation"
    );
}

#[tokio::test]
async fn a_reload_unsticks_a_service_that_was_not_ready() {
    let (one, mut h1) = mock::pair::<http::Request<&'static str>, &'static str>();
    let (two, mut h2) = mock::pair::<http::Request<&'static str>, &'static str>();
    h1.allow(0);
    h2.allow(1);
    let reloader = Reloader::builder(move |which: &u8| {
        Ok::<Mock, tower::BoxError>(if *which == 1 {
            one.clone()
        } else {
            two.clone()
        })
    })
    .build(1u8)
    .unwrap();
    let mut service = reloader.service();
    // Backpressure is the inner generation's.
    assert!(!ready_now(&mut service));
    reloader.apply(2).await.unwrap();
    assert!(ready_now(&mut service));
    assert_eq!(service.version(), 2);
    let reply = service.call(http::Request::new("x"));
    let (_, send) = h2.next_request().await.unwrap();
    send.send_response("ok");
    assert_eq!(reply.await.unwrap(), "ok");
}

#[tokio::test]
async fn stamping_can_be_turned_off() {
    let (one, mut h1) = mock::pair::<http::Request<&'static str>, &'static str>();
    let reloader = Reloader::builder(move |_: &u8| Ok::<Mock, tower::BoxError>(one.clone()))
        .build(1u8)
        .unwrap();
    let mut service = reloader.service().stamp_requests(false);
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    let reply = service.call(http::Request::new("x"));
    let (req, send) = h1.next_request().await.unwrap();
    assert_eq!(req.extensions().get::<ServedBy>(), None);
    send.send_response("ok");
    assert_eq!(reply.await.unwrap(), "ok");
}
