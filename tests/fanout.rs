//! End to end: the gateway's `[scatter]` route and `[hedge]` against real
//! gateway processes and demo upstreams.

mod common;

use common::{Gateway, assert_config_rejected, get, metric, request, scrape};
use http::StatusCode;

/// A gateway whose embedded demo upstream is the one we slow down through
/// that gateway's `/demo/faults`; returns it and its upstream's address.
async fn slowed_upstream(latency_ms: u64) -> (Gateway, String) {
    let gw = Gateway::start(&["--no-access-log"]);
    let reply = request(
        "PUT",
        &gw.url(&format!("/demo/faults?latency_ms={latency_ms}")),
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let addr = gw.upstream_addr.expect("a demo upstream").to_string();
    (gw, addr)
}

fn entries(doc: &serde_json::Value) -> &Vec<serde_json::Value> {
    doc["upstreams"].as_array().expect("an upstreams array")
}

#[tokio::test]
async fn scatter_returns_every_upstreams_answer() {
    let a = Gateway::start(&["--demo-upstream-only"]);
    let b = Gateway::start(&["--demo-upstream-only"]);
    let (ua, ub) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let gw = Gateway::start_with_config(
        &["--upstream", &ua, "--upstream", &ub],
        "[log]\naccess_log = false\n[scatter]\npath = \"/scatter\"\n",
    );
    let reply = get(&gw.url("/scatter/items/7")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), "application/json");
    let doc: serde_json::Value = serde_json::from_str(&reply.text()).unwrap();
    let list = entries(&doc);
    assert_eq!(list.len(), 2);
    let item = r#"{"id":7,"name":"item-7","price_cents":359}"#;
    for (entry, addr) in list.iter().zip([a.addr, b.addr]) {
        assert_eq!(entry["upstream"], addr.to_string());
        assert_eq!(entry["status"], 200);
        assert_eq!(entry["body"], item);
    }
    // Every upstream's own status is reported, not collapsed.
    let reply = get(&gw.url("/scatter/status/404")).await;
    let doc: serde_json::Value = serde_json::from_str(&reply.text()).unwrap();
    let statuses: Vec<_> = entries(&doc).iter().map(|e| e["status"].clone()).collect();
    assert_eq!(statuses, [404, 404]);
    // Only GET scatters.
    let reply = request("POST", &gw.url("/scatter/echo"), "x").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    // Everything else is proxied as before.
    assert_eq!(get(&gw.url("/items/7")).await.text(), item);
    let m = scrape(&gw).await;
    assert_eq!(
        metric(
            &m,
            "palisade_fanout_scatter_branches_total",
            r#"scatter="gateway",outcome="ok""#
        ),
        4.0
    );
}

#[tokio::test]
async fn scatter_quorum_answers_without_the_slow_upstream() {
    let (_slow_gw, slow) = slowed_upstream(30_000).await;
    let fast = Gateway::start(&["--demo-upstream-only"]);
    let (us, uf) = (format!("http://{slow}"), format!("http://{}", fast.addr));
    let gw = Gateway::start_with_config(
        &["--upstream", &us, "--upstream", &uf],
        "[log]\naccess_log = false\n[scatter]\npath = \"/scatter\"\nquorum = 1\n",
    );
    let reply = get(&gw.url("/scatter/")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let doc: serde_json::Value = serde_json::from_str(&reply.text()).unwrap();
    assert_eq!(doc["quorum"], 1);
    let list = entries(&doc);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["upstream"], fast.addr.to_string());
    assert_eq!(list[0]["body"], "hello\n");
}

#[tokio::test]
async fn hedging_answers_from_the_fast_upstream() {
    let (_slow_gw, slow) = slowed_upstream(30_000).await;
    let fast = Gateway::start(&["--demo-upstream-only"]);
    let (us, uf) = (format!("http://{slow}"), format!("http://{}", fast.addr));
    let gw = Gateway::start_with_config(
        &["--upstream", &us, "--upstream", &uf],
        r#"
[log]
access_log = false
[hedge]
enabled = true
delay = "50ms"
min_hedges_per_sec = 100.0
"#,
    );
    let fast_addr = fast.addr.to_string();
    for _ in 0..4 {
        let reply = get(&gw.url("/echo")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-echo-served-by"), fast_addr);
    }
    // Round robin: two primaries went to the slow upstream, and their
    // hedges won; the two on the fast one answered before the delay.
    let m = scrape(&gw).await;
    let label = r#"hedge="gateway""#;
    assert_eq!(
        metric(&m, "palisade_fanout_hedge_primaries_total", label),
        4.0
    );
    assert_eq!(metric(&m, "palisade_fanout_hedge_hedges_total", label), 2.0);
    assert_eq!(metric(&m, "palisade_fanout_hedge_won_total", label), 2.0);
}

#[tokio::test]
async fn hedging_is_bounded_by_its_budget() {
    let (_slow_gw, slow) = slowed_upstream(30_000).await;
    let fast = Gateway::start(&["--demo-upstream-only"]);
    let (us, uf) = (format!("http://{slow}"), format!("http://{}", fast.addr));
    // No floor: 5% of 4 requests is not one whole hedge.
    let gw = Gateway::start_with_config(
        &[
            "--upstream",
            &us,
            "--upstream",
            &uf,
            "--upstream-timeout",
            "300ms",
        ],
        "[log]\naccess_log = false\n[hedge]\nenabled = true\ndelay = \"50ms\"\n",
    );
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&gw.url("/echo")).await.status.as_u16());
    }
    // Round robin from the slow upstream: its primaries get no hedge and
    // time out (504); the fast one's answer.
    assert_eq!(statuses, [504, 200, 504, 200]);
    let m = scrape(&gw).await;
    let label = r#"hedge="gateway""#;
    assert_eq!(metric(&m, "palisade_fanout_hedge_hedges_total", label), 0.0);
    assert_eq!(
        metric(&m, "palisade_fanout_hedge_budget_exhausted_total", label),
        2.0
    );
}

#[test]
fn bad_fanout_values_exit_naming_the_key() {
    assert_config_rejected("[scatter]\npath = \"/s\"\nquorum = 0\n", "scatter.quorum");
    assert_config_rejected("[scatter]\npath = \"/s\"\nquorum = 2\n", "scatter.quorum");
    assert_config_rejected("[scatter]\npath = \"s\"\n", "scatter.path");
    assert_config_rejected(
        "[hedge]\nenabled = true\nmax_extra_load = 2.0\n",
        "hedge.max_extra_load",
    );
    assert_config_rejected(
        "[hedge]\nenabled = true\npercentile = 1.5\n",
        "hedge.percentile",
    );
    assert_config_rejected(
        "[hedge]\nenabled = true\nmax_attempts = 1\n",
        "hedge.max_attempts",
    );
}
