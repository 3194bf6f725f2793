//! End to end: the demo upstream's capacity model (`[demo] slots`,
//! `service_time`, `/demo/faults?slots=..&service_time=..`), on a
//! `--demo-upstream-only` process over real sockets, asserted through its
//! own `/demo/stats` counters.

mod common;

use std::time::Duration;

use common::{Gateway, assert_config_rejected, get, request};
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Bounds every wait: only a broken run reaches it.
const WAIT: Duration = Duration::from_secs(10);

/// `(served, queued, in_service)` from `/demo/stats`.
async fn stats(up: &Gateway) -> (u64, u64, u64) {
    let text = get(&up.url("/demo/stats")).await.text();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {text}"));
    (n("served"), n("queued"), n("in_service"))
}

/// Polls `/demo/stats` until it reads `want`; bounded by [`WAIT`].
async fn wait_stats(up: &Gateway, want: (u64, u64, u64)) {
    let mut last = (0, 0, 0);
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            last = stats(up).await;
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "(served, queued, in_service) never reached {want:?}; last {last:?}"
    );
}

async fn set(up: &Gateway, query: &str) -> String {
    let reply = request("PUT", &up.url(&format!("/demo/faults?{query}")), "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.text()
}

/// A request on its own connection, written and left unanswered; dropping
/// the stream is a client that gives up.
async fn send_raw(up: &Gateway, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(up.addr).await.expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", up.addr);
    stream.write_all(head.as_bytes()).await.expect("write");
    stream
}

#[tokio::test]
async fn four_requests_on_two_slots_take_two_rounds_and_abandoned_work_is_served() {
    let up = Gateway::start(&["--demo-upstream-only", "--no-access-log"]);
    let state = set(&up, "slots=2&service_time=200ms").await;
    assert_eq!(
        state,
        "{\"error_rate\":0,\"latency_ms\":0,\"slots\":2,\"service_time_ms\":200}\n"
    );

    let started = tokio::time::Instant::now();
    let kept: Vec<_> = (0..2)
        .map(|i| {
            let url = up.url(&format!("/items/{i}"));
            tokio::spawn(async move { tokio::time::timeout(WAIT, get(&url)).await })
        })
        .collect();
    wait_stats(&up, (0, 0, 2)).await;
    // These two queue behind the first round (FIFO), then leave.
    let leaving = [
        send_raw(&up, "/items/7").await,
        send_raw(&up, "/items/8").await,
    ];
    wait_stats(&up, (0, 2, 2)).await;
    drop(leaving);

    for task in kept {
        let reply = task.await.unwrap().expect("answered within the bound");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    // The clients that left are served all the same: a second round.
    wait_stats(&up, (4, 0, 0)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "two rounds of 200ms took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn more_slots_at_run_time_admit_the_queue() {
    let up = Gateway::start(&["--demo-upstream-only", "--no-access-log"]);
    set(&up, "slots=1&service_time=300ms").await;
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let url = up.url(&format!("/items/{i}"));
            tokio::spawn(async move { tokio::time::timeout(WAIT, get(&url)).await })
        })
        .collect();
    wait_stats(&up, (0, 2, 1)).await;
    set(&up, "slots=3").await;
    wait_stats(&up, (0, 0, 3)).await;
    for call in calls {
        let reply = call.await.unwrap().expect("answered within the bound");
        assert_eq!(reply.status, StatusCode::OK);
    }
    wait_stats(&up, (3, 0, 0)).await;

    // Back to unlimited and no service time: the default, unchanged.
    set(&up, "slots=0&service_time=0").await;
    assert_eq!(get(&up.url("/")).await.text(), "hello\n");
    wait_stats(&up, (4, 0, 0)).await;
}

#[tokio::test]
async fn bad_capacity_parameters_are_refused() {
    let up = Gateway::start(&["--demo-upstream-only", "--no-access-log"]);
    for query in [
        "slots=-1",
        "slots=2000000",
        "service_time=20",
        "service_time=2h",
    ] {
        let reply = request("PUT", &up.url(&format!("/demo/faults?{query}")), "").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
    }
    assert_config_rejected("[demo]\nslots = 2000000\n", "`demo.slots`");
    assert_config_rejected("[demo]\nservice_time = \"2h\"\n", "`demo.service_time`");
}

#[tokio::test]
async fn capacity_is_configured_at_start() {
    let up = Gateway::start_with_config(
        &["--demo-upstream-only", "--no-access-log"],
        "[demo]\nslots = 8\nservice_time = \"20ms\"\n",
    );
    let state = get(&up.url("/demo/faults")).await.text();
    assert_eq!(
        state,
        "{\"error_rate\":0,\"latency_ms\":0,\"slots\":8,\"service_time_ms\":20}\n"
    );
}
