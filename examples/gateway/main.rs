//! The palisade gateway: a hyper reverse proxy with every palisade pattern
//! wired in.
//!
//! ```text
//! cargo run --release --example gateway                  # demo upstream built in
//! cargo run --release --example gateway -- --upstream http://127.0.0.1:9000
//! cargo run --release --example gateway -- --config gateway.toml --log-format json
//! ```
//!
//! Files: `config.rs` (flags + TOML, one validation pass), `stack.rs` (the
//! layer stack, in order), `shed.rs` (the in-flight cap), `balance.rs`
//! (breaker-aware upstream choice), `upstream_timeout.rs` and
//! `request_body.rs` (body cap, body stall, upstream timeout), `proxy.rs`
//! (forwarding and its errors), `headers.rs` (header rewriting), `pool.rs`
//! (upstream keep-alive pool), `batch.rs`
//! (`[batch]`: item lookups coalesced), `routes.rs`
//! (built-in routes), `admin.rs` (the `server.admin_listen` listener),
//! `edge.rs` (hostile-input checks), `reload.rs` (SIGHUP / `POST /admin/reload` hot
//! reload), `telemetry.rs` (logs, metrics), `upstream.rs` (the
//! demo upstream), `body.rs` (the response body type). See
//! `docs/gateway.md` and `docs/architecture.md`.

// A binary: `pub` items form the interface between the gateway's modules
// (and the one pattern owners extend); none of them is reachable from outside.
#![allow(unreachable_pub)]

// The allocator: jemalloc, whose background thread hands the pages of
// freed memory back to the OS within seconds (its default 10 s decay).
// glibc malloc keeps them: after 5,000 idle connections closed, its RSS
// stayed 9x the baseline; jemalloc's returns to it. docs/benchmarks.md,
// "Memory per connection".
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod access_log;
mod admin;
mod balance;
mod bare;
mod batch;
mod body;
mod breaker;
mod cli;
mod config;
mod cpu;
mod duration;
mod edge;
mod failover;
mod headers;
mod hedge;
mod limit;
mod pool;
mod proxy;
mod ratelimit;
mod reload;
mod request_body;
mod routes;
mod scatter;
mod shed;
mod shutdown;
mod stack;
mod switch;
mod telemetry;
mod upstream;
mod upstream_timeout;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use palisade_shutdown::server::Server;
use palisade_shutdown::{Drain, Shutdown};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Cli, Config};
use crate::proxy::Upstreams;
use crate::routes::{BuiltinRoutesLayer, Readiness, Routes, RoutesState};
use crate::stack::{ConnectionService, Fixed};
use crate::telemetry::{RequestMetrics, TelemetryLayer, UpstreamMetrics};
use crate::upstream::Faults;

fn main() -> ExitCode {
    // Shared with the reload handler, which re-reads `--config` with the
    // same flags (hook: reload.rs).
    let cli = Arc::new(Cli::parse());
    // Configuration is complete and valid before anything is bound.
    let config = match cli.load() {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // tokio-console (docs/ecosystem.md): `--features console` built with
    // `RUSTFLAGS="--cfg tokio_unstable"`; logs then follow RUST_LOG.
    #[cfg(all(feature = "console", tokio_unstable))]
    console_subscriber::init();
    #[cfg(not(all(feature = "console", tokio_unstable)))]
    telemetry::init_logging(&config.log);

    // One worker (pinned to one CPU, or `--workers 1`): the current-thread
    // scheduler, which skips the work-stealing machinery a single worker
    // cannot use (measurably less CPU per request, docs/benchmarks.md).
    let workers = workers::count(&config);
    // Thread-per-core: the worker threads have their own runtimes
    // (`workers.rs`); the main one runs the coordinator and background tasks.
    let per_core =
        workers::mode(&config) == workers::RuntimeMode::ThreadPerCore && !cli.demo_upstream_only;
    let mut runtime = if workers == 1 || per_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if cli.demo_upstream_only {
            run_demo_upstream_only(&config).await.map(|()| 0)
        } else if cli.bare {
            bare::run(config).await
        } else {
            run(cli.clone(), config).await
        }
    });
    // Tasks still running (the demo upstream, connections cut at the
    // deadline) are dropped here.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(code) => ExitCode::from(code),
        // A pattern section the layer itself rejected: a configuration
        // error like any other, found before anything was bound.
        Err(e) if e.is::<config::ConfigError>() => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves until a signal, then runs the coordinated shutdown (see
/// `shutdown.rs`); returns the exit code its outcome calls for.
async fn run(cli: Arc<Cli>, config: Config) -> Result<u8, BoxError> {
    let mut upstreams = config.upstream.uris.clone();
    // Installed first: a signal arriving right after the listening line must
    // drain the gateway, not kill it. A second signal forces the shutdown.
    let coordinator = Shutdown::new();
    palisade_shutdown::signal::spawn(&coordinator)?;
    let metrics = telemetry::init_metrics();
    // Background work (batch queues) is flushed after the requests that feed
    // it; backends (the demo upstream) are closed last.
    let background = coordinator.scope().child("background");
    let backends = coordinator.scope().child("backends");

    // `Config::validate` has checked every section, so the builders below
    // (here and in `reload::start`, which builds layers 3-9 once for the
    // start-up configuration) cannot fail on configuration grounds; they
    // run after the recorder, so their metrics register, and before
    // anything is bound. Without configured upstreams there is one: the
    // demo upstream below.
    // Hook (reload.rs): the limiters and breakers come from the carry-over
    // set, so a reload keeps the ones whose parameters did not change.
    let carry = Arc::new(palisade::reload::Carry::new());
    let batch = batch::layer(&config.batch)?;
    // Only when the access log is on at all (`--no-access-log` wins).
    let access_log = if config.log.access_log {
        access_log::start(&config.access_log)?
    } else {
        None
    };

    // No upstream configured: serve the demo upstream in-process.
    let faults = if upstreams.is_empty() {
        let faults = Faults::new(config.demo.error_rate, config.demo.latency.get())
            .with_capacity(config.demo.slots, config.demo.service_time.get());
        let cpu = cpu::route(&config.cpu)?;
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        backends.spawn(
            "demo-upstream",
            upstream::serve(
                listener,
                faults.clone(),
                cpu,
                backends.token().cancelled_owned(),
            ),
        );
        tracing::info!("demo upstream listening on http://{addr}");
        upstreams.push(format!("http://{addr}").parse()?);
        Some(faults)
    } else {
        None
    };

    let faults_present = faults.is_some();
    let readiness = Readiness::new();
    // With `server.admin_listen`, the admin routes move to that listener.
    let admin_listen = config.server.admin_listen.is_some();
    let routes = Routes::new(faults.is_some(), !admin_listen);
    let admin_routes = admin_listen.then(|| {
        BuiltinRoutesLayer::new(RoutesState {
            routes: Routes::new(faults.is_some(), true),
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            faults: faults.clone(),
        })
    });
    let request_metrics = Arc::new(RequestMetrics::new());
    // Hook (reload.rs): the final list, the demo upstream included.
    let upstream_uris = upstreams.clone();
    let drain = Drain::new();
    // The batcher owns its upstream stack (so `[batch]` and, while it is on,
    // the upstream list change only on restart); its breakers are the
    // proxied path's, from the same carry-over set, so a batch and a
    // proxied call to one upstream count in one breaker.
    let items = match batch {
        Some(layer) => {
            let mut pass = carry.pass();
            let breaker = breaker::layer_carried(
                &config.breaker,
                &reload::upstream_names(&config),
                &mut pass,
            )?;
            pass.commit();
            let upstreams = Arc::new(Upstreams::new(&upstreams, config.upstream.balance));
            Some(batch::start(
                layer,
                upstreams.clone(),
                Arc::new(UpstreamMetrics::new(&upstreams)),
                breaker::for_batches(&breaker, &config.breaker)?,
                &config.upstream,
            ))
        }
        None => None,
    };
    let batch_handle = items.as_ref().map(|items| items.handle.clone());
    let fixed = Fixed {
        telemetry: TelemetryLayer::new(request_metrics.clone(), routes)
            .with_access_log(access_log.as_ref().map(|a| a.sink.clone())),
        edge: edge::EdgeLayer::new(&config.server),
        in_flight: shed::InFlightLimitLayer::new(config.server.max_in_flight),
        routes: BuiltinRoutesLayer::new(RoutesState {
            routes,
            readiness: readiness.clone(),
            metrics,
            faults,
        }),
        drain: drain.clone(),
        items,
    };
    let config = &config;
    // Hook (reload.rs): layers 3-9 are built here, once, and are
    // hot-swappable under 1-2; every worker serves the same reloadable
    // stack.
    let (stack, admin_reload) = reload::start(
        cli,
        config.clone(),
        fixed,
        &upstream_uris,
        faults_present,
        carry,
        &background,
    )?;
    // Bound before the public port, so its line comes first.
    if let (Some(listener), Some(routes)) = (admin::bind(config).await?, admin_routes) {
        let addr = admin::spawn(listener, config, routes, admin_reload, &backends)?;
        tracing::info!("admin surface on http://{addr}");
    }
    let builder = workers::http_builder(config);
    let limits = workers::connection_limits(config);
    let (addr, connections, workers) = match workers::mode(config) {
        workers::RuntimeMode::MultiThread => {
            let listener = TcpListener::bind(config.server.listen)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
            let addr = listener.local_addr()?;
            // Accepts HTTP/1 and HTTP/2, each connection on its own task,
            // until the shutdown's stop-accepting phase; its drain phase
            // closes them.
            let server = Server::from_fn(listener, move |peer| {
                request_metrics.connection_accepted();
                ConnectionService::new(stack.clone(), peer)
            })
            .with_http(builder)
            .with_limits(limits);
            let connections = vec![server.handle()];
            tokio::spawn(server.run());
            (addr, connections, None)
        }
        workers::RuntimeMode::ThreadPerCore => {
            // The policy state (limiter, breakers, drain) is shared through
            // the layers' Arcs; each worker uses its own upstream pools
            // (`workers::PerWorker` inside every generation).
            let stacks = (0..workers::count(config)).map(|_| stack.clone()).collect();
            let w = workers::Workers::start(
                config.server.listen,
                stacks,
                &builder,
                limits,
                &request_metrics,
            )
            .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
            (w.addr, w.handles.clone(), Some(w))
        }
    };
    shutdown::register(
        &coordinator,
        config,
        shutdown::Parts {
            readiness,
            drain,
            connections,
            batch: batch_handle,
            access_log,
            background,
            backends,
        },
    )?;
    tracing::info!("listening on http://{addr}");

    let outcome = coordinator.run().await;
    if let Some(workers) = workers {
        workers.join();
    }
    Ok(shutdown::finish(&outcome))
}

/// `--demo-upstream-only`: the demo upstream alone on `server.listen`.
async fn run_demo_upstream_only(config: &Config) -> Result<(), BoxError> {
    let shutdown = shutdown_signal()?;
    let faults = Faults::new(config.demo.error_rate, config.demo.latency.get())
        .with_capacity(config.demo.slots, config.demo.service_time.get());
    let cpu = cpu::route(&config.cpu)?;
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    tracing::info!(
        "demo upstream listening on http://{}",
        listener.local_addr()?
    );
    upstream::serve(listener, faults, cpu, shutdown).await;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM. The handlers are installed when
/// this is called, not when the future is first polled.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown signal received");
    })
}
