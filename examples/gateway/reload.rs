//! Hot reload of `--config` (`palisade-reload`): SIGHUP, and `POST
//! /admin/reload` when `[reload] admin = true` (loopback clients only).
//!
//! ```toml
//! [reload]
//! admin = false        # true: POST /admin/reload from 127.0.0.1 / ::1 reloads
//! ```
//!
//! The transaction: re-read the file and apply the command-line flags over
//! it, validate everything and build every layer that can fail (the same
//! checks as at start-up, [`load_validated`]), build layers 3-9 of the stack
//! (`stack::proxied`) from it, then swap. Any failure logs a `warn` naming
//! the key, counts `palisade_reload_total{reload="gateway",result="rejected"}`
//! and keeps the serving configuration; the process never exits on a bad
//! reload. A valid file swaps the upstreams, `[upstream]` timeouts and pool
//! settings, `[ratelimit]`, `[breaker]`, `[scatter]` and `[hedge]`; requests
//! in flight finish on the stack they started on (`/metrics`:
//! `palisade_reload_version{reload="gateway"}`).
//!
//! State carry-over (`palisade::reload::Carry`): the per-client limiter is
//! kept while its quota, key, `trusted_proxies`, `ipv6_prefix`, `max_keys`
//! and `shadow` are unchanged, the global one while its quota, `mode` and
//! `shadow` are; the breaker of upstream `i` while its URL, `[breaker]` and
//! `enabled` are. Changed ones start fresh.
//!
//! Sections a running gateway cannot change (`[server]`, `[log]`,
//! `[shutdown]`, `[batch]`, `[access_log]`, `[cpu]`, `[demo]`, and the
//! upstream list while `[batch]` is on, since the batcher owns its upstream
//! stack) are rejected by a reload, naming the section: restart for those.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use palisade::reload::{Carry, ReloadError, Reloader};
use palisade_shutdown::Scope;
use pin_project_lite::pin_project;
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};
use tower::{BoxError, Layer, Service};

use crate::body::Body;
use crate::config::{Cli, Config, ConfigError};
use crate::proxy::{Proxy, Upstreams};
use crate::stack::{self, Fixed, Shared};
use crate::telemetry::UpstreamMetrics;

/// `[reload]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadConfig {
    /// Serve `POST /admin/reload` to loopback clients.
    pub admin: bool,
}

/// The reloader's name: the `reload` label of its metrics.
pub const NAME: &str = "gateway";

/// A configuration ready to build from: validated, with its upstream URIs
/// (empty: the demo upstream).
#[derive(Debug)]
pub struct Loaded {
    /// The whole configuration.
    pub config: Config,
    /// `upstream.urls`, parsed.
    pub upstreams: Vec<Uri>,
}

/// Reads `--config`, applies the flags and validates every section in the
/// one pass start-up uses (`Cli::load`, `Config::validate`).
pub fn load_validated(cli: &Cli) -> Result<Loaded, ConfigError> {
    let config = cli.load()?;
    let upstreams = config.upstream.uris.clone();
    Ok(Loaded { config, upstreams })
}

/// The carry-over names of the upstreams: the configured URLs, or the demo
/// upstream (whose address is only known once it runs).
pub fn upstream_names(config: &Config) -> Vec<String> {
    if config.upstream.urls.is_empty() {
        vec!["demo".to_owned()]
    } else {
        config.upstream.urls.clone()
    }
}

/// Refuses changes a running gateway cannot apply, naming the section.
fn restart_only(running: &Config, next: &Config) -> Result<(), ConfigError> {
    // The sections are compared by their `Debug` form: every field, without
    // requiring `PartialEq` of each section type.
    let same =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let sections: [(&str, &dyn std::fmt::Debug, &dyn std::fmt::Debug); 8] = [
        ("server", &running.server, &next.server),
        ("log", &running.log, &next.log),
        ("shutdown", &running.shutdown, &next.shutdown),
        ("batch", &running.batch, &next.batch),
        ("access_log", &running.access_log, &next.access_log),
        ("cpu", &running.cpu, &next.cpu),
        ("demo", &running.demo, &next.demo),
        ("reload", &running.reload, &next.reload),
    ];
    for (key, a, b) in sections {
        if !same(a, b) {
            return Err(ConfigError::key(
                key,
                "cannot change while the gateway runs (restart to apply it)",
            ));
        }
    }
    if running.batch.enabled && running.upstream.urls != next.upstream.urls {
        return Err(ConfigError::key(
            "upstream.urls",
            "cannot change while [batch] is on (the batcher owns its upstreams; restart)",
        ));
    }
    Ok(())
}

/// What every generation shares with the start-up one.
struct Base {
    startup: Config,
    fixed: Fixed,
    demo: Option<Uri>,
    carry: Arc<Carry>,
}

/// Builds layers 3-9 from `loaded`, asking `carry` for the limiters and
/// breakers (the carried set changes only when the whole build succeeds):
/// the one place a generation is built, for the start-up configuration
/// and for every reload.
fn generation(base: &Base, loaded: &Loaded) -> Result<Shared, ConfigError> {
    let config = &loaded.config;
    restart_only(&base.startup, config)?;
    let uris = match (&base.demo, loaded.upstreams.is_empty()) {
        (Some(demo), true) => vec![demo.clone()],
        _ => loaded.upstreams.clone(),
    };
    let mut pass = base.carry.pass();
    let ratelimit = crate::ratelimit::layer_carried(&config.ratelimit, Some(&mut pass))?;
    let breaker =
        crate::breaker::layer_carried(&config.breaker, &upstream_names(config), &mut pass)?;
    let limits = crate::limit::limits_carried(&config.limit, &upstream_names(config), &mut pass)?;
    let global_limit = crate::limit::global_carried(&config.limit, &mut pass)?;
    let hedge = crate::hedge::settings(&config.hedge)?;
    let upstreams = Arc::new(Upstreams::new(&uris, config.upstream.balance));
    let upstream_metrics = Arc::new(UpstreamMetrics::new(&upstreams));
    let scatter = crate::scatter::route(&config.scatter, &upstreams, &config.upstream)?;
    let hedge = crate::hedge::layer(hedge, &upstreams, &config.upstream);
    let breakers = crate::breaker::breakers(&breaker, upstreams.list().len());
    let classifier = crate::breaker::upstream_classifier(&config.breaker)?;
    let proxy = Proxy::with_retries(
        &upstreams,
        &breakers,
        classifier,
        &upstream_metrics,
        &config.upstream,
    );
    // Last fallible step done: only now the carried set becomes this one.
    let carried = pass.commit();
    tracing::info!(kept = ?carried.kept, fresh = ?carried.fresh, dropped = ?carried.dropped, "stateful layers carried over");
    Ok(Shared {
        fixed: base.fixed.clone(),
        config: config.clone(),
        upstreams,
        upstream_metrics,
        ratelimit,
        breakers,
        limits,
        global_limit,
        classifier,
        proxy,
        scatter: crate::scatter::ScatterLayer::new(scatter),
        hedge,
    })
}

/// Builds the start-up generation of layers 3-9 from `config` over `fixed`
/// (its limiters and breakers from `carry`), serves it through a reloader,
/// spawns the SIGHUP handler in `background`, and returns the
/// whole stack (layers 1-2, the admin route, then the newest generation)
/// and the admin route for the admin listener. With `server.admin_listen`
/// set, the route is in the second and the stack's is a pass-through.
pub fn start(
    cli: Arc<Cli>,
    config: Config,
    fixed: Fixed,
    upstreams: &[Uri],
    demo: bool,
    carry: Arc<Carry>,
    background: &Scope,
) -> Result<
    (
        impl Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
        AdminReloadLayer,
    ),
    BoxError,
> {
    let admin = config.reload.admin;
    let separate = config.server.admin_listen.is_some();
    let layers = config.stack.clone();
    let initial = Loaded {
        config: config.clone(),
        upstreams: if demo { Vec::new() } else { upstreams.to_vec() },
    };
    let base = Arc::new(Base {
        startup: config,
        demo: demo.then(|| upstreams[0].clone()),
        fixed,
        carry,
    });
    let reloader = {
        let base = base.clone();
        Reloader::builder(move |loaded: &Loaded| {
            generation(&base, loaded).map(|g| stack::proxied(&g))
        })
        .name(NAME)
        .build(initial)?
    };
    let trigger: Trigger = {
        let reloader = reloader.clone();
        Arc::new(move || {
            let reloader = reloader.clone();
            let cli = cli.clone();
            Box::pin(async move { reloader.reload_with(|| load_validated(&cli)).await })
        })
    };
    spawn_sighup(trigger.clone(), background)?;
    let admin = AdminReloadLayer {
        trigger: admin.then_some(trigger),
    };
    let (public, admin) = if separate {
        (AdminReloadLayer::off(), admin)
    } else {
        (admin, AdminReloadLayer::off())
    };
    // No `ServedBy` extension per request: nothing in the gateway reads it
    // (the version is on the `reload` tracing span), and inserting it
    // allocates once per request.
    let generations = reloader.service().stamp_requests(false);
    Ok((
        stack::outer(&base.fixed, &layers, public.layer(generations)),
        admin,
    ))
}

/// Runs one reload.
type Trigger = Arc<dyn Fn() -> BoxFuture<'static, Result<u64, ReloadError>> + Send + Sync>;

/// Reloads on every SIGHUP until the shutdown cancels `scope`. The handler
/// is installed before this returns, so a SIGHUP right after the listening
/// line reloads instead of killing the process.
fn spawn_sighup(trigger: Trigger, scope: &Scope) -> std::io::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    let token = scope.token().clone();
    scope.spawn("reload-sighup", async move {
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                got = hangup.recv() => if got.is_none() { return },
            }
            tracing::info!(signal = "SIGHUP", "reloading the configuration");
            // The outcome is logged and counted by the reloader.
            let _ = trigger().await;
        }
    });
    Ok(())
}

// === POST /admin/reload ===

/// Answers `POST /admin/reload` (when `[reload] admin` is on, to loopback
/// peers only); everything else goes to the inner service.
#[derive(Clone)]
pub struct AdminReloadLayer {
    trigger: Option<Trigger>,
}

impl AdminReloadLayer {
    /// A pass-through: the route is served elsewhere, or not at all.
    pub fn off() -> Self {
        Self { trigger: None }
    }
}

impl std::fmt::Debug for AdminReloadLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminReloadLayer")
            .field("enabled", &self.trigger.is_some())
            .finish()
    }
}

impl<S> Layer<S> for AdminReloadLayer {
    type Service = AdminReload<S>;

    fn layer(&self, inner: S) -> AdminReload<S> {
        AdminReload {
            inner,
            trigger: self.trigger.clone(),
        }
    }
}

/// See [`AdminReloadLayer`].
#[derive(Clone)]
pub struct AdminReload<S> {
    inner: S,
    trigger: Option<Trigger>,
}

impl<S> std::fmt::Debug for AdminReload<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminReload")
            .field("enabled", &self.trigger.is_some())
            .finish()
    }
}

impl<S, B> Service<Request<B>> for AdminReload<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = AdminFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(trigger) = self
            .trigger
            .as_ref()
            .filter(|_| req.uri().path() == "/admin/reload")
        else {
            return AdminFuture::Inner {
                inner: self.inner.call(req),
            };
        };
        // Not forwarded: release what the inner poll_ready reserved.
        self.inner = self.inner.clone();
        if !crate::routes::from_loopback(&req) {
            return AdminFuture::Local {
                res: Some(text(StatusCode::FORBIDDEN, "loopback only\n".into())),
            };
        }
        if req.method() != Method::POST {
            let mut res = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            );
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return AdminFuture::Local { res: Some(res) };
        }
        tracing::info!("reloading the configuration (POST /admin/reload)");
        let reload = trigger();
        AdminFuture::Reload {
            reload: Box::pin(async move {
                match reload.await {
                    Ok(version) => text(StatusCode::OK, format!("reloaded: version {version}\n")),
                    // An operator on loopback: the reason, naming the key.
                    Err(e) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
                }
            }),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

pin_project! {
    /// Response future of [`AdminReload`].
    #[project = AdminFutureProj]
    pub enum AdminFuture<F> {
        /// Forwarded.
        Inner { #[pin] inner: F },
        /// A reload running (rare: boxed).
        Reload { reload: BoxFuture<'static, Response<Body>> },
        /// Refused at once.
        Local { res: Option<Response<Body>> },
    }
}

impl<F> Future for AdminFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AdminFutureProj::Inner { inner } => inner.poll(cx),
            AdminFutureProj::Reload { reload } => reload.as_mut().poll(cx).map(Ok),
            AdminFutureProj::Local { res } => {
                Poll::Ready(Ok(res.take().expect("AdminFuture polled after completion")))
            }
        }
    }
}
