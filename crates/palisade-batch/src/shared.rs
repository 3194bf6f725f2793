//! The state the service handles and the worker share.
//!
//! Invariants:
//! - Every entry in `queue.entries` holds one permit of `slots`, taken by
//!   the handle's `poll_ready` and forgotten there; the worker gives permits
//!   back in bulk (`add_permits`) as entries leave for a batch or are
//!   skipped because their caller went away. So `slots` bounds the items
//!   waiting to be sent, never the items in flight.
//! - `queue.open` turns false exactly once, under the queue lock, and no
//!   entry is pushed after that; so once the worker has seen `open == false`
//!   and emptied the queue, it holds every item it will ever have to answer.
//! - The close reason is set before `open` turns false, so a caller refused
//!   by a closed queue always finds the reason.

use std::mem;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use futures_util::task::AtomicWaker;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::error::Closed;
use crate::message::Entry;

pub(crate) struct Shared<Req, Resp> {
    pub(crate) settings: Arc<Settings<Req, Resp>>,
    queue: Mutex<Queue<Req, Resp>>,
    /// The worker's waker: woken by every push and by a close.
    worker: AtomicWaker,
    pub(crate) slots: Arc<Semaphore>,
    closed: OnceLock<Closed>,
    /// Service handles alive; the last one to go closes the batcher.
    handles: AtomicUsize,
    /// Set by a drain deadline: answer everything left with `Error::Cut`.
    cut: AtomicBool,
    /// Cancelled when the worker has answered everything and exited.
    finished: CancellationToken,
    pub(crate) stats: Stats,
}

struct Queue<Req, Resp> {
    entries: Vec<Entry<Req, Resp>>,
    open: bool,
}

/// Counters read by [`BatchHandle`](crate::BatchHandle) reports.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Items pushed and not yet answered or skipped.
    pub(crate) pending: AtomicU64,
    /// Items answered with the inner service's result or batch error.
    pub(crate) answered: AtomicU64,
    /// Items skipped because their caller went away before they were sent.
    pub(crate) cancelled: AtomicU64,
    /// Items answered with `Error::Cut` or a close error instead of a result.
    pub(crate) cut: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the queue half-updated
    // (every critical section is a single push or swap).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// === impl Shared ===

impl<Req, Resp> Shared<Req, Resp> {
    pub(crate) fn new(settings: Arc<Settings<Req, Resp>>) -> Self {
        let capacity = settings.queue_capacity;
        Self {
            settings,
            queue: Mutex::new(Queue {
                entries: Vec::new(),
                open: true,
            }),
            worker: AtomicWaker::new(),
            slots: Arc::new(Semaphore::new(capacity)),
            closed: OnceLock::new(),
            handles: AtomicUsize::new(0),
            cut: AtomicBool::new(false),
            finished: CancellationToken::new(),
            stats: Stats::default(),
        }
    }

    /// Queues `entry` (its permit already taken) and wakes the worker if
    /// it needs waking, or gives the entry back when the batcher is closed.
    ///
    /// Only a push into an empty queue wakes the worker: the worker swaps
    /// the whole queue out each time it runs, so a non-empty queue means a
    /// wake-up is already owed to it and not yet served. Under load this
    /// turns one wake per item into one per worker pass.
    pub(crate) fn push(&self, entry: Entry<Req, Resp>) -> Result<(), Entry<Req, Resp>> {
        let was_empty = {
            let mut queue = lock(&self.queue);
            if !queue.open {
                return Err(entry);
            }
            queue.entries.push(entry);
            queue.entries.len() == 1
        };
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        if was_empty {
            self.worker.wake();
        }
        Ok(())
    }

    /// Swaps the queued entries out for `spare` (an empty vector whose
    /// allocation is reused); returns them and whether the queue is still
    /// open.
    pub(crate) fn take_queued(
        &self,
        spare: Vec<Entry<Req, Resp>>,
    ) -> (Vec<Entry<Req, Resp>>, bool) {
        debug_assert!(spare.is_empty());
        let mut queue = lock(&self.queue);
        let open = queue.open;
        (mem::replace(&mut queue.entries, spare), open)
    }

    /// Registers the worker's waker (before it checks the queue again, so
    /// a push in between is not missed).
    pub(crate) fn register_worker(&self, waker: &std::task::Waker) {
        self.worker.register(waker);
    }

    /// Stops taking items; the first reason wins. The worker then flushes
    /// what is queued (or fails it, for an inner failure) and exits.
    pub(crate) fn close(&self, reason: Closed) {
        let first = self.closed.set(reason).is_ok();
        let was_open = mem::replace(&mut lock(&self.queue).open, false);
        self.slots.close();
        if first && was_open {
            let why = self.closed.get().map(ToString::to_string);
            tracing::debug!(batcher = %self.settings.name, reason = why.as_deref().unwrap_or(""), "batcher closing");
        }
        self.worker.wake();
    }

    /// Why the batcher closed, if it did.
    pub(crate) fn closed(&self) -> Option<&Closed> {
        self.closed.get()
    }

    /// The reason to give a caller refused by a closed batcher.
    pub(crate) fn closed_reason(&self) -> Closed {
        self.closed.get().cloned().unwrap_or(Closed::WorkerGone)
    }

    pub(crate) fn handle_added(&self) {
        self.handles.fetch_add(1, Ordering::Relaxed);
    }

    /// A service handle was dropped; the last one closes the batcher.
    pub(crate) fn handle_dropped(&self) {
        if self.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.close(Closed::Shutdown);
        }
    }

    /// Asks the worker to answer everything it still holds with
    /// `Error::Cut` (a drain deadline passed).
    pub(crate) fn cut(&self) {
        self.close(Closed::Shutdown);
        self.cut.store(true, Ordering::Release);
        self.worker.wake();
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Called by the worker as it exits.
    pub(crate) fn mark_finished(&self) {
        self.finished.cancel();
    }

    pub(crate) fn finished(&self) -> &CancellationToken {
        &self.finished
    }
}
