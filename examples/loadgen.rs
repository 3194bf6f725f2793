//! An open-loop HTTP load generator with client deadlines, for overload
//! benchmarks (`scripts/bench-overload.sh`).
//!
//! ```text
//! cargo run --release --example loadgen -- \
//!     --url http://127.0.0.1:8080/items/1 --rate 1200 --duration 10s \
//!     --deadline 1s --warmup 2s [--header x-priority:high]...
//! ```
//!
//! Open loop: request `i` is due at `start + i / rate` whatever is still
//! outstanding, as independent users arrive; a closed-loop tool (wrk, a fixed
//! set of connections) slows down with the server and hides overload. Each
//! request is its own task. Latency counts from the due time, not from when
//! the task ran, so a late sender does not hide queueing (coordinated
//! omission).
//!
//! Each request has a client deadline: one not answered (head and body)
//! within `--deadline` of its due time is abandoned, its future dropped, so
//! its connection closes as a browser's or an RPC client's does when it gives
//! up. HTTP/1.1 carries one request at a time per connection, so there is one
//! connection per outstanding request; free ones are reused from an
//! unbounded idle pool. At rate × deadline outstanding requests, mind the
//! file-descriptor limit (`ulimit -n`).
//!
//! Prints one JSON line on stdout at the end: `offered_rps`, `duration_s`,
//! `warmup_s`, `deadline_ms`, `sent`, `good` (2xx within the deadline),
//! `goodput_rps`, `good_p50_ms`, `good_p99_ms`, `rejected` (503 within the
//! deadline), `rejected_p99_ms`, `other_status` (`{"500": n}`), `timed_out`,
//! `errors` (connect and I/O). Requests due during `--warmup` are sent but
//! not counted. The process ends by itself within warmup + duration +
//! deadline + 2 s.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

// The gateway's duration syntax ("250ms", "10s", "1.5s"), one parser for both.
#[path = "gateway/duration.rs"]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "loadgen reads durations only from its flags"
)]
mod duration;
use duration::parse_duration;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "open-loop HTTP load at a fixed rate, with a client deadline per request"
)]
struct Args {
    /// URL every request asks for.
    #[arg(long, default_value = "http://127.0.0.1:8080/items/1")]
    url: Uri,
    /// Requests per second, sent on schedule whatever is outstanding.
    #[arg(long, default_value_t = 1200.0)]
    rate: f64,
    /// How long to measure, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Client deadline per request, from its due time; later answers are
    /// abandoned (the connection is closed).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    deadline: Duration,
    /// Load sent before the measured `--duration` and not counted.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// A request header `name:value`, repeatable.
    #[arg(long = "header", value_name = "NAME:VALUE", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// What became of one request.
#[derive(Debug)]
enum Outcome {
    /// A 2xx answered within the deadline; its latency from the due time.
    Good(Duration),
    /// A 503 answered within the deadline.
    Rejected(Duration),
    /// Another status, answered within the deadline.
    Other(StatusCode),
    /// No whole answer within the deadline; abandoned.
    TimedOut,
    /// Connecting, writing or reading failed.
    Error(String),
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err("--rate must be a positive number".into());
    }
    if args.deadline.is_zero() || args.duration.is_zero() {
        return Err("--duration and --deadline must be positive".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcomes = runtime.block_on(run(&args));
    println!("{}", report(&args, &outcomes));
    // Tasks still holding a connection (none after the bound) are dropped.
    runtime.shutdown_background();
    Ok(())
}

/// Sends the schedule and returns the outcomes of the measured requests.
async fn run(args: &Args) -> Vec<Outcome> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector);

    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let total = ((args.warmup + args.duration).as_secs_f64() * args.rate).round() as u64;
    let warmup = (args.warmup.as_secs_f64() * args.rate).round() as u64;
    let start = Instant::now();
    let mut measured = Vec::with_capacity(usize::try_from(total - warmup).unwrap_or(0));
    for i in 0..total {
        // Due times are computed, not accumulated, so timer granularity
        // delays single sends but never the schedule: a late loop sends
        // the overdue requests at once.
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let task = tokio::spawn(one(client.clone(), request(args), due, args.deadline));
        if i >= warmup {
            measured.push(task);
        }
    }

    // Every task ends by its deadline; the extra bound only guards a task
    // the runtime never polls again.
    let bound = Instant::now() + args.deadline + Duration::from_secs(2);
    let mut outcomes = Vec::with_capacity(measured.len());
    for task in measured {
        outcomes.push(match tokio::time::timeout_at(bound, task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Outcome::Error(format!("request task failed: {e}")),
            Err(_) => Outcome::TimedOut,
        });
    }
    outcomes
}

fn request(args: &Args) -> Request<Empty<Bytes>> {
    let mut req = Request::get(args.url.clone())
        .body(Empty::new())
        .expect("a GET of a parsed URI is a valid request");
    for (name, value) in &args.headers {
        req.headers_mut().append(name.clone(), value.clone());
    }
    req
}

/// One request, abandoned at `due + deadline`.
async fn one(
    client: Client<HttpConnector, Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
    due: Instant,
    deadline: Duration,
) -> Outcome {
    let exchange = async {
        let res = client.request(req).await.map_err(|e| {
            // The chain says what failed (connect refused, too many files).
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg = format!("{msg}: {s}");
                source = s.source();
            }
            msg
        })?;
        let status = res.status();
        res.into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok::<_, String>(status)
    };
    match tokio::time::timeout_at(due + deadline, exchange).await {
        Err(_) => Outcome::TimedOut,
        Ok(Err(e)) => Outcome::Error(e),
        Ok(Ok(status)) => {
            let latency = due.elapsed();
            if status.is_success() {
                Outcome::Good(latency)
            } else if status == StatusCode::SERVICE_UNAVAILABLE {
                Outcome::Rejected(latency)
            } else {
                Outcome::Other(status)
            }
        }
    }
}

/// The one JSON line.
fn report(args: &Args, outcomes: &[Outcome]) -> serde_json::Value {
    let mut good = Vec::new();
    let mut rejected = Vec::new();
    let mut other: BTreeMap<String, u64> = BTreeMap::new();
    let (mut timed_out, mut errors) = (0u64, 0u64);
    let mut first_error = None;
    for outcome in outcomes {
        match outcome {
            Outcome::Good(l) => good.push(*l),
            Outcome::Rejected(l) => rejected.push(*l),
            Outcome::Other(s) => *other.entry(s.as_u16().to_string()).or_default() += 1,
            Outcome::TimedOut => timed_out += 1,
            Outcome::Error(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("loadgen: {errors} errors, the first: {e}");
    }
    good.sort_unstable();
    rejected.sort_unstable();
    let secs = args.duration.as_secs_f64();
    serde_json::json!({
        "url": args.url.to_string(),
        "offered_rps": args.rate,
        "duration_s": secs,
        "warmup_s": args.warmup.as_secs_f64(),
        "deadline_ms": ms(args.deadline),
        "sent": outcomes.len(),
        "good": good.len(),
        "goodput_rps": round1(good.len() as f64 / secs),
        "good_p50_ms": quantile(&good, 0.50).map(ms),
        "good_p99_ms": quantile(&good, 0.99).map(ms),
        "rejected": rejected.len(),
        "rejected_p99_ms": quantile(&rejected, 0.99).map(ms),
        "other_status": other,
        "timed_out": timed_out,
        "errors": errors,
    })
}

/// The `q` quantile of sorted samples (nearest rank), `None` when empty.
fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    Some(sorted[rank - 1])
}

fn ms(d: Duration) -> f64 {
    round1(d.as_secs_f64() * 1000.0)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `"name:value"`.
fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} is not name:value"))?;
    let name = HeaderName::try_from(name.trim()).map_err(|e| format!("header name: {e}"))?;
    let value = HeaderValue::try_from(value.trim()).map_err(|e| format!("header value: {e}"))?;
    Ok((name, value))
}
