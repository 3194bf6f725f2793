//! Signal helper: the first SIGINT/SIGTERM starts the shutdown, a second one
//! forces it.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let shutdown = palisade_shutdown::Shutdown::new();
//! palisade_shutdown::signal::spawn(&shutdown)?;
//! let outcome = shutdown.run().await;
//! std::process::exit(outcome.code().into());
//! # }
//! ```
//!
//! Tests inject signals instead of sending real ones: any [`SignalSource`]
//! works, and an unbounded channel receiver of signal names is one.

use std::future::Future;
use std::io;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

use crate::coordinator::Shutdown;
use crate::outcome::Trigger;

/// A source of process signals, named like `"SIGTERM"`. `None` means no
/// more signals will come.
pub trait SignalSource: Send + 'static {
    /// Waits for the next signal.
    fn recv(&mut self) -> impl Future<Output = Option<&'static str>> + Send;
}

impl SignalSource for UnboundedReceiver<&'static str> {
    fn recv(&mut self) -> impl Future<Output = Option<&'static str>> + Send {
        UnboundedReceiver::recv(self)
    }
}

/// SIGINT and SIGTERM of this process (on non-Unix platforms, Ctrl-C).
#[derive(Debug)]
pub struct OsSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl OsSignals {
    /// Registers the signal handlers.
    ///
    /// # Errors
    ///
    /// When the handlers cannot be registered. Must be called inside a tokio
    /// runtime.
    pub fn new() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }
}

impl SignalSource for OsSignals {
    async fn recv(&mut self) -> Option<&'static str> {
        #[cfg(unix)]
        {
            tokio::select! {
                s = self.interrupt.recv() => s.map(|()| "SIGINT"),
                s = self.terminate.recv() => s.map(|()| "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await.ok().map(|()| "SIGINT")
        }
    }
}

/// Drives `shutdown` from `source`: the first signal starts it (or, if it had
/// already been started another way, forces it), the next one forces it.
/// Returns when the shutdown is forced or the source ends.
pub async fn handle<S: SignalSource>(shutdown: Shutdown, mut source: S) {
    let Some(first) = source.recv().await else {
        return;
    };
    tracing::info!(signal = first, "shutdown signal received");
    if !shutdown.start(Trigger::Signal(first)) {
        tracing::warn!(signal = first, "signal during shutdown: forcing");
        shutdown.force();
        return;
    }
    if let Some(second) = source.recv().await {
        tracing::warn!(signal = second, "second signal: forcing shutdown");
        shutdown.force();
    }
}

/// Registers SIGINT/SIGTERM handlers and spawns [`handle`] on them.
///
/// # Errors
///
/// When the handlers cannot be registered. Must be called inside a tokio
/// runtime.
pub fn spawn(shutdown: &Shutdown) -> io::Result<JoinHandle<()>> {
    let source = OsSignals::new()?;
    Ok(palisade_core::task::spawn_named(
        "palisade-shutdown signal",
        handle(shutdown.clone(), source),
    ))
}
