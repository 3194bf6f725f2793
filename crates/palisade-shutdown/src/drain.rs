//! The drain handle shared by every clone of the drain layer.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

// The counter is loom's model under `--cfg palisade_loom` (see `scripts/loom.sh`).
#[cfg(palisade_loom)]
use loom::sync::atomic::AtomicUsize;
#[cfg(not(palisade_loom))]
use std::sync::atomic::AtomicUsize;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::layer::DrainLayer;
use crate::metric_names;

/// The top bit of the counter says "draining"; the rest counts requests in
/// flight. Keeping both in one word makes admission one `fetch_add` whose
/// return value tells whether draining had started: a request either sees
/// the flag (and backs out) or is counted before the drain reads the count,
/// never neither.
const DRAINING: usize = 1 << (usize::BITS - 1);

/// Controls draining and counts requests in flight.
///
/// Give [`Drain::layer`] to the service stack (in `http` mode,
/// `http::HttpDrainLayer`), then call [`Drain::start`] when the shutdown
/// reaches its drain phase and await [`Drain::drained`]. Copies share the
/// same state. See the crate docs for an example.
///
/// The state lives behind one `Arc`, freed when the last clone (and the last
/// request it admitted) is gone, so drains built per test or per reloaded
/// stack do not accumulate. Admission costs one atomic increment of the
/// counter plus the reference count of the request's guard.
#[derive(Clone)]
pub struct Drain {
    pub(crate) state: Arc<DrainState>,
}

pub(crate) struct DrainState {
    count: AtomicUsize,
    zero: Notify,
    draining: CancellationToken,
}

/// Held while a request is in flight; dropping it releases the request.
pub(crate) struct InFlight {
    state: Arc<DrainState>,
}

// === impl Drain ===

impl Drain {
    /// Creates a drain with no requests in flight, not draining.
    pub fn new() -> Self {
        Self {
            state: Arc::new(DrainState {
                count: AtomicUsize::new(0),
                zero: Notify::new(),
                draining: CancellationToken::new(),
            }),
        }
    }

    /// A layer counting requests through this drain (generic mode: a
    /// request counts until its response future resolves).
    pub fn layer(&self) -> DrainLayer {
        DrainLayer::new(self.clone())
    }

    /// Requests currently in flight.
    pub fn in_flight(&self) -> usize {
        self.state.count.load(Ordering::Acquire) & !DRAINING
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.state.count.load(Ordering::Acquire) & DRAINING != 0
    }

    /// Starts draining: from now on new requests are refused and every
    /// [`DrainToken`] fires. Returns the number of requests in flight at that
    /// moment. Calling it again changes nothing.
    pub fn start(&self) -> usize {
        let prev = self.state.count.fetch_or(DRAINING, Ordering::AcqRel);
        let in_flight = prev & !DRAINING;
        if prev & DRAINING == 0 {
            tracing::info!(in_flight, "drain started");
            metrics::counter!(metric_names::DRAIN_STARTED).increment(1);
            metrics::gauge!(metric_names::IN_FLIGHT).set(in_flight as f64);
            self.state.draining.cancel();
        }
        in_flight
    }

    /// Resolves once draining has started and no request is in flight.
    pub async fn drained(&self) {
        self.state.draining.cancelled().await;
        loop {
            let notified = self.state.zero.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check so a release between the check and
            // the await still wakes us.
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// [`Drain::start`], then [`Drain::drained`].
    pub async fn drain(&self) {
        self.start();
        self.drained().await;
    }

    /// A token that fires when draining starts.
    pub fn token(&self) -> DrainToken {
        DrainToken {
            state: self.state.clone(),
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("in_flight", &self.in_flight())
            .field("draining", &self.is_draining())
            .finish()
    }
}

// === impl DrainState ===

impl DrainState {
    /// Counts a new request, or returns `None` if draining has started.
    #[inline]
    pub(crate) fn acquire(self: &Arc<Self>) -> Option<InFlight> {
        let prev = self.count.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight {
            state: self.clone(),
        };
        if prev & DRAINING != 0 {
            refuse(guard);
            return None;
        }
        Some(guard)
    }

    #[inline]
    pub(crate) fn is_draining(&self) -> bool {
        self.count.load(Ordering::Relaxed) & DRAINING != 0
    }
}

#[cold]
#[inline(never)]
fn refuse(guard: InFlight) {
    metrics::counter!(metric_names::REJECTED).increment(1);
    // Dropping the guard undoes the increment and wakes the drain if this
    // transient count was the last one.
    drop(guard);
}

#[cold]
#[inline(never)]
fn released_while_draining(state: &DrainState, left: usize) {
    metrics::gauge!(metric_names::IN_FLIGHT).set(left as f64);
    if left == 0 {
        state.zero.notify_waiters();
    }
}

impl Drop for InFlight {
    #[inline]
    fn drop(&mut self) {
        let prev = self.state.count.fetch_sub(1, Ordering::AcqRel);
        // Only while draining is anyone waiting or watching the gauge, so
        // the fast path is the single `fetch_sub`.
        if prev & DRAINING != 0 {
            released_while_draining(&self.state, (prev & !DRAINING) - 1);
        }
    }
}

/// Watches for draining; handed to every request (in its extensions in
/// `http` mode) so long-lived handlers (streams, SSE, long polls) can end
/// gracefully.
///
/// ```
/// # async fn stream(token: palisade_shutdown::DrainToken) {
/// loop {
///     tokio::select! {
///         () = token.draining() => break, // send a final event, then end
///         () = tokio::time::sleep(std::time::Duration::from_secs(1)) => { /* next event */ }
///     }
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct DrainToken {
    state: Arc<DrainState>,
}

impl DrainToken {
    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.state.is_draining()
    }

    /// Resolves when draining starts.
    pub async fn draining(&self) {
        self.state.draining.cancelled().await;
    }
}

impl DrainToken {
    #[cfg(feature = "http")]
    #[inline]
    pub(crate) fn from_state(state: &Arc<DrainState>) -> Self {
        Self {
            state: state.clone(),
        }
    }
}

impl fmt::Debug for DrainToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainToken")
            .field("draining", &self.is_draining())
            .finish()
    }
}

#[cfg(all(test, palisade_loom))]
mod loom_tests {
    use loom::thread;

    use super::*;

    /// The invariant the counter's doc claims: a request either sees the
    /// draining flag and backs out, or is counted before the drain reads the
    /// count, never neither. And once everything is released, nothing is in
    /// flight.
    #[test]
    fn admission_racing_the_drain_is_counted_or_refused() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let drain = Drain::new();
            let request = {
                let state = drain.state.clone();
                thread::spawn(move || state.acquire())
            };
            let seen = drain.start();
            let guard = request.join().unwrap();
            assert_eq!(guard.is_some(), seen == 1, "admitted iff counted");
            assert!(drain.is_draining());
            drop(guard);
            assert_eq!(drain.in_flight(), 0);
        });
    }
}

#[cfg(all(test, not(palisade_loom)))]
mod tests {
    use super::*;

    // Before the fix `Drain::new` leaked its state on purpose: every drain
    // built in a test or a reloaded stack stayed allocated for good.
    #[test]
    fn the_state_is_freed_with_the_last_drain_and_request() {
        let drain = Drain::new();
        let token = drain.token();
        let guard = drain.state.acquire().expect("not draining");
        let weak = Arc::downgrade(&drain.state);
        drop(drain);
        drop(token);
        assert!(weak.upgrade().is_some(), "a request in flight keeps it");
        drop(guard);
        assert!(weak.upgrade().is_none(), "freed with the last holder");
    }
}
