//! [`Watcher`]: wait for the next version of a [`Shared`] value.
//!
//! Unlike `tokio::sync::watch`, nothing is borrowed while waiting or after:
//! the watcher hands back an owned [`Versioned`] pointer, so a task that
//! keeps it across an `.await` cannot stall a writer (tokio #4246).

use std::fmt;
use std::sync::Arc;

use crate::shared::{Shared, Versioned};

/// Resolves each time a newer version of a [`Shared`] value is published;
/// made by [`Shared::watch`].
pub struct Watcher<T> {
    shared: Shared<T>,
    seen: u64,
}

impl<T> Watcher<T> {
    pub(crate) fn new(shared: Shared<T>, seen: u64) -> Self {
        Self { shared, seen }
    }

    /// The version this watcher has seen last.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Waits until a version newer than the last one seen is published and
    /// returns the newest (versions published in between are superseded, not
    /// replayed). Cancel-safe: dropping the future loses nothing.
    pub async fn changed(&mut self) -> Arc<Versioned<T>> {
        loop {
            // Registered before the check: a publication between the check
            // and the await still wakes us.
            let notified = self.shared.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.version() > self.seen {
                let current = self.shared.load_full();
                self.seen = current.version();
                return current;
            }
            notified.await;
        }
    }
}

impl<T> fmt::Debug for Watcher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher").field("seen", &self.seen).finish()
    }
}
