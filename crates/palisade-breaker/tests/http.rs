//! The `http` feature: 5xx as failures, 503 + Retry-After for rejections.
#![cfg(feature = "http")]

mod support;

use std::time::Duration;

use http::{Response, StatusCode};
use palisade_breaker::http::{
    HttpClassifier, rejected_response, response_for_error, retry_after_secs,
};
use palisade_breaker::{CircuitBreakerLayer, Classify, Outcome, Rejected, State};
use support::{Log, build, builder};
use tower::{BoxError, Layer, Service, ServiceExt};

fn status(code: u16) -> Result<Response<()>, BoxError> {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    Ok(r)
}

#[test]
fn classifier_counts_5xx_and_errors() {
    let c = HttpClassifier::default();
    assert_eq!(c.classify(&status(200)), Outcome::Success);
    assert_eq!(c.classify(&status(404)), Outcome::Success);
    assert_eq!(c.classify(&status(499)), Outcome::Success);
    assert_eq!(c.classify(&status(500)), Outcome::Failure);
    assert_eq!(c.classify(&status(599)), Outcome::Failure);
    assert_eq!(
        c.classify(&Err::<Response<()>, BoxError>("io".into())),
        Outcome::Failure
    );

    let only_gateway =
        HttpClassifier::from_statuses([StatusCode::BAD_GATEWAY, StatusCode::GATEWAY_TIMEOUT])
            .with_status(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(only_gateway.classify(&status(500)), Outcome::Success);
    assert_eq!(only_gateway.classify(&status(502)), Outcome::Failure);
    assert_eq!(only_gateway.classify(&status(504)), Outcome::Failure);
    assert_eq!(only_gateway.classify(&status(429)), Outcome::Failure);
    assert_eq!(only_gateway.classify(&status(999)), Outcome::Success);
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    assert_eq!(retry_after_secs(Duration::from_secs(5)), 5);
    assert_eq!(retry_after_secs(Duration::from_millis(5_001)), 6);
    assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
    assert_eq!(retry_after_secs(Duration::ZERO), 1);

    let r: Response<()> = rejected_response(&Rejected::Open {
        retry_after: Duration::from_millis(1_200),
    });
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "2");
    let r: Response<()> = rejected_response(&Rejected::ForcedOpen);
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().get("retry-after").is_none());
}

#[tokio::test(start_paused = true)]
async fn server_errors_open_the_breaker_and_rejections_map_to_503() {
    let b = build(
        builder(&Log::default())
            .count_window(3)
            .minimum_calls(3)
            .wait_duration(Duration::from_millis(2_500)),
    );
    let mut svc = CircuitBreakerLayer::new(b.clone())
        .classifier(HttpClassifier::default())
        .layer(tower::service_fn(|code: u16| async move { status(code) }));
    for code in [200, 502, 503] {
        let r = svc.ready().await.unwrap().call(code).await.unwrap();
        assert_eq!(r.status().as_u16(), code);
    }
    assert_eq!(b.state(), State::Open);
    let err = svc.ready().await.unwrap().call(200).await.unwrap_err();
    let r: Response<()> = response_for_error(&*err).expect("a rejection");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "3");
    let other: BoxError = "not a rejection".into();
    assert!(response_for_error::<()>(&*other).is_none());
}

type Frames = http_body_util::StreamBody<
    futures_util::stream::Iter<
        std::vec::IntoIter<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>,
    >,
>;

/// A 200 whose body yields one chunk, then fails (`fail`) or ends.
fn streamed(fail: bool) -> Response<Frames> {
    let mut frames = vec![Ok(http_body::Frame::data(bytes::Bytes::from_static(
        b"half",
    )))];
    if fail {
        frames.push(Err(std::io::Error::other("upstream reset mid-body")));
    }
    Response::new(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

async fn read_to_end<B: http_body::Body>(body: B) -> bool {
    http_body_util::BodyExt::collect(body).await.is_ok()
}

// A 200 whose body fails mid-stream: classified at the head it counts as a
// success (what CircuitBreakerLayer + HttpClassifier does), classified at
// the body's end it counts as a failure.
#[tokio::test(start_paused = true)]
async fn body_end_classification_sees_a_body_failing_mid_stream() {
    use palisade_breaker::http::BodyEndLayer;
    let at_head = build(builder(&Log::default()).count_window(1).minimum_calls(1));
    let at_end = build(builder(&Log::default()).count_window(1).minimum_calls(1));
    let inner = tower::service_fn(|fail: http::Request<bool>| async move {
        Ok::<_, BoxError>(streamed(*fail.body()))
    });

    let mut head = CircuitBreakerLayer::new(at_head.clone())
        .classifier(HttpClassifier::default())
        .layer(inner);
    let response = head
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(true))
        .await
        .unwrap();
    assert!(!read_to_end(response.into_body()).await);
    assert_eq!(at_head.state(), State::Closed, "the head said 200");

    let mut end = BodyEndLayer::new(at_end.clone()).layer(inner);
    // A body read to its end is a success.
    let ok = end.ready().await.unwrap().call(http::Request::new(false));
    assert!(read_to_end(ok.await.unwrap().into_body()).await);
    assert_eq!(at_end.counts().calls, 1);
    assert_eq!(at_end.state(), State::Closed);
    // The same 200 failing mid-body opens the breaker.
    let failing = end.ready().await.unwrap().call(http::Request::new(true));
    let response = failing.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        at_end.state(),
        State::Closed,
        "undecided until the body ends"
    );
    assert!(!read_to_end(response.into_body()).await);
    assert_eq!(at_end.state(), State::Open);
    // And a rejected call fails fast with Rejected.
    let err = end
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(false))
        .await
        .unwrap_err();
    assert!(err.is::<Rejected>());
}
