//! palisade layers in an axum app: the `Router` is wrapped in one
//! `ServiceBuilder`, and `HandleErrorLayer` turns the layers' errors into
//! responses (axum requires an infallible service).
//!
//! ```text
//! cargo run --example axum -- --listen 127.0.0.1:3000
//! curl localhost:3000/items/7
//! ```
//!
//! Routes inside the stack: `/`, `/items/{id}`, `/slow/{ms}`, `/hold` (waits
//! until `/release`). Routes added after the stack, so no limit applies to
//! them (axum layers wrap only the routes added before `.layer`): `/healthz`,
//! `/held` (how many `/hold` requests wait), `/release`.
//!
//! The stack, outermost first (see `docs/architecture.md` for why this
//! order):
//! 1. `HandleErrorLayer`: errors → 503 (overloaded) / 408 (timeout).
//! 2. (palisade shutdown, rate limit and breaker layers drop in here, in the
//!    order the gateway uses.)
//! 3. `load_shed`: fail at once instead of queueing when the limit is full.
//! 4. `GlobalConcurrencyLimitLayer(--concurrency)`: at most N requests in
//!    handlers, app-wide.
//! 5. `timeout(--timeout)`: a handler slower than this is abandoned.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Json, Router};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;

/// Command-line flags.
#[derive(Debug, Parser)]
struct Args {
    /// Listen address, port 0 = ephemeral.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Most requests inside handlers at once; more are shed with 503.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Handler deadline in milliseconds; slower requests get 408.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

/// Shared by the `/hold` family of routes.
#[derive(Debug, Default)]
struct Gate {
    held: AtomicUsize,
    release: Notify,
}

#[derive(Debug, serde::Serialize)]
struct Item {
    id: u64,
    name: String,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .init();
    let args = Args::parse();
    let gate = Arc::new(Gate::default());

    let layers = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(handle_error))
        // palisade layers go here (shutdown, rate limit, circuit breaker).
        .load_shed()
        // `Router::layer` applies the stack to every route separately, so a
        // limit must keep its state in the layer to be one limit for the app:
        // tower's `ConcurrencyLimitLayer` makes a semaphore per route, the
        // global variant shares one (palisade layers all share, like this).
        .layer(GlobalConcurrencyLimitLayer::new(args.concurrency))
        .timeout(Duration::from_millis(args.timeout_ms));

    let app = Router::new()
        .route("/", get(|| async { "hello from axum\n" }))
        .route("/items/{id}", get(item))
        .route("/slow/{ms}", get(slow))
        .route("/hold", get(hold))
        .layer(layers)
        // Below this line: outside the stack (probes, test controls).
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/held", get(held))
        .route("/release", post(release))
        .with_state(gate);

    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Maps the errors of the tower layers to responses. Only the layers' own
/// errors reach here; handlers answer with responses.
async fn handle_error(err: BoxError) -> Response {
    if err.is::<tower::load_shed::error::Overloaded>() {
        let mut res = (StatusCode::SERVICE_UNAVAILABLE, "overloaded\n").into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        res
    } else if err.is::<tower::timeout::error::Elapsed>() {
        (StatusCode::REQUEST_TIMEOUT, "request timed out\n").into_response()
    } else {
        tracing::error!(error = %err, "unhandled middleware error");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
    }
}

async fn item(Path(id): Path<u64>) -> Json<Item> {
    Json(Item {
        id,
        name: format!("item-{id}"),
    })
}

async fn slow(Path(ms): Path<u64>) -> String {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms}ms\n")
}

async fn hold(State(gate): State<Arc<Gate>>) -> &'static str {
    // Register interest before counting ourselves as held, so a release that
    // follows a read of `/held` cannot be missed.
    let notified = gate.release.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    gate.held.fetch_add(1, Ordering::SeqCst);
    notified.await;
    gate.held.fetch_sub(1, Ordering::SeqCst);
    "released\n"
}

async fn held(State(gate): State<Arc<Gate>>) -> String {
    format!("{}\n", gate.held.load(Ordering::SeqCst))
}

async fn release(State(gate): State<Arc<Gate>>) -> StatusCode {
    gate.release.notify_waiters();
    StatusCode::NO_CONTENT
}
