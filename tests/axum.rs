//! The axum example over a real socket: tower layers (and the palisade
//! layers as they land) drop into an axum `Router` unchanged, and
//! `HandleErrorLayer` turns their errors into exact responses.

mod common;

use common::{Gateway, get, request};
use http::StatusCode;

#[tokio::test]
async fn handlers_answer_through_the_stack() {
    let app = Gateway::start_example("axum", &[]);
    let reply = get(&app.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "hello from axum\n");

    let reply = get(&app.url("/items/42")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.text(), r#"{"id":42,"name":"item-42"}"#);
}

#[tokio::test]
async fn a_slow_handler_times_out_with_408() {
    let app = Gateway::start_example("axum", &["--timeout-ms", "50"]);
    let reply = get(&app.url("/slow/30000")).await;
    assert_eq!(reply.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(reply.text(), "request timed out\n");
    // Fast handlers are unaffected.
    assert_eq!(get(&app.url("/slow/0")).await.text(), "slept 0ms\n");
}

#[tokio::test]
async fn a_full_concurrency_limit_sheds_with_503_until_a_slot_frees() {
    let app = Gateway::start_example("axum", &["--concurrency", "1"]);
    let hold_url = app.url("/hold");
    let holder = tokio::spawn(async move { get(&hold_url).await });
    // `/held` sits outside the limit, so it answers while the slot is taken.
    while get(&app.url("/held")).await.text() != "1\n" {
        tokio::task::yield_now().await;
    }

    let shed = get(&app.url("/")).await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.header("retry-after"), "1");
    assert_eq!(shed.text(), "overloaded\n");
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
