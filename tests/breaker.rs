//! End to end: the gateway's per-upstream circuit breaker against the real
//! gateway process and its embedded demo upstream.

mod common;

use std::time::Duration;

use common::{Gateway, assert_config_rejected, get, metric, request, scrape};
use http::StatusCode;

/// Opens after 5 failures of 5 calls, waits 1 s (no jitter, no growth), and
/// closes after 2 successful probes.
const CONFIG: &str = r#"
[log]
access_log = false

[breaker]
window_size = 10
minimum_calls = 5
failure_rate_threshold = 0.5
wait_duration = "1s"
max_wait_duration = "1s"
wait_jitter = 0.0
half_open_probes = 2
"#;

const STATE: &str = "palisade_breaker_state";
const CALLS: &str = "palisade_breaker_calls_total";
const REJECTED: &str = "palisade_breaker_rejected_total";
const TRANSITIONS: &str = "palisade_breaker_transitions_total";
const UPSTREAM: &str = r#"breaker="upstream/0""#;

fn calls(text: &str, outcome: &str) -> f64 {
    metric(
        text,
        CALLS,
        &format!(r#"breaker="upstream/0",outcome="{outcome}""#),
    )
}

fn transitions(text: &str, from: &str, to: &str) -> f64 {
    metric(
        text,
        TRANSITIONS,
        &format!(r#"breaker="upstream/0",from="{from}",to="{to}""#),
    )
}

async fn set_error_rate(gw: &Gateway, rate: &str) {
    let reply = request(
        "PUT",
        &gw.url(&format!("/demo/faults?error_rate={rate}")),
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn failing_upstream_opens_the_breaker_and_probes_close_it() {
    let gw = Gateway::start_with_config(&[], CONFIG);

    // The breaker exists (closed) before the first request.
    let m = scrape(&gw).await;
    assert_eq!(metric(&m, STATE, UPSTREAM), 0.0);

    // 100% upstream errors: the first 5 calls reach the upstream and fail...
    set_error_rate(&gw, "1.0").await;
    for i in 0..5 {
        let reply = get(&gw.url(&format!("/items/{i}"))).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "call {i}");
    }
    // ... which opens the breaker: the gateway answers 503 itself, with the
    // time until the next probe (1 s, rounded up), and the upstream sees no
    // more calls.
    for _ in 0..3 {
        let reply = get(&gw.url("/items/1")).await;
        reply.assert_unavailable("service unavailable\n");
    }
    let m = scrape(&gw).await;
    assert_eq!(metric(&m, STATE, UPSTREAM), 1.0, "open");
    assert_eq!(calls(&m, "failure"), 5.0);
    assert_eq!(calls(&m, "success"), 0.0);
    assert_eq!(metric(&m, REJECTED, UPSTREAM), 3.0);
    assert_eq!(transitions(&m, "closed", "open"), 1.0);

    // The upstream recovers. After the wait (the Retry-After the gateway
    // announced), the first call is a probe; 2 successful probes close it.
    set_error_rate(&gw, "0.0").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..2 {
        let reply = get(&gw.url(&format!("/items/{i}"))).await;
        assert_eq!(reply.status, StatusCode::OK, "probe {i}");
    }
    let m = scrape(&gw).await;
    assert_eq!(metric(&m, STATE, UPSTREAM), 0.0, "closed again");
    assert_eq!(transitions(&m, "open", "half_open"), 1.0);
    assert_eq!(transitions(&m, "half_open", "closed"), 1.0);
    assert_eq!(calls(&m, "success"), 2.0);
    assert_eq!(calls(&m, "failure"), 5.0);
    assert_eq!(metric(&m, REJECTED, UPSTREAM), 3.0);

    // Closed: requests flow again.
    for i in 0..10 {
        assert_eq!(
            get(&gw.url(&format!("/items/{i}"))).await.status,
            StatusCode::OK
        );
    }
    let m = scrape(&gw).await;
    assert_eq!(calls(&m, "success"), 12.0);
    assert_eq!(metric(&m, STATE, UPSTREAM), 0.0);
}

#[test]
fn invalid_breaker_config_names_the_key() {
    assert_config_rejected(
        "[breaker]\nfailure_rate_threshold = 1.5\n",
        "breaker.failure_rate_threshold",
    );
    assert_config_rejected(
        "[breaker]\nhalf_open_probes = 0\n",
        "breaker.half_open_probes",
    );
    assert_config_rejected("[breaker]\nwindow_size = 0\n", "breaker.window_size");
}
