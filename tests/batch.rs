//! End to end: the gateway's `[batch]` section against the real gateway
//! process and its embedded demo upstream, which counts what it answers
//! (`/demo/stats`).

mod common;

use std::time::Duration;

use common::{Gateway, assert_config_rejected, get, metric, request, scrape};
use http::StatusCode;

const CONFIG: &str = r#"
[log]
access_log = false

[batch]
enabled = true
max_items = 64
max_in_flight = 2
"#;

fn item_json(id: u64) -> String {
    format!(
        "{{\"id\":{id},\"name\":\"item-{id}\",\"price_cents\":{}}}",
        (id * 37 + 100) % 10_000
    )
}

/// `(item_calls, batch_calls, batched_ids)` as the demo upstream counted them.
async fn stats(gw: &Gateway) -> (u64, u64, u64) {
    let text = get(&gw.url("/demo/stats")).await.text();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {text}"));
    (n("item_calls"), n("batch_calls"), n("batched_ids"))
}

async fn lookups(gw: &Gateway, ids: impl Iterator<Item = u64>) -> Vec<(u64, common::Reply)> {
    let calls = ids.map(|id| {
        let url = gw.url(&format!("/items/{id}"));
        async move { (id, get(&url).await) }
    });
    tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("every lookup is answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_reach_the_upstream_as_few_deduplicated_batches() {
    // 50 ms per upstream call: lookups pile up behind the batches in flight.
    let config = format!("{CONFIG}\n[demo]\nlatency = \"50ms\"\n");
    let gw = Gateway::start_with_config(&[], &config);
    const N: u64 = 300;
    let answers = lookups(&gw, (0..N).map(|i| i % 100)).await;
    for (id, reply) in &answers {
        assert_eq!(reply.status, StatusCode::OK, "item {id}: {}", reply.text());
        assert_eq!(reply.text(), item_json(*id), "item {id} got another item");
        assert_eq!(reply.header("content-type"), "application/json");
    }
    let (item_calls, batch_calls, batched_ids) = stats(&gw).await;
    assert_eq!(item_calls, 0, "no lookup went upstream on its own");
    assert!(batch_calls >= 1);
    assert!(
        batch_calls * 5 <= N,
        "{N} lookups took {batch_calls} upstream calls"
    );
    // De-duplication: 100 distinct ids, each sent at most once per batch.
    assert!(batched_ids < N, "{batched_ids} ids sent for {N} lookups");

    // The batcher's metrics agree with the upstream's counts exactly.
    let text = scrape(&gw).await;
    let items = r#"batcher="items""#;
    assert_eq!(metric(&text, "palisade_batch_items_total", items), N as f64);
    assert_eq!(
        metric(&text, "palisade_batch_deduplicated_total", items),
        (N - batched_ids) as f64
    );
    let flushes: f64 = [
        "size",
        "weight",
        "latency",
        "opportunistic",
        "shutdown",
        "retry",
    ]
    .iter()
    .map(|r| {
        metric(
            &text,
            "palisade_batch_flushes_total",
            &format!(r#"batcher="items",reason="{r}""#),
        )
    })
    .sum();
    assert_eq!(flushes, batch_calls as f64);
    assert_eq!(
        metric(&text, "palisade_batch_size_count", items),
        batch_calls as f64
    );
    assert_eq!(
        metric(&text, "palisade_batch_size_sum", items),
        batched_ids as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_lookups_queued_answers_every_one() {
    // One batch of at most 8 in flight, 300 ms each: 40 lookups need five
    // rounds, so most are still queued when SIGTERM arrives.
    let config = r#"
[log]
access_log = false

[batch]
enabled = true
max_items = 8
max_in_flight = 1
dedup = false

[demo]
latency = "300ms"

[shutdown]
readiness_delay = "0s"
"#;
    let mut gw = Gateway::start_with_config(&[], config);
    let url = gw.url("");
    let calls = tokio::spawn(async move {
        let calls = (0..40u64).map(|id| {
            let url = format!("{url}/items/{id}");
            async move { (id, get(&url).await) }
        });
        futures_util::future::join_all(calls).await
    });
    // Wait until the first batch is upstream and the rest are queued (each
    // round takes 300 ms, so polling for it is bounded and quick).
    let mut sent = 0.0;
    for _ in 0..2_000 {
        sent = metric(
            &scrape(&gw).await,
            "palisade_batch_items_total",
            r#"batcher="items""#,
        );
        if sent > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        sent > 0.0 && sent <= 8.0,
        "{sent} lookups sent before SIGTERM"
    );
    gw.sigterm();
    let answers = tokio::time::timeout(Duration::from_secs(30), calls)
        .await
        .expect("every queued lookup is answered")
        .unwrap();
    assert_eq!(answers.len(), 40);
    for (id, reply) in &answers {
        assert_eq!(reply.status, StatusCode::OK, "item {id}: {}", reply.text());
        assert_eq!(reply.text(), item_json(*id));
    }
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", gw.output());
    let output = gw.output();
    assert!(!output.contains("item(s) cut"), "{output}");
    assert!(output.contains("batch item(s) flushed"), "{output}");
}

#[tokio::test]
async fn batching_is_off_by_default_and_other_paths_are_proxied() {
    let gw = Gateway::start(&[]);
    let one = get(&gw.url("/items/7")).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.text(), item_json(7));
    assert_eq!(stats(&gw).await, (1, 0, 0));

    let gw = Gateway::start_with_config(&[], CONFIG);
    // Not lookups: a non-numeric id and a POST go upstream unchanged.
    let bad = get(&gw.url("/items/abc")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let post = request("POST", &gw.url("/items/7"), "").await;
    assert_eq!(post.status, StatusCode::OK);
    assert_eq!(stats(&gw).await, (2, 0, 0));
}

#[tokio::test]
async fn a_failing_upstream_fails_the_batch_as_a_bad_gateway_then_the_breaker_opens() {
    let config = format!(
        "{CONFIG}\n[demo]\nerror_rate = 1.0\n\n[breaker]\nminimum_calls = 3\nwindow_size = 3\nwait_duration = \"60s\"\nwait_jitter = 0.0\n"
    );
    let gw = Gateway::start_with_config(&[], &config);
    // Sequential lookups: each is one batch, one breaker outcome.
    for _ in 0..3 {
        let r = get(&gw.url("/items/1")).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    }
    let r = get(&gw.url("/items/1")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.header("retry-after"), "60");
    assert_eq!(
        stats(&gw).await.1,
        3,
        "the open breaker kept the 4th batch off the upstream"
    );
}

#[test]
fn an_invalid_batch_value_exits_2_naming_the_key() {
    assert_config_rejected(
        "[batch]\nenabled = true\nmax_items = 0\n",
        "batch.max_items",
    );
    assert_config_rejected(
        "[batch]\nenabled = true\nmax_items = 5000\n",
        "batch.max_items",
    );
    assert_config_rejected(
        "[batch]\nenabled = true\nqueue_capacity = 0\n",
        "batch.queue_capacity",
    );
    assert_config_rejected("[batch]\nflush = \"sometimes\"\n", "flush");
}
