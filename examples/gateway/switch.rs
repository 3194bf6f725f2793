//! `[stack] layers`: which of the stack's optional layers are built, for
//! measuring what each one costs per request (`scripts/bench-layers.sh`).
//!
//! ```toml
//! [stack]
//! # default: every layer; the list names the ones to keep
//! layers = ["telemetry", "routes", "shed", "drain", "ratelimit", "scatter",
//!           "batch", "hedge", "breaker"]
//! ```
//!
//! The error mapping, the upstream choice, the upstream timeout with the
//! request-body bounds (it turns the client's body into the proxy's) and
//! the proxy are always there:
//! without them nothing is forwarded or answered. A layer left out is not a
//! disabled layer (a breaker with `enabled = false` still runs its checks):
//! it is absent, and requests go straight to the layer below. Leaving out
//! `drain` means in-flight requests are not counted at shutdown (connections
//! are still drained); production configurations keep the default.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use serde::Deserialize;
use tower::{Layer, Service};

/// The layers `[stack] layers` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerName {
    /// 1: request metrics and the access log.
    Telemetry,
    /// 2: `/healthz`, `/readyz`, `/metrics`, `/demo/faults`.
    Routes,
    /// 3a: the in-flight cap (`server.max_in_flight`, 503 when full).
    Shed,
    /// 4: shutdown's in-flight count and 503 once draining.
    Drain,
    /// 5: per-client and global rate limits.
    Ratelimit,
    /// 5a: the `[scatter]` route.
    Scatter,
    /// 5b: the `[batch]` route.
    Batch,
    /// 5c: `[hedge]`.
    Hedge,
    /// The per-upstream circuit breakers inside the upstream choice (6);
    /// left out, the choice is plain balancing.
    Breaker,
}

impl LayerName {
    /// Every optional layer, in stack order.
    pub const ALL: [Self; 9] = [
        Self::Telemetry,
        Self::Routes,
        Self::Shed,
        Self::Drain,
        Self::Ratelimit,
        Self::Scatter,
        Self::Batch,
        Self::Hedge,
        Self::Breaker,
    ];
}

/// `[stack]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StackConfig {
    /// The optional layers to build; default: all of them.
    pub layers: Vec<LayerName>,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            layers: LayerName::ALL.to_vec(),
        }
    }
}

impl StackConfig {
    /// Whether `layer` is built.
    pub fn has(&self, layer: LayerName) -> bool {
        self.layers.contains(&layer)
    }

    /// `layer` when it is on, a pass-through otherwise.
    pub fn switch<L>(&self, name: LayerName, layer: L) -> SwitchLayer<L> {
        SwitchLayer(self.has(name).then_some(layer))
    }
}

/// A layer that is applied or not ([`StackConfig::switch`]). Its error is
/// the layer's; the inner service's error must convert into it (tower's
/// `Either` asks for one error type, which the layers here do not share).
#[derive(Debug, Clone)]
pub struct SwitchLayer<L>(Option<L>);

impl<L: Layer<S>, S> Layer<S> for SwitchLayer<L> {
    type Service = Switch<L::Service, S>;

    fn layer(&self, inner: S) -> Self::Service {
        match &self.0 {
            Some(layer) => Switch::On(layer.layer(inner)),
            None => Switch::Off(inner),
        }
    }
}

/// See [`SwitchLayer`].
#[derive(Debug, Clone)]
pub enum Switch<A, B> {
    /// The layer is on.
    On(A),
    /// The layer is left out.
    Off(B),
}

impl<A, B, R> Service<R> for Switch<A, B>
where
    A: Service<R>,
    B: Service<R, Response = A::Response>,
    B::Error: Into<A::Error>,
{
    type Response = A::Response;
    type Error = A::Error;
    type Future = SwitchFuture<A::Future, B::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), A::Error>> {
        match self {
            Switch::On(a) => a.poll_ready(cx),
            Switch::Off(b) => b.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: R) -> Self::Future {
        match self {
            Switch::On(a) => SwitchFuture::On { inner: a.call(req) },
            Switch::Off(b) => SwitchFuture::Off { inner: b.call(req) },
        }
    }
}

pin_project! {
    /// Response future of [`Switch`].
    #[project = SwitchProj]
    #[derive(Debug)]
    pub enum SwitchFuture<A, B> {
        /// Through the layer.
        On { #[pin] inner: A },
        /// Past it.
        Off { #[pin] inner: B },
    }
}

impl<A, B, T, EA, EB> Future for SwitchFuture<A, B>
where
    A: Future<Output = Result<T, EA>>,
    B: Future<Output = Result<T, EB>>,
    EB: Into<EA>,
{
    type Output = Result<T, EA>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            SwitchProj::On { inner } => inner.poll(cx),
            SwitchProj::Off { inner } => inner.poll(cx).map_err(Into::into),
        }
    }
}
