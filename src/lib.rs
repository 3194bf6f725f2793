//! # palisade
//!
//! Production-grade [`tower`](https://docs.rs/tower) middleware for network
//! services: the concurrency patterns that keep axum, hyper and tonic services
//! alive under load. Each pattern is its own crate; this facade re-exports
//! them behind a Cargo feature of the same name (all on by default through
//! `full`).
//!
//! | feature     | module                 | crate                |
//! |-------------|------------------------|----------------------|
//! | `ratelimit` | [`ratelimit`]          | `palisade-ratelimit` |
//! | `breaker`   | [`breaker`]            | `palisade-breaker`   |
//! | `shutdown`  | [`shutdown`]           | `palisade-shutdown`  |
//! | `batch`     | [`batch`]              | `palisade-batch`     |
//! | `fanout`    | [`fanout`]             | `palisade-fanout`    |
//! | `pool`      | [`pool`]               | `palisade-pool`      |
//! | `pipeline`  | [`pipeline`]           | `palisade-pipeline`  |
//! | `reload`    | [`reload`]             | `palisade-reload`    |
//! | `limit`     | [`limit`]              | `palisade-limit`     |
//!
//! Two more features: `axum` lets `PeerIp`/`ClientIp` read axum's
//! `ConnectInfo<SocketAddr>`, and `console` makes the gateway and the
//! examples install tokio-console's subscriber (with `--cfg
//! tokio_unstable`). [`http::error_response`] maps every palisade error to
//! its HTTP or gRPC response; `docs/ecosystem.md` shows the axum, hyper and
//! tonic wiring side by side.
//!
//! The gateway example (`cargo run --release --example gateway`) composes all
//! of them into one hyper reverse proxy; read `examples/gateway/stack.rs` for
//! the order of the layers and `docs/architecture.md` for why.

#[cfg(feature = "ratelimit")]
#[doc(inline)]
pub use palisade_ratelimit as ratelimit;

#[cfg(feature = "breaker")]
#[doc(inline)]
pub use palisade_breaker as breaker;

#[cfg(feature = "shutdown")]
#[doc(inline)]
pub use palisade_shutdown as shutdown;

#[cfg(feature = "batch")]
#[doc(inline)]
pub use palisade_batch as batch;
#[cfg(feature = "fanout")]
#[doc(inline)]
pub use palisade_fanout as fanout;
#[cfg(feature = "pool")]
#[doc(inline)]
pub use palisade_pool as pool;

#[cfg(feature = "pipeline")]
#[doc(inline)]
pub use palisade_pipeline as pipeline;

#[cfg(feature = "reload")]
#[doc(inline)]
pub use palisade_reload as reload;

#[cfg(feature = "limit")]
#[doc(inline)]
pub use palisade_limit as limit;

pub mod http;

/// The error type of every palisade service (the same type as
/// `tower::BoxError`).
pub use palisade_core::BoxError;

// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
