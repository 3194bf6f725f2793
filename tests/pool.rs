//! End to end: the demo upstream's `/cpu/{ms}` route, served through
//! palisade-pool's CPU offload, against the real gateway process. While the
//! bounded number of CPU jobs spin, proxied requests and `/healthz` still
//! answer; one more CPU request is refused with 503 at once.

mod common;

use std::time::Duration;

use common::{Gateway, assert_config_rejected, get, metric, scrape, wait_for_metric};
use http::StatusCode;

/// Two spinning threads, no queue. The breaker counts only the statuses of
/// a failing upstream: a 503 from the CPU route is load shedding, not a
/// sign the upstream is down.
const CONFIG: &str = r#"
[log]
access_log = false

[breaker]
failure_statuses = [500, 502, 504]

[cpu]
threads = 2
queue = 0
"#;

const RUNNING: &str = "palisade_cpu_running";
const POOL: &str = r#"pool="demo-cpu""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_jobs_run_off_the_reactor_and_over_the_bound_answer_503() {
    let gw = Gateway::start_with_config(&[], CONFIG);
    // Long enough that everything below happens while both spin; the test
    // checks that they still do at the end rather than trusting a timing.
    let spinning: Vec<_> = (0..2)
        .map(|_| {
            let url = gw.url("/cpu/4000");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    wait_for_metric(&gw, RUNNING, POOL, 2.0).await;

    // The reactor is free: the gateway's own route and a proxied request
    // through the same process's demo upstream answer at once.
    let health = get(&gw.url("/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);
    let hello = get(&gw.url("/")).await;
    assert_eq!(hello.status, StatusCode::OK);
    assert_eq!(hello.text(), "hello\n");

    // Over the bound: refused now, with the project's Retry-After rule.
    let shed = get(&gw.url("/cpu/10")).await;
    shed.assert_unavailable("cpu pool full\n");

    // All of that happened while both jobs were still spinning.
    let text = scrape(&gw).await;
    assert_eq!(
        metric(&text, RUNNING, POOL),
        2.0,
        "the CPU jobs ended early"
    );

    for job in spinning {
        let reply = tokio::time::timeout(Duration::from_secs(60), job)
            .await
            .expect("the CPU jobs end")
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply.text().starts_with("spun 4000ms: "),
            "{}",
            reply.text()
        );
    }
    // Capacity is back.
    let after = get(&gw.url("/cpu/1")).await;
    assert_eq!(after.status, StatusCode::OK);

    let text = scrape(&gw).await;
    let jobs = |outcome: &str| {
        metric(
            &text,
            "palisade_cpu_jobs_total",
            &format!(r#"pool="demo-cpu",outcome="{outcome}""#),
        )
    };
    assert_eq!(jobs("ok"), 3.0);
    assert_eq!(jobs("overloaded"), 1.0);
    assert_eq!(metric(&text, RUNNING, POOL), 0.0);
}

#[tokio::test]
async fn a_bad_cpu_section_is_refused_naming_the_key() {
    assert_config_rejected("[cpu]\nthreads = 0\n", "cpu.threads");
    assert_config_rejected("[cpu]\nmax_ms = 0\n", "cpu.max_ms");
    assert_config_rejected("[cpu]\nthreadz = 2\n", "threadz");
}

#[tokio::test]
async fn a_cpu_request_over_max_ms_is_a_400() {
    let gw = Gateway::start_with_config(&[], "[log]\naccess_log = false\n[cpu]\nmax_ms = 50\n");
    let reply = get(&gw.url("/cpu/51")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = get(&gw.url("/cpu/abc")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = get(&gw.url("/cpu/5")).await;
    assert_eq!(reply.status, StatusCode::OK);
}
