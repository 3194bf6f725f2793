//! End to end: hot reload of the gateway's `--config` on SIGHUP (and
//! `POST /admin/reload`) against the real gateway process.
//!
//! Quotas are per minute or slower, so nothing refills during a test and
//! every count is exact. Each wait is bounded (the harness's process
//! timeout, or an explicit `timeout`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Gateway, Reply, get, metric_with, request, scrape, send};
use http::{Request, StatusCode};
use http_body_util::Full;

/// Bounds a wait that only a broken gateway would exceed.
const BOUND: Duration = Duration::from_secs(60);

fn limits(per_client: &str, extra: &str) -> String {
    format!(
        r#"
[log]
access_log = false

[ratelimit.per_client]
{per_client}
period = "60s"
key = "header:x-client"
{extra}
"#
    )
}

async fn as_client(gw: &Gateway, client: &str) -> Reply {
    send(
        Request::get(gw.url("/"))
            .header("x-client", client)
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await
}

/// The statuses of `n` requests of `client`.
async fn statuses(gw: &Gateway, client: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(as_client(gw, client).await.status.as_u16());
    }
    out
}

fn reloads(text: &str, result: &str) -> f64 {
    metric_with(
        text,
        "palisade_reload_total",
        &[("reload", "gateway"), ("result", result)],
    )
}

fn version(text: &str) -> f64 {
    metric_with(text, "palisade_reload_version", &[("reload", "gateway")])
}

/// Waits for the `n`-th (from 0) output line containing `needle`, checking
/// the output as it grows, without blocking the runtime; bounded.
async fn wait_line(gw: &Gateway, needle: &str, n: usize) -> String {
    tokio::time::timeout(BOUND, async {
        loop {
            if let Some(line) = gw.output().lines().filter(|l| l.contains(needle)).nth(n) {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no line #{n} containing {needle:?} in:\n{}", gw.output()))
}

/// (1) Under keep-alive load, a SIGHUP lowering the limit fails or resets no
/// request; requests after the swap see the new limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_under_load_drops_nothing_and_applies_the_new_limit() {
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 100;
    let gw = Gateway::start_with_config(&[], &limits("rate = 100000\nburst = 100000", ""));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for c in 0..CLIENTS {
        let url = gw.url("/");
        let done = done.clone();
        load.push(tokio::spawn(async move {
            // One keep-alive client per task: its requests share a connection.
            let client = common::client::<Full<Bytes>>();
            let mut statuses = Vec::with_capacity(PER_CLIENT);
            for _ in 0..PER_CLIENT {
                let req = Request::get(&url)
                    .header("x-client", format!("load-{c}"))
                    .body(Full::default())
                    .unwrap();
                // A transport error (a reset or dropped request) fails here.
                let res = client
                    .request(req)
                    .await
                    .expect("no failed or reset request");
                let reply = common::read(res).await;
                statuses.push(reply.status.as_u16());
                done.fetch_add(1, Ordering::SeqCst);
            }
            statuses
        }));
    }
    // Swap a quarter of the way through.
    tokio::time::timeout(BOUND, async {
        while done.load(Ordering::SeqCst) < CLIENTS * PER_CLIENT / 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the load progressed");
    gw.rewrite_config(&limits("rate = 1\nburst = 5", ""));
    gw.sighup();
    wait_line(&gw, "reload applied", 0).await;

    let mut ok = 0;
    let mut limited = 0;
    for task in load {
        let statuses = tokio::time::timeout(BOUND, task)
            .await
            .expect("bounded")
            .unwrap();
        for s in statuses {
            match s {
                200 => ok += 1,
                429 => limited += 1,
                other => panic!("a request failed across the swap: {other}"),
            }
        }
    }
    assert_eq!(ok + limited, CLIENTS * PER_CLIENT);
    assert!(ok >= CLIENTS * PER_CLIENT / 4, "{ok}");

    // New requests see the new limit exactly: burst 5, then 429.
    assert_eq!(
        statuses(&gw, "probe", 6).await,
        [200, 200, 200, 200, 200, 429]
    );
    let text = scrape(&gw).await;
    assert_eq!(reloads(&text, "applied"), 1.0);
    assert_eq!(reloads(&text, "rejected"), 0.0);
    assert_eq!(version(&text), 2.0);
}

/// (2) An invalid file is rejected: the old limit still applies, the
/// process keeps running, the error names the key, rejected = 1.
#[tokio::test]
async fn sighup_with_an_invalid_file_keeps_the_old_config() {
    let mut gw = Gateway::start_with_config(&[], &limits("rate = 1\nburst = 3", ""));
    assert_eq!(statuses(&gw, "a", 4).await, [200, 200, 200, 429]);

    gw.rewrite_config(&limits("rate = 1\nburst = 100", "bursts = 7"));
    gw.sighup();
    let line = wait_line(&gw, "reload rejected", 0).await;
    assert!(line.contains("`ratelimit.per_client.bursts`"), "{line}");

    // The old limit: `a` is still limited, a new client gets the old burst.
    assert_eq!(statuses(&gw, "a", 1).await, [429]);
    assert_eq!(statuses(&gw, "b", 4).await, [200, 200, 200, 429]);
    assert_eq!(get(&gw.url("/healthz")).await.status, StatusCode::OK);
    let text = scrape(&gw).await;
    assert_eq!(reloads(&text, "rejected"), 1.0);
    assert_eq!(reloads(&text, "applied"), 0.0);
    assert_eq!(version(&text), 1.0);

    // A restart-only change is rejected the same way, naming the section.
    gw.rewrite_config(&format!(
        "{}\n[shutdown]\nreadiness_delay = \"3s\"\n",
        limits("rate = 1\nburst = 3", "")
    ));
    gw.sighup();
    let line = wait_line(&gw, "reload rejected", 1).await;
    assert!(line.contains("`shutdown`"), "{line}");
    let text = scrape(&gw).await;
    assert_eq!(reloads(&text, "rejected"), 2.0);

    // Still serving, and it exits as usual.
    gw.sigterm();
    assert_eq!(gw.wait_exit().code(), Some(0));
}

/// (3) A request in flight during the swap completes on the old upstream;
/// new requests go to the new one. The old upstream is a socket this test
/// holds: it answers only when told, so the request is provably in flight
/// across the whole reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_on_the_old_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let held_addr = held.local_addr().unwrap();
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel::<String>();
    let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
    let old_upstream = tokio::spawn(async move {
        let (mut conn, _) = held.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.ends_with(b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed the upstream connection");
            head.extend_from_slice(&buf[..n]);
        }
        arrived_tx
            .send(String::from_utf8_lossy(&head).into_owned())
            .unwrap();
        release_rx.await.unwrap();
        conn.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nconnection: close\r\n\r\nold upstream",
        )
        .await
        .unwrap();
    });
    let fast = Gateway::start(&["--demo-upstream-only"]);
    let config = |upstream: std::net::SocketAddr| {
        format!("[log]\naccess_log = false\n[upstream]\nurls = [\"http://{upstream}\"]\n")
    };
    let gw = Gateway::start_with_config(&[], &config(held_addr));

    let in_flight = {
        let url = gw.url("/held");
        tokio::spawn(async move { get(&url).await })
    };
    let head = tokio::time::timeout(BOUND, arrived)
        .await
        .expect("bounded")
        .unwrap();
    assert!(head.starts_with("GET /held "), "{head}");

    gw.rewrite_config(&config(fast.addr));
    gw.sighup();
    wait_line(&gw, "reload applied", 0).await;

    let new = request("POST", &gw.url("/echo"), "new").await;
    assert_eq!(new.status, StatusCode::OK);
    assert_eq!(new.header("x-echo-served-by"), fast.addr.to_string());
    assert!(!in_flight.is_finished(), "still held by the old upstream");

    release.send(()).unwrap();
    let old = tokio::time::timeout(BOUND, in_flight)
        .await
        .expect("bounded")
        .unwrap();
    assert_eq!(old.status, StatusCode::OK, "{}", old.text());
    assert_eq!(old.text(), "old upstream");
    tokio::time::timeout(BOUND, old_upstream)
        .await
        .expect("bounded")
        .unwrap();
    assert_eq!(version(&scrape(&gw).await), 2.0);
}

/// (4) An unchanged per-client quota keeps its state across a reload that
/// changes something else: a client that spent its burst is still limited.
#[tokio::test]
async fn an_unchanged_quota_keeps_its_state() {
    let global = |rate: u32| format!("\n[ratelimit.global]\nrate = {rate}\nperiod = \"1s\"\n");
    let gw = Gateway::start_with_config(&[], &limits("rate = 1\nburst = 3", &global(1000)));
    assert_eq!(statuses(&gw, "spender", 4).await, [200, 200, 200, 429]);

    gw.rewrite_config(&limits("rate = 1\nburst = 3", &global(2000)));
    gw.sighup();
    let line = wait_line(&gw, "stateful layers carried over", 1).await;
    assert!(line.contains(r#"kept=["ratelimit.per_client""#), "{line}");
    assert!(line.contains(r#"fresh=["ratelimit.global"]"#), "{line}");
    wait_line(&gw, "reload applied", 0).await;

    // Right after the reload: still limited, no fresh burst.
    assert_eq!(statuses(&gw, "spender", 1).await, [429]);
    assert_eq!(statuses(&gw, "other", 4).await, [200, 200, 200, 429]);
    assert_eq!(version(&scrape(&gw).await), 2.0);
}

/// `POST /admin/reload` (opt-in) reloads and answers with the outcome.
#[tokio::test]
async fn admin_reload_is_opt_in_and_reports_the_outcome() {
    let off = Gateway::start_with_config(&[], &limits("rate = 1\nburst = 3", ""));
    // Off by default: the path is proxied like any other (the demo
    // upstream has no such route).
    assert_eq!(
        request("POST", &off.url("/admin/reload"), "").await.status,
        StatusCode::NOT_FOUND
    );
    drop(off);

    let on = "\n[reload]\nadmin = true\n";
    let gw = Gateway::start_with_config(&[], &limits("rate = 1\nburst = 3", on));
    assert_eq!(
        request("GET", &gw.url("/admin/reload"), "").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    gw.rewrite_config(&limits("rate = 1\nburst = 5", on));
    let ok = request("POST", &gw.url("/admin/reload"), "").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.text(), "reloaded: version 2\n");
    assert_eq!(statuses(&gw, "c", 6).await, [200, 200, 200, 200, 200, 429]);

    gw.rewrite_config(&limits("rate = 0\nburst = 5", on));
    let bad = request("POST", &gw.url("/admin/reload"), "").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        bad.text().contains("`ratelimit.per_client.rate`"),
        "{}",
        bad.text()
    );
    assert!(
        bad.text().contains("version 2 keeps serving"),
        "{}",
        bad.text()
    );
}

/// The per-upstream adaptive limits are carried over a reload that leaves
/// `[limit]` alone (what they learnt is kept), and rebuilt when it changes.
#[tokio::test]
async fn adaptive_limits_are_kept_unless_their_section_changes() {
    let other = |rate: u32| format!("[ratelimit.global]\nrate = {rate}\nperiod = \"1s\"\n");
    let gw = Gateway::start_with_config(&[], &other(1000));
    assert_eq!(get(&gw.url("/")).await.status, StatusCode::OK);

    gw.rewrite_config(&other(2000));
    gw.sighup();
    let line = wait_line(&gw, "stateful layers carried over", 1).await;
    assert!(line.contains(r#""limit.upstream/0""#), "{line}");
    assert!(
        line.contains("kept=[") && !line.contains(r#"fresh=["limit.upstream/0""#),
        "{line}"
    );
    wait_line(&gw, "reload applied", 0).await;

    gw.rewrite_config(&format!("{}\n[limit]\nmax_limit = 500\n", other(2000)));
    gw.sighup();
    let line = wait_line(&gw, "stateful layers carried over", 2).await;
    assert!(line.contains(r#"fresh=["limit.upstream/0"]"#), "{line}");
    wait_line(&gw, "reload applied", 1).await;
    assert_eq!(get(&gw.url("/")).await.status, StatusCode::OK);
    // Validating a reload builds no limiter: /metrics shows the live one only.
    let m = scrape(&gw).await;
    let limiters: std::collections::BTreeSet<&str> = m
        .lines()
        .filter(|l| l.starts_with("palisade_limit_limit{"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert_eq!(limiters, ["upstream/0"].into_iter().collect(), "{m}");
}
