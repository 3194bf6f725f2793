//! The embedded demo upstream: a small hyper server the gateway starts
//! in-process when no `--upstream` is given, so the one-command run works on
//! a fresh machine. With `--demo-upstream-only` it is the whole process (the
//! benchmark upstream).
//!
//! Routes:
//! - `/` → `hello\n`
//! - `/echo` → the request body streamed back byte for byte; the request
//!   method, URI and every request header come back as `x-echo-method`,
//!   `x-echo-uri` and `x-echo-h-<name>` response headers, and the server's
//!   own address as `x-echo-served-by`
//! - `/sink` → reads the whole request body, then answers
//!   `received N bytes` (an upstream that waits for the upload)
//! - `/delay/{ms}` → answers after `ms` milliseconds
//! - `/status/{code}` → answers with that status
//! - `/items/{id}` and `/items?ids=1,2,3` → JSON for one or many items (the
//!   gateway's `[batch]` turns the first into the second); the calls of each
//!   kind are counted and shown at the gateway's `/demo/stats`
//! - `/hop-by-hop` → a response carrying hop-by-hop headers (proxy tests)
//! - `/cpu/{ms}` → spins a CPU for `ms` milliseconds off the reactor,
//!   bounded by `[cpu]` (`cpu.rs`); over the bound, `503`
//! - `/demo/faults` and `/demo/stats` → the control routes below, answered
//!   before the capacity model and the faults (so they work while it is
//!   overloaded); the gateway answers the same paths itself when the demo
//!   upstream runs inside it (`routes.rs`)
//!
//! Every other route goes through, in order: the capacity model
//! (`upstream/capacity.rs`: wait FIFO for one of `slots`, hold it for
//! `service_time`; work finishes even when the client leaves), the added
//! latency, then a deterministic share of 500 answers. [`Faults`] holds all
//! of it, changeable at run time:
//!
//! - `GET /demo/faults` → `{"error_rate":..,"latency_ms":..,"slots":..,
//!   "service_time_ms":..}`; `PUT`/`POST` with any of `?error_rate=0.5`,
//!   `latency_ms=100`, `slots=16` (0 = unlimited), `service_time=20ms`
//!   changes it and answers the new state.
//! - `GET /demo/stats` → the `/items` counters and the capacity model's:
//!   `served` (service ended, client there or not), `queued` (waiting for a
//!   slot now), `in_service` (holding a slot now), with `slots` and
//!   `service_time_ms`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::Body;

mod capacity;

use capacity::Capacity;

const PPM: u64 = 1_000_000;

/// The most `slots` the capacity model accepts (`demo.slots`, `?slots=`).
pub const MAX_SLOTS: usize = 1_000_000;

/// The longest `service_time` (`demo.service_time`, `?service_time=`).
pub const MAX_SERVICE_TIME: Duration = Duration::from_secs(3600);

/// Run-time fault injection and capacity model for the demo upstream, shared
/// between the demo server and the `/demo/faults` route. Cloning shares the
/// state.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<FaultsInner>);

#[derive(Debug, Default)]
struct FaultsInner {
    /// Error rate in parts per million (so one atomic holds it exactly).
    error_ppm: AtomicU32,
    latency_us: AtomicU64,
    /// Requests seen; drives the deterministic error pattern.
    seen: AtomicU64,
    /// `/items/{id}` calls answered.
    item_calls: AtomicU64,
    /// `/items?ids=` calls answered, and the ids they carried.
    batch_calls: AtomicU64,
    batched_ids: AtomicU64,
    /// Slots, service time and their counters; shared with the tasks that
    /// serve requests whose client left.
    capacity: Arc<Capacity>,
}

impl Faults {
    /// Fault state starting with the given error rate (0.0..=1.0) and latency.
    pub fn new(error_rate: f64, latency: Duration) -> Self {
        let f = Self::default();
        f.set(Some(error_rate), Some(latency));
        f
    }

    /// The same faults with a capacity model: `slots` requests served at
    /// once (0 = unlimited), each holding its slot for `service_time`
    /// (`[demo] slots`, `service_time`).
    pub fn with_capacity(self, slots: usize, service_time: Duration) -> Self {
        self.set_capacity(Some(slots), Some(service_time));
        self
    }

    /// Changes the error rate and/or the added latency.
    pub fn set(&self, error_rate: Option<f64>, latency: Option<Duration>) {
        if let Some(rate) = error_rate {
            let ppm = (rate.clamp(0.0, 1.0) * PPM as f64).round() as u32;
            self.0.error_ppm.store(ppm, Ordering::Relaxed);
        }
        if let Some(latency) = latency {
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.0.latency_us.store(us, Ordering::Relaxed);
        }
    }

    /// Changes the slots (0 = unlimited) and/or the service time, also
    /// while requests are queued: more slots admit queued requests at once,
    /// fewer take effect as requests in service finish.
    pub fn set_capacity(&self, slots: Option<usize>, service_time: Option<Duration>) {
        self.0.capacity.set(slots, service_time);
    }

    /// Current slots, 0 = unlimited.
    pub fn slots(&self) -> usize {
        self.0.capacity.slots()
    }

    /// Current time each request holds its slot.
    pub fn service_time(&self) -> Duration {
        self.0.capacity.service_time()
    }

    /// Current error rate, 0.0..=1.0.
    pub fn error_rate(&self) -> f64 {
        f64::from(self.0.error_ppm.load(Ordering::Relaxed)) / PPM as f64
    }

    /// Current added latency.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.0.latency_us.load(Ordering::Relaxed))
    }

    /// The state as a JSON object:
    /// `{"error_rate":R,"latency_ms":L,"slots":S,"service_time_ms":T}`.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"error_rate\":{},\"latency_ms\":{},\"slots\":{},\"service_time_ms\":{}}}\n",
            self.error_rate(),
            self.latency().as_secs_f64() * 1000.0,
            self.slots(),
            self.service_time().as_secs_f64() * 1000.0,
        )
    }

    /// The demo upstream's counters as a JSON object: the `/items` calls it
    /// has received (`item_calls`, `batch_calls`, `batched_ids`) and its
    /// capacity model (`served`, `queued`, `in_service`, with `slots` and
    /// `service_time_ms`).
    pub fn stats_json(&self) -> String {
        let c = self.0.capacity.stats();
        format!(
            "{{\"item_calls\":{},\"batch_calls\":{},\"batched_ids\":{},\
             \"served\":{},\"queued\":{},\"in_service\":{},\
             \"slots\":{},\"service_time_ms\":{}}}\n",
            self.0.item_calls.load(Ordering::Relaxed),
            self.0.batch_calls.load(Ordering::Relaxed),
            self.0.batched_ids.load(Ordering::Relaxed),
            c.served,
            c.queued,
            c.in_service,
            self.slots(),
            self.service_time().as_secs_f64() * 1000.0,
        )
    }

    /// Counts an `/items` call as it arrives (before any injected fault).
    fn count(&self, uri: &http::Uri) {
        let path = uri.path();
        if path.starts_with("/items/") {
            self.0.item_calls.fetch_add(1, Ordering::Relaxed);
        } else if path == "/items" {
            let ids = uri
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ids=")))
                .map_or(0, |ids| ids.split(',').filter(|s| !s.is_empty()).count());
            self.0.batch_calls.fetch_add(1, Ordering::Relaxed);
            self.0.batched_ids.fetch_add(ids as u64, Ordering::Relaxed);
        }
    }

    /// Whether the next request fails. Deterministic: request `n` fails when
    /// `floor((n + 1) * rate) > floor(n * rate)`, so any window of requests
    /// fails in exactly the configured proportion (rate 0.5 fails every
    /// second request, 1.0 every request) and demos are reproducible.
    fn next_fails(&self) -> bool {
        let ppm = u64::from(self.0.error_ppm.load(Ordering::Relaxed));
        if ppm == 0 {
            return false;
        }
        let n = self.0.seen.fetch_add(1, Ordering::Relaxed);
        (n + 1) * ppm / PPM > n * ppm / PPM
    }
}

/// Serves the demo upstream on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    faults: Faults,
    cpu: crate::cpu::CpuRoute,
    shutdown: impl Future<Output = ()>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let served_by = listener
        .local_addr()
        .ok()
        .and_then(|a| HeaderValue::from_str(&a.to_string()).ok())
        .unwrap_or(HeaderValue::from_static("unknown"));
    let ctx = Arc::new(Ctx {
        faults,
        served_by,
        cpu,
    });
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "demo upstream accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        // The peer, for the loopback check of `/demo/faults` writes.
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(peer);
            handle(req, ctx.clone())
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "demo upstream connection ended with an error");
            }
        });
    }
}

/// What every demo request is answered with.
struct Ctx {
    faults: Faults,
    /// This server's address, for `x-echo-served-by`.
    served_by: HeaderValue,
    /// `/cpu/{ms}`.
    cpu: crate::cpu::CpuRoute,
}

async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> Result<Response<Body>, Infallible> {
    let faults = &ctx.faults;
    match req.uri().path() {
        "/demo/faults" => return Ok(faults_route(faults, &req)),
        "/demo/stats" => return Ok(stats_route(faults)),
        _ => {}
    }
    faults.count(req.uri());
    faults.0.capacity.serve().await;
    let latency = faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if faults.next_fails() {
        return Ok(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected failure\n",
        ));
    }
    let path = req.uri().path();
    let res = if path == "/" {
        text(StatusCode::OK, "hello\n")
    } else if path == "/echo" {
        echo(req, &ctx.served_by)
    } else if path == "/sink" {
        match http_body_util::BodyExt::collect(req.into_body()).await {
            Ok(body) => text(
                StatusCode::OK,
                format!("received {} bytes\n", body.to_bytes().len()),
            ),
            Err(_) => text(StatusCode::BAD_REQUEST, "request body failed\n"),
        }
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, format!("delayed {ms}ms\n"))
            }
            Err(_) => text(
                StatusCode::BAD_REQUEST,
                "delay must be whole milliseconds\n",
            ),
        }
    } else if let Some(code) = path.strip_prefix("/status/") {
        match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => text(status, format!("status {}\n", status.as_u16())),
            None => text(StatusCode::BAD_REQUEST, "not a status code\n"),
        }
    } else if let Some(id) = path.strip_prefix("/items/") {
        match id.parse::<u64>() {
            Ok(id) => json(item_json(id)),
            Err(_) => text(StatusCode::BAD_REQUEST, "item id must be a number\n"),
        }
    } else if path == "/items" {
        items(req.uri().query())
    } else if path == "/hop-by-hop" {
        hop_by_hop()
    } else if let Some(ms) = path.strip_prefix("/cpu/") {
        ctx.cpu.handle(ms).await
    } else {
        text(StatusCode::NOT_FOUND, "not found\n")
    };
    Ok(res)
}

/// `/demo/faults`: `GET`/`HEAD` shows the faults as JSON; `PUT`/`POST`
/// with `?error_rate=0.5&latency_ms=100&slots=16&service_time=20ms` (any of
/// them) changes them and shows the result, for a loopback peer only
/// (`403` otherwise, like `/admin/reload`). Answered by the demo upstream
/// and, when it runs inside the gateway, by the gateway (`routes.rs`).
pub fn faults_route<B>(faults: &Faults, req: &Request<B>) -> Response<Body> {
    match *req.method() {
        Method::GET | Method::HEAD => {}
        Method::PUT | Method::POST if !crate::routes::from_loopback(req) => {
            return text(StatusCode::FORBIDDEN, "loopback only\n");
        }
        Method::PUT | Method::POST => {
            let mut error_rate = None;
            let mut latency = None;
            let mut slots = None;
            let mut service_time = None;
            for kv in req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|s| !s.is_empty())
            {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                match k {
                    "error_rate" => match v.parse::<f64>() {
                        Ok(r) if (0.0..=1.0).contains(&r) => error_rate = Some(r),
                        _ => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                "error_rate must be within 0.0..=1.0\n",
                            );
                        }
                    },
                    "latency_ms" => match v.parse::<f64>() {
                        Ok(ms) if (0.0..=3_600_000.0).contains(&ms) => {
                            latency = Some(Duration::from_secs_f64(ms / 1000.0));
                        }
                        _ => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                "latency_ms must be a number of milliseconds\n",
                            );
                        }
                    },
                    "slots" => match v.parse::<usize>() {
                        Ok(n) if n <= MAX_SLOTS => slots = Some(n),
                        _ => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                "slots must be a whole number within 0..=1000000 (0 = unlimited)\n",
                            );
                        }
                    },
                    "service_time" => match crate::duration::parse_duration(v) {
                        Ok(d) if d <= MAX_SERVICE_TIME => service_time = Some(d),
                        _ => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                "service_time must be a duration like 20ms, at most 1h\n",
                            );
                        }
                    },
                    _ => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "known parameters: error_rate, latency_ms, slots, service_time\n",
                        );
                    }
                }
            }
            faults.set(error_rate, latency);
            faults.set_capacity(slots, service_time);
            tracing::info!(
                error_rate = faults.error_rate(),
                latency_ms = faults.latency().as_secs_f64() * 1000.0,
                slots = faults.slots(),
                service_time_ms = faults.service_time().as_secs_f64() * 1000.0,
                "demo upstream faults changed"
            );
        }
        _ => {
            let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            res.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, PUT, POST"),
            );
            return res;
        }
    }
    json(faults.to_json())
}

/// `/demo/stats`: [`Faults::stats_json`].
pub fn stats_route(faults: &Faults) -> Response<Body> {
    json(faults.stats_json())
}

fn text(status: StatusCode, body: impl Into<Body>) -> Response<Body> {
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn json(body: String) -> Response<Body> {
    let mut res = Response::new(Body::from(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn echo(req: Request<Incoming>, served_by: &HeaderValue) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut res = Response::new(Body::stream(body));
    let h = res.headers_mut();
    h.insert(
        HeaderName::from_static("x-echo-served-by"),
        served_by.clone(),
    );
    h.insert(
        HeaderName::from_static("x-echo-method"),
        HeaderValue::from_str(parts.method.as_str()).expect("a method is a valid header value"),
    );
    if let Ok(v) = HeaderValue::from_str(&parts.uri.to_string()) {
        h.insert(HeaderName::from_static("x-echo-uri"), v);
    }
    for (name, value) in &parts.headers {
        if let Ok(echo_name) = HeaderName::from_bytes(format!("x-echo-h-{name}").as_bytes()) {
            h.append(echo_name, value.clone());
        }
    }
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        h.insert(header::CONTENT_TYPE, ct.clone());
    }
    res
}

fn item_json(id: u64) -> String {
    format!(
        "{{\"id\":{id},\"name\":\"item-{id}\",\"price_cents\":{}}}",
        (id.wrapping_mul(37) + 100) % 10_000
    )
}

const MAX_BATCH: usize = 1000;

fn items(query: Option<&str>) -> Response<Body> {
    let ids = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("ids="))
        .unwrap_or("");
    let mut out = String::from("[");
    let mut n = 0;
    for id in ids.split(',').filter(|s| !s.is_empty()) {
        let Ok(id) = id.parse::<u64>() else {
            return text(
                StatusCode::BAD_REQUEST,
                "ids must be comma-separated numbers\n",
            );
        };
        n += 1;
        if n > MAX_BATCH {
            return text(StatusCode::BAD_REQUEST, "at most 1000 ids per batch\n");
        }
        if n > 1 {
            out.push(',');
        }
        let _ = write!(out, "{}", item_json(id));
    }
    out.push(']');
    json(out)
}

fn hop_by_hop() -> Response<Body> {
    let mut res = text(StatusCode::OK, "hop-by-hop\n");
    let h = res.headers_mut();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("x-upstream-hop"),
    );
    h.insert(
        HeaderName::from_static("x-upstream-hop"),
        HeaderValue::from_static("1"),
    );
    h.insert(
        HeaderName::from_static("keep-alive"),
        HeaderValue::from_static("timeout=5"),
    );
    h.insert(
        HeaderName::from_static("proxy-connection"),
        HeaderValue::from_static("keep-alive"),
    );
    h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
    h.insert(
        HeaderName::from_static("x-end-to-end"),
        HeaderValue::from_static("kept"),
    );
    res
}
