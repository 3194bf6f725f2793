//! End to end: the gateway's thread-per-core mode (`server.runtime =
//! "thread-per-core"`): every worker accepts on its own `SO_REUSEPORT`
//! listener, and the policy state is one for all of them.

mod common;

use common::{Gateway, get, metric, scrape};
use http::StatusCode;

const WORKERS: usize = 2;
/// The global budget: burst `LIMIT`, one cell a minute, so nothing refills
/// during the test and the admitted count is exact.
const LIMIT: usize = 5;

fn config() -> String {
    format!(
        r#"
[server]
runtime = "thread-per-core"
workers = {WORKERS}

[log]
access_log = false

[ratelimit]
headers = false

[ratelimit.global]
rate = 1
period = "60s"
burst = {LIMIT}
"#
    )
}

/// Connections each worker has accepted so far.
async fn per_worker(gw: &Gateway) -> Vec<f64> {
    let text = scrape(gw).await;
    (0..WORKERS)
        .map(|i| {
            metric(
                &text,
                "gateway_worker_connections_total",
                &format!("worker=\"{i}\""),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_worker_serves_and_one_global_limit_admits_exactly_its_burst() {
    let mut gw = Gateway::start_with_config(&[], &config());
    let url = gw.url("/items/1");

    // One request per fresh connection (`get` uses a new client each time),
    // so the kernel spreads them over the workers' listeners by their
    // source ports. Go on until every worker has served more requests than
    // the whole budget: separate limiters would then admit LIMIT per worker.
    let (mut admitted, mut limited, mut scrapes) = (0, 0, 0);
    let mut counts = vec![0.0; WORKERS];
    for round in 0..40 {
        for _ in 0..5 {
            match get(&url).await.status {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => limited += 1,
                other => panic!("unexpected status {other}"),
            }
        }
        counts = per_worker(&gw).await;
        scrapes += 1;
        // Scrapes are connections too (never limited: built-in routes sit
        // above the limiter); count them against every worker.
        let floor = (LIMIT + 1 + scrapes) as f64;
        if counts.iter().all(|&c| c >= floor) {
            break;
        }
        assert!(
            round < 39,
            "connections never reached every worker: {counts:?}"
        );
    }
    assert_eq!(admitted, LIMIT, "one global limit across workers");
    assert!(limited > 0);
    let total: f64 = counts.iter().sum();
    assert_eq!(
        total as usize,
        admitted + limited + scrapes,
        "each connection counted by exactly one worker (the last scrape's included)"
    );
    let text = scrape(&gw).await;
    let policy = r#"policy="global""#;
    assert_eq!(
        metric(&text, "palisade_ratelimit_admitted_total", policy),
        LIMIT as f64
    );
    assert_eq!(
        metric(&text, "palisade_ratelimit_limited_total", policy),
        limited as f64
    );

    // Shutdown drains every worker and exits cleanly.
    gw.sigterm();
    let status = gw.wait_exit();
    assert!(status.success(), "exit {status}:\n{}", gw.output());
}

#[tokio::test]
async fn thread_per_core_flags_and_bad_values() {
    // The flag overrides the file and serves as well.
    let gw = Gateway::start(&[
        "--runtime",
        "thread-per-core",
        "--workers",
        "2",
        "--no-access-log",
    ]);
    assert_eq!(get(&gw.url("/")).await.status, StatusCode::OK);
    assert!(
        gw.output()
            .contains("one SO_REUSEPORT listener and runtime per worker")
    );
    // An unknown mode names the key.
    common::assert_config_rejected("[server]\nruntime = \"per-core\"\n", "server.runtime");
}
