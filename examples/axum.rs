//! palisade layers in an axum app, unchanged: a drain for graceful shutdown,
//! a per-client and a global rate limit, a circuit breaker around a flaky
//! dependency, and tower's own load shedding, concurrency limit and timeout.
//! `HandleErrorLayer` turns the layers' errors into responses (axum requires
//! an infallible service).
//!
//! ```text
//! cargo run --example axum -- --listen 127.0.0.1:3000 --per-ip-rate 5 --per-ip-period-secs 10
//! curl -i localhost:3000/hello            # 200 with RateLimit fields; the 6th in 10 s is a 429
//! curl -X PUT -d true localhost:3000/flaky/failing
//! curl -i localhost:3000/flaky            # 500 five times, then 503 + Retry-After (breaker open)
//! kill -TERM <pid>                        # in-flight requests finish, exit 0
//! ```
//!
//! # The stack, outermost first
//!
//! ```text
//!  palisade Server          accepts; puts `ConnectInfo<SocketAddr>` in each request (see `run`)
//!  HttpDrainLayer           whole app: counts in-flight requests; 503 + Retry-After once
//!                           draining (`/healthz` exempt); each request gets a DrainToken
//!  Router
//!   ├─ /healthz, /stats, /release, PUT /flaky/failing     operational: no limits
//!   └─ /, /hello, /items/{id}, /slow/{ms}, /hold, /flaky  through `Router::layer(policy)`:
//!        HandleErrorLayer       every error below → 429 / 503 / 408 (`handle_error`)
//!        HttpRateLimitLayer     per peer IP; answers 429 itself, RateLimit fields on 200s too
//!        RateLimitLayer         global; fails with `RateLimited`, mapped to 429 above
//!        load_shed              fail at once instead of queueing for a concurrency slot
//!        GlobalConcurrencyLimit at most `--concurrency` requests in handlers, app-wide
//!        timeout                `--timeout-ms`; a slower handler is abandoned with 408
//!        └─ /flaky only: HandleErrorLayer + CircuitBreakerLayer (HttpClassifier: 5xx fail)
//! ```
//!
//! Why this order (the gateway's, see `docs/architecture.md`): the drain is
//! outermost so a draining process refuses work before it spends anything
//! (a rate-limit cell, a concurrency slot, a breaker permit); rate limits come
//! next, so a rejection is cheap and never counts against the breaker; the
//! breaker wraps only the dependency it protects.
//!
//! # App-wide state with `Router::layer`
//!
//! `Router::layer` wraps every route (and the fallback) separately. That is
//! one limit for the whole app only when the layer keeps its state behind an
//! `Arc` that all the services it builds share. palisade's layers all do (the
//! limiter, the breaker and the drain live in the layer), and so does tower's
//! `GlobalConcurrencyLimitLayer`; tower's plain `ConcurrencyLimitLayer` would
//! make one semaphore per route. The drain, in contrast, wraps the whole
//! `Router` as a service with `ServiceBuilder`, because it must see every
//! request, including the operational routes and 404s, to know when the
//! server is idle. The policy layers go through `Router::layer` so the
//! operational routes added after it (probes, test controls) are never
//! limited.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{BoxError, Extension, Json, Router};
use clap::Parser;
use hyper::body::Incoming;
use palisade_breaker::http::HttpClassifier;
use palisade_breaker::{Breaker, CircuitBreakerLayer, Config};
use palisade_ratelimit::http::{Headers, HttpRateLimitLayer, PeerIp};
use palisade_ratelimit::{KeyedLimiter, Limiter, PerKey, Quota, RateLimitLayer};
use palisade_shutdown::http::{DrainBody, HttpDrainLayer};
use palisade_shutdown::server::Server;
use palisade_shutdown::{Drain, DrainToken, Phase, Shutdown};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{ServiceBuilder, ServiceExt};

/// Command-line flags. Every policy is on with generous defaults; the tests
/// shrink them.
#[derive(Debug, Parser)]
struct Args {
    /// Listen address, port 0 = ephemeral.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Requests each client IP may make per `--per-ip-period-secs` (also its
    /// burst).
    #[arg(long, default_value_t = 100)]
    per_ip_rate: u32,
    /// The period of `--per-ip-rate`, in seconds.
    #[arg(long, default_value_t = 1)]
    per_ip_period_secs: u64,
    /// Requests all clients together may make per `--global-period-secs`
    /// (also the burst).
    #[arg(long, default_value_t = 10_000)]
    global_rate: u32,
    /// The period of `--global-rate`, in seconds.
    #[arg(long, default_value_t = 1)]
    global_period_secs: u64,
    /// Consecutive 5xx (or errors) from `/flaky` that open its breaker.
    #[arg(long, default_value_t = 5)]
    breaker_failures: u32,
    /// How long the breaker stays open before a probe, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    breaker_wait_ms: u64,
    /// Most requests inside handlers at once; more are shed with 503.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Handler deadline in milliseconds; slower requests get 408.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// How long in-flight requests may take to finish after SIGTERM before
    /// their connections are force-closed, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    drain_deadline_ms: u64,
}

/// State of the handlers and the test controls.
#[derive(Debug, Default)]
struct AppState {
    /// Handlers of `/slow` and `/hold` running now.
    busy: AtomicU64,
    /// Wakes `/hold` requests.
    release: Notify,
    /// Whether `/flaky` fails (500).
    flaky_failing: AtomicBool,
    /// Times the `/flaky` handler ran (not counting breaker rejections).
    flaky_calls: AtomicU64,
}

/// Counts a handler as busy until it ends or is dropped (a timeout drops it).
struct Busy(Arc<AppState>);

impl Busy {
    fn enter(state: &Arc<AppState>) -> Self {
        state.busy.fetch_add(1, Ordering::SeqCst);
        Self(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, serde::Serialize)]
struct Item {
    id: u64,
    name: String,
}

#[derive(Debug, serde::Serialize)]
struct Stats {
    busy: u64,
    flaky_calls: u64,
}

fn main() -> ExitCode {
    // tokio-console (docs/ecosystem.md): the feature and the cfg together;
    // the feature alone (`--all-features`) leaves ordinary logging.
    #[cfg(all(feature = "console", tokio_unstable))]
    console_subscriber::init();
    #[cfg(not(all(feature = "console", tokio_unstable)))]
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM/SIGINT, then drains; returns the exit code the
/// shutdown's outcome calls for (0 when nothing was cut).
async fn run(args: Args) -> Result<u8, BoxError> {
    // Installed before listening: a signal right after the listening line
    // must drain the server, not kill it. A second signal forces the exit.
    let shutdown = Shutdown::new();
    palisade_shutdown::signal::spawn(&shutdown)?;

    let state = Arc::new(AppState::default());
    let drain = Drain::new();
    let app = app(&args, state, drain.clone())?;

    // Each request gets its peer address as axum's `ConnectInfo<SocketAddr>`,
    // exactly what `axum::serve(listener,
    // app.into_make_service_with_connect_info::<SocketAddr>())` inserts:
    // `PeerIp` reads it (facade feature `axum`), and so do the handlers.
    //
    // The palisade `Server` rather than `axum::serve(..).with_graceful_shutdown`:
    // its drain has a deadline and force-closes what is left, where axum's
    // waits for open streams forever. (tests/axum.rs also runs the stack
    // under `axum::serve`.)
    let listener = TcpListener::bind(args.listen).await?;
    let server = Server::from_fn(listener, move |peer: SocketAddr| {
        let app = app.clone();
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        })
    });
    let connections = server.handle();
    tracing::info!("listening on http://{}", server.local_addr()?);
    tokio::spawn(server.run());

    shutdown.add_phase(
        Phase::new("stop-accepting", Duration::from_secs(1)).action({
            let connections = connections.clone();
            move |_| async move { connections.stop_accepting().await }
        }),
    )?;
    // New requests on open connections now get 503; `/hold` requests see
    // their DrainToken fire and wrap up.
    shutdown.add_phase(connections.drain_phase(
        "drain",
        Duration::from_millis(args.drain_deadline_ms),
        drain,
    ))?;
    let outcome = shutdown.run().await;
    tracing::info!(code = outcome.code(), clean = outcome.is_clean(), "exiting");
    Ok(outcome.code())
}

/// The app: the Router, its policy layers and the drain around it all.
/// Invalid flags are an error naming the field, before any port is bound.
fn app(
    args: &Args,
    state: Arc<AppState>,
    drain: Drain,
) -> Result<
    impl tower::Service<
        Request<Incoming>,
        Response = Response<DrainBody<Body>>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static,
    BoxError,
> {
    let per_ip = PerKey::new(
        KeyedLimiter::builder(
            Quota::builder()
                .rate(args.per_ip_rate)
                .per(Duration::from_secs(args.per_ip_period_secs))
                .build()
                .map_err(|e| format!("--per-ip-rate / --per-ip-period-secs: {e}"))?,
        )
        .name("per-ip")
        .build()?,
        PeerIp::new(),
    );
    let global = Limiter::builder(
        Quota::builder()
            .rate(args.global_rate)
            .per(Duration::from_secs(args.global_period_secs))
            .build()
            .map_err(|e| format!("--global-rate / --global-period-secs: {e}"))?,
    )
    .name("global")
    .build();
    let breaker = Breaker::new(
        Config::builder()
            .name("flaky")
            .consecutive_failures(args.breaker_failures)
            .wait_duration(Duration::from_millis(args.breaker_wait_ms))
            .half_open_probes(1)
            .build()
            .map_err(|e| format!("--breaker-failures / --breaker-wait-ms: {e}"))?,
    );

    // Built once; `Router::layer` clones it per route, and every clone shares
    // the limiters and the semaphore (see the module docs).
    let policy = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(handle_error))
        .layer(HttpRateLimitLayer::new(per_ip).headers(Headers::default()))
        .layer(RateLimitLayer::new(global))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::new(args.concurrency))
        .timeout(Duration::from_millis(args.timeout_ms));

    // The breaker guards only `/flaky`: its state says nothing about the
    // other routes. `HttpClassifier` counts 5xx responses as failures (a
    // handler "fails" with a 500 response, not an error). The app-wide
    // timeout sits outside it, so a `/flaky` call that times out is dropped
    // and counts as neither failure nor success; to count timeouts, put a
    // per-dependency `.timeout(..)` below the breaker here (see
    // docs/circuit-breaker.md, "Ordering with the other layers").
    let flaky_breaker = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(handle_error))
        .layer(CircuitBreakerLayer::new(breaker).classifier(HttpClassifier::server_errors()));

    let router = Router::new()
        .route("/", get(|| async { "hello from axum\n" }))
        .route("/hello", get(hello))
        .route("/items/{id}", get(item))
        .route("/slow/{ms}", get(slow))
        .route("/hold", get(hold))
        .route("/flaky", get(flaky).layer(flaky_breaker))
        .layer(policy)
        // Below this line: outside the policy layers (probes, test controls),
        // still inside the drain.
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/stats", get(stats))
        .route("/release", post(release))
        .route("/flaky/failing", put(set_flaky_failing))
        .with_state(state);

    let drain_layer = HttpDrainLayer::builder(drain).exempt("/healthz").build()?;
    Ok(ServiceBuilder::new().layer(drain_layer).service(router))
}

/// Maps the layers' errors to responses. Handlers answer with responses, so
/// only errors of the layers reach here. The request's headers tell a gRPC
/// call (answered with a `grpc-status`) from plain HTTP.
async fn handle_error(headers: HeaderMap, err: BoxError) -> Response {
    // Every palisade error: 503 + Retry-After for an open breaker, 429 +
    // Retry-After (rounded up, at least 1) + RateLimit fields for a limit.
    if let Some(mut res) = palisade::http::error_response::<Body>(&err, &headers) {
        if palisade::http::Protocol::of(&headers) == palisade::http::Protocol::Grpc {
            return res;
        }
        let body = match res.status() {
            StatusCode::TOO_MANY_REQUESTS => "too many requests\n",
            StatusCode::SERVICE_UNAVAILABLE => "circuit open\n",
            _ => "internal error\n",
        };
        *res.body_mut() = Body::from(body);
        return res;
    }
    if err.is::<tower::load_shed::error::Overloaded>() {
        let mut res = (StatusCode::SERVICE_UNAVAILABLE, "overloaded\n").into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return res;
    }
    if err.is::<tower::timeout::error::Elapsed>() {
        return (StatusCode::REQUEST_TIMEOUT, "request timed out\n").into_response();
    }
    tracing::error!(error = %err, "unhandled middleware error");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
}

async fn hello(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
    format!("hello, {}\n", peer.ip())
}

async fn item(Path(id): Path<u64>) -> Json<Item> {
    Json(Item {
        id,
        name: format!("item-{id}"),
    })
}

async fn slow(State(state): State<Arc<AppState>>, Path(ms): Path<u64>) -> String {
    let _busy = Busy::enter(&state);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms}ms\n")
}

/// A long poll: answers when `/release` is posted, or wraps up when the
/// server starts draining (the `DrainToken` the drain layer hands each
/// request), instead of being cut at the drain deadline.
async fn hold(
    State(state): State<Arc<AppState>>,
    Extension(token): Extension<DrainToken>,
) -> &'static str {
    // Register interest before counting ourselves as busy, so a release that
    // follows a read of `/stats` cannot be missed.
    let notified = state.release.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let _busy = Busy::enter(&state);
    tokio::select! {
        () = notified => "released\n",
        () = token.draining() => "drained\n",
    }
}

async fn flaky(State(state): State<Arc<AppState>>) -> (StatusCode, String) {
    let call = state.flaky_calls.fetch_add(1, Ordering::SeqCst) + 1;
    if state.flaky_failing.load(Ordering::SeqCst) {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("flaky call {call} failed\n"),
        )
    } else {
        (StatusCode::OK, format!("flaky call {call} ok\n"))
    }
}

async fn stats(State(state): State<Arc<AppState>>) -> Json<Stats> {
    Json(Stats {
        busy: state.busy.load(Ordering::SeqCst),
        flaky_calls: state.flaky_calls.load(Ordering::SeqCst),
    })
}

async fn release(State(state): State<Arc<AppState>>) -> StatusCode {
    state.release.notify_waiters();
    StatusCode::NO_CONTENT
}

/// `PUT /flaky/failing` with body `true` or `false`.
async fn set_flaky_failing(State(state): State<Arc<AppState>>, body: String) -> StatusCode {
    match body.trim() {
        "true" => state.flaky_failing.store(true, Ordering::SeqCst),
        "false" => state.flaky_failing.store(false, Ordering::SeqCst),
        _ => return StatusCode::BAD_REQUEST,
    }
    StatusCode::NO_CONTENT
}
