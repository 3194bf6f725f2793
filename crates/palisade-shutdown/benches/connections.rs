//! Time to drain 10,000 idle keep-alive HTTP/1.1 connections: palisade's
//! `Server` against hyper-util's `GracefulShutdown` (the anchor) in the same
//! run, on the same workload.
//!
//! Each iteration starts a fresh server, spawns a client *process* (this
//! binary again, so each side stays under the per-process file-descriptor
//! limit) that opens the connections and sends one request on each, waits
//! until the server holds them all idle, and measures only the drain: from
//! the drain call until every connection is closed.
//!
//! ```text
//! cargo bench -p palisade-shutdown --all-features --bench connections
//! ```
//!
//! `PALISADE_DRAIN_CONNECTIONS` overrides the connection count (default
//! 10,000); it needs `ulimit -n` above that count plus a few dozen.

// `criterion_group!`-style generated items are undocumented.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, SamplingMode};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use palisade_shutdown::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const CLIENT_ENV: &str = "PALISADE_DRAIN_BENCH_CLIENT";

fn connections() -> usize {
    std::env::var("PALISADE_DRAIN_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

type Hello = Response<Full<Bytes>>;

async fn hello(_req: Request<Incoming>) -> Result<Hello, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// The client process: open `n` connections, one request each, report
/// "ready", then wait for the server to close them all.
fn client(spec: &str) {
    let (addr, n) = spec.split_once(' ').expect("addr n");
    let n: usize = n.parse().unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let permit = sem.clone().acquire_owned().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 512];
                while !buf.ends_with(b"hello") {
                    let k = s.read(&mut chunk).await.unwrap();
                    assert!(k > 0, "closed before the response");
                    buf.extend_from_slice(&chunk[..k]);
                }
                drop(permit);
                s
            }));
        }
        let mut streams = Vec::with_capacity(n);
        for t in tasks {
            streams.push(t.await.unwrap());
        }
        println!("ready");
        std::io::stdout().flush().unwrap();
        let mut closed = 0;
        for mut s in streams {
            let mut b = [0u8; 1];
            if matches!(s.read(&mut b).await, Ok(0) | Err(_)) {
                closed += 1;
            }
        }
        assert_eq!(closed, n);
    });
}

/// Starts the client process against `addr` and waits for its "ready".
fn spawn_client(addr: std::net::SocketAddr, n: usize) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CLIENT_ENV, format!("{addr} {n}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "client failed");
    child
}

async fn palisade_once(n: usize) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(listener, tower::service_fn(hello));
    let handle = server.handle();
    tokio::spawn(server.run());
    let mut child = tokio::task::spawn_blocking(move || spawn_client(addr, n))
        .await
        .unwrap();
    while handle.open_connections() != n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let start = Instant::now();
    let report = handle.drain(std::future::pending::<()>()).await;
    let elapsed = start.elapsed();
    assert_eq!(report.closed_gracefully, n);
    tokio::task::spawn_blocking(move || assert!(child.wait().unwrap().success()))
        .await
        .unwrap();
    elapsed
}

async fn hyper_util_once(n: usize) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let graceful = std::sync::Arc::new(GracefulShutdown::new());
    let stop = CancellationToken::new();
    let accept = tokio::spawn({
        let stop = stop.clone();
        let graceful = graceful.clone();
        async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            loop {
                let (stream, _) = tokio::select! {
                    () = stop.cancelled() => break,
                    r = listener.accept() => r.unwrap(),
                };
                let _ = stream.set_nodelay(true);
                let conn = builder
                    .serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(tower::service_fn(hello)),
                    )
                    .into_owned();
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = fut.await;
                });
            }
        }
    });
    let mut child = tokio::task::spawn_blocking(move || spawn_client(addr, n))
        .await
        .unwrap();
    while graceful.count() != n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let start = Instant::now();
    stop.cancel();
    accept.await.unwrap();
    let graceful = std::sync::Arc::into_inner(graceful).expect("accept loop ended");
    graceful.shutdown().await;
    let elapsed = start.elapsed();
    tokio::task::spawn_blocking(move || assert!(child.wait().unwrap().success()))
        .await
        .unwrap();
    elapsed
}

fn bench(c: &mut Criterion) {
    let n = connections();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group(format!("drain_{n}_idle_keepalive"));
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    group.bench_function("palisade_server", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(palisade_once(n)))
                .sum::<Duration>()
        })
    });
    group.bench_function("hyper_util_graceful_shutdown", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(hyper_util_once(n)))
                .sum::<Duration>()
        })
    });
    group.finish();
}

fn main() {
    if let Ok(spec) = std::env::var(CLIENT_ENV) {
        client(&spec);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
