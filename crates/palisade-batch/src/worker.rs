//! The worker: the one task that owns the inner service, forms batches,
//! sends them and answers every caller.
//!
//! Each poll, in order: deliver the batches that came back; honour a cut;
//! move the queue into `staging` (one swap under the lock); then, while a
//! batch slot is free and [`plan::trigger`] says so, ask the inner service
//! for readiness and send the next batch (bisection retries first). In
//! `Flush::Timer` mode a sleep wakes it at the oldest item's deadline.
//!
//! Every item the worker takes is answered exactly once: with its result, a
//! batch error, or, when the worker is cut or dropped, an error saying so
//! (see `Drop`).

use std::collections::VecDeque;
use std::future::Future;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::CatchUnwind;
use futures_util::stream::{FuturesUnordered, StreamExt};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tower_service::Service;

use crate::config::Flush;
use crate::error::{Closed, Error, SharedError, panic_message};
use crate::message::{Entry, Formed, Reason, Waiters};
use crate::metrics::Metrics;
use crate::plan::{self, Limits, Staged};
use crate::shared::Shared;

/// Batches sent or delivered in one poll before the worker yields, so a
/// busy batcher cannot starve the other tasks of its runtime thread.
const POLL_BUDGET: usize = 64;

pub(crate) struct Worker<S, Req, Resp>
where
    S: Service<Vec<Req>>,
{
    shared: Arc<Shared<Req, Resp>>,
    inner: S,
    /// Items taken from the queue, oldest first, not yet in a batch.
    staging: VecDeque<Entry<Req, Resp>>,
    staged_weight: u64,
    /// The queue's previous vector, kept to swap in next time (no
    /// allocation per swap).
    spare: Vec<Entry<Req, Resp>>,
    /// Halves of failed batches waiting to be retried; sent before anything
    /// new.
    retries: VecDeque<Formed<Req, Resp>>,
    in_flight: FuturesUnordered<InFlight<S::Future, Req, Resp>>,
    /// `Flush::Timer`: fires at the oldest staged item's deadline.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The queue's state at the last swap; once false, nothing more comes.
    open: bool,
    /// The inner service failed `poll_ready`: it is never called again.
    dead: bool,
    /// Set when the worker exits through `poll`, so `Drop` knows everything
    /// was answered.
    done: bool,
    metrics: Metrics,
}

/// What the worker keeps of a batch while the inner service has it.
struct Meta<Req, Resp> {
    waiters: Vec<Waiters<Resp>>,
    /// A copy of the requests, kept only when the batch may be bisected.
    kept: Option<Vec<Req>>,
    depth: u32,
}

type Outcome<T, E> = Result<Result<T, E>, Box<dyn std::any::Any + Send>>;

pin_project! {
    /// One batch in flight: the inner future, with panics caught, and who
    /// waits for it.
    struct InFlight<F, Req, Resp> {
        #[pin]
        future: CatchUnwind<AssertUnwindSafe<F>>,
        meta: Option<Meta<Req, Resp>>,
    }
}

impl<F, Req, Resp, T, E> Future for InFlight<F, Req, Resp>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = (Meta<Req, Resp>, Outcome<T, E>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = std::task::ready!(this.future.poll(cx));
        let meta = this.meta.take().expect("InFlight polled after completion");
        Poll::Ready((meta, outcome))
    }
}

// === impl Worker ===

impl<S, Req, Resp> Worker<S, Req, Resp>
where
    S: Service<Vec<Req>, Response = Vec<Resp>>,
    S::Error: Into<BoxError>,
{
    pub(crate) fn new(inner: S, shared: Arc<Shared<Req, Resp>>) -> Self {
        let metrics = Metrics::new(&shared.settings.name);
        Self {
            shared,
            inner,
            staging: VecDeque::new(),
            staged_weight: 0,
            spare: Vec::new(),
            retries: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            sleep: None,
            open: true,
            dead: false,
            done: false,
            metrics,
        }
    }

    /// Runs the worker until the batcher is closed and everything answered.
    pub(crate) async fn run(mut self) {
        tracing::debug!(batcher = %self.shared.settings.name, "batch worker started");
        std::future::poll_fn(|cx| self.poll_run(cx)).await;
    }

    fn limits(&self) -> Limits {
        Limits {
            max_items: self.shared.settings.max_items,
            max_weight: self.shared.settings.max_weight,
        }
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut budget = POLL_BUDGET;
        loop {
            // Registered before the queue is read: a push after the read
            // wakes this task again.
            self.shared.register_worker(cx.waker());

            while let Poll::Ready(Some((meta, outcome))) = self.in_flight.poll_next_unpin(cx) {
                self.finish(meta, outcome);
                budget = budget.saturating_sub(1);
            }

            if self.shared.is_cut() {
                self.cut_everything();
                return self.exit();
            }

            self.pull_queue();
            if self.dead {
                let err = Error::Closed(self.shared.closed_reason());
                self.fail_staged(&err);
            }

            match self.poll_send(cx) {
                Poll::Ready(true) => {
                    budget = budget.saturating_sub(1);
                    if budget == 0 {
                        cx.waker().wake_by_ref();
                        self.update_gauges();
                        return Poll::Pending;
                    }
                    continue;
                }
                Poll::Ready(false) => continue,
                Poll::Pending => {}
            }

            if !self.open
                && self.staging.is_empty()
                && self.retries.is_empty()
                && self.in_flight.is_empty()
            {
                return self.exit();
            }
            self.update_gauges();
            return Poll::Pending;
        }
    }

    /// Sends the next batch if one is due. `Ready(true)`: a batch went out;
    /// `Ready(false)`: something changed, loop again; `Pending`: nothing to
    /// do until a wake-up (inner readiness, a batch coming back, the timer,
    /// a push).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let settings = &self.shared.settings;
        if self.dead || self.in_flight.len() >= settings.max_in_flight {
            return Poll::Pending;
        }
        let trigger = if !self.retries.is_empty() {
            Some(Reason::Retry)
        } else {
            let deadline = self.deadline();
            let staged = Staged {
                items: self.staging.len(),
                weight: self.staged_weight,
                deadline_passed: deadline.is_some_and(|d| d <= Instant::now()),
                closing: !self.open,
            };
            let trigger = plan::trigger(settings.flush, self.limits(), staged);
            if trigger.is_none()
                && let Some(deadline) = deadline
            {
                // Flush::Timer with a partial batch: wake at its deadline.
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
            }
            trigger
        };
        let Some(trigger) = trigger else {
            return Poll::Pending;
        };

        match catch_unwind(AssertUnwindSafe(|| self.inner.poll_ready(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Ok(()))) => {
                let batch = if trigger == Reason::Retry {
                    self.retries.pop_front()
                } else {
                    self.form(trigger)
                };
                match batch {
                    Some(batch) => {
                        self.send(batch);
                        Poll::Ready(true)
                    }
                    // Every staged caller had gone away.
                    None => Poll::Ready(false),
                }
            }
            Ok(Poll::Ready(Err(e))) => {
                let e = SharedError::new(e.into());
                tracing::error!(batcher = %self.shared.settings.name, error = %e, "inner service failed poll_ready; batcher closed");
                self.inner_dead(Closed::InnerFailed(e));
                Poll::Ready(false)
            }
            Err(panic) => {
                let msg = panic_message(&*panic);
                tracing::error!(batcher = %self.shared.settings.name, panic = %msg, "inner service panicked in poll_ready; batcher closed");
                self.inner_dead(Closed::InnerPanicked(msg));
                Poll::Ready(false)
            }
        }
    }

    /// `Flush::Timer`: when the oldest staged item's batch must go out.
    fn deadline(&self) -> Option<Instant> {
        if self.shared.settings.flush != Flush::Timer {
            return None;
        }
        let at = self.staging.front()?.at?;
        Some(at + self.shared.settings.max_latency)
    }

    /// Takes the next batch from `staging`, skipping callers that went away.
    fn form(&mut self, trigger: Reason) -> Option<Formed<Req, Resp>> {
        let limits = self.limits();
        let settings = &self.shared.settings;
        let cap = self.staging.len().min(limits.max_items);
        let mut reqs = Vec::with_capacity(cap);
        let mut waiters = Vec::with_capacity(cap);
        let mut items = Vec::new();
        let dedup = settings.dedup.as_ref();
        let mut count = 0;
        let mut weight = 0u64;
        let mut skipped = 0usize;
        let mut stopped_by = None;
        while let Some(front) = self.staging.front() {
            if front.tx.is_closed() {
                let entry = self.staging.pop_front().expect("front exists");
                self.staged_weight -= entry.weight;
                skipped += 1;
                continue;
            }
            if let Err(limit) = plan::admit(limits, count, weight, front.weight) {
                stopped_by = Some(limit);
                break;
            }
            let entry = self.staging.pop_front().expect("front exists");
            self.staged_weight -= entry.weight;
            weight = weight.saturating_add(entry.weight);
            count += 1;
            if dedup.is_some() {
                items.push((entry.req, entry.tx));
            } else {
                reqs.push(entry.req);
                waiters.push(Waiters::One(entry.tx));
            }
        }
        // The items left the queue: their slots are free for new callers.
        self.shared.slots.add_permits(count + skipped);
        if skipped > 0 {
            self.metrics.cancelled.increment(skipped as u64);
            let stats = &self.shared.stats;
            stats.cancelled.fetch_add(skipped as u64, Ordering::Relaxed);
            stats.pending.fetch_sub(skipped as u64, Ordering::Relaxed);
        }
        if count == 0 {
            return None;
        }
        if let Some(dedup) = dedup {
            dedup.group(items, &mut reqs, &mut waiters);
            self.metrics
                .deduplicated
                .increment((count - reqs.len()) as u64);
        }
        Some(Formed {
            reqs,
            waiters,
            depth: 0,
            reason: plan::reason(limits, trigger, count, stopped_by),
        })
    }

    fn send(&mut self, batch: Formed<Req, Resp>) {
        let settings = &self.shared.settings;
        let callers = batch.callers();
        let Formed {
            reqs,
            waiters,
            depth,
            reason,
        } = batch;
        self.metrics.flushed(reason);
        self.metrics.size.record(reqs.len() as f64);
        self.metrics.items.increment(callers as u64);
        let kept = match settings.clone_req {
            Some(clone) if depth < settings.bisect_depth && reqs.len() > 1 => {
                Some(reqs.iter().map(clone).collect())
            }
            _ => None,
        };
        let meta = Meta {
            waiters,
            kept,
            depth,
        };
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(reqs))) {
            Ok(future) => self.in_flight.push(InFlight {
                future: AssertUnwindSafe(future).catch_unwind(),
                meta: Some(meta),
            }),
            Err(panic) => self.finish(meta, Err(panic)),
        }
    }

    /// Answers the callers of a batch that came back (or failed to start).
    fn finish(&mut self, meta: Meta<Req, Resp>, outcome: Outcome<Vec<Resp>, S::Error>) {
        let name = &self.shared.settings.name;
        let err = match outcome {
            Ok(Ok(resps)) if resps.len() == meta.waiters.len() => {
                let clone = self.shared.settings.dedup.as_ref().map(|d| d.clone_resp());
                let mut answered = 0;
                let mut gone = 0;
                for (waiters, resp) in meta.waiters.into_iter().zip(resps) {
                    answered += waiters.len();
                    gone += waiters.answer(resp, clone);
                }
                if gone > 0 {
                    self.metrics.discarded.increment(gone as u64);
                }
                self.answered(answered);
                return;
            }
            Ok(Ok(resps)) => {
                self.metrics.failed_length.increment(1);
                let (sent, received) = (meta.waiters.len(), resps.len());
                tracing::error!(batcher = %name, sent, received, "inner service broke the batch contract: result count differs from request count");
                // A contract violation, not a poison item: no bisection.
                self.fail(meta.waiters, &Error::LengthMismatch { sent, received });
                return;
            }
            Ok(Err(e)) => {
                self.metrics.failed_error.increment(1);
                let e = SharedError::new(e.into());
                tracing::warn!(batcher = %name, error = %e, items = meta.waiters.len(), depth = meta.depth, "batch failed");
                Error::Failed(e)
            }
            Err(panic) => {
                self.metrics.failed_panic.increment(1);
                let msg = panic_message(&*panic);
                tracing::error!(batcher = %name, panic = %msg, items = meta.waiters.len(), depth = meta.depth, "inner service panicked on a batch");
                Error::Panicked(msg)
            }
        };
        match meta.kept {
            Some(reqs) if !self.dead => self.bisect(reqs, meta.waiters, meta.depth),
            _ => self.fail(meta.waiters, &err),
        }
    }

    /// Queues the two halves of a failed batch for a retry, ahead of new
    /// batches (first half first).
    fn bisect(&mut self, mut reqs: Vec<Req>, mut waiters: Vec<Waiters<Resp>>, depth: u32) {
        self.metrics.bisections.increment(1);
        let (first, _) = plan::halves(reqs.len());
        let second = Formed {
            reqs: reqs.split_off(first),
            waiters: waiters.split_off(first),
            depth: depth + 1,
            reason: Reason::Retry,
        };
        let first = Formed {
            reqs,
            waiters,
            depth: depth + 1,
            reason: Reason::Retry,
        };
        tracing::debug!(batcher = %self.shared.settings.name, depth = depth + 1, first = first.reqs.len(), second = second.reqs.len(), "bisecting a failed batch");
        self.retries.push_front(second);
        self.retries.push_front(first);
    }

    fn fail(&mut self, waiters: Vec<Waiters<Resp>>, err: &Error) {
        let mut n = 0;
        for w in waiters {
            n += w.len();
            w.fail(err);
        }
        self.answered(n);
    }

    fn answered(&self, n: usize) {
        let stats = &self.shared.stats;
        stats.answered.fetch_add(n as u64, Ordering::Relaxed);
        stats.pending.fetch_sub(n as u64, Ordering::Relaxed);
    }

    /// The inner service is dead: close, fail everything not yet sent.
    fn inner_dead(&mut self, reason: Closed) {
        self.dead = true;
        self.shared.close(reason);
        let err = Error::Closed(self.shared.closed_reason());
        self.fail_staged(&err);
    }

    /// Fails the staged items and pending retries with `err`.
    fn fail_staged(&mut self, err: &Error) {
        let staged = mem::take(&mut self.staging);
        self.staged_weight = 0;
        self.shared.slots.add_permits(staged.len());
        let waiters: Vec<_> = staged.into_iter().map(|e| Waiters::One(e.tx)).collect();
        self.fail(waiters, err);
        while let Some(batch) = self.retries.pop_front() {
            self.fail(batch.waiters, err);
        }
    }

    /// A drain deadline passed: everything still held, in flight included,
    /// is answered with [`Error::Cut`].
    fn cut_everything(&mut self) {
        let n = self.answer_everything(&Error::Cut);
        if n > 0 {
            self.metrics.cut.increment(n as u64);
            tracing::warn!(batcher = %self.shared.settings.name, items = n, "drain deadline: batch items cut");
        }
        self.shared.stats.cut.fetch_add(n as u64, Ordering::Relaxed);
        self.shared
            .stats
            .pending
            .fetch_sub(n as u64, Ordering::Relaxed);
    }

    fn update_gauges(&self) {
        self.metrics.queued.set(self.staging.len() as f64);
        self.metrics.in_flight.set(self.in_flight.len() as f64);
    }

    fn exit(&mut self) -> Poll<()> {
        self.done = true;
        self.update_gauges();
        let stats = &self.shared.stats;
        tracing::debug!(
            batcher = %self.shared.settings.name,
            answered = stats.answered.load(Ordering::Relaxed),
            cancelled = stats.cancelled.load(Ordering::Relaxed),
            cut = stats.cut.load(Ordering::Relaxed),
            "batch worker finished"
        );
        self.shared.mark_finished();
        Poll::Ready(())
    }
}

// What `Drop` needs too, so it takes only the struct's bounds.
impl<S, Req, Resp> Worker<S, Req, Resp>
where
    S: Service<Vec<Req>>,
{
    fn pull_queue(&mut self) {
        let (mut queued, open) = self.shared.take_queued(mem::take(&mut self.spare));
        self.open = open;
        for entry in queued.drain(..) {
            self.staged_weight = self.staged_weight.saturating_add(entry.weight);
            self.staging.push_back(entry);
        }
        self.spare = queued;
    }

    /// Answers every item the worker holds or can still find with `err`;
    /// returns how many. Batches in flight are dropped (their inner futures
    /// cancelled).
    fn answer_everything(&mut self, err: &Error) -> usize {
        // The queue is closed by now (cut and drop both close first), so
        // this swap finds everything that was ever pushed.
        self.pull_queue();
        let mut all: Vec<Waiters<Resp>> =
            self.staging.drain(..).map(|e| Waiters::One(e.tx)).collect();
        self.shared.slots.add_permits(all.len());
        self.staged_weight = 0;
        for batch in self.retries.drain(..) {
            all.extend(batch.waiters);
        }
        for batch in Pin::new(&mut self.in_flight).iter_pin_mut() {
            if let Some(meta) = batch.project().meta.take() {
                all.extend(meta.waiters);
            }
        }
        self.in_flight.clear();
        let mut n = 0;
        for w in all {
            n += w.len();
            w.fail(err);
        }
        n
    }
}

impl<S, Req, Resp> Drop for Worker<S, Req, Resp>
where
    S: Service<Vec<Req>>,
{
    /// A worker dropped before it finished (its runtime shut down, its task
    /// was aborted) still answers every item it holds, with
    /// [`Closed::WorkerGone`], and closes the batcher so no caller waits on
    /// it.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.shared.close(Closed::WorkerGone);
        // Whatever closed the batcher first, these items were not served
        // because the worker went away.
        let n = self.answer_everything(&Error::Closed(Closed::WorkerGone)) as u64;
        self.shared.stats.cut.fetch_add(n, Ordering::Relaxed);
        self.shared.stats.pending.fetch_sub(n, Ordering::Relaxed);
        self.shared.mark_finished();
    }
}
