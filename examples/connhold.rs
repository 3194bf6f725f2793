//! Opens and holds many idle keep-alive connections to an HTTP server, for
//! the memory-per-connection and scale benchmarks
//! (`scripts/bench-connections.sh`).
//!
//! ```text
//! cargo run --release --example connhold -- --addr 127.0.0.1:8080 \
//!     --connections 10000 --pid $(pgrep -f examples/gateway) \
//!     --probe /healthz --probe /items/1
//! ```
//!
//! Each connection sends one request (`--path`, HTTP/1.1 keep-alive, or
//! HTTP/2 prior knowledge with `--h2`), reads the whole response, then stays
//! open and silent. Connections come from `--sources` loopback addresses
//! (127.0.0.1, .2, ...), so one client can hold more than one address's
//! ephemeral ports. With `--pid`, the server's RSS is read from `/proc`
//! before, while held, and after the client closes everything (at each of
//! `--after-close`), so the memory per connection and its return are
//! measured on the server alone. `--in-flight` sends the request and holds
//! it unanswered instead (a slow path such as `/delay/60000`): memory per
//! request in flight. While the connections are held, each
//! `--probe` path is asked `--probe-count` times on a fresh connection and
//! timed. `--sigterm` instead sends SIGTERM to `--pid` once the connections
//! are held and times how long until the server has closed all of them and
//! exited. `--storm` opens all connections at once, one request each, then
//! closes them, and counts what failed.
//!
//! Prints one JSON line on stdout. The process ends by itself: every
//! connect, request and wait is bounded by `--timeout`.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

// The gateway's duration syntax ("250ms", "10s"), one parser for both.
#[path = "gateway/duration.rs"]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "connhold reads durations only from its flags"
)]
mod duration;
use duration::parse_duration;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "connhold",
    about = "hold many idle keep-alive connections and measure the server"
)]
struct Args {
    /// The server, `HOST:PORT`.
    #[arg(long)]
    addr: SocketAddr,
    /// Connections to open.
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// Loopback source addresses to spread them over (127.0.0.1 ..).
    #[arg(long, default_value_t = 32)]
    sources: u8,
    /// The request each connection sends once.
    #[arg(long, default_value = "/healthz")]
    path: String,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1.
    #[arg(long)]
    h2: bool,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// A process id of the server (repeatable: nginx's workers); the RSS
    /// measured is their sum.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Send each connection's request and hold it unanswered (do not wait
    /// for the response): memory per request in flight, with a slow path.
    #[arg(long)]
    in_flight: bool,
    /// The signal `--sigterm` sends (nginx drains on QUIT).
    #[arg(long, default_value = "TERM")]
    signal: String,
    /// How long to hold the connections before probing.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    hold: Duration,
    /// A path timed while the connections are held; repeatable.
    #[arg(long = "probe")]
    probes: Vec<String>,
    /// Requests per probe path.
    #[arg(long, default_value_t = 200)]
    probe_count: usize,
    /// Seconds after closing at which the RSS is read again.
    #[arg(long, value_delimiter = ',', default_value = "1,5,15,25")]
    after_close: Vec<u64>,
    /// Signal the first `--pid` once the connections are held (`--signal`)
    /// and time its drain.
    #[arg(long)]
    sigterm: bool,
    /// Open every connection at once (one request each), then close them.
    #[arg(long)]
    storm: bool,
    /// Bounds every connect, request and wait.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

/// A connection held open.
enum Held {
    H1(TcpStream),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    if args.storm {
        storm(&args).await;
        return;
    }
    let rss_before = rss_kib(&args.pids);
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let held = open_all(&args, &errors).await;
    let open_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(args.hold).await;
    let rss_held = rss_kib(&args.pids);

    let mut json = String::new();
    let n = held.len();
    let _ = write!(
        json,
        r#"{{"connections":{n},"errors":{},"open_s":{open_s:.2},"open_per_s":{:.0}"#,
        errors.load(Ordering::Relaxed),
        n as f64 / open_s.max(1e-9)
    );
    if let (Some(before), Some(after)) = (rss_before, rss_held) {
        let per = (after.saturating_sub(before) * 1024) as f64 / n.max(1) as f64;
        let _ = write!(
            json,
            r#","rss_before_kib":{before},"rss_held_kib":{after},"bytes_per_connection":{per:.0}"#
        );
    }
    for path in &args.probes {
        let (p50, p99, failed) = probe(&args, path).await;
        let _ = write!(
            json,
            r#","probe{}":{{"p50_ms":{p50:.3},"p99_ms":{p99:.3},"failed":{failed}}}"#,
            path.replace('/', "_")
        );
    }
    if args.sigterm {
        let pid = *args.pids.first().expect("--sigterm needs --pid");
        let (closed_s, exited_s) = sigterm_and_wait(&args, pid, held).await;
        let _ = write!(
            json,
            r#","sigterm_all_closed_s":{closed_s:.3},"sigterm_exited_s":{exited_s:.3}"#
        );
    } else {
        drop(held);
        let mut waited = 0;
        json.push_str(r#","rss_after_close_kib":["#);
        for (i, at) in args.after_close.iter().enumerate() {
            tokio::time::sleep(Duration::from_secs(at.saturating_sub(waited))).await;
            waited = *at;
            let rss = rss_kib(&args.pids).unwrap_or(0);
            let _ = write!(json, "{}[{at},{rss}]", if i > 0 { "," } else { "" });
        }
        json.push(']');
    }
    json.push('}');
    println!("{json}");
}

/// Opens `--connections`, `--concurrency` at a time; failures are counted.
async fn open_all(args: &Arc<Args>, errors: &Arc<AtomicU64>) -> Vec<Held> {
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permit = gate.clone().acquire_owned().await.expect("never closed");
        let args = args.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(args.timeout, open_one(&args, i)).await {
                Ok(Ok(held)) => Some(held),
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        }));
    }
    let mut held = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(Some(h)) = task.await {
            held.push(h);
        }
    }
    held
}

/// Connects from source address `i % --sources` and sends one request.
async fn open_one(args: &Args, i: usize) -> std::io::Result<Held> {
    let stream = connect(args, i).await?;
    if args.h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let uri = format!("http://{}{}", args.addr, args.path);
        let req = http::Request::get(uri)
            .body(Empty::new())
            .map_err(std::io::Error::other)?;
        let res = send
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        res.into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?;
        Ok(Held::H2(send))
    } else if args.in_flight {
        let mut stream = stream;
        stream
            .write_all(format!("GET {} HTTP/1.1\r\nhost: connhold\r\n\r\n", args.path).as_bytes())
            .await?;
        Ok(Held::H1(stream))
    } else {
        let mut stream = stream;
        http1_exchange(&mut stream, &args.path).await?;
        Ok(Held::H1(stream))
    }
}

async fn connect(args: &Args, i: usize) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let last = u8::try_from(i % usize::from(args.sources.max(1))).unwrap_or(0) + 1;
    socket.bind(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
        0,
    ))?;
    let stream = socket.connect(args.addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One keep-alive `GET path`, read to the end of its body (`Content-Length`
/// framed, as the servers measured here answer these paths).
async fn http1_exchange(stream: &mut TcpStream, path: &str) -> std::io::Result<()> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: connhold\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 2") {
            return Err(std::io::Error::other(format!(
                "status: {}",
                head.lines().next().unwrap_or_default()
            )));
        }
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or_else(|| std::io::Error::other("no content-length"))?;
        if buf.len() >= end + 4 + len {
            return Ok(());
        }
    }
}

/// `--probe-count` sequential requests for `path` on one fresh connection:
/// p50, p99 (ms) and how many failed.
async fn probe(args: &Args, path: &str) -> (f64, f64, usize) {
    let mut took = Vec::with_capacity(args.probe_count);
    let mut failed = 0;
    let mut stream = None;
    for _ in 0..args.probe_count {
        let start = Instant::now();
        if stream.is_none() {
            stream = tokio::time::timeout(args.timeout, connect(args, 0))
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(s) = stream.as_mut() else {
            failed += 1;
            continue;
        };
        match tokio::time::timeout(args.timeout, http1_exchange(s, path)).await {
            Ok(Ok(())) => took.push(start.elapsed().as_secs_f64() * 1e3),
            _ => {
                failed += 1;
                stream = None;
            }
        }
    }
    took.sort_by(f64::total_cmp);
    let at = |q: f64| {
        took.get(((took.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(0.50), at(0.99), failed)
}

/// SIGTERM to `pid`; seconds until every held connection was closed by the
/// server, and until the process was gone.
async fn sigterm_and_wait(args: &Args, pid: u32, held: Vec<Held>) -> (f64, f64) {
    let start = Instant::now();
    let _ = std::process::Command::new("kill")
        .args([format!("-{}", args.signal), pid.to_string()])
        .status();
    let waits = held.into_iter().map(|h| async move {
        match h {
            Held::H1(mut s) => {
                let mut byte = [0u8; 1];
                let _ = s.read(&mut byte).await;
            }
            Held::H2(mut send) => {
                // Ready fails once the connection is gone.
                while send.ready().await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    });
    let _ = tokio::time::timeout(args.timeout, futures_util::future::join_all(waits)).await;
    let closed = start.elapsed().as_secs_f64();
    let gone = tokio::time::timeout(args.timeout, async {
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let exited = if gone.is_ok() {
        start.elapsed().as_secs_f64()
    } else {
        f64::NAN
    };
    (closed, exited)
}

/// `--storm`: every connection opened at once, one request each, closed.
async fn storm(args: &Arc<Args>) {
    let ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| {
            let (args, ok, refused, other) =
                (args.clone(), ok.clone(), refused.clone(), other.clone());
            tokio::spawn(async move {
                let done = tokio::time::timeout(args.timeout, async {
                    let mut s = connect(&args, i).await?;
                    http1_exchange(&mut s, &args.path).await
                })
                .await;
                match done {
                    Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    println!(
        r#"{{"storm":{},"ok":{},"refused":{},"failed_otherwise":{},"seconds":{:.2}}}"#,
        args.connections,
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

/// The summed resident set size of `pids` in KiB, from `/proc/PID/status`;
/// `None` without pids or when one is gone.
fn rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(0, |sum, pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
        Some(sum + kib)
    })
}
