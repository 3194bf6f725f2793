//! [`Shared`]: a read-mostly value published in numbered versions.
//!
//! The invariant the two atomics keep: `current` (the `ArcSwap`) always holds
//! the newest published [`Versioned`], and `version` is a copy of its number
//! stored *after* it, with `Release`. So a reader that sees `version == v`
//! and then loads `current` gets version `v` or newer, never older; a reader
//! that only compares `version` with a number it cached (the hot path of
//! [`Reloadable`](crate::Reloadable)) does one atomic load. Writers are
//! serialized by `writer`, so numbers are handed out in publication order and
//! a reader can never see them go backwards.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use palisade_core::clock::AutoClock;
use tokio::sync::Notify;

use crate::watch::Watcher;

/// A read-mostly value shared by many tasks: readers take a [`Snapshot`]
/// (a few nanoseconds, never blocked by a writer), writers
/// [`publish`](Shared::publish) a whole new version atomically.
///
/// Cloning a `Shared` gives another handle to the same value. Versions are
/// numbered from 1 (the value given to [`new`](Shared::new)) and grow by one
/// per publication. See the [crate docs](crate) for an example.
pub struct Shared<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    current: ArcSwap<Versioned<T>>,
    /// The number of `current`, stored after it (see the module docs).
    version: AtomicU64,
    /// Serializes writers: version numbers follow publication order.
    writer: Mutex<()>,
    changed: Notify,
    clock: AutoClock,
}

/// One published version of a [`Shared`] value: the value, its number and
/// when it was published.
#[derive(Debug)]
pub struct Versioned<T> {
    version: u64,
    published_nanos: u64,
    published_at: SystemTime,
    value: T,
}

impl<T> Versioned<T> {
    /// Its version number (1 for the initial value).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Wall-clock time of the publication (for logs and metrics).
    pub fn published_at(&self) -> SystemTime {
        self.published_at
    }
}

impl<T> Deref for Versioned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

/// A read of a [`Shared`] value: dereferences to the value of the version
/// that was current when it was taken, and stays valid (and unchanged) after
/// newer versions are published.
///
/// It is meant to be short-lived (for the duration of a request's decision):
/// it borrows one of arc-swap's per-thread slots while few are held, so it
/// costs no reference-count traffic. Keep a version for longer with
/// [`into_arc`](Snapshot::into_arc).
pub struct Snapshot<T> {
    guard: Guard<Arc<Versioned<T>>>,
}

impl<T> Snapshot<T> {
    /// The version number of this snapshot.
    pub fn version(&self) -> u64 {
        self.guard.version
    }

    /// The versioned value, as a reference-counted pointer that may be kept
    /// as long as needed.
    pub fn into_arc(self) -> Arc<Versioned<T>> {
        Guard::into_inner(self.guard)
    }

    /// The versioned value (number, publication time).
    pub fn versioned(&self) -> &Versioned<T> {
        &self.guard
    }
}

impl<T> Deref for Snapshot<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.guard.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Snapshot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version())
            .field("value", &self.guard.value)
            .finish()
    }
}

// === impl Shared ===

impl<T> Shared<T> {
    /// A shared value whose version 1 is `value`.
    pub fn new(value: T) -> Self {
        let clock = AutoClock::new();
        let first = Versioned {
            version: 1,
            published_nanos: clock.now_nanos(),
            published_at: SystemTime::now(),
            value,
        };
        Self {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(first),
                version: AtomicU64::new(1),
                writer: Mutex::new(()),
                changed: Notify::new(),
                clock,
            }),
        }
    }

    /// The current version: a snapshot that never waits for a writer.
    #[inline]
    pub fn load(&self) -> Snapshot<T> {
        Snapshot {
            guard: self.inner.current.load(),
        }
    }

    /// The current version as a reference-counted pointer (one atomic
    /// increment more than [`load`](Self::load); for values kept long).
    pub fn load_full(&self) -> Arc<Versioned<T>> {
        self.inner.current.load_full()
    }

    /// The current version number: one atomic load. Compare it with a number
    /// cached earlier to learn whether anything changed.
    #[inline]
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }

    /// How long ago the current version was published (tokio's clock when
    /// the value was created in a paused runtime, so tests can advance it).
    pub fn age(&self) -> Duration {
        let published = self.inner.current.load().published_nanos;
        Duration::from_nanos(self.inner.clock.now_nanos().saturating_sub(published))
    }

    /// Publishes `value` as the next version and returns its number. Readers
    /// that load afterwards see it; snapshots taken before keep theirs.
    pub fn publish(&self, value: T) -> u64 {
        let _writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.store(value)
    }

    /// Publishes `f(current)` as the next version, with no other write in
    /// between (read-copy-update). When `f` fails nothing is published and
    /// its error is returned.
    pub fn update<E>(&self, f: impl FnOnce(&T) -> Result<T, E>) -> Result<u64, E> {
        let _writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let next = f(&self.inner.current.load().value)?;
        Ok(self.store(next))
    }

    /// Publishes under the writer lock held by the caller.
    fn store(&self, value: T) -> u64 {
        let version = self.inner.version.load(Ordering::Relaxed) + 1;
        self.inner.current.store(Arc::new(Versioned {
            version,
            published_nanos: self.inner.clock.now_nanos(),
            published_at: SystemTime::now(),
            value,
        }));
        // After the store: a reader that sees `version` finds it in `current`.
        self.inner.version.store(version, Ordering::Release);
        self.inner.changed.notify_waiters();
        version
    }

    /// A watcher that has seen the current version; its
    /// [`changed`](Watcher::changed) resolves on the next publication.
    pub fn watch(&self) -> Watcher<T> {
        Watcher::new(self.clone(), self.version())
    }

    pub(crate) fn notify(&self) -> &Notify {
        &self.inner.changed
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.inner.current.load();
        f.debug_struct("Shared")
            .field("version", &current.version)
            .field("value", &current.value)
            .finish()
    }
}
