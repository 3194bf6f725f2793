//! End-to-end tests of the gateway example: the real binary, real sockets,
//! ephemeral ports, exact assertions.

mod common;

use std::net::TcpListener;

use bytes::Bytes;
use common::{
    Gateway, assert_config_rejected, get, metric, metric_with, raw_exchange, request, scrape, send,
    wait_for_metric,
};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};

/// Deterministic, non-repeating-looking payload.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A body streamed in `chunk`-byte frames with unknown length (chunked).
fn streamed(
    data: Vec<u8>,
    chunk: usize,
) -> StreamBody<
    impl futures_util::Stream<Item = Result<http_body::Frame<Bytes>, std::io::Error>> + Unpin,
> {
    let data = Bytes::from(data);
    let frames: Vec<_> = (0..data.len())
        .step_by(chunk)
        .map(|i| {
            Ok(http_body::Frame::data(
                data.slice(i..(i + chunk).min(data.len())),
            ))
        })
        .collect();
    StreamBody::new(futures_util::stream::iter(frames))
}

#[tokio::test]
async fn get_is_proxied_byte_exact() {
    let gw = Gateway::start(&[]);
    let reply = get(&gw.url("/items/7")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(
        reply.text(),
        r#"{"id":7,"name":"item-7","price_cents":359}"#
    );

    let reply = get(&gw.url("/items?ids=1,2,3")).await;
    assert_eq!(
        reply.text(),
        r#"[{"id":1,"name":"item-1","price_cents":137},{"id":2,"name":"item-2","price_cents":174},{"id":3,"name":"item-3","price_cents":211}]"#
    );

    let reply = get(&gw.url("/status/418")).await;
    assert_eq!(reply.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(reply.text(), "status 418\n");
}

#[tokio::test]
async fn post_is_proxied_byte_exact_including_a_streamed_mebibyte() {
    let gw = Gateway::start(&[]);

    let small = request("POST", &gw.url("/echo"), "hello, upstream").await;
    assert_eq!(small.status, StatusCode::OK);
    assert_eq!(small.text(), "hello, upstream");
    assert_eq!(small.header("x-echo-method"), "POST");
    assert_eq!(small.header("x-echo-h-content-length"), "15");

    // 1 MiB in 16 KiB frames, chunked both ways: nothing may be lost,
    // duplicated or reordered.
    let data = payload(1 << 20);
    let req = Request::post(gw.url("/echo"))
        .body(streamed(data.clone(), 16 << 10))
        .unwrap();
    let reply = send(req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-echo-h-transfer-encoding"), "chunked");
    assert_eq!(reply.body.len(), data.len());
    assert!(
        reply.body == data,
        "echoed body differs from the 1 MiB sent"
    );
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let gw = Gateway::start(&[]);
    let res = common::h2c_client()
        .request(
            Request::post(gw.url("/echo"))
                .body(Full::new(Bytes::from_static(b"over h2c")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    let reply = common::read(res).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "over h2c");
    // The upstream (HTTP/1.1) gets the client's authority as Host.
    assert_eq!(reply.header("x-echo-h-host"), gw.addr.to_string());
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let gw = Gateway::start(&[]);
    let raw = format!(
        "GET /echo HTTP/1.1\r\nHost: {}\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: websocket\r\nX-End-To-End: kept\r\n\r\n",
        gw.addr
    );
    let response = raw_exchange(gw.addr, raw.as_bytes()).await;
    let head = response
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    // What the upstream received, echoed as x-echo-h-<name>.
    let seen: Vec<&str> = head
        .lines()
        .filter_map(|l| l.strip_prefix("x-echo-h-"))
        .filter_map(|l| l.split(':').next())
        .collect();
    assert_eq!(
        seen,
        ["host", "x-end-to-end", "x-forwarded-for", "forwarded"],
        "{head}"
    );

    // Response direction: the upstream's hop-by-hop fields stop here.
    let raw = format!(
        "GET /hop-by-hop HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    let response = raw_exchange(gw.addr, raw.as_bytes()).await;
    let head = response
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    let names: Vec<&str> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split(':').next())
        .collect();
    assert!(names.contains(&"x-end-to-end"), "{head}");
    for hop in [
        "x-upstream-hop",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(!names.contains(&hop), "{hop} leaked: {head}");
    }
    // The gateway's own `connection: close` (the client asked for it) is the
    // only Connection field left.
    assert_eq!(head.matches("connection:").count(), 1, "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
}

#[tokio::test]
async fn forwarding_headers_are_appended() {
    let gw = Gateway::start(&[]);
    let req = Request::get(gw.url("/echo"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("forwarded", "for=203.0.113.7")
        .body(Full::<Bytes>::default())
        .unwrap();
    let reply = send(req).await;
    assert_eq!(
        reply.header("x-echo-h-x-forwarded-for"),
        "203.0.113.7, 127.0.0.1"
    );
    assert_eq!(
        reply.header("x-echo-h-forwarded"),
        "for=203.0.113.7, for=127.0.0.1;proto=http"
    );

    let reply = get(&gw.url("/echo")).await;
    assert_eq!(reply.header("x-echo-h-x-forwarded-for"), "127.0.0.1");
    assert_eq!(
        reply.header("x-echo-h-forwarded"),
        "for=127.0.0.1;proto=http"
    );
}

#[tokio::test]
async fn upstreams_are_used_round_robin() {
    let a = Gateway::start(&["--demo-upstream-only"]);
    let b = Gateway::start(&["--demo-upstream-only"]);
    let (ua, ub) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let gw = Gateway::start(&["--upstream", &ua, "--upstream", &ub]);
    let mut served_by = Vec::new();
    for _ in 0..4 {
        let reply = get(&gw.url("/echo")).await;
        assert_eq!(reply.status, StatusCode::OK);
        served_by.push(reply.header("x-echo-served-by").to_owned());
    }
    let (sa, sb) = (a.addr.to_string(), b.addr.to_string());
    assert_eq!(served_by, [sa.clone(), sb.clone(), sa, sb]);
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    // A port that was free a moment ago and has no listener now.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let upstream = format!("http://127.0.0.1:{port}");
    let gw = Gateway::start(&["--upstream", &upstream]);
    for _ in 0..3 {
        let reply = get(&gw.url("/anything")).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(reply.text(), "bad gateway\n");
    }
    let m = scrape(&gw).await;
    let up = format!("127.0.0.1:{port}");
    assert_eq!(
        metric_with(
            &m,
            "gateway_upstream_errors_total",
            &[("upstream", &up), ("kind", "connect")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "gateway_requests_total",
            r#"route="proxy",status="502""#
        ),
        3.0
    );
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let gw = Gateway::start(&["--upstream-timeout", "100ms"]);
    let reply = get(&gw.url("/delay/30000")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.text(), "gateway timeout\n");
    let m = scrape(&gw).await;
    let up = gw.upstream_addr.unwrap().to_string();
    assert_eq!(
        metric_with(
            &m,
            "gateway_upstream_errors_total",
            &[("upstream", &up), ("kind", "timeout")]
        ),
        1.0
    );

    // A fast answer on the same gateway is unaffected.
    assert_eq!(get(&gw.url("/delay/0")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_exactly_the_requests_sent() {
    let gw = Gateway::start(&[]);
    let before = scrape(&gw).await;
    for _ in 0..25 {
        assert_eq!(get(&gw.url("/")).await.status, StatusCode::OK);
    }
    for _ in 0..4 {
        assert_eq!(
            get(&gw.url("/status/503")).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/healthz")).await.text(), "ok\n");
    }
    let after = scrape(&gw).await;
    let delta = |labels: &str| {
        metric(&after, "gateway_requests_total", labels)
            - metric(&before, "gateway_requests_total", labels)
    };
    assert_eq!(delta(r#"route="proxy",status="200""#), 25.0);
    assert_eq!(delta(r#"route="proxy",status="503""#), 4.0);
    assert_eq!(delta(r#"route="healthz",status="200""#), 3.0);
    // The first scrape is counted once its response is out, the second not yet.
    assert_eq!(delta(r#"route="metrics",status="200""#), 1.0);
    assert_eq!(
        metric(
            &after,
            "gateway_request_duration_seconds_count",
            r#"route="proxy",status="200""#
        ),
        25.0
    );
    assert_eq!(
        metric(&after, "gateway_requests_in_flight", r#"route="proxy""#),
        0.0
    );
}

#[tokio::test]
async fn builtin_routes_answer_without_the_upstream() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start(&["--upstream", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(get(&gw.url("/healthz")).await.text(), "ok\n");
    assert_eq!(get(&gw.url("/readyz")).await.text(), "ready\n");
    // Without the demo upstream, /demo/faults is an ordinary (failing) path.
    assert_eq!(
        get(&gw.url("/demo/faults")).await.status,
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn demo_faults_switch_at_run_time() {
    let gw = Gateway::start(&[]);
    let faults = get(&gw.url("/demo/faults")).await;
    assert_eq!(
        faults.text(),
        "{\"error_rate\":0,\"latency_ms\":0,\"slots\":0,\"service_time_ms\":0}\n"
    );

    let set = request(
        "PUT",
        &gw.url("/demo/faults?error_rate=1.0&latency_ms=0"),
        "",
    )
    .await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(
        set.text(),
        "{\"error_rate\":1,\"latency_ms\":0,\"slots\":0,\"service_time_ms\":0}\n"
    );
    let failed = get(&gw.url("/items/1")).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.text(), "injected failure\n");

    // Deterministic share: rate 0.5 fails every second request.
    request("POST", &gw.url("/demo/faults?error_rate=0.5"), "").await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(get(&gw.url("/")).await.status.as_u16());
    }
    assert_eq!(codes.iter().filter(|c| **c == 500).count(), 3, "{codes:?}");

    let bad = request("PUT", &gw.url("/demo/faults?error_rate=2"), "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    request("PUT", &gw.url("/demo/faults?error_rate=0"), "").await;
    assert_eq!(get(&gw.url("/")).await.text(), "hello\n");
}

#[tokio::test]
async fn json_logs_carry_the_listening_line_and_access_events() {
    let gw = Gateway::start(&["--log-format", "json"]);
    assert_eq!(get(&gw.url("/items/1")).await.status, StatusCode::OK);
    let line = gw.wait_for_line("\"target\":\"gateway::access\"");
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["method"], "GET");
    assert_eq!(event["path"], "/items/1");
    assert_eq!(event["status"], 200);
    assert_eq!(event["upstream"], gw.upstream_addr.unwrap().to_string());
    let listening = gw.wait_for_line(&format!("listening on http://{}", gw.addr));
    let listening: serde_json::Value = serde_json::from_str(&listening).unwrap();
    assert_eq!(
        listening["message"],
        format!("listening on http://{}", gw.addr)
    );
}

#[test]
fn unknown_config_key_exits_naming_it() {
    assert_config_rejected(
        "[upstream]\ntimeout = \"2s\"\ntimeuot = \"3s\"\n",
        "`upstream.timeuot` (line 3)",
    );
    // An unknown section names the section.
    assert_config_rejected(
        "[server]\nworkers = 1\n\n[bogus_section]\nx = 1\n",
        "key `bogus_section` (line 4)",
    );
}

#[test]
fn malformed_config_value_exits_naming_the_key() {
    assert_config_rejected(
        "[server]\nshutdown_timeout = \"5 parsecs\"\n",
        "`server.shutdown_timeout` (line 2)",
    );
    assert_config_rejected("[server\nlisten = 1\n", "(line 1)");
    assert_config_rejected(
        "[upstream]\nurls = [\"http://127.0.0.1:1/api\"]\n",
        "`upstream.urls[0]`",
    );
}

#[test]
fn config_file_is_applied_and_flags_override_it() {
    let toml = "[server]\nshutdown_timeout = \"1s\"\n[upstream]\ntimeout = \"50ms\"\n[log]\nformat = \"json\"\n";
    // The file's JSON format and the flag's 5 s timeout both apply.
    let mut gw = Gateway::start_with_config(&["--upstream-timeout", "5s"], toml);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply = rt.block_on(get(&gw.url("/delay/200")));
    assert_eq!(reply.status, StatusCode::OK);
    assert!(gw.output().contains("{\"timestamp\""), "{}", gw.output());
    gw.sigterm();
    assert!(gw.wait_exit().success());
    assert!(
        gw.output().contains("\"deadline_ms\":1000"),
        "{}",
        gw.output()
    );
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_and_exits_0() {
    let mut gw = Gateway::start(&[]);
    let url = gw.url("/delay/300");
    let slow = tokio::spawn(async move { get(&url).await });
    // Wait until the gateway has the request (in flight, not answered).
    wait_for_metric(&gw, "gateway_requests_in_flight", r#"route="proxy""#, 1.0).await;
    gw.sigterm();
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "delayed 300ms\n");
    let status = tokio::task::spawn_blocking(move || {
        let status = gw.wait_exit();
        (status, gw.output())
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0), "{}", status.1);
    assert!(status.1.contains("signal=\"SIGTERM\""), "{}", status.1);
    assert!(status.1.contains("drained, exiting"), "{}", status.1);
}

#[tokio::test]
async fn a_100_mib_upload_streams_without_buffering() {
    // Above the default body cap (16 MiB): raised for this upload.
    let gw = Gateway::start_with_config(
        &["--no-access-log"],
        "[server]\nmax_request_body = 1073741824\n",
    );
    // Warm up: connections, pools and allocator arenas exist before the
    // baseline is taken.
    request("POST", &gw.url("/echo"), vec![7u8; 1 << 20]).await;
    let before = gw.peak_rss_kib();

    const TOTAL: usize = 100 << 20;
    const CHUNK: usize = 64 << 10;
    let chunk = Bytes::from(vec![0xa5u8; CHUNK]);
    let frames = futures_util::stream::iter(
        (0..TOTAL / CHUNK)
            .map(move |_| Ok::<_, std::io::Error>(http_body::Frame::data(chunk.clone()))),
    );
    let req = Request::post(gw.url("/echo"))
        .body(StreamBody::new(frames))
        .unwrap();
    let res = common::client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Count the echoed bytes as they stream back instead of collecting them.
    let mut body = res.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            assert!(data.iter().all(|b| *b == 0xa5));
            received += data.len();
        }
    }
    assert_eq!(received, TOTAL);
    let grown_kib = gw.peak_rss_kib().saturating_sub(before);
    // 100 MiB went through in both directions; buffering even a tenth of it
    // would show here.
    assert!(
        grown_kib < 10 * 1024,
        "peak RSS grew by {grown_kib} KiB for a 100 MiB upload"
    );
}
