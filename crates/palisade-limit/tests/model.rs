//! `proptest` against a plain reference model: random sequences of
//! operations on a small pool of services sharing one limiter, checked
//! after every step.
//!
//! The model is bookkeeping, not a second limiter: each pool entry is in
//! one state (empty, reserved, refused, waiting, granted, shed, closed),
//! the running calls and the permits taken with `try_acquire` are lists,
//! and the wait queue is a FIFO of pool entries with the time each joined.
//! A slot is held by a reserved or granted service, a running call or a
//! permit, and nothing else. A release hands free slots to waiters oldest
//! first, after shedding those that waited more than `max_wait` (the
//! limiters run with `target_delay == max_wait`, so CoDel never stands and
//! the queue stays FIFO); a sample that raises the limit grants again.
//! With classes, the model also keeps each class's slots and last arrival
//! and predicts every `ClassShare` refusal.
//!
//! The operations: `poll_ready`, `call` (with a class, and sometimes a
//! passed or a live deadline), complete a call (success, ignored, or a
//! drop), poll it, cancel it, make its inner future panic, drop or clone a
//! service (reserved, waiting or granted), `Limiter::try_acquire` and
//! record or drop the permit, advance the paused clock, and close the
//! limiter. Limiters: a fixed limit (AIMD with `min == initial == max`)
//! and adaptive ones (AIMD, Gradient2, the probing gradient; 1..=8 from 2,
//! where the model reads the limit after each sample), each in reject and
//! queue mode, with and without classes.
//!
//! After every step, exactly: `in_flight()` is the slots the model says are
//! held (so a leaked permit or a double release shows as a mismatch; the
//! latter also trips the underflow `debug_assert` in `counts.rs`),
//! `queued()` is the model's waiters, the limit is within `[min, max]` (and
//! is the fixed limit, which in flight never exceeds), each `poll_ready`
//! and each call's answer is the one the model expects, and a waiter that
//! someone else granted, shed or closed was woken. At the end everything is
//! dropped and nothing is left in flight or queued. The only panics allowed
//! are the deliberate inner ones.
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::future::BoxFuture;
use palisade_limit::{
    AdaptiveLimit, AdaptiveLimitLayer, Aimd, AtCompletion, BoxError, Classify, Fixed, Gradient2,
    Limiter, Mode, Outcome, Overloaded, Permit, ProbingGradient, Reason, RequestPolicy,
};
use proptest::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower::{Layer, Service};

/// The queue's maximum wait, and its CoDel target (equal: FIFO, see above).
const MAX_WAIT_MS: u64 = 10;
/// Services in the pool.
const POOL: usize = 4;
/// The payload of the deliberate inner panics.
const PANIC: &str = "deliberate inner panic";

// === the inner service ===

/// How a call ends, sent to its inner future.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// `Ok(Resp::Fine)`: a success sample.
    Succeed,
    /// `Ok(Resp::Ignored)`: no sample.
    Ignore,
    /// `Err`: a drop sample.
    Fail,
}

impl End {
    fn outcome(self) -> Outcome {
        match self {
            End::Succeed => Outcome::Success,
            End::Ignore => Outcome::Ignored,
            End::Fail => Outcome::Failure,
        }
    }
}

/// What the test tells a running inner future.
#[derive(Debug)]
enum Cmd {
    End(End),
    Panic,
}

/// The inner service's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resp {
    Fine,
    Ignored,
}

/// The request's deadline, as the policy reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    None,
    /// Now: the call must be refused, never started.
    Passed,
    /// A second from now.
    Live,
}

/// A request: its class, its deadline, and where its end comes from.
#[derive(Debug)]
struct Req {
    class: usize,
    due: Due,
    reply: oneshot::Receiver<Cmd>,
}

/// Always ready; each call waits for its [`Cmd`]. Counts the calls it saw.
#[derive(Debug, Clone, Default)]
struct Inner {
    calls: Arc<AtomicUsize>,
}

impl Service<Req> for Inner {
    type Response = Resp;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Resp, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            match req.reply.await {
                Ok(Cmd::End(End::Succeed)) => Ok(Resp::Fine),
                Ok(Cmd::End(End::Ignore)) => Ok(Resp::Ignored),
                Ok(Cmd::End(End::Fail)) => Err("upstream overloaded".into()),
                Ok(Cmd::Panic) => std::panic::panic_any(PANIC),
                Err(_) => std::future::pending().await,
            }
        })
    }
}

/// `Fine` a success, `Ignored` no sample, `Err` a drop.
#[derive(Debug, Clone, Copy)]
struct ByResp;

impl Classify<Resp, BoxError> for ByResp {
    fn classify(&self, result: &Result<Resp, BoxError>) -> Outcome {
        match result {
            Ok(Resp::Fine) => Outcome::Success,
            Ok(Resp::Ignored) => Outcome::Ignored,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Reads the class and the deadline from [`Req`].
#[derive(Debug, Clone, Copy)]
struct Policy;

impl RequestPolicy<Req> for Policy {
    fn class(&self, req: &Req) -> usize {
        req.class
    }

    fn deadline(&self, req: &Req, _waited: Duration) -> Option<Instant> {
        match req.due {
            Due::None => None,
            Due::Passed => Some(Instant::now()),
            Due::Live => Some(Instant::now() + Duration::from_secs(1)),
        }
    }
}

type Svc = AdaptiveLimit<Inner, Policy, AtCompletion<ByResp>>;
type CallFuture = <Svc as Service<Req>>::Future;

// === configurations and operations ===

/// How the limit moves.
#[derive(Debug, Clone, Copy)]
enum Algo {
    /// AIMD with `min == initial == max`: the model knows the limit.
    Fixed(usize),
    /// The adaptive ones, within `1..=8` from 4.
    Aimd,
    Gradient2,
    Probing,
}

/// One case's limiter.
#[derive(Debug, Clone, Copy)]
struct Config {
    algo: Algo,
    mode: Mode,
    max_queue: usize,
    classes: bool,
    /// Close the limiter before this step.
    close_at: Option<usize>,
}

impl Config {
    /// The limit's `[min, max]`.
    fn bounds(&self) -> (usize, usize) {
        match self.algo {
            Algo::Fixed(limit) => (limit, limit),
            _ => (1, 8),
        }
    }

    /// The algorithm may report `probing` (Gradient2 searching for the
    /// knee, the probing gradient re-measuring its no-load latency), and
    /// the limiter then queues calls even in reject mode.
    fn may_probe(&self) -> bool {
        matches!(self.algo, Algo::Gradient2 | Algo::Probing)
    }

    fn limiter(&self) -> Limiter {
        let ms = Duration::from_millis;
        let builder = Limiter::builder()
            .name("model")
            .mode(self.mode)
            .max_queue(self.max_queue)
            .max_wait(ms(MAX_WAIT_MS))
            .target_delay(ms(MAX_WAIT_MS));
        let builder = if self.classes {
            builder.classes(&[("high", 0.5), ("low", 0.25)])
        } else {
            builder
        };
        let builder = match self.algo {
            Algo::Fixed(limit) => builder.algorithm(Fixed::new(limit)),
            Algo::Aimd => builder.algorithm(
                Aimd::builder()
                    .min_limit(1)
                    .initial_limit(2)
                    .max_limit(8)
                    .timeout(ms(5))
                    .build()
                    .unwrap(),
            ),
            Algo::Gradient2 => builder.algorithm(
                Gradient2::builder()
                    .min_limit(1)
                    .initial_limit(2)
                    .max_limit(8)
                    .window(4)
                    .build()
                    .unwrap(),
            ),
            Algo::Probing => builder.algorithm(
                ProbingGradient::builder()
                    .min_limit(1)
                    .initial_limit(2)
                    .max_limit(8)
                    .sample_window(ms(5))
                    .min_rtt_interval(ms(30))
                    .jitter(0.0)
                    .probe_samples(2)
                    .build()
                    .unwrap(),
            ),
        };
        builder.build().unwrap()
    }
}

/// One step. Pool indices are `0..POOL`; `k` picks the running call or
/// the permit `k % len` (a no-op when there are none).
#[derive(Debug, Clone)]
enum Op {
    PollReady(usize),
    /// Calls the service if it is ready (else a no-op).
    Call {
        svc: usize,
        class: usize,
        due: Due,
    },
    /// Polls a running call: still pending.
    Poll(usize),
    Complete(usize, End),
    /// The inner future panics while polled; the future is then dropped.
    Panic(usize),
    Cancel(usize),
    DropService(usize),
    /// Replaces `into` (dropping it) with a clone of `from` (or a new
    /// service from the layer if `from` was dropped).
    Clone {
        into: usize,
        from: usize,
    },
    TryAcquire(usize),
    /// Records the permit's outcome, or drops it (`None`).
    EndPermit(usize, Option<End>),
    Advance(u64),
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![
            (1usize..=3).prop_map(Algo::Fixed),
            Just(Algo::Aimd),
            Just(Algo::Gradient2),
            Just(Algo::Probing),
        ],
        prop_oneof![Just(Mode::Reject), Just(Mode::Queue)],
        1usize..=3,
        any::<bool>(),
        prop::option::weighted(0.25, 0usize..120),
    )
        .prop_map(|(algo, mode, max_queue, classes, close_at)| Config {
            algo,
            mode,
            max_queue,
            classes,
            close_at,
        })
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![Just(End::Succeed), Just(End::Ignore), Just(End::Fail)]
}

fn op() -> impl Strategy<Value = Op> {
    let svc = || 0..POOL;
    prop_oneof![
        6 => svc().prop_map(Op::PollReady),
        6 => (
            svc(),
            0usize..2,
            prop_oneof![4 => Just(Due::None), 1 => Just(Due::Passed), 1 => Just(Due::Live)],
        )
            .prop_map(|(svc, class, due)| Op::Call { svc, class, due }),
        1 => (0usize..8).prop_map(Op::Poll),
        3 => (0usize..8, end()).prop_map(|(k, end)| Op::Complete(k, end)),
        1 => (0usize..8).prop_map(Op::Panic),
        1 => (0usize..8).prop_map(Op::Cancel),
        1 => svc().prop_map(Op::DropService),
        1 => (svc(), svc()).prop_map(|(into, from)| Op::Clone { into, from }),
        1 => (0usize..2).prop_map(Op::TryAcquire),
        1 => (0usize..8, prop::option::of(end())).prop_map(|(k, end)| Op::EndPermit(k, end)),
        2 => (1u64..=12).prop_map(Op::Advance),
    ]
}

// === the model, next to the real things it describes ===

/// What a pool service holds, as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    /// Holds a slot for its next call.
    Reserved,
    /// Its next call is refused for this reason.
    Refused(Reason),
    /// In the queue since this many milliseconds.
    Waiting(u64),
    /// Given a slot by a release, not yet polled: holds the slot.
    Granted,
    /// Shed by a release, not yet polled.
    Shed,
    /// Dequeued by `close`, not yet polled.
    Closed,
}

/// A pool service, its model state, and whether its last `poll_ready`'s
/// waker was woken.
struct Held {
    svc: Svc,
    state: State,
    woken: Arc<Woken>,
}

impl Held {
    fn new(svc: Svc) -> Self {
        Self {
            svc,
            state: State::Empty,
            woken: Arc::default(),
        }
    }
}

/// A waker that remembers it was woken.
#[derive(Debug, Default)]
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// An admitted call: its response future, the way to end it, and the
/// class it counts in (with classes).
struct Running {
    fut: Pin<Box<CallFuture>>,
    reply: oneshot::Sender<Cmd>,
    class: Option<usize>,
}

/// The real services, calls and permits, and the model's view of them.
struct Harness {
    cfg: Config,
    limiter: Limiter,
    layer: AdaptiveLimitLayer<Policy, AtCompletion<ByResp>>,
    inner: Inner,
    pool: Vec<Option<Held>>,
    running: Vec<Running>,
    /// With the class each counts in (with classes).
    permits: Vec<(Permit, Option<usize>)>,
    /// Per class: calls and permits holding a slot, and the last arrival
    /// (milliseconds), as `partition.rs` describes them.
    class_in_flight: [usize; 2],
    class_arrival: [Option<u64>; 2],
    /// Waiting pool entries, oldest first.
    queue: VecDeque<usize>,
    limit: usize,
    /// Milliseconds since the start.
    now: u64,
    closed: bool,
}

fn cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

impl Harness {
    /// Must run inside the paused runtime (the limiter picks tokio's clock).
    fn new(cfg: Config) -> Self {
        let limiter = cfg.limiter();
        let layer = AdaptiveLimitLayer::new(limiter.clone())
            .policy(Policy)
            .finish(AtCompletion(ByResp));
        let inner = Inner::default();
        let pool = (0..POOL)
            .map(|_| Some(Held::new(layer.layer(inner.clone()))))
            .collect();
        Self {
            limit: limiter.limit(),
            cfg,
            limiter,
            layer,
            inner,
            pool,
            running: Vec::new(),
            permits: Vec::new(),
            class_in_flight: [0; 2],
            class_arrival: [None; 2],
            queue: VecDeque::new(),
            now: 0,
            closed: false,
        }
    }

    /// The slots the model says are held.
    fn in_flight(&self) -> usize {
        let held = self
            .pool
            .iter()
            .flatten()
            .filter(|h| matches!(h.state, State::Reserved | State::Granted))
            .count();
        held + self.running.len() + self.permits.len()
    }

    /// Whether an arrival takes the fast path.
    fn free(&self) -> bool {
        !self.closed && self.queue.is_empty() && self.in_flight() < self.limit
    }

    fn state(&mut self, i: usize) -> &mut State {
        &mut self.pool[i]
            .as_mut()
            .expect("a queued service exists")
            .state
    }

    /// A slot came back (its holder already gone from the model).
    fn release(&mut self) {
        if !self.queue.is_empty() {
            self.grant(self.limit);
        }
    }

    /// Whether a call of `class` may take its reserved slot, with `total`
    /// slots held (its own included); counts it in its class if so. Each
    /// class is guaranteed `max(1, floor(share * limit))`; beyond that it
    /// borrows only what leaves every other active class (one that arrived
    /// within the last second, or holds a slot) its unused guarantee.
    fn admit_class(&mut self, class: usize, total: usize) -> (bool, Option<usize>) {
        if !self.cfg.classes {
            return (true, None);
        }
        const SHARES: [f64; 2] = [0.5, 0.25];
        let guarantee = |c: usize| ((self.limit as f64 * SHARES[c]) as usize).max(1);
        let now = self.now;
        self.class_arrival[class] = Some(now);
        let active = |c: usize| {
            self.class_arrival[c].is_some_and(|t| now - t < 1000) || self.class_in_flight[c] > 0
        };
        let ok = self.class_in_flight[class] < guarantee(class) || {
            let held_for_others: usize = (0..2)
                .filter(|&o| o != class && active(o))
                .map(|o| guarantee(o).saturating_sub(self.class_in_flight[o]))
                .sum();
            total + held_for_others <= self.limit
        };
        if ok {
            self.class_in_flight[class] += 1;
        }
        (ok, ok.then_some(class))
    }

    /// A call or permit counted in `class` gave its slot back.
    fn class_end(&mut self, class: Option<usize>) {
        if let Some(c) = class {
            self.class_in_flight[c] -= 1;
        }
    }

    /// Sheds the waiters older than the maximum wait, then grants the
    /// oldest while the limit has room.
    fn grant(&mut self, limit: usize) {
        while let Some(&i) = self.queue.front() {
            let State::Waiting(since) = *self.state(i) else {
                unreachable!("only waiters queue")
            };
            if self.now - since <= MAX_WAIT_MS {
                break;
            }
            self.queue.pop_front();
            *self.state(i) = State::Shed;
        }
        while let Some(&i) = self.queue.front() {
            if self.in_flight() >= limit {
                break;
            }
            self.queue.pop_front();
            *self.state(i) = State::Granted;
        }
    }

    /// A call or permit ended; `sample` if its outcome feeds the algorithm.
    fn ended(&mut self, sample: bool) {
        let before = self.limit;
        self.release();
        if sample {
            let after = self.limiter.limit();
            if after > before && !self.queue.is_empty() {
                self.grant(after);
            }
            self.limit = after;
        }
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::PollReady(i) => self.poll_ready(i),
            Op::Call { svc, class, due } => self.call(svc, class, due),
            Op::Poll(k) => {
                if !self.running.is_empty() {
                    let k = k % self.running.len();
                    let call = &mut self.running[k];
                    assert!(call.fut.as_mut().poll(&mut cx()).is_pending());
                }
            }
            Op::Complete(k, end) => self.complete(k, end),
            Op::Panic(k) => self.panic(k),
            Op::Cancel(k) => {
                if !self.running.is_empty() {
                    let call = self.running.remove(k % self.running.len());
                    self.class_end(call.class);
                    drop(call);
                    self.release();
                }
            }
            Op::DropService(i) => self.drop_service(i),
            Op::Clone { into, from } => {
                let svc = match &self.pool[from] {
                    Some(held) => held.svc.clone(),
                    None => self.layer.layer(self.inner.clone()),
                };
                self.drop_service(into);
                self.pool[into] = Some(Held::new(svc));
            }
            Op::TryAcquire(class) => self.try_acquire(class),
            Op::EndPermit(k, end) => {
                if !self.permits.is_empty() {
                    let (permit, class) = self.permits.remove(k % self.permits.len());
                    self.class_end(class);
                    match end {
                        Some(end) => permit.record(end.outcome()),
                        None => drop(permit),
                    }
                    self.ended(end.is_some_and(|e| e != End::Ignore));
                }
            }
            Op::Advance(ms) => {
                tokio::time::advance(Duration::from_millis(ms)).await;
                self.now += ms;
            }
        }
    }

    fn poll_ready(&mut self, i: usize) {
        let free = self.free();
        let may_queue = !self.closed
            && (self.cfg.mode == Mode::Queue || self.cfg.may_probe())
            && self.queue.len() < self.cfg.max_queue;
        let must_queue = self.cfg.mode == Mode::Queue;
        let now = self.now;
        let Some(held) = &mut self.pool[i] else {
            return;
        };
        held.woken.0.store(false, Ordering::SeqCst);
        let waker = Waker::from(held.woken.clone());
        let ready = match held.svc.poll_ready(&mut Context::from_waker(&waker)) {
            Poll::Ready(result) => {
                result.expect("poll_ready never fails");
                true
            }
            Poll::Pending => false,
        };
        let was = held.state;
        let next = match was {
            State::Empty if free => State::Reserved,
            State::Empty if may_queue && !ready => State::Waiting(now),
            State::Empty if may_queue && must_queue => {
                panic!("queue mode with room in the queue: poll_ready must wait")
            }
            State::Empty => State::Refused(Reason::LimitReached),
            State::Reserved | State::Refused(_) => was,
            State::Waiting(since) if now - since >= MAX_WAIT_MS => {
                State::Refused(Reason::QueueTimeout)
            }
            State::Waiting(_) => was,
            State::Granted => State::Reserved,
            State::Shed => State::Refused(Reason::QueueShed),
            State::Closed => State::Refused(Reason::LimitReached),
        };
        assert_eq!(
            ready,
            !matches!(next, State::Waiting(_)),
            "poll_ready of a service that was {was:?} and is now {next:?}"
        );
        held.state = next;
        match (was, next) {
            (State::Empty, State::Waiting(_)) => self.queue.push_back(i),
            (State::Waiting(_), State::Refused(_)) => self.queue.retain(|&j| j != i),
            _ => {}
        }
        if next == State::Reserved && was == State::Empty {
            assert!(
                self.limiter.in_flight() <= self.limit,
                "admitted over the limit"
            );
        }
    }

    fn call(&mut self, i: usize, class: usize, due: Due) {
        let Some(was) = self.pool[i].as_ref().map(|held| held.state) else {
            return;
        };
        if !matches!(was, State::Reserved | State::Refused(_)) {
            return;
        }
        let (admit, counted) = if was == State::Reserved && due != Due::Passed {
            self.admit_class(class, self.in_flight())
        } else {
            (false, None)
        };
        let held = self.pool[i].as_mut().expect("checked above");
        let (reply, rx) = oneshot::channel();
        let before = self.inner.calls.load(Ordering::SeqCst);
        let mut fut = Box::pin(held.svc.call(Req {
            class,
            due,
            reply: rx,
        }));
        held.state = State::Empty;
        let called = self.inner.calls.load(Ordering::SeqCst) > before;
        match was {
            State::Refused(reason) => {
                assert!(!called, "a refused call reached the inner service");
                expect_refused(&mut fut, reason);
            }
            _ if due == Due::Passed => {
                assert!(!called, "a call past its deadline was started");
                expect_refused(&mut fut, Reason::DeadlineExceeded);
                self.release();
            }
            _ if admit => {
                assert!(called, "an admitted call did not reach the inner service");
                self.running.push(Running {
                    fut,
                    reply,
                    class: counted,
                });
            }
            _ => {
                assert!(!called, "a call beyond its class's share was started");
                expect_refused(&mut fut, Reason::ClassShare);
                self.release();
            }
        }
    }

    fn complete(&mut self, k: usize, end: End) {
        if self.running.is_empty() {
            return;
        }
        let Running {
            mut fut,
            reply,
            class,
        } = self.running.remove(k % self.running.len());
        self.class_end(class);
        reply
            .send(Cmd::End(end))
            .expect("the inner future waits for its end");
        let answer = fut.as_mut().poll(&mut cx());
        match (end, &answer) {
            (End::Succeed, Poll::Ready(Ok(Resp::Fine)))
            | (End::Ignore, Poll::Ready(Ok(Resp::Ignored))) => {}
            (End::Fail, Poll::Ready(Err(e))) if e.downcast_ref::<Overloaded>().is_none() => {}
            _ => panic!("a call told to {end:?} answered {answer:?}"),
        }
        drop(fut);
        self.ended(end != End::Ignore);
    }

    fn panic(&mut self, k: usize) {
        if self.running.is_empty() {
            return;
        }
        let Running {
            mut fut,
            reply,
            class,
        } = self.running.remove(k % self.running.len());
        self.class_end(class);
        reply
            .send(Cmd::Panic)
            .expect("the inner future waits for its end");
        let caught = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx())));
        assert!(caught.is_err(), "the inner future was told to panic");
        // As a task that panicked would: the future is dropped, unfinished.
        drop(fut);
        self.release();
    }

    fn drop_service(&mut self, i: usize) {
        let Some(held) = self.pool[i].take() else {
            return;
        };
        let was = held.state;
        drop(held);
        match was {
            State::Reserved | State::Granted => self.release(),
            State::Waiting(_) => self.queue.retain(|&j| j != i),
            _ => {}
        }
    }

    fn try_acquire(&mut self, class: usize) {
        let free = self.free();
        let (admit, counted) = if free {
            // Its reservation is counted in `total`.
            self.admit_class(class, self.in_flight() + 1)
        } else {
            (false, None)
        };
        match self.limiter.try_acquire(class) {
            Ok(permit) => {
                assert!(admit, "try_acquire admitted a call the model refuses");
                self.permits.push((permit, counted));
                assert!(
                    self.limiter.in_flight() <= self.limit,
                    "admitted over the limit"
                );
            }
            Err(e) if free => {
                assert!(!admit, "try_acquire refused a call the model admits: {e}");
                assert_eq!(e.reason(), Reason::ClassShare);
                self.release();
            }
            Err(e) => assert_eq!(e.reason(), Reason::LimitReached),
        }
    }

    fn close(&mut self) {
        self.limiter.close();
        self.closed = true;
        while let Some(i) = self.queue.pop_front() {
            *self.state(i) = State::Closed;
        }
    }

    /// The exact invariants, after `what`.
    fn check(&self, what: &dyn std::fmt::Debug) {
        let (min, max) = self.cfg.bounds();
        let limit = self.limiter.limit();
        assert!(
            (min..=max).contains(&limit),
            "limit {limit} outside [{min}, {max}] after {what:?}"
        );
        assert_eq!(limit, self.limit, "limit after {what:?}");
        assert_eq!(
            self.limiter.in_flight(),
            self.in_flight(),
            "in flight after {what:?}"
        );
        assert_eq!(
            self.limiter.queued(),
            self.queue.len(),
            "queued after {what:?}"
        );
        // Admissions never exceed the limit, and a fixed limit never moves.
        assert!(
            self.in_flight() <= max,
            "in flight over {max} after {what:?}"
        );
        let waiting = self
            .pool
            .iter()
            .flatten()
            .filter(|h| matches!(h.state, State::Waiting(_)))
            .count();
        assert_eq!(waiting, self.queue.len(), "model: the queue is its waiters");
        for (i, held) in self.pool.iter().enumerate() {
            let Some(held) = held else { continue };
            if matches!(held.state, State::Granted | State::Shed | State::Closed) {
                assert!(
                    held.woken.0.load(Ordering::SeqCst),
                    "service {i} left the queue ({:?}) unwoken after {what:?}",
                    held.state
                );
            }
        }
    }

    /// Drops everything, checking after each drop.
    fn teardown(&mut self) {
        while let Some(call) = self.running.pop() {
            self.class_end(call.class);
            drop(call);
            self.release();
            self.check(&"cancelling the calls left");
        }
        while let Some((permit, class)) = self.permits.pop() {
            self.class_end(class);
            drop(permit);
            self.release();
            self.check(&"dropping the permits left");
        }
        for i in 0..POOL {
            self.drop_service(i);
            self.check(&"dropping the services");
        }
    }
}

/// Polls a future the model expects refused, for `reason`.
fn expect_refused(fut: &mut Pin<Box<CallFuture>>, reason: Reason) {
    match fut.as_mut().poll(&mut cx()) {
        Poll::Ready(Err(e)) => {
            let overloaded = e.downcast_ref::<Overloaded>().expect("an Overloaded");
            assert_eq!(overloaded.reason(), reason);
        }
        other => panic!("expected a refusal ({reason}), got {other:?}"),
    }
}

/// Keeps the deliberate inner panics out of the output; any other panic is
/// reported as usual (and fails the case).
fn quiet_deliberate_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&PANIC) {
                report(info);
            }
        }));
    });
}

fn run(cfg: Config, ops: &[Op]) {
    run_expecting(cfg, ops, &[]);
}

/// [`run`], also asserting the model's state of some services: `(step,
/// service, state after that step)`, so a pinned-down sequence shows it
/// took the path it is named after.
fn run_expecting(cfg: Config, ops: &[Op], expect: &[(usize, usize, State)]) {
    quiet_deliberate_panics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut h = Harness::new(cfg);
        h.check(&"start");
        for (step, op) in ops.iter().enumerate() {
            if cfg.close_at == Some(step) {
                h.close();
                h.check(&"close");
            }
            h.apply(op).await;
            h.check(&(step, op));
            for &(_, svc, state) in expect.iter().filter(|e| e.0 == step) {
                let held = h.pool[svc].as_ref().expect("an expected service exists");
                assert_eq!(held.state, state, "service {svc} after step {step}");
            }
        }
        h.teardown();
        assert_eq!(
            (h.limiter.in_flight(), h.limiter.queued()),
            (0, 0),
            "everything dropped: nothing may stay in flight or queued"
        );
    });
}

/// The case count: 512, or `PROPTEST_CASES` for a longer hunt.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // No regression files in the tree: a failure prints its case.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_limiter_matches_the_model(cfg in config(), ops in prop::collection::vec(op(), 1..200)) {
        run(cfg, &ops);
    }
}

// Paths the random cases reach only now and then, pinned down.

fn fixed(limit: usize, mode: Mode, max_queue: usize) -> Config {
    Config {
        algo: Algo::Fixed(limit),
        mode,
        max_queue,
        classes: false,
        close_at: None,
    }
}

fn call(svc: usize) -> Op {
    Op::Call {
        svc,
        class: 0,
        due: Due::None,
    }
}

#[test]
fn a_raised_limit_grants_a_second_waiter() {
    let cfg = Config {
        algo: Algo::Aimd,
        ..fixed(2, Mode::Queue, 3)
    };
    // Two calls fill the limit of 2, two services wait; a success frees a
    // slot (the first waiter) and raises the limit to 3 (the second).
    run_expecting(
        cfg,
        &[
            Op::PollReady(0),
            call(0),
            Op::PollReady(1),
            call(1),
            Op::PollReady(2),
            Op::PollReady(3),
            Op::Complete(0, End::Succeed),
            Op::PollReady(2),
            Op::PollReady(3),
        ],
        &[(6, 2, State::Granted), (6, 3, State::Granted)],
    );
}

#[test]
fn a_granted_waiter_dropped_unpolled_passes_its_slot_on() {
    run_expecting(
        fixed(1, Mode::Queue, 2),
        &[
            Op::TryAcquire(0),
            Op::PollReady(0),
            Op::PollReady(1),
            Op::EndPermit(0, None),
            Op::DropService(0),
            Op::PollReady(1),
            call(1),
        ],
        &[(3, 0, State::Granted), (4, 1, State::Granted)],
    );
}

#[test]
fn a_release_sheds_the_stale_waiter_and_grants_the_next() {
    run_expecting(
        fixed(1, Mode::Queue, 2),
        &[
            Op::TryAcquire(0),
            Op::PollReady(0),
            Op::Advance(5),
            Op::PollReady(1),
            Op::Advance(6),
            Op::EndPermit(0, Some(End::Succeed)),
            Op::PollReady(0),
            call(0),
            Op::PollReady(1),
            call(1),
        ],
        &[
            (5, 0, State::Shed),
            (5, 1, State::Granted),
            (6, 0, State::Refused(Reason::QueueShed)),
        ],
    );
}

#[test]
fn at_exactly_the_maximum_wait_a_grant_wins_over_the_timeout() {
    // Polled first, the waiter times out; granted first, it is served.
    run_expecting(
        fixed(1, Mode::Queue, 1),
        &[
            Op::TryAcquire(0),
            Op::PollReady(0),
            Op::Advance(MAX_WAIT_MS),
            Op::PollReady(0),
            call(0),
        ],
        &[(3, 0, State::Refused(Reason::QueueTimeout))],
    );
    run_expecting(
        fixed(1, Mode::Queue, 1),
        &[
            Op::TryAcquire(0),
            Op::PollReady(0),
            Op::Advance(MAX_WAIT_MS),
            Op::EndPermit(0, None),
            Op::PollReady(0),
            call(0),
        ],
        &[(3, 0, State::Granted), (4, 0, State::Reserved)],
    );
}

#[test]
fn close_refuses_the_waiters_and_lets_granted_and_running_calls_finish() {
    run_expecting(
        Config {
            close_at: Some(6),
            ..fixed(2, Mode::Queue, 3)
        },
        &[
            Op::PollReady(0),
            call(0),
            Op::TryAcquire(0),
            Op::PollReady(1),
            Op::PollReady(2),
            Op::EndPermit(0, Some(End::Fail)),
            // closed here: service 1 was granted, service 2 is refused
            Op::PollReady(1),
            call(1),
            Op::PollReady(2),
            call(2),
            Op::PollReady(3),
            Op::Complete(0, End::Succeed),
            Op::Panic(0),
        ],
        &[
            (5, 1, State::Granted),
            (5, 2, State::Waiting(0)),
            (6, 1, State::Reserved),
            (6, 2, State::Closed),
            (8, 2, State::Refused(Reason::LimitReached)),
        ],
    );
}
