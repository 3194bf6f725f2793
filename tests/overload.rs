//! End to end: the gateway on its defaults (adaptive limits on, no capacity
//! configured) in front of a capacity-limited upstream offered 3x its
//! capacity by open-loop clients that give up after 1 s. The bar:
//! at least 90% of capacity answered in time, the excess refused with 503 +
//! `Retry-After`, `/healthz` answered throughout. Without the limit
//! (`[limit] enabled = false`) the same load collapses to nothing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Gateway, metric_with, scrape};
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use tokio::time::Instant;

/// The demo upstream: 8 slots × 20 ms = 400 req/s, FIFO, no cancellation.
const UPSTREAM: &str = "[demo]\nslots = 8\nservice_time = \"20ms\"\n";
const CAPACITY: f64 = 400.0;
const DEADLINE: Duration = Duration::from_secs(1);

/// The load tests of this file run one at a time: each needs the two cores
/// to itself to say anything about goodput.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Default)]
struct Counts {
    good: usize,
    refused: usize,
    late: usize,
    other: Vec<String>,
}

/// Sends `rate` req/s open-loop to `/items/1` for `warmup + measure`;
/// counts what was sent during `measure`.
async fn offer(gw: &Gateway, rate: f64, warmup: Duration, measure: Duration) -> Counts {
    let client = common::client::<Empty<Bytes>>();
    let url: http::Uri = gw.url("/items/1").parse().unwrap();
    let start = Instant::now();
    let total = warmup + measure;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = Vec::new();
    let mut k = 0u32;
    loop {
        let at = gap * k;
        if at >= total {
            break;
        }
        k += 1;
        tokio::time::sleep_until(start + at).await;
        let (client, url) = (client.clone(), url.clone());
        let counted = at >= warmup;
        tasks.push(tokio::spawn(async move {
            let answer = tokio::time::timeout(DEADLINE, async {
                let res = client.get(url).await?;
                let status = res.status();
                let retry_after = res.headers().get("retry-after").cloned();
                res.into_body().collect().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, retry_after))
            })
            .await;
            (counted, answer)
        }));
    }
    let mut counts = Counts::default();
    for task in tasks {
        let (counted, answer) = task.await.unwrap();
        if !counted {
            continue;
        }
        match answer {
            Ok(Ok((StatusCode::OK, _))) => counts.good += 1,
            Ok(Ok((StatusCode::SERVICE_UNAVAILABLE, Some(after)))) if after == "1" => {
                counts.refused += 1
            }
            Ok(Ok((status, after))) => counts.other.push(format!("{status} {after:?}")),
            Ok(Err(e)) => counts.other.push(e.to_string()),
            Err(_) => counts.late += 1,
        }
    }
    counts
}

/// Probes `/healthz` every 50 ms until `stop`; returns the statuses.
fn probe_health(gw: &Gateway, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<u16>> {
    let url = gw.url("/healthz");
    tokio::spawn(async move {
        let mut statuses = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let status = tokio::time::timeout(DEADLINE, common::get(&url))
                .await
                .map_or(0, |r| r.status.as_u16());
            statuses.push(status);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        statuses
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_3x_the_defaults_answer_at_capacity_and_refuse_the_rest_at_once() {
    let _serial = SERIAL.lock().await;
    let gw = Gateway::start_with_config(&["--no-access-log"], UPSTREAM);
    let stop = Arc::new(AtomicBool::new(false));
    let health = probe_health(&gw, stop.clone());
    let measure = Duration::from_secs(4);
    let counts = offer(&gw, 3.0 * CAPACITY, Duration::from_secs(2), measure).await;
    stop.store(true, Ordering::Relaxed);
    let goodput = counts.good as f64 / measure.as_secs_f64();
    println!("{counts:?}, goodput {goodput:.0}/s");
    assert!(
        goodput >= 0.9 * CAPACITY,
        "goodput {goodput:.0}/s of {CAPACITY}: {counts:?}"
    );
    assert!(counts.other.is_empty(), "{counts:?}");
    assert_eq!(counts.late, 0, "{counts:?}");
    assert!(counts.refused > 0, "{counts:?}");
    let health = health.await.unwrap();
    assert!(
        !health.is_empty() && health.iter().all(|s| *s == 200),
        "{health:?}"
    );
    // The limit learnt a concurrency near the upstream's 8 slots.
    let m = scrape(&gw).await;
    let limit = metric_with(&m, "palisade_limit_limit", &[("limiter", "upstream/0")]);
    assert!((8.0..=24.0).contains(&limit), "limit {limit}");
    let refused = metric_with(
        &m,
        "palisade_limit_rejected_total",
        &[
            ("limiter", "upstream/0"),
            ("class", ""),
            ("reason", "limit"),
        ],
    );
    assert!(refused >= counts.refused as f64, "{refused} counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_limit_the_same_load_collapses() {
    let _serial = SERIAL.lock().await;
    let gw = Gateway::start_with_config(
        &["--no-access-log"],
        &format!("{UPSTREAM}\n[limit]\nenabled = false\n"),
    );
    let counts = offer(
        &gw,
        3.0 * CAPACITY,
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .await;
    println!("{counts:?}");
    // The queue grows by 800 req/s; after the first second every answer is
    // late.
    assert_eq!(counts.good, 0, "{counts:?}");
    assert_eq!(counts.refused, 0, "{counts:?}");
}

#[test]
fn an_invalid_limit_section_stops_start_up_naming_the_key() {
    common::assert_config_rejected("[limit]\nmin_limit = 0\n", "limit.min_limit");
    common::assert_config_rejected(
        "[limit]\nmax_limit = 10\ninitial_limit = 20\n",
        "limit.initial_limit",
    );
    common::assert_config_rejected("[limit]\nalgorithm = \"magic\"\n", "algorithm");
}

#[tokio::test]
async fn the_global_limit_reads_deadlines_never_starts_a_late_request_and_forwards_the_rest_reduced()
 {
    let gw = Gateway::start_with_config(
        &["--no-access-log"],
        "[limit]\nglobal = true\ndeadline_header = \"x-deadline-ms\"\n",
    );
    // A caller whose deadline is already over: refused, never sent on.
    let late = common::send(
        http::Request::get(gw.url("/echo"))
            .header("grpc-timeout", "0m")
            .body(http_body_util::Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(late.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(late.header("retry-after"), "1");
    let m = scrape(&gw).await;
    assert_eq!(
        metric_with(
            &m,
            "palisade_limit_rejected_total",
            &[("limiter", "global"), ("class", ""), ("reason", "deadline")]
        ),
        1.0
    );
    // A live deadline reaches the upstream no larger than it was sent.
    let reply = common::send(
        http::Request::get(gw.url("/echo"))
            .header("x-deadline-ms", "5000")
            .header("grpc-timeout", "3S")
            .body(http_body_util::Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    // The deadline is the earlier of the two (3 s), forwarded in both.
    let ms: u64 = reply.header("x-echo-h-x-deadline-ms").parse().unwrap();
    assert!((2_000..=3_000).contains(&ms), "forwarded {ms} ms");
    let grpc = reply.header("x-echo-h-grpc-timeout");
    assert_eq!(grpc, format!("{ms}m"));
}
