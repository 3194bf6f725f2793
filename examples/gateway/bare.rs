//! `--bare`: the benchmark floor. The gateway's own listener, connection
//! handling, upstream choice and forwarding (`Server`, `ConnectionService`,
//! `ChooseUpstream`, the upstream timeout that also turns the client's body
//! into the proxy's, `Proxy` and its keep-alive pools, the same hyper
//! builder), with none of the policy layers: no telemetry, built-in routes,
//! error mapping, drain, rate limit, breaker or timeout.
//!
//! What it costs per request is hyper's (and tokio's) floor for this
//! forwarding code; the full stack measured against it is palisade's share
//! (`scripts/bench-proxy.sh`, `docs/benchmarks.md`). Not for production: an
//! upstream failure closes the client connection instead of answering 502,
//! and SIGTERM drains for `server.shutdown_timeout` with none of the
//! shutdown phases.

use std::sync::Arc;

use tokio::net::TcpListener;
use tower::Layer;

use crate::BoxError;
use crate::config::{Config, ConfigError};
use crate::proxy::{ChooseUpstreamLayer, Proxy, Upstreams};
use crate::stack::ConnectionService;
use crate::telemetry::{RequestMetrics, UpstreamMetrics};
use crate::upstream_timeout::UpstreamTimeoutLayer;
use crate::workers::{self, RuntimeMode, Workers};
use palisade_shutdown::server::{ConnectionLimits, Server};

/// Serves `upstreams` bare until SIGINT/SIGTERM, then drains the
/// connections for `server.shutdown_timeout`.
pub async fn run(config: Config) -> Result<u8, BoxError> {
    let upstreams = config.upstream.uris.clone();
    if upstreams.is_empty() {
        return Err(
            ConfigError::key("upstream.urls", "--bare needs at least one --upstream").into(),
        );
    }
    let shutdown = crate::shutdown_signal()?;
    let upstreams = Arc::new(Upstreams::new(&upstreams, config.upstream.balance));
    let upstream_metrics = Arc::new(UpstreamMetrics::new(&upstreams));
    let request_metrics = Arc::new(RequestMetrics::new());
    let forward = || {
        ChooseUpstreamLayer::new(upstreams.clone(), upstream_metrics.clone()).layer(
            UpstreamTimeoutLayer::new(&config).layer(Proxy::new(
                &upstreams,
                &config.upstream,
                workers::copies(&config),
            )),
        )
    };
    let builder = workers::http_builder(&config);
    let (addr, handles, workers) = match workers::mode(&config) {
        RuntimeMode::MultiThread => {
            let listener = TcpListener::bind(config.server.listen)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
            let addr = listener.local_addr()?;
            let forward = forward();
            let metrics = request_metrics.clone();
            let server = Server::from_fn(listener, move |peer| {
                metrics.connection_accepted();
                ConnectionService::new(forward.clone(), peer)
            })
            .with_http(builder);
            let handles = vec![server.handle()];
            tokio::spawn(server.run());
            (addr, handles, None)
        }
        RuntimeMode::ThreadPerCore => {
            let stacks = (0..workers::count(&config)).map(|_| forward()).collect();
            let w = Workers::start(
                config.server.listen,
                stacks,
                &builder,
                ConnectionLimits::default(),
                &request_metrics,
            )
            .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
            (w.addr, w.handles.clone(), Some(w))
        }
    };
    tracing::info!("bare forwarder (no policy layers) listening on http://{addr}");
    shutdown.await;
    let deadline = config.server.shutdown_timeout.get();
    futures_util::future::join_all(
        handles
            .iter()
            .map(|h| h.drain(tokio::time::sleep(deadline))),
    )
    .await;
    if let Some(w) = workers {
        w.join();
    }
    Ok(0)
}
