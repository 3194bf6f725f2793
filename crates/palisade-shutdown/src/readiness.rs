//! A readiness flag for `/readyz`-style endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A shared readiness flag: `true` while the process wants new traffic.
///
/// The flag of a [`Shutdown`](crate::Shutdown) ([`Shutdown::readiness`](crate::Shutdown::readiness))
/// turns `false` the moment shutdown starts, before any phase runs, so a
/// readiness probe fails while the listener keeps serving for the readiness
/// delay (the Kubernetes pre-stop pattern). Liveness (`/healthz`) must not
/// read this flag: a draining process is alive.
///
/// Clones share the flag.
#[derive(Debug, Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
}

impl Readiness {
    /// Creates a flag with the given initial value.
    pub fn new(ready: bool) -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(ready)),
        }
    }

    /// Whether the process currently advertises readiness.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Sets the flag; returns the previous value.
    pub fn set(&self, ready: bool) -> bool {
        self.ready.swap(ready, Ordering::AcqRel)
    }
}

impl Default for Readiness {
    /// A flag that starts ready.
    fn default() -> Self {
        Self::new(true)
    }
}
