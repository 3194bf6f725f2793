//! The shared limit: one in-flight count and one limit for every clone,
//! admission, release, and the samples that move the limit.
//!
//! The in-flight and waiting counts live in one word (`counts.rs`, which
//! states the admission invariant and why no wake-up is lost). Every slot
//! taken is given back exactly once: by the [`Permit`] when the call ends
//! (or its future is dropped), by the [`Reservation`] when a reserved
//! service is dropped unused, by a granted waiter dropped before it took
//! its slot, or by the granter when the waiter it picked was cancelled at
//! the same moment. While anyone waits, new arrivals do not take the fast
//! path (no barging past the queue).
//!
//! A limit raised by a sample grants waiters too; if that raise races a
//! caller joining the queue under the old limit, the caller waits for the
//! next release (there is one: it queued because the old limit was full).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_core::classify::Outcome;
use palisade_core::clock::AutoClock;
use tokio::sync::Notify;

use crate::algorithm::{Algorithm, Bounds, Sample};
use crate::codel::Codel;
use crate::config::{LimiterBuilder, Mode};
use crate::counts::{Counts, Joined};
use crate::error::{Overloaded, Reason};
use crate::metrics::Metrics;
use crate::partition::Classes;
use crate::sync::{AtomicBool, AtomicU8, AtomicUsize, Mutex, lock};

/// An adaptive concurrency limit, shared by every service built from it and
/// every clone of them (cloning a `Limiter` clones a handle to the same
/// limit).
///
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    name: Arc<str>,
    /// In flight and waiting (`counts.rs`).
    counts: Counts,
    limit: AtomicUsize,
    /// The algorithm's [`Algorithm::probing`], as of its last sample.
    probing: AtomicBool,
    /// A call found the limit full since the last sample.
    saturated: AtomicBool,
    closed: AtomicBool,
    control: Mutex<Control>,
    queue: Mutex<Queue>,
    classes: Option<Classes>,
    clock: AutoClock,
    mode: Mode,
    max_queue: usize,
    max_wait: Duration,
    retry_after: Duration,
    log_change: f64,
    idle: Notify,
    metrics: Metrics,
}

/// What moves the limit, under its own lock.
struct Control {
    algorithm: Box<dyn Algorithm>,
    bounds: Bounds,
    /// The limit the last `tracing` event reported.
    logged: usize,
    /// Samples so far (every [`METRIC_EVERY`]th is recorded in the metrics).
    samples: u64,
}

/// One sample in this many goes to the latency histogram and the in-flight
/// gauge: a uniform subsample keeps the histogram's shape at an eighth of
/// its cost on the hot path.
const METRIC_EVERY: u64 = 8;

/// The wait queue, under its own lock.
struct Queue {
    waiters: VecDeque<Arc<Waiter>>,
    codel: Codel,
    max_wait_nanos: u64,
}

// === impl Limiter ===

impl Limiter {
    /// A builder with every default; see [`LimiterBuilder`].
    pub fn builder() -> LimiterBuilder {
        LimiterBuilder::default()
    }

    pub(crate) fn from_builder(b: LimiterBuilder) -> Self {
        let bounds = b.algorithm.bounds();
        let class_names: Vec<&'static str> = b.classes.iter().map(|(n, _)| *n).collect();
        let metrics = Metrics::new(&b.name, &class_names);
        metrics.limit.set(bounds.initial as f64);
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let probing = b.algorithm.probing();
        let shared = Shared {
            name: b.name,
            counts: Counts::default(),
            limit: AtomicUsize::new(bounds.initial),
            probing: AtomicBool::new(probing),
            saturated: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            control: Mutex::new(Control {
                algorithm: b.algorithm,
                bounds,
                logged: bounds.initial,
                samples: 0,
            }),
            queue: Mutex::new(Queue {
                waiters: VecDeque::new(),
                codel: Codel::new(nanos(b.target_delay), nanos(b.interval)),
                max_wait_nanos: nanos(b.max_wait),
            }),
            classes: (!b.classes.is_empty()).then(|| Classes::new(&b.classes, nanos(b.idle_after))),
            clock: AutoClock::new(),
            mode: b.mode,
            max_queue: b.max_queue,
            max_wait: b.max_wait,
            retry_after: b.retry_after,
            log_change: b.log_change,
            idle: Notify::new(),
            metrics,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The limiter's name (the `limiter` metric label).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Relaxed)
    }

    /// Calls holding a slot now (reserved or running).
    pub fn in_flight(&self) -> usize {
        self.shared.counts.in_flight()
    }

    /// Calls waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.shared.counts.waiting()
    }

    /// The configured class names, highest priority first (empty without
    /// classes).
    pub fn classes(&self) -> Vec<&'static str> {
        self.shared
            .classes
            .as_ref()
            .map(|c| c.list.iter().map(|class| class.name).collect())
            .unwrap_or_default()
    }

    /// Takes a slot now for a call of class `class` (an index into the
    /// configured classes; ignored without classes), or says why not. Never
    /// waits: this is what a balancer uses to skip a saturated upstream.
    pub fn try_acquire(&self, class: usize) -> Result<Permit, Overloaded> {
        match self.shared.try_reserve() {
            Some(reservation) => reservation.admit(class),
            None => Err(self.shared.refuse(class, Reason::LimitReached)),
        }
    }

    /// Stops admitting: every later call and every waiting one is refused
    /// ([`Reason::LimitReached`]). Calls in flight finish; [`idle`](Self::idle)
    /// tells when the last one has. The drain path: run `close` then `idle`
    /// as a palisade-shutdown phase with a deadline.
    pub fn close(&self) {
        let shared = &*self.shared;
        shared.closed.store(true, SeqCst);
        let mut queue = lock(&shared.queue);
        while let Some(waiter) = queue.waiters.pop_front() {
            if waiter.settle(CLOSED) {
                shared.counts.leave_queue();
            }
        }
        drop(queue);
        shared.metrics.queued.set(0.0);
        shared.idle.notify_waiters();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Relaxed)
    }

    /// Resolves once the limiter is closed and no call holds a slot.
    pub async fn idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            if self.is_closed() && self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The drain path as a palisade-shutdown phase (feature `shutdown`):
    /// [`close`](Self::close) (queued calls are refused, new ones too), then
    /// wait until no call holds a slot or the phase's deadline passes. The
    /// limiter does not own its calls, so at the deadline it reports how
    /// many were still in flight as cut; the layers that own them (the
    /// server's drain) decide their fate.
    #[cfg(feature = "shutdown")]
    pub fn drain_phase(
        &self,
        name: impl Into<String>,
        deadline: Duration,
    ) -> palisade_shutdown::Phase {
        let limiter = self.clone();
        palisade_shutdown::Phase::new(name, deadline).action(move |ctx| async move {
            let before = limiter.in_flight();
            limiter.close();
            let idle = tokio::time::timeout_at(ctx.deadline(), limiter.idle()).await;
            let left = limiter.in_flight();
            ctx.finished(format!(
                "{} call(s) under limit {} finished",
                before.saturating_sub(left),
                limiter.name()
            ));
            if idle.is_err() && left > 0 {
                ctx.cut(format!(
                    "{left} call(s) under limit {} still in flight",
                    limiter.name()
                ));
            }
        })
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.shared.name)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .finish()
    }
}

// === impl Shared ===

impl Shared {
    /// The fast path: a slot if the limit has room and nobody waits.
    #[inline]
    pub(crate) fn try_reserve(self: &Arc<Self>) -> Option<Reservation> {
        if self.closed.load(Relaxed) {
            return None;
        }
        self.counts
            .try_take(self.limit.load(Relaxed))
            .then(|| Reservation {
                shared: Some(self.clone()),
                since: None,
            })
    }

    /// Gives a slot back and hands free slots to waiters.
    #[inline]
    fn release(&self) {
        let (in_flight, waiting) = self.counts.release();
        if waiting > 0 {
            self.grant();
        }
        if in_flight == 0 && self.closed.load(SeqCst) {
            self.idle.notify_waiters();
        }
    }

    /// Whether a call that finds the limit full should wait for a slot.
    fn should_queue(&self) -> bool {
        !self.closed.load(Relaxed) && (self.mode == Mode::Queue || self.probing.load(Relaxed))
    }

    /// Matches free slots with waiters: oldest first, newest first while the
    /// queue stands; sheds waiters CoDel says waited too long.
    fn grant(&self) {
        let mut queue = lock(&self.queue);
        let now = self.clock.now_nanos();
        queue.codel.roll(now);
        // Shed the stale end first: it would be served last anyway.
        let shed_after = queue.codel.shed_after(queue.max_wait_nanos);
        while let Some(front) = queue.waiters.front() {
            let state = front.state.load(SeqCst);
            if state == WAITING && now.saturating_sub(front.since) <= shed_after {
                break;
            }
            let front = queue.waiters.pop_front().expect("front exists");
            if state == WAITING && front.settle(SHED) {
                self.counts.leave_queue();
            }
        }
        loop {
            let lifo = queue.codel.standing();
            let next = if lifo {
                queue.waiters.pop_back()
            } else {
                queue.waiters.pop_front()
            };
            let Some(waiter) = next else { break };
            if waiter.state.load(SeqCst) != WAITING {
                continue; // cancelled: drop the dead entry
            }
            if !self.counts.take_for_waiter(self.limit.load(Relaxed)) {
                // No slot: put it back where it was.
                if lifo {
                    queue.waiters.push_back(waiter);
                } else {
                    queue.waiters.push_front(waiter);
                }
                break;
            }
            if waiter.settle(GRANTED) {
                self.counts.leave_queue();
                let sojourn = now.saturating_sub(waiter.since);
                queue.codel.on_dequeue(now, sojourn);
                self.metrics.queue_delay.record(sojourn as f64 / 1e9);
            } else {
                // Cancelled between the load and now: the slot goes back
                // (this loop is the grant the release would run).
                self.counts.release();
            }
        }
        self.metrics.queued.set(self.counts.waiting() as f64);
    }

    /// A caller that found no slot and may wait: takes a slot that freed up
    /// meanwhile, or queues a waiter, or says the queue is full.
    fn enqueue(self: &Arc<Self>) -> Enqueued {
        if self.counts.waiting() >= self.max_queue {
            return Enqueued::Full;
        }
        let waiter = Arc::new(Waiter {
            state: AtomicU8::new(WAITING),
            waker: Mutex::new(None),
            since: self.clock.now_nanos(),
        });
        let mut queue = lock(&self.queue);
        // `close` drains the queue under this lock after setting `closed`:
        // a waiter arriving after the drain must not wait for nothing.
        if self.closed.load(SeqCst) {
            return Enqueued::Full;
        }
        // Under the queue lock, so a granter that sees the count also finds
        // the waiter in the queue.
        if self.counts.join_or_take(self.limit.load(Relaxed)) == Joined::Took {
            return Enqueued::Took(Reservation {
                shared: Some(self.clone()),
                since: None,
            });
        }
        queue.waiters.push_back(waiter.clone());
        self.mark_saturated();
        // Dead entries pile up only in the middle; drop them now and then
        // so the deque stays the size of the live queue.
        if queue.waiters.len() > 2 * self.counts.waiting() + 16 {
            queue.waiters.retain(|w| w.state.load(SeqCst) == WAITING);
        }
        drop(queue);
        self.metrics.queued.set(self.counts.waiting() as f64);
        Enqueued::Waiting(waiter)
    }

    /// A refusal of a call of `class` for `reason`, counted.
    pub(crate) fn refuse(&self, class: usize, reason: Reason) -> Overloaded {
        self.metrics.rejected(class, reason);
        if reason != Reason::DeadlineExceeded {
            self.mark_saturated();
        }
        Overloaded {
            reason,
            limiter: self.name.clone(),
            class: self
                .classes
                .as_ref()
                .and_then(|c| c.list.get(class))
                .map(|c| c.name),
            retry_after: self.retry_after,
        }
    }

    /// Notes that a call found the limit full (a load before the store: the
    /// flag is set far more often than it changes).
    fn mark_saturated(&self) {
        if !self.saturated.load(Relaxed) {
            self.saturated.store(true, Relaxed);
        }
    }

    /// Feeds one completed call to the algorithm.
    fn sample(&self, start: u64, in_flight: usize, dropped: bool) {
        let mut control = lock(&self.control);
        // Read under the lock, so samples reach the algorithm in time order.
        let now = self.clock.now_nanos();
        let sample = Sample {
            rtt: Duration::from_nanos(now.saturating_sub(start)),
            in_flight,
            dropped,
            // A load first: the flag is usually clear, and a swap would
            // write the line every call.
            saturated: self.saturated.load(Relaxed) && self.saturated.swap(false, Relaxed),
            at_nanos: now,
        };
        let old = self.limit.load(Relaxed);
        let proposed = control.algorithm.update(&sample, old);
        let new = control.bounds.clamp(proposed);
        let probing = control.algorithm.probing();
        control.samples = control.samples.wrapping_add(1);
        let to_metrics = control.samples % METRIC_EVERY == 1;
        if new != old {
            self.limit.store(new, SeqCst);
            self.metrics.limit.set(new as f64);
            let logged = control.logged as f64;
            if (new as f64 - logged).abs() > logged * self.log_change {
                tracing::info!(
                    target: "palisade_limit",
                    limiter = &*self.name,
                    algorithm = control.algorithm.name(),
                    from = control.logged,
                    to = new,
                    rtt_ms = sample.rtt.as_secs_f64() * 1e3,
                    in_flight,
                    "concurrency limit moved"
                );
                control.logged = new;
            }
        }
        drop(control);
        if probing != self.probing.load(Relaxed) {
            self.probing.store(probing, Relaxed);
            tracing::debug!(target: "palisade_limit", limiter = &*self.name, probing, "re-measuring the no-load latency");
        }
        if to_metrics || dropped {
            let seconds = sample.rtt.as_secs_f64();
            if dropped {
                self.metrics.rtt_drop.record(seconds);
            } else {
                self.metrics.rtt_success.record(seconds);
            }
            self.metrics.in_flight.set(self.counts.in_flight() as f64);
        }
        if new > old && self.counts.waiting() > 0 {
            self.grant();
        }
    }
}

/// What [`Shared::enqueue`] did.
enum Enqueued {
    /// A slot freed up meanwhile: taken.
    Took(Reservation),
    /// Queued.
    Waiting(Arc<Waiter>),
    /// The queue is full.
    Full,
}

// === Waiter ===

const WAITING: u8 = 0;
const GRANTED: u8 = 1;
const SHED: u8 = 2;
const CANCELLED: u8 = 3;
const TAKEN: u8 = 4;
const CLOSED: u8 = 5;

/// One call waiting for a slot.
pub(crate) struct Waiter {
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
    /// When it joined the queue (clock nanos).
    since: u64,
}

impl Waiter {
    /// Moves it out of `Waiting` to `to` and wakes it; false if it had
    /// already left (granted, shed, cancelled).
    fn settle(&self, to: u8) -> bool {
        if self
            .state
            .compare_exchange(WAITING, to, SeqCst, SeqCst)
            .is_err()
        {
            return false;
        }
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
        true
    }
}

// === Reservation ===

/// A slot reserved in `poll_ready`, not yet given to a call. Dropped unused,
/// it gives the slot back.
pub(crate) struct Reservation {
    shared: Option<Arc<Shared>>,
    /// When its wait in the queue began (clock nanos), if it waited.
    since: Option<u64>,
}

impl Reservation {
    /// Gives the slot to a call of `class`: checks the class's share, and
    /// starts the call's clock.
    pub(crate) fn admit(mut self, class: usize) -> Result<Permit, Overloaded> {
        let shared = self.shared.take().expect("reservation used once");
        let now = shared.clock.now_nanos();
        let in_flight = shared.counts.in_flight();
        let class = match &shared.classes {
            None => None,
            Some(classes) => {
                let class = class.min(classes.list.len() - 1);
                if !classes.admit(class, in_flight, shared.limit.load(Relaxed), now) {
                    shared.release();
                    return Err(shared.refuse(class, Reason::ClassShare));
                }
                Some(class)
            }
        };
        Ok(Permit {
            shared: Some(shared),
            start: now,
            in_flight,
            class,
        })
    }

    /// How long the call waited in the queue for this slot.
    pub(crate) fn waited(&self) -> Duration {
        match (&self.shared, self.since) {
            (Some(shared), Some(since)) => {
                Duration::from_nanos(shared.clock.now_nanos().saturating_sub(since))
            }
            _ => Duration::ZERO,
        }
    }

    /// Refuses the call this slot was reserved for, giving the slot back.
    pub(crate) fn refuse(mut self, class: usize, reason: Reason) -> Overloaded {
        let shared = self.shared.take().expect("reservation used once");
        shared.release();
        shared.refuse(class, reason)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.release();
        }
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation").finish_non_exhaustive()
    }
}

// === Permit ===

/// A call's slot. [`record`](Permit::record) gives it back with the call's
/// outcome (a sample for the algorithm); dropping it gives it back without
/// one (a cancelled call says nothing about latency).
pub struct Permit {
    shared: Option<Arc<Shared>>,
    start: u64,
    in_flight: usize,
    class: Option<usize>,
}

impl Permit {
    /// Ends the call: `Success` and `Failure` (a drop: overload) are
    /// samples for the algorithm; `Ignored` only gives the slot back.
    pub fn record(mut self, outcome: Outcome) {
        if let Some(shared) = self.shared.take() {
            self.release(&shared);
            match outcome {
                Outcome::Success => shared.sample(self.start, self.in_flight, false),
                Outcome::Failure => shared.sample(self.start, self.in_flight, true),
                Outcome::Ignored => {}
            }
        }
    }

    fn release(&self, shared: &Shared) {
        if let (Some(class), Some(classes)) = (self.class, &shared.classes) {
            classes.release(class);
        }
        shared.release();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            self.release(&shared);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("in_flight", &self.in_flight)
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

// === Slot: the service's readiness state ===

/// What a service holds between `poll_ready` and `call`.
#[derive(Default)]
pub(crate) enum Slot {
    /// Nothing yet.
    #[default]
    Empty,
    /// A slot for the next call.
    Reserved(Reservation),
    /// The next call is refused for this reason (the limit was full).
    Refused(Reason),
    /// Waiting in the queue.
    Waiting(Pin<Box<Wait>>),
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Empty => f.write_str("Empty"),
            Slot::Reserved(_) => f.write_str("Reserved"),
            Slot::Refused(reason) => write!(f, "Refused({reason})"),
            Slot::Waiting(_) => f.write_str("Waiting"),
        }
    }
}

impl Slot {
    /// Drives the slot to `Reserved` or `Refused`.
    pub(crate) fn poll_reserve(&mut self, limiter: &Limiter, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self {
                Slot::Reserved(_) | Slot::Refused(_) => return Poll::Ready(()),
                Slot::Empty => {
                    let shared = &limiter.shared;
                    *self = match shared.try_reserve() {
                        Some(reservation) => Slot::Reserved(reservation),
                        None if shared.should_queue() => match shared.enqueue() {
                            Enqueued::Took(reservation) => Slot::Reserved(reservation),
                            Enqueued::Waiting(waiter) => Slot::Waiting(Box::pin(Wait {
                                sleep: tokio::time::sleep(shared.max_wait),
                                waiter,
                                shared: shared.clone(),
                            })),
                            Enqueued::Full => Slot::Refused(Reason::LimitReached),
                        },
                        None => Slot::Refused(Reason::LimitReached),
                    };
                }
                Slot::Waiting(wait) => match wait.as_mut().poll(cx) {
                    Poll::Ready(Ok(reservation)) => *self = Slot::Reserved(reservation),
                    Poll::Ready(Err(reason)) => *self = Slot::Refused(reason),
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A call waiting in the queue, with its maximum wait.
    pub(crate) struct Wait {
        #[pin]
        sleep: tokio::time::Sleep,
        waiter: Arc<Waiter>,
        shared: Arc<Shared>,
    }

    impl PinnedDrop for Wait {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.waiter.settle(CANCELLED) {
                this.shared.counts.leave_queue();
            } else if this
                .waiter
                .state
                .compare_exchange(GRANTED, TAKEN, SeqCst, SeqCst)
                .is_ok()
            {
                // Granted but never taken: the slot goes back.
                this.shared.release();
            }
        }
    }
}

impl Future for Wait {
    type Output = Result<Reservation, Reason>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        *lock(&this.waiter.waker) = Some(cx.waker().clone());
        loop {
            match this.waiter.state.load(SeqCst) {
                GRANTED => {
                    if this
                        .waiter
                        .state
                        .compare_exchange(GRANTED, TAKEN, SeqCst, SeqCst)
                        .is_ok()
                    {
                        return Poll::Ready(Ok(Reservation {
                            shared: Some(this.shared.clone()),
                            since: Some(this.waiter.since),
                        }));
                    }
                }
                SHED => return Poll::Ready(Err(Reason::QueueShed)),
                CLOSED | CANCELLED | TAKEN => return Poll::Ready(Err(Reason::LimitReached)),
                _ => {
                    if this.sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if this.waiter.settle(CANCELLED) {
                        this.shared.counts.leave_queue();
                        return Poll::Ready(Err(Reason::QueueTimeout));
                    }
                    // Granted or shed at the same moment: look again.
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(all(test, palisade_loom))]
mod loom_tests;
