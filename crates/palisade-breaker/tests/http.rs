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
