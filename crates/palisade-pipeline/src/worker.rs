//! The loop of one stage: take items from the queue in front, call the
//! stage's service up to `concurrency` at once, release the results in the
//! stage's order, hand them to the next queue, and on a cut count what it
//! holds.
//!
//! The loop never waits on one thing alone: readiness of the service, the
//! calls in flight, room downstream and the next input are polled together,
//! so a result leaves as soon as it exists (no item waits for the next one
//! to arrive) and a service whose readiness depends on its own calls
//! finishing cannot deadlock the stage.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use futures_util::future::{FutureExt, poll_fn};
use std::future::Future;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, PollSender};
use tower::BoxError;
use tower_service::Service;

use crate::error::Error;
use crate::inflight::InFlight;
use crate::item::Item;
use crate::reorder::{Mode, Reorder};
use crate::stats::StageShared;

/// Hashes a per-key stage's input to its ordering key.
pub(crate) type KeyFn<A> = Arc<dyn Fn(&A) -> u64 + Send + Sync>;

/// Tells a stage's service that nothing more will come.
pub(crate) type FlushFn = Box<dyn FnOnce() + Send>;

/// Failed items in a per-key stage share this key: they are released as
/// soon as they arrive, behind earlier failures only.
const ERROR_KEY: u64 = u64::MAX;

pub(crate) struct StageTask<S, A, B> {
    pub(crate) service: S,
    pub(crate) rx: mpsc::Receiver<Item<A>>,
    pub(crate) tx: mpsc::Sender<Item<B>>,
    pub(crate) shared: Arc<StageShared>,
    pub(crate) mode: Mode,
    pub(crate) key: Option<KeyFn<A>>,
    pub(crate) cut: CancellationToken,
    /// Called once when the input has ended and every item held has been
    /// handed to the service (see `PipelineBuilder::flush_with`).
    pub(crate) flush: Option<FlushFn>,
    /// Dropped when the task ends, however it ends; the drain waits for
    /// every such sender to be gone.
    pub(crate) _alive: mpsc::Sender<()>,
}

struct Done<B> {
    ticket: u64,
    key: u64,
    seq: u64,
    result: Result<B, NotReady>,
    started: Instant,
}

/// A received item waiting for the service to be ready.
struct Pending<A> {
    ticket: u64,
    key: u64,
    seq: u64,
    value: A,
}

impl<S, A, B> StageTask<S, A, B>
where
    S: Service<A, Response = B> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    A: Send + 'static,
    B: Send + 'static,
{
    pub(crate) async fn run(self) {
        let Self {
            mut service,
            mut rx,
            tx,
            shared,
            mode,
            key,
            cut,
            mut flush,
            _alive,
        } = self;
        let concurrency = shared.concurrency;
        let window = shared.window;
        let mut tx = PollSender::new(tx);
        let mut in_flight = InFlight::new(concurrency);
        let mut reorder: Reorder<Item<B>> = Reorder::new(mode);
        let mut ready: VecDeque<Item<B>> = VecDeque::new();
        let mut pending: Option<Pending<A>> = None;
        let mut input_open = true;
        let mut cut = std::pin::pin!(cut.cancelled_owned());

        // One poll drives every source until none makes progress; each one
        // left Pending has registered the waker, and a source skipped for a
        // condition is polled again as soon as another's progress changes it.
        let end = poll_fn(|cx| {
            if cut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::Cut);
            }
            loop {
                let mut progress = false;
                while let Some(item) = ready.pop_front() {
                    // Room now: a plain `try_send`, no reservation future.
                    let sent = match tx.get_ref() {
                        Some(inner) => inner.try_send(item),
                        None => Err(TrySendError::Closed(item)),
                    };
                    let item = match sent {
                        Ok(()) => {
                            // A reservation left waiting earlier would hold
                            // a slot of the next queue; give it back.
                            tx.abort_send();
                            shared.out.fetch_add(1, Ordering::Release);
                            shared.metrics.items_out.increment(1);
                            progress = true;
                            continue;
                        }
                        Err(TrySendError::Full(item)) => item,
                        // Gone (a cut can close the next queue while this
                        // pass runs): the item goes back to `ready`, so the
                        // cut below counts it.
                        Err(TrySendError::Closed(item)) => {
                            ready.push_front(item);
                            return Poll::Ready(End::Gone);
                        }
                    };
                    match tx.poll_reserve(cx) {
                        Poll::Ready(Ok(())) => {
                            if let Err(e) = tx.send_item(item) {
                                ready.extend(e.into_inner());
                                return Poll::Ready(End::Gone);
                            }
                            shared.out.fetch_add(1, Ordering::Release);
                            shared.metrics.items_out.increment(1);
                            progress = true;
                        }
                        // The next stage or the output is gone: nothing held
                        // here can be delivered any more.
                        Poll::Ready(Err(_)) => {
                            ready.push_front(item);
                            return Poll::Ready(End::Gone);
                        }
                        Poll::Pending => {
                            ready.push_front(item);
                            break;
                        }
                    }
                }
                // One clock read per pass, shared by the calls it starts
                // and the ones it finds finished.
                let mut now = None;
                let mut clock = || *now.get_or_insert_with(Instant::now);
                if in_flight.len() > 0 {
                    in_flight.poll_done(cx, |done: Done<B>| {
                        let value = done.result.map_err(|failure| match failure {
                            NotReady::Failed(e) => Error::failed(shared.name.clone(), done.seq, e),
                            NotReady::Panicked(p) => {
                                Error::panicked(shared.name.clone(), done.seq, &*p)
                            }
                        });
                        let item = Item {
                            seq: done.seq,
                            value,
                        };
                        let took = clock().saturating_duration_since(done.started);
                        shared.busy_nanos.fetch_add(
                            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
                            Ordering::Relaxed,
                        );
                        shared.metrics.service_time.record(took.as_secs_f64());
                        if let Err(e) = &item.value {
                            count_failure(&shared, e);
                        }
                        reorder.complete(done.ticket, done.key, item, &mut ready);
                        progress = true;
                    });
                }
                if pending.is_some()
                    && in_flight.len() < concurrency
                    && let Poll::Ready(ready_now) = poll_ready::<S, A>(&mut service, cx)
                {
                    {
                        let p = pending.take().expect("pending is some");
                        let name = &shared.name;
                        let call = match ready_now {
                            Ok(()) => catch_unwind(AssertUnwindSafe(|| service.call(p.value)))
                                .map_err(|panic| Error::panicked(name.clone(), p.seq, &*panic)),
                            Err(NotReady::Failed(e)) => Err(Error::failed(name.clone(), p.seq, e)),
                            Err(NotReady::Panicked(panic)) => {
                                Err(Error::panicked(name.clone(), p.seq, &*panic))
                            }
                        };
                        match call {
                            Ok(fut) => {
                                let (ticket, key, seq) = (p.ticket, p.key, p.seq);
                                let started = clock();
                                // The stage name is attached at completion,
                                // so a successful call clones nothing.
                                in_flight.push(async move {
                                    let result = match AssertUnwindSafe(fut).catch_unwind().await {
                                        Ok(Ok(out)) => Ok(out),
                                        Ok(Err(e)) => Err(NotReady::Failed(e.into())),
                                        Err(panic) => Err(NotReady::Panicked(panic)),
                                    };
                                    Done {
                                        ticket,
                                        key,
                                        seq,
                                        result,
                                        started,
                                    }
                                });
                            }
                            Err(e) => {
                                count_failure(&shared, &e);
                                let item = Item {
                                    seq: p.seq,
                                    value: Err(e),
                                };
                                reorder.complete(p.ticket, p.key, item, &mut ready);
                            }
                        }
                        progress = true;
                    }
                }
                let held = reorder.held() + ready.len();
                if input_open && pending.is_none() && held < window {
                    match rx.poll_recv(cx) {
                        Poll::Ready(Some(item)) => {
                            shared.received.fetch_add(1, Ordering::Release);
                            shared.metrics.items_in.increment(1);
                            match item.value {
                                Ok(value) => {
                                    let k = key.as_ref().map_or(0, |f| f(&value));
                                    let ticket = reorder.admit(k);
                                    pending = Some(Pending {
                                        ticket,
                                        key: k,
                                        seq: item.seq,
                                        value,
                                    });
                                }
                                // Failed upstream: passed on in its place, untouched.
                                Err(e) => {
                                    let ticket = reorder.admit(ERROR_KEY);
                                    let item = Item {
                                        seq: item.seq,
                                        value: Err(e),
                                    };
                                    reorder.complete(ticket, ERROR_KEY, item, &mut ready);
                                }
                            }
                            progress = true;
                        }
                        Poll::Ready(None) => {
                            input_open = false;
                            progress = true;
                        }
                        Poll::Pending => {}
                    }
                }
                if !input_open
                    && pending.is_none()
                    && let Some(f) = flush.take()
                {
                    // Whatever the service buffers is all that is left.
                    f();
                    progress = true;
                }
                let held = reorder.held() + ready.len();
                if !progress {
                    shared.set_levels(in_flight.len(), held);
                    if !input_open && held == 0 {
                        return Poll::Ready(End::Done);
                    }
                    return Poll::Pending;
                }
                shared.note_peaks(in_flight.len(), held);
            }
        })
        .await;
        if end != End::Done {
            // Whatever is held (pending, in flight, waiting) is dropped with
            // `in_flight` and `reorder`; the queue is emptied so each of its
            // items is counted here exactly once.
            let held = (reorder.held() + ready.len()) as u64;
            drop(in_flight);
            let dropped = held + close_and_count(&mut rx, &shared).await;
            shared.cut.fetch_add(dropped, Ordering::Relaxed);
            shared.metrics.cut.increment(dropped);
            shared.set_levels(0, 0);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Input closed and everything handed on.
    Done,
    /// The pipeline was cut.
    Cut,
    /// The receiver of this stage's output is gone.
    Gone,
}

/// Why `poll_ready` did not make the service ready, or a call failed
/// (the stage name is attached later).
enum NotReady {
    Failed(BoxError),
    Panicked(Box<dyn std::any::Any + Send>),
}

/// `poll_ready` with a panic caught, so the stage fails the item instead
/// of dying.
fn poll_ready<S, A>(service: &mut S, cx: &mut std::task::Context<'_>) -> Poll<Result<(), NotReady>>
where
    S: Service<A>,
    S::Error: Into<BoxError>,
{
    match catch_unwind(AssertUnwindSafe(|| service.poll_ready(cx))) {
        Ok(Poll::Pending) => Poll::Pending,
        Ok(Poll::Ready(r)) => Poll::Ready(r.map_err(|e| NotReady::Failed(e.into()))),
        Err(panic) => Poll::Ready(Err(NotReady::Panicked(panic))),
    }
}

fn count_failure(shared: &StageShared, e: &Error) {
    if e.is_panic() {
        shared.panicked.fetch_add(1, Ordering::Relaxed);
        shared.metrics.panicked.increment(1);
    } else {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        shared.metrics.failed.increment(1);
    }
}

/// Closes the queue and counts (as received) what was still in it. `recv`
/// after `close` returns `None` only once every reserved slot has been used
/// or released, so an item an upstream stage was sending is counted too.
pub(crate) async fn close_and_count<T>(rx: &mut mpsc::Receiver<T>, shared: &StageShared) -> u64 {
    rx.close();
    let mut n = 0;
    while rx.recv().await.is_some() {
        n += 1;
    }
    shared.received.fetch_add(n, Ordering::Release);
    shared.metrics.items_in.increment(n);
    n
}
