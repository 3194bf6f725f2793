//! The demo upstream's capacity model ([`Capacity`]): `slots` requests are
//! served at once and each holds its slot for `service_time`; the others wait
//! first come, first served in an unbounded queue. That is a backend with a
//! fixed worker pool and an unbounded accept queue, the kind that collapses
//! under overload: once the queue is longer than clients wait, every slot
//! serves a request whose client has already left.
//!
//! Work that has started, or is queued, finishes even when its client leaves
//! (as in a thread-per-request server that only notices on write):
//! [`Capacity::serve`] runs the queue wait and the service in a spawned task
//! and awaits its `JoinHandle`, so dropping the request's future detaches the
//! task instead of cancelling it.
//!
//! `slots` changes at run time on the one semaphore (so the queue keeps its
//! order): growing adds permits, shrinking forgets free ones and records the
//! rest as owed, paid back by the next releases (see [`Capacity::set`]).
//! `slots = 0` is unlimited: new requests skip the semaphore, and the ones
//! still queued are let through.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits standing for "unlimited" (`slots = 0`): enough to release every
/// queued request, far below `Semaphore::MAX_PERMITS` so adding them back
/// after a shrink cannot overflow.
const UNLIMITED: usize = Semaphore::MAX_PERMITS / 4;

/// The capacity state shared by the demo upstream's connections.
///
/// Invariant kept by every permit operation (`acquire`, [`Capacity::set`],
/// the release in [`Capacity::serve`]):
/// `permits held + permits available = permits(slots) + debt`, so the number
/// of requests in service settles at `permits(slots)`.
#[derive(Debug)]
pub(crate) struct Capacity {
    /// The slots; its waiters are the FIFO queue.
    sem: Arc<Semaphore>,
    /// The configured slots; the lock serialises resizes.
    slots: Mutex<usize>,
    /// Copy of `slots` for the request path, which does not lock.
    slots_now: AtomicUsize,
    /// Permits a shrink could not forget because requests held them; the
    /// next releases forget theirs instead of returning them.
    debt: AtomicUsize,
    /// How long a request holds its slot, in microseconds.
    service_us: AtomicU64,
    /// Requests whose service ended (their client may have left).
    served: AtomicU64,
    /// Requests waiting for a slot now.
    queued: AtomicUsize,
    /// Requests holding a slot (in their service time) now.
    in_service: AtomicUsize,
}

/// A point-in-time view of [`Capacity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapacityStats {
    /// Requests whose service ended.
    pub(crate) served: u64,
    /// Requests waiting for a slot.
    pub(crate) queued: usize,
    /// Requests holding a slot.
    pub(crate) in_service: usize,
}

/// Semaphore permits standing for `slots`.
fn permits(slots: usize) -> usize {
    if slots == 0 { UNLIMITED } else { slots }
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            sem: Arc::new(Semaphore::new(UNLIMITED)),
            slots: Mutex::new(0),
            slots_now: AtomicUsize::new(0),
            debt: AtomicUsize::new(0),
            service_us: AtomicU64::new(0),
            served: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            in_service: AtomicUsize::new(0),
        }
    }
}

impl Capacity {
    /// Changes the slots and/or the service time. New slots apply to the
    /// queue at once (a grow admits queued requests; a shrink takes effect
    /// as requests in service finish); a new service time applies from the
    /// next request to take a slot.
    pub(crate) fn set(&self, slots: Option<usize>, service_time: Option<Duration>) {
        if let Some(service_time) = service_time {
            let us = u64::try_from(service_time.as_micros()).unwrap_or(u64::MAX);
            self.service_us.store(us, Ordering::Relaxed);
        }
        let Some(new) = slots else { return };
        let mut current = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let (from, to) = (permits(*current), permits(new));
        if to > from {
            // Pay the debt first: those permits are still held and will
            // now be returned instead of forgotten.
            let grow = to - from;
            let owed = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d - d.min(grow))
                })
                .unwrap_or_else(|d| d);
            self.sem.add_permits(grow - owed.min(grow));
        } else if to < from {
            let shrink = from - to;
            let forgotten = self.sem.forget_permits(shrink);
            // A release racing this line returns its permit instead of
            // forgetting it; the invariant still holds, and the slot count
            // settles at the next release.
            self.debt.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        *current = new;
        self.slots_now.store(new, Ordering::Release);
    }

    /// The configured slots, 0 = unlimited.
    pub(crate) fn slots(&self) -> usize {
        self.slots_now.load(Ordering::Acquire)
    }

    /// How long each request holds its slot.
    pub(crate) fn service_time(&self) -> Duration {
        Duration::from_micros(self.service_us.load(Ordering::Relaxed))
    }

    /// The counters now.
    pub(crate) fn stats(&self) -> CapacityStats {
        CapacityStats {
            served: self.served.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            in_service: self.in_service.load(Ordering::Relaxed),
        }
    }

    /// Waits for a slot and holds it for the service time. Runs in its own
    /// task, so a client that leaves (dropping this future) does not cancel
    /// queued or started work: it is served all the same.
    pub(crate) async fn serve(self: &Arc<Self>) {
        if self.slots() == 0 && self.service_time().is_zero() {
            // The default: no model, no task, nothing to wait for.
            self.served.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let this = self.clone();
        let work = palisade_core::task::spawn_named("demo-upstream service", async move {
            this.wait_and_serve().await;
        });
        // A panic in the work (none expected) is the work's; the request
        // goes on.
        let _ = work.await;
    }

    async fn wait_and_serve(&self) {
        let permit = if self.slots() == 0 {
            None
        } else {
            self.queued.fetch_add(1, Ordering::Relaxed);
            let permit = self.sem.clone().acquire_owned().await;
            self.queued.fetch_sub(1, Ordering::Relaxed);
            // Never closed; `Err` cannot happen, and would mean no limit.
            permit.ok()
        };
        self.in_service.fetch_add(1, Ordering::Relaxed);
        let service_time = self.service_time();
        if !service_time.is_zero() {
            tokio::time::sleep(service_time).await;
        }
        self.in_service.fetch_sub(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        if let Some(permit) = permit {
            self.release(permit);
        }
    }

    /// Returns a slot, or forgets it while a shrink is owed permits.
    fn release(&self, permit: OwnedSemaphorePermit) {
        let owed = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if owed {
            permit.forget();
        }
    }
}
