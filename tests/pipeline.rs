//! End to end: the gateway's `[access_log]` pipeline against the real
//! gateway process: every request of a known set is logged exactly once,
//! including the ones still waiting for a batch when SIGTERM arrives.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Gateway, assert_config_rejected, get};
use http::StatusCode;

fn log_path() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "palisade-access-{}-{}.log",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn lines(path: &PathBuf) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

async fn send_and_stop(batch: usize, flush: &str, n: u64) -> Vec<serde_json::Value> {
    let path = log_path();
    let _ = std::fs::remove_file(&path);
    let config = format!(
        "[shutdown]\nreadiness_delay = \"0s\"\n\n[access_log]\npipeline = true\npath = {:?}\nbatch = {batch}\nflush = \"{flush}\"\n",
        path.display().to_string()
    );
    let mut gw = Gateway::start_with_config(&[], &config);
    let calls = (0..n).map(|i| {
        let url = gw.url(&format!("/items/{i}"));
        async move { get(&url).await }
    });
    let replies = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("every request answered");
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    gw.sigterm();
    let status = gw.wait_exit();
    let output = gw.output();
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("pipeline item(s) completed"), "{output}");
    // Nothing of the access log went to stdout.
    assert!(!output.contains("gateway::access"), "{output}");
    let got = lines(&path);
    let _ = std::fs::remove_file(&path);
    got
}

fn assert_each_request_once(got: &[serde_json::Value], n: u64) {
    assert_eq!(got.len() as u64, n, "one line per request");
    let paths: BTreeSet<String> = got
        .iter()
        .map(|v| v["path"].as_str().unwrap().to_owned())
        .collect();
    let want: BTreeSet<String> = (0..n).map(|i| format!("/items/{i}")).collect();
    assert_eq!(paths, want);
    for v in got {
        assert_eq!(v["method"], "GET");
        assert_eq!(v["status"], 200);
        assert_eq!(v["route"], "proxy");
        assert_eq!(v["client"], "127.0.0.1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_every_record_of_a_finished_request() {
    // 203 requests, 64 lines per write, a 1-hour flush timer: three full
    // batches go out on their own, the last 11 lines only because the
    // shutdown's access-log phase drains the pipeline.
    let got = send_and_stop(64, "1h", 203).await;
    assert_each_request_once(&got, 203);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_batches_and_a_short_flush_log_every_request_once() {
    let got = send_and_stop(1, "1ms", 50).await;
    assert_each_request_once(&got, 50);
}

#[test]
fn a_zero_buffer_is_refused() {
    assert_config_rejected(
        "[access_log]\npipeline = true\nbuffer = 0\n",
        "access_log.buffer",
    );
}
