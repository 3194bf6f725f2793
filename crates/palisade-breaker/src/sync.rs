//! The atomics the lock-free state is built from: std's, or loom's models
//! under `--cfg palisade_loom` (see `scripts/loom.sh`), so the loom tests explore
//! every interleaving of the real code.

#[cfg(palisade_loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(palisade_loom)]
pub(crate) use loom::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64};
#[cfg(not(palisade_loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(palisade_loom))]
pub(crate) use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64};

/// Waits a little for another thread to finish a short critical step.
#[inline]
pub(crate) fn backoff(spins: &mut u32) {
    *spins += 1;
    #[cfg(palisade_loom)]
    loom::thread::yield_now();
    #[cfg(not(palisade_loom))]
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}
