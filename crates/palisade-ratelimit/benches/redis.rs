//! Redis backend throughput and latency against a local redis-server this
//! bench starts (and stops): checks/s and p50/p99 per check at concurrency 1
//! and 64, on one shared multiplexed connection.
//!
//! `cargo bench -p palisade-ratelimit --features redis --bench redis`

#![allow(missing_docs, clippy::disallowed_methods)]

use std::{
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use palisade_ratelimit::{Quota, redis::RedisLimiter};

const CHECKS: usize = 40_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn run(limiter: Arc<RedisLimiter>, concurrency: usize) {
    let per_task = CHECKS / concurrency;
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let key = format!("bench-{}", (task * per_task + i) % 1_000);
                    let t = Instant::now();
                    let decision = limiter.check(&key).await;
                    latencies.push(t.elapsed());
                    assert!(decision.allowed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(CHECKS);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed();
    latencies.sort();
    assert_eq!(limiter.backend_errors(), 0);
    println!(
        "redis concurrency {concurrency:>2}: {:>8.0} checks/s, p50 {:>7.1} us, p99 {:>7.1} us ({} checks)",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        latencies.len(),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter here.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..500 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let quota = Quota::builder()
            .rate(1_000_000)
            .per(Duration::from_secs(1))
            .burst(1_000_000)
            .build()
            .unwrap();
        let limiter = Arc::new(
            RedisLimiter::builder(format!("redis://127.0.0.1:{port}/"), quota)
                .budget(Duration::from_secs(1))
                .build()
                .unwrap(),
        );
        // Warm up: connect and load the script.
        for i in 0..1_000 {
            limiter.check(&format!("bench-{i}")).await;
        }
        run(limiter.clone(), 1).await;
        run(limiter.clone(), 64).await;
    });
    let _ = server.kill();
    let _ = server.wait();
}
