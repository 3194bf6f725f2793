//! The `http` feature: body buffering for fan-out and the HTTP hedging
//! policy.

#![cfg(feature = "http")]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use palisade_fanout::hedge::{Delay, Hedge, HedgeConfig, Outcome, Policy};
use palisade_fanout::http::{BufferBodyLayer, HttpPolicy, PayloadTooLarge, payload_too_large};
use palisade_fanout::scatter::{All, Scatter};
use support::timed;
use tower::{BoxError, Layer, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);

/// Echoes the request body's length, tagged with the branch.
fn echo_len(
    tag: u8,
) -> impl tower::Service<Request<Full<Bytes>>, Response = (u8, usize), Error = BoxError, Future: Send>
+ Clone {
    service_fn(move |req: Request<Full<Bytes>>| async move {
        let body = req.into_body().collect().await?.to_bytes();
        Ok::<_, BoxError>((tag, body.len()))
    })
}

#[tokio::test(start_paused = true)]
async fn a_buffered_body_reaches_every_branch() {
    let scatter = Scatter::builder([echo_len(0), echo_len(1), echo_len(2)])
        .build(All)
        .unwrap();
    let svc = BufferBodyLayer::new(1024).layer(scatter);
    let req = Request::post("/")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (out, _) = timed(svc.oneshot(req)).await;
    let out: Vec<(u8, usize)> = out.unwrap().into_iter().map(Result::unwrap).collect();
    assert_eq!(out, [(0, 5), (1, 5), (2, 5)]);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_cap_is_refused_before_the_inner_service() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let inner = service_fn(move |_req: Request<Full<Bytes>>| {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Ok::<_, BoxError>(()) }
    });
    let svc = BufferBodyLayer::new(4).layer(inner);
    let req = Request::post("/")
        .body(Full::new(Bytes::from_static(b"too long")))
        .unwrap();
    let e = svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(e.downcast_ref::<PayloadTooLarge>().unwrap().limit(), 4);

    // A declared length over the cap is refused without reading the body.
    let req = Request::post("/")
        .header("content-length", "1000")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let e = svc.oneshot(req).await.unwrap_err();
    assert!(e.is::<PayloadTooLarge>());
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);

    let res: Response<String> = payload_too_large();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[test]
fn http_policy_hedges_only_safe_methods_and_waits_on_5xx() {
    let policy = HttpPolicy;
    for (method, hedged) in [
        (Method::GET, true),
        (Method::HEAD, true),
        (Method::OPTIONS, true),
        (Method::POST, false),
        (Method::PUT, false),
        (Method::DELETE, false),
        (Method::PATCH, false),
    ] {
        let req = Request::builder().method(method.clone()).body(()).unwrap();
        let r: &dyn Policy<Request<()>, Response<()>, BoxError> = &policy;
        assert_eq!(r.hedgeable(&req), hedged, "{method}");
    }
    let status = |s: u16| -> Result<Response<()>, BoxError> {
        Ok(Response::builder().status(s).body(()).unwrap())
    };
    let classify = |r: Result<Response<()>, BoxError>| {
        Policy::<Request<()>, Response<()>, BoxError>::classify(&policy, &r)
    };
    assert_eq!(classify(status(200)), Outcome::Success);
    assert_eq!(classify(status(404)), Outcome::Success);
    assert_eq!(classify(status(503)), Outcome::Retryable);
    assert_eq!(classify(Err("reset".into())), Outcome::Retryable);
}

#[tokio::test(start_paused = true)]
async fn a_5xx_from_the_primary_does_not_win_over_the_hedge() {
    let replica = |status: u16, ms: u64| {
        service_fn(move |_req: Request<Full<Bytes>>| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
        })
    };
    let config = HedgeConfig::builder()
        .delay(Delay::Fixed(10 * MS))
        .min_hedges_per_sec(100.0)
        .build()
        .unwrap();
    let svc = Hedge::over([replica(503, 15), replica(200, 20)], config).policy(HttpPolicy);
    let req = Request::get("/").body(Full::new(Bytes::new())).unwrap();
    let (out, took) = timed(svc.oneshot(req)).await;
    assert_eq!(out.unwrap().status(), StatusCode::OK);
    assert_eq!(took, 30 * MS);
}
