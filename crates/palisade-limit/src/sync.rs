//! The atomics and the lock the shared state is built from: std's, or loom's
//! models under `--cfg palisade_loom` (see `scripts/loom.sh`), so the loom
//! models explore every interleaving of the real admission and release code.

#[cfg(palisade_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize};
#[cfg(palisade_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(palisade_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize};
#[cfg(not(palisade_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning: the state it guards is updated in
/// steps that each leave it consistent, and a panicking classifier or
/// algorithm must not take the limiter down with it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(palisade_loom)]
    return mutex.lock().unwrap();
    #[cfg(not(palisade_loom))]
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
