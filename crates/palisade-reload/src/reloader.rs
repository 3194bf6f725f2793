//! [`Reloader`]: the reload transaction, load -> build -> swap -> (health
//! gate), over a [`Shared`] pair of a configuration and the service built
//! from it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use palisade_core::BoxError;

use crate::error::{ReloadError, Stage};
use crate::metrics::Metrics;
use crate::service::Reloadable;
use crate::shared::{Shared, Snapshot, Versioned};

/// One version of a reloadable stack: the configuration and the service
/// built from it. Requests that start on a generation finish on it.
#[derive(Debug)]
pub struct Generation<T, S> {
    config: Arc<T>,
    service: S,
}

impl<T, S> Generation<T, S> {
    /// The configuration this generation was built from.
    pub fn config(&self) -> &Arc<T> {
        &self.config
    }

    /// The service built from it.
    pub fn service(&self) -> &S {
        &self.service
    }
}

type BuildFn<T, S> = Box<dyn Fn(&T) -> Result<S, BoxError> + Send + Sync>;
type HealthFn<T, S> = Box<
    dyn Fn(Arc<Versioned<Generation<T, S>>>) -> BoxFuture<'static, Result<(), BoxError>>
        + Send
        + Sync,
>;

/// Owns a reloadable service: builds it from each new configuration and
/// publishes it atomically; hands out [`Reloadable`] services that always
/// route new requests to the newest generation.
///
/// Cloning gives another handle to the same reloader. See the
/// [crate docs](crate) for an example.
pub struct Reloader<T, S> {
    inner: Arc<Inner<T, S>>,
}

struct Inner<T, S> {
    name: Arc<str>,
    shared: Shared<Generation<T, S>>,
    build: BuildFn<T, S>,
    health: Option<HealthFn<T, S>>,
    /// One transaction at a time, held across the health check: a reload
    /// never interleaves with another's rollback.
    txn: tokio::sync::Mutex<()>,
    metrics: Metrics,
}

/// Builds a [`Reloader`]; see [`Reloader::builder`].
pub struct ReloaderBuilder<T, S> {
    name: Arc<str>,
    build: BuildFn<T, S>,
    health: Option<HealthFn<T, S>>,
}

impl<T, S> fmt::Debug for ReloaderBuilder<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloaderBuilder")
            .field("name", &self.name)
            .field("health_check", &self.health.is_some())
            .finish()
    }
}

impl<T, S> ReloaderBuilder<T, S>
where
    T: Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    /// Names the reloader in metrics (`reload` label) and logs; default
    /// `"default"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// A check run after each swap, on the new generation; when it fails the
    /// previous generation is published again (as a newer version) and the
    /// reload reports [`ReloadError::RolledBack`]. Requests that arrived in
    /// between were served by the new generation. Not run for the initial
    /// value.
    pub fn health_check<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn(Arc<Versioned<Generation<T, S>>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.health = Some(Box::new(move |g| Box::pin(check(g))));
        self
    }

    /// Builds the service from `initial` and publishes it as version 1.
    ///
    /// # Errors
    ///
    /// [`ReloadError::Rejected`] at [`Stage::Build`] when the build function
    /// fails on `initial`.
    pub fn build(self, initial: T) -> Result<Reloader<T, S>, ReloadError> {
        let service = (self.build)(&initial).map_err(|source| ReloadError::Rejected {
            name: self.name.clone(),
            stage: Stage::Build,
            serving: 0,
            source,
        })?;
        let metrics = Metrics::new(&self.name);
        let shared = Shared::new(Generation {
            config: Arc::new(initial),
            service,
        });
        metrics.serving(1, shared.load().versioned().published_at());
        tracing::info!(reload = %self.name, version = 1, "initial version serving");
        Ok(Reloader {
            inner: Arc::new(Inner {
                name: self.name,
                shared,
                build: self.build,
                health: self.health,
                txn: tokio::sync::Mutex::new(()),
                metrics,
            }),
        })
    }
}

// === impl Reloader ===

impl<T, S> Reloader<T, S>
where
    T: Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    /// A reloader whose services are built by `build` from each
    /// configuration; its errors should name the offending field.
    pub fn builder<F, E>(build: F) -> ReloaderBuilder<T, S>
    where
        F: Fn(&T) -> Result<S, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        ReloaderBuilder {
            name: Arc::from("default"),
            build: Box::new(move |config| build(config).map_err(Into::into)),
            health: None,
        }
    }

    /// A service that routes each request to the newest generation (see
    /// [`Reloadable`]).
    pub fn service(&self) -> Reloadable<T, S> {
        Reloadable::new(self.inner.shared.clone(), self.inner.name.clone())
    }

    /// The generation serving now.
    pub fn current(&self) -> Snapshot<Generation<T, S>> {
        self.inner.shared.load()
    }

    /// A watcher woken by each new generation (publications go through the
    /// reloader only, so versions and metrics stay in step).
    pub fn watch(&self) -> crate::Watcher<Generation<T, S>> {
        self.inner.shared.watch()
    }

    /// How long ago the serving generation was published.
    pub fn age(&self) -> std::time::Duration {
        self.inner.shared.age()
    }

    /// The reloader's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Applies `config`: build -> swap -> health check. Returns the new
    /// version number.
    ///
    /// # Errors
    ///
    /// [`ReloadError::Rejected`] when the build fails (nothing was
    /// published); [`ReloadError::RolledBack`] when the health check fails.
    pub async fn apply(&self, config: T) -> Result<u64, ReloadError> {
        self.reload_with(|| Ok::<_, BoxError>(config)).await
    }

    /// The whole transaction: `load` (read, parse, validate) -> build ->
    /// swap -> health check, one transaction at a time. Any failure leaves
    /// the previous generation serving, logs the error (a `warn` event with
    /// the version still serving) and counts it; success logs the new
    /// version at `info`.
    ///
    /// # Errors
    ///
    /// As [`apply`](Self::apply), plus [`ReloadError::Rejected`] at
    /// [`Stage::Load`] when `load` fails.
    pub async fn reload_with<F, E>(&self, load: F) -> Result<u64, ReloadError>
    where
        F: FnOnce() -> Result<T, E>,
        E: Into<BoxError>,
    {
        let inner = &*self.inner;
        let _txn = inner.txn.lock().await;
        let serving = inner.shared.version();
        let reject = |stage, source: BoxError| {
            inner.metrics.rejected();
            tracing::warn!(
                reload = %inner.name,
                %stage,
                serving,
                error = %source,
                "reload rejected; the serving version is kept"
            );
            ReloadError::Rejected {
                name: inner.name.clone(),
                stage,
                serving,
                source,
            }
        };
        let config = load().map_err(|e| reject(Stage::Load, e.into()))?;
        let service = (inner.build)(&config).map_err(|e| reject(Stage::Build, e))?;
        let previous = inner.shared.load_full();
        let version = inner.shared.publish(Generation {
            config: Arc::new(config),
            service,
        });
        let published = inner.shared.load_full();
        inner
            .metrics
            .serving(published.version(), published.published_at());

        if let Some(check) = &inner.health
            && let Err(source) = check(published).await
        {
            let restored = inner.shared.publish(Generation {
                config: previous.config.clone(),
                service: previous.service.clone(),
            });
            let current = inner.shared.load_full();
            inner
                .metrics
                .serving(current.version(), current.published_at());
            inner.metrics.rolled_back();
            tracing::error!(
                reload = %inner.name,
                failed = version,
                restored,
                error = %source,
                "reload failed its health check; previous configuration restored"
            );
            return Err(ReloadError::RolledBack {
                name: inner.name.clone(),
                failed: version,
                restored,
                source,
            });
        }
        inner.metrics.applied();
        tracing::info!(reload = %inner.name, version, previous = serving, "reload applied");
        Ok(version)
    }
}

impl<T, S> Clone for Reloader<T, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T, S> fmt::Debug for Reloader<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader")
            .field("name", &self.inner.name)
            .field("version", &self.inner.shared.version())
            .finish()
    }
}
