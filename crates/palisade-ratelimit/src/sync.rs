//! The atomics of the unkeyed limiter's state: std's, or loom's models under
//! `--cfg palisade_loom` (see `scripts/loom.sh`), so the loom tests explore every
//! interleaving of the real GCRA compare-and-swap loops.

#[cfg(palisade_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64};
#[cfg(not(palisade_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64};
