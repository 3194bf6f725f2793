//! End to end: the gateway's `[ratelimit]` limits against the real gateway
//! process and its embedded demo upstream.
//!
//! The quotas are 1 per minute with a small burst, so nothing refills during
//! a test and every count and header value is exact (the few milliseconds
//! between requests only move values that are rounded up to whole seconds).

mod common;

use bytes::Bytes;
use common::{Gateway, Reply, assert_config_rejected, get, metric, scrape, send};
use http::{Request, StatusCode};
use http_body_util::Full;

const PER_CLIENT: &str = r#"
[log]
access_log = false

[ratelimit]
legacy_headers = true

[ratelimit.per_client]
rate = 1
period = "60s"
burst = 3
"#;

async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(req.body(Full::<Bytes>::default()).unwrap()).await
}

#[tokio::test]
async fn per_client_limit_answers_429_with_consistent_fields() {
    let gw = Gateway::start_with_config(&[], PER_CLIENT);
    let url = gw.url("/items/1");

    // Burst 3, one cell a minute: the window (time to refill) is 180 s.
    for (remaining, reset) in [(2, 60), (1, 120), (0, 180)] {
        let ok = get(&url).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
        assert_eq!(ok.header("ratelimit-policy"), r#""per-client";q=3;w=180"#);
        assert_eq!(
            ok.header("ratelimit"),
            format!(r#""per-client";r={remaining};t={reset}"#)
        );
        assert_eq!(ok.header("x-ratelimit-limit"), "3");
        assert_eq!(ok.header("x-ratelimit-remaining"), remaining.to_string());
        assert_eq!(ok.header("x-ratelimit-reset"), reset.to_string());
    }

    let limited = get(&url).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    // The next cell is due in just under 60 s: rounded up, never 0.
    assert_eq!(limited.header("retry-after"), "60");
    assert_eq!(
        limited.header("ratelimit-policy"),
        r#""per-client";q=3;w=180"#
    );
    assert_eq!(limited.header("ratelimit"), r#""per-client";r=0;t=180"#);
    assert_eq!(limited.header("x-ratelimit-remaining"), "0");

    // A client-chosen X-Forwarded-For does not buy a fresh budget: the
    // gateway trusts no proxy, so the key stays the TCP peer.
    let spoofed = get_with(&url, &[("x-forwarded-for", "203.0.113.99")]).await;
    assert_eq!(spoofed.status, StatusCode::TOO_MANY_REQUESTS);

    // Built-in routes are never limited.
    assert_eq!(get(&gw.url("/healthz")).await.status, StatusCode::OK);

    let m = scrape(&gw).await;
    let policy = r#"policy="per-client""#;
    assert_eq!(metric(&m, "palisade_ratelimit_admitted_total", policy), 3.0);
    assert_eq!(metric(&m, "palisade_ratelimit_limited_total", policy), 2.0);
    assert_eq!(metric(&m, "palisade_ratelimit_keys", policy), 1.0);
}

#[tokio::test]
async fn trusted_proxies_key_clients_by_forwarded_address() {
    let gw = Gateway::start_with_config(
        &[],
        r#"
[log]
access_log = false

[ratelimit]
trusted_proxies = ["127.0.0.0/8"]

[ratelimit.per_client]
rate = 1
period = "60s"
burst = 1
"#,
    );
    let url = gw.url("/items/1");
    let from = |client: &'static str| {
        let url = url.clone();
        async move { get_with(&url, &[("x-forwarded-for", client)]).await.status }
    };
    assert_eq!(from("198.51.100.1").await, StatusCode::OK);
    assert_eq!(from("198.51.100.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(from("198.51.100.2").await, StatusCode::OK);
    // Only the rightmost untrusted hop counts: prepending a fake address
    // does not escape the limit.
    assert_eq!(
        from("10.9.9.9, 198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn global_limit_applies_to_all_clients_and_shadow_mode_only_counts() {
    let gw = Gateway::start_with_config(
        &[],
        r#"
[log]
access_log = false

[ratelimit]
headers = false

[ratelimit.global]
rate = 1
period = "60s"
burst = 2
"#,
    );
    let url = gw.url("/items/1");
    let ok = get(&url).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.headers.get("ratelimit").is_none(), "headers = false");
    assert_eq!(get(&url).await.status, StatusCode::OK);
    let limited = get(&url).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("ratelimit"), r#""global";r=0;t=120"#);
    let retry: u64 = limited.header("retry-after").parse().unwrap();
    assert_eq!(retry, 60);

    let shadow = Gateway::start_with_config(
        &[],
        r#"
[log]
access_log = false

[ratelimit]
shadow = true

[ratelimit.global]
rate = 1
period = "60s"
burst = 1
"#,
    );
    for _ in 0..3 {
        assert_eq!(get(&shadow.url("/items/1")).await.status, StatusCode::OK);
    }
    let m = scrape(&shadow).await;
    let policy = r#"policy="global""#;
    assert_eq!(metric(&m, "palisade_ratelimit_admitted_total", policy), 1.0);
    assert_eq!(
        metric(&m, "palisade_ratelimit_shadow_limited_total", policy),
        2.0
    );
    assert_eq!(metric(&m, "palisade_ratelimit_limited_total", policy), 0.0);
}

#[test]
fn invalid_limits_fail_at_start_naming_the_key() {
    assert_config_rejected(
        "[ratelimit.per_client]\nrate = 0\n",
        "ratelimit.per_client.rate",
    );
}

/// A `redis-server` child on a free loopback port, killed on drop.
struct RedisServer {
    child: std::process::Child,
    port: u16,
}

impl RedisServer {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        // Owned from here on: dropping it kills and reaps the process.
        let server = Self { child, port };
        // Bounded wait for the process to accept connections.
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("redis-server did not start");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn two_gateways_share_one_per_client_limit_through_redis() {
    let redis = RedisServer::start().await;
    let config = format!(
        r#"
[log]
access_log = false

[ratelimit]
redis_url = "redis://127.0.0.1:{}/"

[ratelimit.per_client]
rate = 1
period = "60s"
burst = 3
"#,
        redis.port
    );
    let a = Gateway::start_with_config(&[], &config);
    let b = Gateway::start_with_config(&[], &config);
    let mut statuses = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &a } else { &b };
        statuses.push(get(&gw.url("/items/1")).await.status);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 3, "{statuses:?}");
    assert_eq!(statuses[3..], [StatusCode::TOO_MANY_REQUESTS; 3]);
    let limited = get(&a.url("/items/1")).await;
    assert_eq!(limited.header("ratelimit"), r#""per-client";r=0;t=180"#);
    assert_eq!(limited.header("retry-after"), "60");
}

#[tokio::test]
async fn wait_mode_queues_instead_of_rejecting() {
    // Global 20/s, burst 1, mode "wait": five concurrent requests are all
    // served, one cell (50 ms) apart, and none is rejected.
    let gw = Gateway::start_with_config(
        &[],
        r#"
[log]
access_log = false

[ratelimit]
mode = "wait"

[ratelimit.global]
rate = 20
period = "1s"
burst = 1
"#,
    );
    let url = gw.url("/items/1");
    let replies = futures_util::future::join_all((0..5).map(|_| get(&url))).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let m = scrape(&gw).await;
    let policy = r#"policy="global""#;
    assert_eq!(metric(&m, "palisade_ratelimit_admitted_total", policy), 5.0);
    assert_eq!(metric(&m, "palisade_ratelimit_limited_total", policy), 0.0);
}

#[tokio::test]
async fn grpc_calls_get_grpc_statuses_from_the_gateway() {
    let gw = Gateway::start_with_config(&[], PER_CLIENT);
    let url = gw.url("/items/1");
    let grpc = [("content-type", "application/grpc+proto")];
    for _ in 0..3 {
        assert_eq!(get_with(&url, &grpc).await.status, StatusCode::OK);
    }
    // Over the limit: a trailers-only RESOURCE_EXHAUSTED (8), not a 429.
    let limited = get_with(&url, &grpc).await;
    assert_eq!(limited.status, StatusCode::OK);
    assert_eq!(limited.header("grpc-status"), "8");
    assert_eq!(limited.header("content-type"), "application/grpc");
    let pushback: u64 = limited.header("grpc-retry-pushback-ms").parse().unwrap();
    assert!(
        (59_000..=60_000).contains(&pushback),
        "pushback {pushback} ms"
    );
    assert!(limited.body.is_empty(), "trailers-only: no body");
    // Plain HTTP callers keep their 429.
    assert_eq!(get(&url).await.status, StatusCode::TOO_MANY_REQUESTS);

    // The gateway's own errors map by their HTTP status: an upstream that
    // refuses connections is a 502 for HTTP, UNAVAILABLE (14) for gRPC.
    let dead = Gateway::start(&["--no-access-log", "--upstream", "http://127.0.0.1:9"]);
    let url = dead.url("/x");
    assert_eq!(get(&url).await.status, StatusCode::BAD_GATEWAY);
    let refused = get_with(&url, &grpc).await;
    assert_eq!(refused.status, StatusCode::OK);
    assert_eq!(refused.header("grpc-status"), "14");
    assert_eq!(refused.header("grpc-message"), "bad gateway");
}
