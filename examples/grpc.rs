//! palisade layers in a tonic gRPC server: a drain for coordinated shutdown,
//! a per-client and a global rate limit, an adaptive concurrency limit and a
//! circuit breaker around the backend service, each answering a refused call with the `grpc-status` a
//! gRPC client expects (not an HTTP status it would misread).
//!
//! ```text
//! cargo run --example grpc -- --listen 127.0.0.1:50051 --per-ip-rate 5
//! grpcurl -plaintext -d '{"service":""}' localhost:50051 grpc.health.v1.Health/Check
//! # the 6th call in a second: RESOURCE_EXHAUSTED, "rate limited by policy per-ip"
//! grpcurl -plaintext -d '{"service":"fail"}' localhost:50051 grpc.health.v1.Health/Check
//! # UNAVAILABLE from the backend five times, then UNAVAILABLE "circuit breaker open"
//! kill -TERM <pid>   # open calls finish, new ones get UNAVAILABLE "server is draining"
//! ```
//!
//! # The stack, outermost first
//!
//! ```text
//!  tonic Server             accepts; inserts `TcpConnectInfo` (the peer) in each request
//!  HttpDrainLayer           counts calls until their response body ends; UNAVAILABLE
//!                           once draining (Health/Check, the probe, exempt)
//!  HttpRateLimitLayer       per peer IP (read from `TcpConnectInfo`): RESOURCE_EXHAUSTED
//!                           + grpc-retry-pushback-ms
//!  HttpRateLimitLayer       global, same answer
//!  limit::http::layer       adaptive concurrency limit: UNAVAILABLE + pushback when
//!                           full; reads and forwards a reduced `grpc-timeout`
//!  BodyEndLayer             the breaker, `GrpcClassifier`: a call's grpc-status, from
//!                           trailers-only headers or from the trailers at body end;
//!                           UNAVAILABLE while open
//!  Health service           the backend (a demo `grpc.health.v1.Health`, see below)
//! ```
//!
//! The order is the gateway's (docs/architecture.md): the drain first, so a
//! draining server spends nothing on a call; the limits next, so a rejected
//! call is cheap and never counts against the breaker; the breaker next to
//! the backend whose health it tracks.
//!
//! # The demo backend
//!
//! `grpc.health.v1.Health` (tonic-health ships its generated code, so no
//! `protoc` is needed), with the requested service name choosing the
//! behaviour:
//!
//! - `Check("")` and `Check(anything else)`: `SERVING` (`NOT_SERVING` once
//!   shutdown has started);
//! - `Check("fail")`: fails with `UNAVAILABLE` (a trailers-only response);
//! - `Watch("fail")`: one `SERVING` message, then `UNAVAILABLE` in the
//!   trailers (the breaker decides when the body ends);
//! - `Watch("hold")`: one `SERVING` message, then holds the stream open until
//!   `Check("release")`, a long-lived call for the drain to wait for;
//! - `Watch(other)`: one `SERVING` message, then `OK`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::Stream;
use palisade::breaker::http::{BodyEndLayer, GrpcClassifier};
use palisade::breaker::{Breaker, Config};
use palisade::ratelimit::http::{HttpRateLimitLayer, PeerIp};
use palisade::ratelimit::{KeyedLimiter, Limiter, PerKey, Quota};
use palisade::shutdown::http::HttpDrainLayer;
use palisade::shutdown::{Drain, Phase, Readiness, Shutdown};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tonic::transport::server::{TcpConnectInfo, TcpIncoming};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Command-line flags; the tests shrink them.
#[derive(Debug, Parser)]
struct Args {
    /// Listen address, port 0 = ephemeral.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Calls each client IP may make per `--per-ip-period-secs` (also its
    /// burst).
    #[arg(long, default_value_t = 100)]
    per_ip_rate: u32,
    /// The period of `--per-ip-rate`, in seconds.
    #[arg(long, default_value_t = 1)]
    per_ip_period_secs: u64,
    /// Calls all clients together may make per `--global-period-secs`.
    #[arg(long, default_value_t = 10_000)]
    global_rate: u32,
    /// The period of `--global-rate`, in seconds.
    #[arg(long, default_value_t = 1)]
    global_period_secs: u64,
    /// Consecutive failed calls (by `grpc-status`) that open the breaker.
    #[arg(long, default_value_t = 5)]
    breaker_failures: u32,
    /// How long the breaker stays open before a probe, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    breaker_wait_ms: u64,
    /// The most calls in flight the adaptive limit may grow to.
    #[arg(long, default_value_t = 1000)]
    max_concurrency: usize,
    /// How long open calls may take to finish after SIGTERM, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    drain_deadline_ms: u64,
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

/// Serves until SIGTERM/SIGINT, then drains; returns the shutdown's exit
/// code (0 when nothing was cut).
async fn run(args: Args) -> Result<u8, palisade::BoxError> {
    let shutdown = Shutdown::new();
    palisade::shutdown::signal::spawn(&shutdown)?;
    let drain = Drain::new();

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
        // tonic puts the peer in a `TcpConnectInfo`, a type of another crate:
        // a lookup function reads it.
        PeerIp::new().peer_addr_with(|ext| ext.get::<TcpConnectInfo>()?.remote_addr()),
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
            .name("backend")
            .consecutive_failures(args.breaker_failures)
            .wait_duration(Duration::from_millis(args.breaker_wait_ms))
            // A fixed wait (no backoff growth, no jitter): the demo's
            // pushback is exact.
            .max_wait_duration(Duration::from_millis(args.breaker_wait_ms))
            .wait_jitter(0.0)
            .half_open_probes(1)
            .build()
            .map_err(|e| format!("--breaker-failures / --breaker-wait-ms: {e}"))?,
    );
    // The limit learns the backend's concurrency; `--max-concurrency` caps
    // it (the tests set 1 to see a refusal).
    let max = args.max_concurrency;
    let concurrency = palisade::limit::Limiter::builder()
        .name("backend")
        .algorithm(
            palisade::limit::Gradient2::builder()
                .min_limit(1)
                .initial_limit(max.min(20))
                .max_limit(max)
                .build()
                .map_err(|e| format!("--max-concurrency: {e}"))?,
        )
        .build()?;
    let drain_layer = HttpDrainLayer::builder(drain.clone())
        .exempt("/grpc.health.v1.Health/Check")
        .build()?;

    let backend = DemoHealth {
        readiness: shutdown.readiness(),
        release: Arc::new(watch::Sender::new(false)),
    };

    // Bound before the listening line, so a client that reads it connects.
    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let stop = Arc::new(Notify::new());
    let server = tonic::transport::Server::builder()
        .layer(drain_layer)
        .layer(HttpRateLimitLayer::new(per_ip))
        .layer(HttpRateLimitLayer::new(global))
        .layer(palisade::limit::http::layer(
            concurrency,
            palisade::limit::http::HttpPolicy::default(),
        ))
        .layer(BodyEndLayer::new(breaker).classifier(GrpcClassifier::default()))
        .add_service(HealthServer::new(backend))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), {
            let stop = stop.clone();
            async move { stop.notified().await }
        });
    let server = tokio::spawn(server);

    // First the drain: new calls on open connections get UNAVAILABLE, open
    // calls run to their end. Then the server: GOAWAY, the listener closes.
    shutdown.add_phase(
        Phase::new("drain", Duration::from_millis(args.drain_deadline_ms))
            .action(move |_| async move { drain.drain().await }),
    )?;
    shutdown.add_phase(Phase::new("stop-server", Duration::from_secs(5)).action(
        move |_| async move {
            stop.notify_one();
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "gRPC server failed"),
                Err(e) => tracing::error!(error = %e, "gRPC server task failed"),
            }
        },
    ))?;
    let outcome = shutdown.run().await;
    tracing::info!(code = outcome.code(), clean = outcome.is_clean(), "exiting");
    Ok(outcome.code())
}

/// The demo backend; see the module docs.
#[derive(Debug, Clone)]
struct DemoHealth {
    readiness: Readiness,
    /// Set by `Check("release")`: ends `Watch("hold")` streams.
    release: Arc<watch::Sender<bool>>,
}

fn reply(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: tonic_health::pb::health_check_response::ServingStatus::from(status).into(),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for DemoHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match request.get_ref().service.as_str() {
            "fail" => Err(Status::unavailable("backend failing")),
            "release" => {
                self.release.send_replace(true);
                Ok(Response::new(reply(ServingStatus::Serving)))
            }
            _ if !self.readiness.is_ready() => Ok(Response::new(reply(ServingStatus::NotServing))),
            _ => Ok(Response::new(reply(ServingStatus::Serving))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let first = Ok(reply(ServingStatus::Serving));
        let stream: WatchStream = match request.get_ref().service.as_str() {
            "fail" => Box::pin(futures_util::stream::iter([
                first,
                Err(Status::unavailable("backend failing mid-stream")),
            ])),
            "hold" => {
                // A flag, not a notification: a release sent while the stream
                // is between polls is not missed.
                let released = self.release.subscribe();
                Box::pin(futures_util::stream::unfold(
                    (Some(first), released),
                    |(first, mut released)| async move {
                        if let Some(first) = first {
                            return Some((first, (None, released)));
                        }
                        // Ends the stream (status OK) once released; a
                        // dropped sender (server gone) ends it too.
                        let _ = released.wait_for(|released| *released).await;
                        None
                    },
                ))
            }
            _ => Box::pin(futures_util::stream::iter([first])),
        };
        Ok(Response::new(stream))
    }
}
