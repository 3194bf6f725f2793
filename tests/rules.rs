//! The rules the pattern crates share, checked against all of them at once:
//! one `Retry-After` rounding, one clock, one error mapping.

use std::time::Duration;

use http::{Response, StatusCode, Version, header};
use palisade::breaker::{Breaker, CircuitBreakerLayer, Config, Rejected, State};
use palisade::http::{Protocol, error_response, retry_after_secs};
use palisade::ratelimit::{Clock, Limiter, Quota, RateLimitLayer, RateLimited};
use palisade::shutdown::{Drain, Draining};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};

/// `Retry-After` of a response, as a number.
fn retry_after<B>(response: &Response<B>) -> u64 {
    response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A rate limit rejection whose `retry_after` is exactly `wait` (0 < wait <=
/// 10 s): one cell per 10 s, spent, then `10 s - wait` later.
fn limited_after(wait: Duration) -> RateLimited {
    let quota = Quota::builder()
        .rate(1)
        .per(Duration::from_secs(10))
        .build()
        .unwrap();
    let (clock, hand) = Clock::manual();
    let limiter = Limiter::builder(quota).clock(clock).build();
    assert!(limiter.check().allowed());
    hand.advance(Duration::from_secs(10) - wait);
    let decision = limiter.check();
    assert_eq!(decision.retry_after(), wait);
    let mut svc =
        RateLimitLayer::new(limiter).layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
    // The limiter is spent; the service's rejection carries the same wait.
    let err = futures_util::FutureExt::now_or_never(svc.call(()))
        .unwrap()
        .unwrap_err();
    *err.downcast_ref::<RateLimited>().unwrap()
}

// The shutdown crate's copy of the rounding lacked the floor of 1: a draining
// response could say `Retry-After: 0`. Now all three use one function.
#[test]
fn retry_after_is_one_rule_in_all_three_crates() {
    let waits = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_millis(999),
        Duration::from_secs(1),
        Duration::from_millis(1_001),
        Duration::from_millis(9_500),
    ];
    for wait in waits {
        let expected = retry_after_secs(wait);
        assert!(expected >= 1, "{wait:?}");
        assert_eq!(
            expected,
            wait.as_secs_f64().ceil().max(1.0) as u64,
            "{wait:?}"
        );

        let breaker: Response<()> =
            palisade::breaker::http::rejected_response(&Rejected::Open { retry_after: wait });
        assert_eq!(retry_after(&breaker), expected, "breaker, {wait:?}");

        let draining: Response<()> =
            palisade::shutdown::http::draining_response(wait, Version::HTTP_11);
        assert_eq!(retry_after(&draining), expected, "shutdown, {wait:?}");

        // A rejection always has something left to wait for.
        if !wait.is_zero() {
            let limited = limited_after(wait);
            let response: Response<()> = palisade::ratelimit::http::too_many_requests(
                &limited,
                &palisade::ratelimit::http::Headers::default(),
            );
            assert_eq!(retry_after(&response), expected, "ratelimit, {wait:?}");
        }
    }
}

#[test]
fn error_response_maps_every_palisade_error() {
    let limited: BoxError = Box::new(limited_after(Duration::from_millis(1_500)));
    let r = error_response::<()>(&limited, Protocol::Http).unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&r), 2);
    assert!(r.headers().contains_key("ratelimit"));

    let open: BoxError = Box::new(Rejected::Open {
        retry_after: Duration::from_millis(200),
    });
    let r = error_response::<()>(&open, Protocol::Http).unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(&r), 1);

    let forced: BoxError = Box::new(Rejected::ForcedOpen);
    let r = error_response::<()>(&forced, Protocol::Http).unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!r.headers().contains_key(header::RETRY_AFTER));

    let draining: BoxError = Box::new(Draining);
    let r = error_response::<()>(&draining, Protocol::Http).unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(&r), 1);
    assert_eq!(r.headers()[header::CONNECTION], "close");

    // Wrapped by another layer: found through `source()`.
    #[derive(Debug)]
    struct Wrapper(BoxError);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }
    let wrapped: BoxError = Box::new(Wrapper(Box::new(Draining)));
    assert_eq!(
        error_response::<()>(&wrapped, Protocol::Http)
            .unwrap()
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    let other: BoxError = "an upstream error".into();
    assert!(error_response::<()>(&other, Protocol::Http).is_none());
}

#[test]
fn error_response_answers_grpc_requests_with_their_grpc_status() {
    let grpc = |err: BoxError| {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/grpc+proto".parse().unwrap(),
        );
        let r = error_response::<()>(&err, &headers).expect("a palisade error");
        assert_eq!(r.status(), StatusCode::OK, "trailers-only is HTTP 200");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/grpc");
        assert!(!r.headers().contains_key(header::RETRY_AFTER));
        let text = |name: &str| {
            r.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        (
            text("grpc-status").expect("grpc-status"),
            text("grpc-message"),
            text("grpc-retry-pushback-ms"),
        )
    };
    let limited = grpc(Box::new(limited_after(Duration::from_millis(1_500))));
    assert_eq!(limited.0, "8", "RESOURCE_EXHAUSTED");
    assert_eq!(limited.1.as_deref(), Some("rate limited by policy global"));
    assert_eq!(limited.2.as_deref(), Some("1500"));

    let open = grpc(Box::new(Rejected::Open {
        retry_after: Duration::from_millis(200),
    }));
    assert_eq!(
        open,
        (
            "14".into(),
            Some("circuit breaker open".into()),
            Some("200".into())
        )
    );
    let forced = grpc(Box::new(Rejected::ForcedOpen));
    assert_eq!(
        forced,
        (
            "14".into(),
            Some("circuit breaker forced open".into()),
            None
        )
    );
    let draining = grpc(Box::new(Draining));
    assert_eq!(
        draining,
        ("14".into(), Some("server is draining".into()), None)
    );

    // The same errors for a plain HTTP request keep their HTTP answers.
    let plain = error_response::<()>(&(Box::new(Draining) as BoxError), &http::HeaderMap::new());
    assert_eq!(plain.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
}

// The README's stack under paused time: one `advance` moves the limiter and
// the breaker together. Before the clock rule, the limiter read the TSC and
// ignored paused time, so its cell never refilled here.
#[tokio::test(start_paused = true)]
async fn the_readme_stack_follows_paused_time() {
    let drain = Drain::new();
    let limiter = Limiter::builder(Quota::per_second(1).unwrap())
        .name("global")
        .build();
    let breaker = Breaker::new(
        Config::builder()
            .name("upstream")
            .consecutive_failures(1)
            .wait_duration(Duration::from_secs(10))
            .wait_jitter(0.0)
            .half_open_probes(1)
            .build()
            .unwrap(),
    );
    let handle = breaker.clone();
    let svc = ServiceBuilder::new()
        .layer(drain.layer())
        .layer(RateLimitLayer::new(limiter))
        .layer(CircuitBreakerLayer::new(breaker))
        .timeout(Duration::from_secs(5))
        .service_fn(|fail: bool| async move {
            if fail {
                Err::<u32, BoxError>("upstream failed".into())
            } else {
                Ok(42)
            }
        });

    assert_eq!(svc.clone().oneshot(false).await.unwrap(), 42);
    let err = svc.clone().oneshot(false).await.unwrap_err();
    assert!(err.is::<RateLimited>(), "{err}");
    tokio::time::advance(Duration::from_secs(1)).await;
    // The limiter refilled on paused time; this failure opens the breaker.
    assert!(svc.clone().oneshot(true).await.is_err());
    assert_eq!(handle.state(), State::Open);

    tokio::time::advance(Duration::from_secs(1)).await;
    let err = svc.clone().oneshot(false).await.unwrap_err();
    let rejected = err.downcast_ref::<Rejected>().expect("the breaker is open");
    assert_eq!(
        *rejected,
        Rejected::Open {
            retry_after: Duration::from_secs(9)
        }
    );
    tokio::time::advance(Duration::from_secs(9)).await;
    // The wait elapsed on the same clock: the probe closes the breaker.
    assert_eq!(svc.clone().oneshot(false).await.unwrap(), 42);
    assert_eq!(handle.state(), State::Closed);
    drain.start();
    assert!(svc.oneshot(false).await.unwrap_err().is::<Draining>());
}

/// A failed batch answers as what failed it (here an open breaker around the
/// batch call); a closed or cut batcher is a 503 with the one Retry-After.
#[tokio::test(start_paused = true)]
async fn error_response_maps_batch_errors_through_their_source() {
    let inner = tower::service_fn(|_: Vec<u32>| async {
        Err::<Vec<u32>, BoxError>(Box::new(Rejected::Open {
            retry_after: Duration::from_millis(2_500),
        }))
    });
    let batch = palisade::batch::BatchLayer::<u32, u32>::builder()
        .build()
        .unwrap()
        .layer(inner);
    let err = batch.clone().oneshot(1).await.unwrap_err();
    let r = error_response::<()>(&err, Protocol::Http).expect("the breaker's rejection inside");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(&r), 3);

    for e in [
        palisade::batch::Error::Cut,
        palisade::batch::Error::Closed(palisade::batch::Closed::Shutdown),
    ] {
        let e: BoxError = Box::new(e);
        let r = error_response::<()>(&e, Protocol::Http).unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after(&r), 1);
    }
    let mismatch: BoxError = Box::new(palisade::batch::Error::LengthMismatch {
        sent: 2,
        received: 1,
    });
    assert_eq!(
        error_response::<()>(&mismatch, Protocol::Http)
            .unwrap()
            .status(),
        StatusCode::BAD_GATEWAY
    );
}
