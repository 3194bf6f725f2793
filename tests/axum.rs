//! The axum example over a real socket: palisade's drain, rate limits and
//! circuit breaker (and tower's own layers) drop into an axum `Router`
//! unchanged, and `HandleErrorLayer` turns their errors into exact responses.

mod common;

use std::time::Duration;

use common::{Gateway, Reply, get, request};
use http::StatusCode;

/// `/stats` of the example: handlers running and `/flaky` handler calls.
async fn stats(app: &Gateway) -> (u64, u64) {
    let reply = get(&app.url("/stats")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON stats");
    (
        v["busy"].as_u64().expect("busy"),
        v["flaky_calls"].as_u64().expect("flaky_calls"),
    )
}

/// Waits until `n` `/slow` or `/hold` handlers are running.
async fn wait_busy(app: &Gateway, n: u64) {
    while stats(app).await.0 != n {
        tokio::task::yield_now().await;
    }
}

/// A whole-seconds header, asserted to be in `range`.
fn secs(reply: &Reply, name: &str, range: std::ops::RangeInclusive<u64>) -> u64 {
    let value: u64 = reply.header(name).parse().expect("whole seconds");
    assert!(range.contains(&value), "{name}: {value} not in {range:?}");
    value
}

/// The `t` (seconds until full) of a `RateLimit: "<name>";r=<r>;t=<t>` field
/// whose name and remaining count are `prefix`.
fn ratelimit_reset(reply: &Reply, prefix: &str) -> u64 {
    let field = reply.header("ratelimit");
    let t = field
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(";t="))
        .unwrap_or_else(|| panic!("ratelimit {field:?} does not start with {prefix}"));
    t.parse().expect("whole seconds")
}

#[tokio::test]
async fn handlers_answer_through_the_stack() {
    let app = Gateway::start_example("axum", &[]);
    let reply = get(&app.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "hello from axum\n");
    // Admitted responses carry the per-IP limit's fields (default 100/s).
    assert_eq!(reply.header("ratelimit-policy"), "\"per-ip\";q=100;w=1");

    // The server put the peer address where axum's `ConnectInfo` finds it.
    let reply = get(&app.url("/hello")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "hello, 127.0.0.1\n");

    let reply = get(&app.url("/items/42")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.text(), r#"{"id":42,"name":"item-42"}"#);

    // Operational routes sit outside the policy layers.
    let health = get(&app.url("/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.text(), "ok\n");
    assert!(!health.headers.contains_key("ratelimit"));
}

#[tokio::test]
async fn a_slow_handler_times_out_with_408() {
    let app = Gateway::start_example("axum", &["--timeout-ms", "50"]);
    let reply = get(&app.url("/slow/30000")).await;
    assert_eq!(reply.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(reply.text(), "request timed out\n");
    // The abandoned handler was dropped, not left running.
    wait_busy(&app, 0).await;
    // Fast handlers are unaffected.
    assert_eq!(get(&app.url("/slow/0")).await.text(), "slept 0ms\n");
}

#[tokio::test]
async fn a_full_concurrency_limit_sheds_with_503_until_a_slot_frees() {
    let app = Gateway::start_example("axum", &["--concurrency", "1"]);
    let hold_url = app.url("/hold");
    let holder = tokio::spawn(async move { get(&hold_url).await });
    // `/stats` sits outside the limit, so it answers while the slot is taken.
    wait_busy(&app, 1).await;

    let shed = get(&app.url("/")).await;
    shed.assert_unavailable("overloaded\n");
    // Routes added after the stack are not limited.
    assert_eq!(get(&app.url("/healthz")).await.text(), "ok\n");

    let released = request("POST", &app.url("/release"), "").await;
    assert_eq!(released.status, StatusCode::NO_CONTENT);
    let held = holder.await.unwrap();
    assert_eq!(held.status, StatusCode::OK);
    assert_eq!(held.text(), "released\n");
    // The slot is free again.
    assert_eq!(get(&app.url("/")).await.text(), "hello from axum\n");
}

#[tokio::test]
async fn the_per_ip_limit_is_one_budget_for_every_route_then_429() {
    // 3 requests per 60 s, burst 3: one cell every 20 s, none refills
    // during the test.
    let app = Gateway::start_example(
        "axum",
        &["--per-ip-rate", "3", "--per-ip-period-secs", "60"],
    );
    // Three different routes, one budget: `Router::layer` wrapped each route
    // separately, and they share the layer's limiter.
    for (i, path) in ["/hello", "/items/1", "/"].into_iter().enumerate() {
        let reply = get(&app.url(path)).await;
        assert_eq!(reply.status, StatusCode::OK, "request {} to {path}", i + 1);
        assert_eq!(reply.header("ratelimit-policy"), "\"per-ip\";q=3;w=60");
        let remaining = 2 - i;
        let t = ratelimit_reset(&reply, &format!("\"per-ip\";r={remaining}"));
        assert!((1..=60).contains(&t), "t={t}");
    }

    for path in ["/hello", "/items/2", "/slow/0"] {
        let limited = get(&app.url(path)).await;
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        // The next cell is due in (just under) 20 s, rounded up.
        secs(&limited, "retry-after", 1..=20);
        assert_eq!(limited.header("ratelimit-policy"), "\"per-ip\";q=3;w=60");
        let t = ratelimit_reset(&limited, "\"per-ip\";r=0");
        assert!((1..=60).contains(&t), "t={t}");
    }

    // Probes and controls are outside the limit.
    assert_eq!(get(&app.url("/healthz")).await.status, StatusCode::OK);
    assert_eq!(stats(&app).await, (0, 0));
}

#[tokio::test]
async fn the_global_limit_error_becomes_a_429_in_handle_error_layer() {
    // The global limit uses the core layer, which fails with `RateLimited`;
    // the example's `HandleErrorLayer` maps it with palisade's 429 helper.
    let app = Gateway::start_example(
        "axum",
        &["--global-rate", "2", "--global-period-secs", "60"],
    );
    for _ in 0..2 {
        let reply = get(&app.url("/hello")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "hello, 127.0.0.1\n");
    }
    let limited = get(&app.url("/hello")).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.text(), "too many requests\n");
    secs(&limited, "retry-after", 1..=30);
    assert_eq!(limited.header("ratelimit-policy"), "\"global\";q=2;w=60");
    let t = ratelimit_reset(&limited, "\"global\";r=0");
    assert!((1..=60).contains(&t), "t={t}");
}

#[tokio::test]
async fn the_breaker_opens_after_n_failures_and_stops_calling_the_handler() {
    let app = Gateway::start_example(
        "axum",
        &["--breaker-failures", "3", "--breaker-wait-ms", "60000"],
    );
    let ok = get(&app.url("/flaky")).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.text(), "flaky call 1 ok\n");

    let set = request("PUT", &app.url("/flaky/failing"), "true").await;
    assert_eq!(set.status, StatusCode::NO_CONTENT);
    for call in 2..=4 {
        let failed = get(&app.url("/flaky")).await;
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(failed.text(), format!("flaky call {call} failed\n"));
    }

    // Open: answered by the breaker, the handler is not called.
    for _ in 0..5 {
        let open = get(&app.url("/flaky")).await;
        assert_eq!(open.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(open.text(), "circuit open\n");
        // 60 s until the probe, with the default 10 % jitter, rounded up.
        secs(&open, "retry-after", 1..=66);
    }
    assert_eq!(stats(&app).await, (0, 4));
    // Even a recovered handler is not reached while the breaker is open.
    let set = request("PUT", &app.url("/flaky/failing"), "false").await;
    assert_eq!(set.status, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&app.url("/flaky")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(stats(&app).await, (0, 4));

    // The breaker guards `/flaky` only.
    assert_eq!(get(&app.url("/hello")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_breaker_probes_after_its_wait_and_closes_on_success() {
    let app = Gateway::start_example(
        "axum",
        &[
            "--breaker-failures",
            "2",
            "--breaker-wait-ms",
            "100",
            "--per-ip-rate",
            "100000",
        ],
    );
    request("PUT", &app.url("/flaky/failing"), "true").await;
    for _ in 0..2 {
        assert_eq!(
            get(&app.url("/flaky")).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    request("PUT", &app.url("/flaky/failing"), "false").await;
    // Rejected until the wait is over; then one probe reaches the handler,
    // succeeds and closes the breaker.
    let probe = loop {
        let reply = get(&app.url("/flaky")).await;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE {
            break reply;
        }
        assert_eq!(reply.text(), "circuit open\n");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(probe.status, StatusCode::OK);
    assert_eq!(probe.text(), "flaky call 3 ok\n");
    assert_eq!(get(&app.url("/flaky")).await.text(), "flaky call 4 ok\n");
    assert_eq!(stats(&app).await, (0, 4));
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_0() {
    let mut app = Gateway::start_example("axum", &[]);
    let slow_url = app.url("/slow/1500");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    let hold_url = app.url("/hold");
    let hold = tokio::spawn(async move { get(&hold_url).await });
    wait_busy(&app, 2).await;

    app.sigterm();
    // The long poll sees its DrainToken fire and wraps up: proof that it was
    // still in flight when draining started, and was answered anyway.
    let held = hold.await.unwrap();
    assert_eq!(held.status, StatusCode::OK);
    assert_eq!(held.text(), "drained\n");
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(slow.text(), "slept 1500ms\n");

    let status = app.wait_exit();
    assert_eq!(status.code(), Some(0), "output:\n{}", app.output());
    let output = app.output();
    assert!(output.contains("shutdown complete"), "{output}");
}

// === axum's own serving idiom, in process ===
//
// These serve a `Router` with `axum::serve` itself (not the example's
// palisade `Server`), the way most axum apps are written.

mod serve {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::error_handling::HandleErrorLayer;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use http::{HeaderMap, Request, StatusCode};
    use http_body_util::Empty;
    use palisade::BoxError;
    use palisade::breaker::http::HttpClassifier;
    use palisade::breaker::{Breaker, CircuitBreakerLayer, Config};
    use palisade::ratelimit::http::{HttpRateLimitLayer, PeerIp};
    use palisade::ratelimit::{KeyedLimiter, PerKey, Quota};
    use tokio::net::TcpListener;
    use tower::ServiceBuilder;

    use crate::common::{PROCESS_TIMEOUT, Reply, send};

    /// Bounds every wait on the server.
    async fn bounded<F: std::future::Future>(future: F) -> F::Output {
        tokio::time::timeout(PROCESS_TIMEOUT, future)
            .await
            .expect("the server answers in time")
    }

    async fn fetch(addr: SocketAddr, path: &str) -> Reply {
        bounded(crate::common::get(&format!("http://{addr}{path}"))).await
    }

    /// A per-IP limit of `burst` requests per hour (nothing refills while a
    /// test runs) on `/`, counting the handler's calls.
    fn limited_app(burst: u32, calls: Arc<AtomicU64>) -> Router {
        let per_ip = PerKey::new(
            KeyedLimiter::builder(
                Quota::builder()
                    .rate(burst)
                    .per(Duration::from_secs(3600))
                    .build()
                    .unwrap(),
            )
            .name("per-ip")
            .build()
            .unwrap(),
            PeerIp::new(),
        );
        Router::new()
            .route(
                "/",
                get(move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    "ok"
                }),
            )
            .layer(HttpRateLimitLayer::new(per_ip))
    }

    #[tokio::test]
    async fn axum_serve_with_connect_info_keys_the_per_ip_limit_and_answers_429_exactly_then() {
        let calls = Arc::new(AtomicU64::new(0));
        let app = limited_app(3, calls.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });

        for remaining in [2, 1, 0] {
            let reply = fetch(addr, "/").await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.text(), "ok");
            let field = reply.header("ratelimit");
            assert!(
                field.starts_with(&format!("\"per-ip\";r={remaining};t=")),
                "{field}"
            );
        }
        for _ in 0..2 {
            let reply = fetch(addr, "/").await;
            assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
            // The next cell is due 1200 s after the burst, rounded up.
            let secs: u64 = reply.header("retry-after").parse().unwrap();
            assert!((1140..=1200).contains(&secs), "retry-after {secs}");
            assert_eq!(reply.header("ratelimit-policy"), "\"per-ip\";q=3;w=3600");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn without_connect_info_the_per_ip_limit_refuses_instead_of_passing() {
        // `axum::serve(listener, app)` puts no peer address in the requests:
        // the policy cannot apply, and says so with a 500 (logged, counted)
        // rather than admitting everything.
        let calls = Arc::new(AtomicU64::new(0));
        let app = limited_app(3, calls.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        for _ in 0..2 {
            let reply = fetch(addr, "/").await;
            assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    /// Every palisade error through the one mapping; the request's headers
    /// say whether to answer in gRPC.
    async fn handle_error(headers: HeaderMap, err: BoxError) -> Response {
        palisade::http::error_response::<Body>(&err, &headers)
            .unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }

    #[tokio::test]
    async fn a_breaker_in_route_layer_guards_its_routes_only() {
        let calls = Arc::new(AtomicU64::new(0));
        let breaker = Breaker::new(
            Config::builder()
                .name("flaky")
                .consecutive_failures(3)
                .wait_duration(Duration::from_secs(60))
                .build()
                .unwrap(),
        );
        let flaky = {
            let calls = calls.clone();
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                (StatusCode::INTERNAL_SERVER_ERROR, "down")
            }
        };
        let app = Router::new()
            .route("/flaky", get(flaky))
            // Only the routes above: not the ones added below, not 404s.
            .route_layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .layer(
                        CircuitBreakerLayer::new(breaker.clone())
                            .classifier(HttpClassifier::server_errors()),
                    ),
            )
            .route("/other", get(|| async { "fine" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });

        for _ in 0..3 {
            let reply = fetch(addr, "/flaky").await;
            assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(reply.text(), "down");
        }
        let open = fetch(addr, "/flaky").await;
        assert_eq!(open.status, StatusCode::SERVICE_UNAVAILABLE);
        let secs: u64 = open.header("retry-after").parse().unwrap();
        assert!((1..=66).contains(&secs), "retry-after {secs}");
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        // A gRPC caller of the same route gets its own form of the answer.
        let grpc = bounded(send(
            Request::get(format!("http://{addr}/flaky"))
                .header("content-type", "application/grpc")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        ))
        .await;
        assert_eq!(grpc.status, StatusCode::OK);
        assert_eq!(grpc.header("grpc-status"), "14");
        assert_eq!(grpc.header("grpc-message"), "circuit breaker open");

        // Routes outside `route_layer` and unknown paths never touch it.
        let other = fetch(addr, "/other").await;
        assert_eq!(other.status, StatusCode::OK);
        assert_eq!(other.text(), "fine");
        assert_eq!(fetch(addr, "/missing").await.status, StatusCode::NOT_FOUND);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(breaker.state(), palisade::breaker::State::Open);
    }
}
