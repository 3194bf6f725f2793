//! End-to-end tests of how the gateway uses its upstreams (issue 11): the
//! per-upstream connection cap, retries of idempotent requests once sent
//! (on a fresh connection, on another upstream) and load-aware balancing.
//! The real gateway binary, real sockets, every wait bounded.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{
    Gateway, assert_config_rejected, breaker_failures, get, metric, metric_with, scrape,
    wait_for_metric,
};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bounds every single wait of these tests; no assertion depends on it.
const BOUND: Duration = Duration::from_secs(20);

/// A demo upstream process and its base URL.
fn demo_upstream(toml: Option<&str>) -> (Gateway, String) {
    let args = ["--demo-upstream-only", "--no-access-log"];
    let gw = match toml {
        Some(toml) => Gateway::start_with_config(&args, toml),
        None => Gateway::start(&args),
    };
    let url = format!("http://{}", gw.addr);
    (gw, url)
}

async fn post(url: &str, body: &'static str) -> common::Reply {
    common::send(
        http::Request::post(url)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap(),
    )
    .await
}

fn retries(m: &str, outcome: &str) -> f64 {
    metric(
        m,
        "gateway_upstream_retries_total",
        &format!(r#"outcome="{outcome}""#),
    )
}

// === the connection cap ===

#[tokio::test]
async fn at_the_upstream_connection_cap_a_request_waits_then_gets_503() {
    let (upstream, url) = demo_upstream(None);
    let gw = Gateway::start_with_config(
        &["--no-access-log", "--upstream", &url],
        // One worker: with thread-per-core workers each has its share of
        // the cap (rounded up), and this test wants the whole of it.
        r#"
[server]
workers = 1
[upstream]
pool_max_connections = 2
pool_wait_timeout = "200ms"
[breaker]
consecutive_failures = 1
"#,
    );
    let label = format!(r#"upstream="{}""#, upstream.addr);
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = gw.url("/delay/3000");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    wait_for_metric(&gw, "gateway_upstream_connections", &label, 2.0).await;
    // Both connections busy, none may be opened: 503 after the wait.
    let reply = tokio::time::timeout(BOUND, get(&gw.url("/")))
        .await
        .expect("answered in time");
    reply.assert_unavailable("upstream busy\n");
    for task in slow {
        let reply = tokio::time::timeout(BOUND, task).await.unwrap().unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
    let m = scrape(&gw).await;
    assert_eq!(
        metric(&m, "gateway_upstream_pool_exhausted_total", &label),
        1.0
    );
    assert_eq!(metric(&m, "gateway_upstream_connections", &label), 2.0);
    // Not the upstream's failure: a breaker that opens on one failure is
    // still closed, and the next request is served.
    assert_eq!(breaker_failures(&m, 0), 0.0);
    assert_eq!(get(&gw.url("/")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn at_the_upstream_connection_cap_a_request_is_served_when_a_connection_comes_back() {
    let (upstream, url) = demo_upstream(None);
    let gw = Gateway::start_with_config(
        &["--no-access-log", "--upstream", &url],
        "[server]\nworkers = 1\n[upstream]\npool_max_connections = 2\npool_wait_timeout = \"10s\"\n",
    );
    let label = format!(r#"upstream="{}""#, upstream.addr);
    let done = Arc::new(AtomicUsize::new(0));
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = gw.url("/delay/1000");
            let done = done.clone();
            tokio::spawn(async move {
                let reply = get(&url).await;
                done.fetch_add(1, Ordering::SeqCst);
                reply
            })
        })
        .collect();
    wait_for_metric(&gw, "gateway_upstream_connections", &label, 2.0).await;
    let reply = tokio::time::timeout(BOUND, get(&gw.url("/delay/0")))
        .await
        .expect("answered in time");
    assert_eq!(reply.status, StatusCode::OK);
    // It could only be sent once a slow one had given its connection back.
    assert!(
        done.load(Ordering::SeqCst) >= 1,
        "served before any slot freed"
    );
    for task in slow {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    let m = scrape(&gw).await;
    assert_eq!(metric(&m, "gateway_upstream_connections", &label), 2.0);
    assert_eq!(
        metric(&m, "gateway_upstream_pool_exhausted_total", &label),
        0.0
    );
}

// === retries once sent ===

#[tokio::test]
async fn idempotent_requests_the_failing_upstream_answered_500_succeed_on_the_healthy_one() {
    let (failing, uf) = demo_upstream(Some("[demo]\nerror_rate = 1.0\n"));
    let (healthy, uh) = demo_upstream(None);
    let gw = Gateway::start_with_config(
        &["--no-access-log", "--upstream", &uf, "--upstream", &uh],
        r#"
[upstream]
retry_statuses = [500, 502, 503]
[breaker]
consecutive_failures = 3
wait_duration = "60s"
"#,
    );
    // The rotation starts at the failing upstream. A POST with a body is
    // never sent twice: its 500 reaches the client (failure 1).
    let reply = post(&gw.url("/echo"), "hello").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    // Every GET succeeds: the two the rotation sends to the failing
    // upstream before its breaker opens (failures 2 and 3) are retried on
    // the healthy one, the rest go there directly.
    let healthy_addr = healthy.addr.to_string();
    for i in 0..100 {
        let reply = get(&gw.url("/echo")).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
        assert_eq!(
            reply.header("x-echo-served-by"),
            healthy_addr,
            "request {i}"
        );
    }
    let m = scrape(&gw).await;
    assert_eq!(
        metric(&m, "palisade_breaker_state", r#"breaker="upstream/0""#),
        1.0,
        "open"
    );
    assert_eq!(breaker_failures(&m, 0), 3.0);
    assert_eq!(retries(&m, "retried"), 2.0);
    assert_eq!(retries(&m, "budget_exhausted"), 0.0);
    drop(failing);
}

#[tokio::test]
async fn status_retries_stay_within_the_budget() {
    let (_failing, uf) = demo_upstream(Some("[demo]\nerror_rate = 1.0\n"));
    let (_healthy, uh) = demo_upstream(None);
    // A breaker that never opens here (100 calls before the rate counts),
    // a budget of 3 retries per hour and no share of the traffic.
    let gw = Gateway::start_with_config(
        &["--no-access-log", "--upstream", &uf, "--upstream", &uh],
        r#"
[upstream]
retry_statuses = [500]
retry_budget_ratio = 0.0
retry_budget_min = 3
retry_budget_window = "1h"
"#,
    );
    // 5 of 10 went to the failing upstream first; 3 were retried.
    let (statuses, ok) = common::statuses(&gw.url("/echo"), 10).await;
    assert_eq!(ok, 8, "{statuses:?}");
    let m = scrape(&gw).await;
    assert_eq!(retries(&m, "retried"), 3.0);
    assert_eq!(retries(&m, "budget_exhausted"), 2.0);
}

/// An upstream that reads each request head and closes the connection
/// without answering; counts the connections it accepted.
async fn resetting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    scripted_upstream(|_| false).await
}

/// An HTTP/1.1 upstream that reads request heads (bodies must be small) and
/// answers request `k` (0-based) of a connection with `ok` when
/// `answer(k)`, else closes the connection; counts connections.
async fn scripted_upstream(answer: fn(usize) -> bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_scripted(s, answer));
        }
    });
    (addr, connections)
}

async fn serve_scripted(mut s: TcpStream, answer: fn(usize) -> bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for k in 0.. {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.clear();
        if !answer(k) {
            return; // closed, the request unanswered
        }
        let res = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
        if s.write_all(res).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn an_idempotent_request_the_upstream_dropped_after_reading_goes_to_another() {
    let (resetting, _) = resetting_upstream().await;
    let (healthy, uh) = demo_upstream(None);
    let ur = format!("http://{resetting}");
    let gw = Gateway::start(&["--no-access-log", "--upstream", &ur, "--upstream", &uh]);
    let healthy_addr = healthy.addr.to_string();
    // Rotation: resetting (retried on the healthy one), healthy, resetting.
    // The retry carries the same head: a field sent as two lines stays two
    // lines, in order.
    let first = common::send(
        Request::get(gw.url("/echo?q=1"))
            .header("accept", "text/html")
            .header("accept", "*/*")
            .header("x-request-tag", "t-1")
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-echo-served-by"), healthy_addr);
    assert_eq!(first.header("x-echo-uri"), "/echo?q=1");
    let accept: Vec<_> = first
        .headers
        .get_all("x-echo-h-accept")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(accept, ["text/html", "*/*"]);
    assert_eq!(first.header("x-echo-h-x-request-tag"), "t-1");
    assert_eq!(get(&gw.url("/echo")).await.status, StatusCode::OK);
    // A POST with a body was sent: never resent.
    let reply = post(&gw.url("/echo"), "hello").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let m = scrape(&gw).await;
    assert_eq!(retries(&m, "retried"), 1.0);
    // Both failures are the resetting upstream's, retried or not.
    assert_eq!(
        metric_with(
            &m,
            "gateway_upstream_errors_total",
            &[("upstream", &resetting.to_string()), ("kind", "protocol")]
        ),
        2.0
    );
    // The resetting upstream's adaptive limit counts both as drops: the
    // retried GET (answered by the other upstream) holds no slot of it.
    assert_eq!(
        metric_with(
            &m,
            "palisade_limit_rtt_seconds_count",
            &[("limiter", "upstream/0"), ("outcome", "drop")]
        ),
        2.0
    );
}

#[tokio::test]
async fn a_reused_connection_that_fails_before_the_response_is_replaced_for_idempotent_requests() {
    // Each connection answers its first request and drops the second one
    // unanswered (an upstream closing a keep-alive connection as a request
    // arrives, every time).
    let (upstream, connections) = scripted_upstream(|k| k == 0).await;
    let gw = Gateway::start(&[
        "--no-access-log",
        "--upstream",
        &format!("http://{upstream}"),
    ]);
    for i in 0..10 {
        let reply = get(&gw.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
        assert_eq!(reply.text(), "ok\n");
    }
    // The first opened a connection; each later one was written on the
    // reused connection, dropped, and sent again on a fresh one.
    assert_eq!(connections.load(Ordering::SeqCst), 10);
    // A POST with a body on the reused connection is not sent again.
    let reply = post(&gw.url("/"), "hello").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(connections.load(Ordering::SeqCst), 10);
    let m = scrape(&gw).await;
    assert_eq!(retries(&m, "retried"), 0.0, "no other upstream involved");
}

// === balancing ===

/// How many of `n` requests, 8 at a time, each upstream served.
async fn spread(gw: &Gateway, n: usize, slow: &str) -> (usize, usize) {
    let slow_count = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = gw.url("/echo");
            let slow = slow.to_string();
            let slow_count = slow_count.clone();
            tokio::spawn(async move {
                for _ in 0..n / 8 {
                    let reply = tokio::time::timeout(BOUND, get(&url)).await.unwrap();
                    assert_eq!(reply.status, StatusCode::OK);
                    if reply.header("x-echo-served-by") == slow {
                        slow_count.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let slow = slow_count.load(Ordering::SeqCst);
    (slow, n - slow)
}

#[tokio::test]
async fn p2c_sends_less_to_a_slow_upstream_round_robin_sends_half() {
    let (slow, us) = demo_upstream(Some("[demo]\nlatency = \"100ms\"\n"));
    let (_fast, uf) = demo_upstream(None);
    let slow_addr = slow.addr.to_string();
    let args = ["--no-access-log", "--upstream", &us, "--upstream", &uf];

    let rr = Gateway::start_with_config(&args, "[upstream]\nbalance = \"round_robin\"\n");
    assert_eq!(spread(&rr, 160, &slow_addr).await, (80, 80));

    // p2c (the default): while a request waits on the slow upstream, the
    // fast one has fewer pending and gets the next ones; the slow one gets
    // a request only when it has none pending and the rotation names it, at
    // most about once per 100 ms. 8 concurrent clients x 20 requests take
    // far longer than that on the slow one's share alone.
    let p2c = Gateway::start(&args);
    let (to_slow, to_fast) = spread(&p2c, 160, &slow_addr).await;
    assert!(
        to_slow < 40 && to_fast > 120,
        "slow {to_slow}, fast {to_fast}"
    );
}

// === configuration ===

#[test]
fn upstream_keys_are_validated_at_start_up() {
    assert_config_rejected(
        "[upstream]\npool_max_connections = 0\n",
        "upstream.pool_max_connections",
    );
    assert_config_rejected(
        "[upstream]\npool_wait_timeout = \"0\"\n",
        "upstream.pool_wait_timeout",
    );
    assert_config_rejected(
        "[upstream]\nretry_statuses = [404]\n",
        "upstream.retry_statuses",
    );
    assert_config_rejected("[upstream]\nbalance = \"random\"\n", "balance");
}
