//! The state the service handles and the workers share.
//!
//! Invariants:
//! - Every queued job holds one permit of `slots`, taken by the handle's
//!   `poll_ready` and forgotten there; it is given back the moment the job
//!   leaves a queue (a worker took it, or it was answered without running).
//!   So `slots` bounds the jobs waiting, never the jobs running.
//! - A worker marks itself idle (under the state lock) only after finding
//!   no job it may take; a push that sees it idle clears the mark and
//!   notifies it (a `Notify` keeps the permit if the worker is not waiting
//!   yet). So a job is never queued while a ready worker that could take it
//!   sleeps: the head-of-line property.
//! - `open` turns false exactly once, under the lock, and nothing is queued
//!   after that; the close reason is set before, so a refused caller always
//!   finds it.
//! - `pending` counts jobs pushed and not yet answered or skipped; every
//!   job is answered exactly once: by a worker (its result, a panic, `Cut`),
//!   or by `fail_queued` (a close that cannot serve it), or, when every
//!   worker task has gone, by the dropped sender.

use std::collections::VecDeque;
use std::mem;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::error::{Closed, Error};
use crate::message::Job;
use crate::metrics::{Outcome, PoolMetrics, Restart};

pub(crate) struct Shared<Req, Resp> {
    pub(crate) settings: Settings<Req>,
    state: Mutex<State<Req, Resp>>,
    /// One per worker: how a push wakes that idle worker.
    wake: Box<[Notify]>,
    pub(crate) slots: std::sync::Arc<Semaphore>,
    closed: OnceLock<Closed>,
    /// Cancelled when the pool closes, so waiting workers look again.
    closing: CancellationToken,
    /// Cancelled by a drain deadline: answer everything with `Error::Cut`.
    cut: CancellationToken,
    /// Cancelled when the last worker task has exited.
    finished: CancellationToken,
    /// Service handles alive; the last one to go closes the pool.
    handles: AtomicUsize,
    /// Worker tasks alive.
    live: AtomicUsize,
    /// Factory failures in a row, across workers.
    factory_failures: AtomicU32,
    pub(crate) stats: Stats,
    pub(crate) metrics: PoolMetrics,
}

struct State<Req, Resp> {
    /// Jobs any worker may take, oldest first.
    any: VecDeque<Job<Req, Resp>>,
    /// Keyed jobs, per worker, oldest first.
    keyed: Vec<VecDeque<Job<Req, Resp>>>,
    idle: Vec<bool>,
    open: bool,
    next_seq: u64,
}

impl<Req, Resp> State<Req, Resp> {
    /// The older of worker `i`'s keyed head and the shared head.
    fn take(&mut self, i: usize) -> Option<Job<Req, Resp>> {
        let mine = self.keyed[i].front().map(|j| j.seq);
        let any = self.any.front().map(|j| j.seq);
        match (mine, any) {
            (Some(m), Some(a)) if m < a => self.keyed[i].pop_front(),
            (Some(_), None) => self.keyed[i].pop_front(),
            _ => self.any.pop_front(),
        }
    }

    fn queued(&self) -> usize {
        self.any.len() + self.keyed.iter().map(VecDeque::len).sum::<usize>()
    }
}

/// Counters behind [`PoolStats`](crate::PoolStats).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) pending: AtomicU64,
    pub(crate) busy: AtomicU64,
    pub(crate) outcomes: [AtomicU64; Outcome::ALL.len()],
    pub(crate) restarts: AtomicU64,
    pub(crate) factory_failures: AtomicU64,
}

impl Stats {
    pub(crate) fn get(&self, outcome: Outcome) -> u64 {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.outcomes[i].load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a push, a pop or a swap: a panic cannot
    // leave the state half-updated.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// === impl Shared ===

impl<Req, Resp> Shared<Req, Resp> {
    pub(crate) fn new(settings: Settings<Req>) -> Self {
        let n = settings.workers;
        let metrics = PoolMetrics::new(&settings.name);
        Self {
            slots: std::sync::Arc::new(Semaphore::new(settings.queue_capacity)),
            state: Mutex::new(State {
                any: VecDeque::new(),
                keyed: (0..n).map(|_| VecDeque::new()).collect(),
                idle: vec![false; n],
                open: true,
                next_seq: 0,
            }),
            wake: (0..n).map(|_| Notify::new()).collect(),
            closed: OnceLock::new(),
            closing: CancellationToken::new(),
            cut: CancellationToken::new(),
            finished: CancellationToken::new(),
            handles: AtomicUsize::new(0),
            live: AtomicUsize::new(n),
            factory_failures: AtomicU32::new(0),
            stats: Stats::default(),
            metrics,
            settings,
        }
    }

    /// Queues `job` (its permit already taken) for worker `target`, or for
    /// any worker, and wakes an idle worker that may take it; gives the job
    /// back when the pool is closed.
    pub(crate) fn push(
        &self,
        mut job: Job<Req, Resp>,
        target: Option<usize>,
    ) -> Result<(), Job<Req, Resp>> {
        let wake = {
            let mut st = lock(&self.state);
            if !st.open {
                return Err(job);
            }
            job.seq = st.next_seq;
            st.next_seq += 1;
            match target {
                Some(w) => {
                    st.keyed[w].push_back(job);
                    mem::replace(&mut st.idle[w], false).then_some(w)
                }
                None => {
                    st.any.push_back(job);
                    let w = st.idle.iter().position(|idle| *idle);
                    if let Some(w) = w {
                        st.idle[w] = false;
                    }
                    w
                }
            }
        };
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        self.metrics.queued.increment(1.0);
        if let Some(w) = wake {
            self.wake[w].notify_one();
        }
        Ok(())
    }

    /// The next job worker `i` may run; waits while there is none. `None`
    /// once the pool is closed and nothing is left for this worker.
    /// Cancel-safe: a job is only taken in the poll that returns it.
    pub(crate) async fn next_job(&self, i: usize) -> Option<Job<Req, Resp>> {
        loop {
            {
                let mut st = lock(&self.state);
                if let Some(job) = st.take(i) {
                    st.idle[i] = false;
                    drop(st);
                    self.slots.add_permits(1);
                    self.metrics.queued.decrement(1.0);
                    return Some(job);
                }
                if !st.open {
                    return None;
                }
                st.idle[i] = true;
            }
            self.wake[i].notified().await;
        }
    }

    /// Whether worker `i` has nothing left to do, ever: closed, and no job
    /// it could take.
    pub(crate) fn done_for(&self, i: usize) -> bool {
        let st = lock(&self.state);
        !st.open && st.keyed[i].is_empty() && st.any.is_empty()
    }

    /// Jobs waiting for a worker.
    pub(crate) fn queued(&self) -> usize {
        lock(&self.state).queued()
    }

    /// Stops taking jobs; the first reason wins. Queued jobs still run.
    pub(crate) fn close(&self, reason: Closed) {
        let first = self.closed.set(reason).is_ok();
        let was_open = mem::replace(&mut lock(&self.state).open, false);
        self.slots.close();
        if first && was_open {
            let why = self.closed.get().map(ToString::to_string);
            tracing::debug!(pool = %self.settings.name, reason = why.as_deref().unwrap_or(""), "pool closing");
        }
        self.closing.cancel();
        for w in self.wake.iter() {
            w.notify_one();
        }
    }

    /// Answers every queued job with `err` (counted as `outcome`) instead of
    /// running it.
    pub(crate) fn fail_queued(&self, err: &Error, outcome: Outcome) {
        let jobs: Vec<Job<Req, Resp>> = {
            let mut st = lock(&self.state);
            let mut all: Vec<_> = st.any.drain(..).collect();
            for q in &mut st.keyed {
                all.extend(q.drain(..));
            }
            all
        };
        if jobs.is_empty() {
            return;
        }
        self.slots.add_permits(jobs.len());
        self.metrics.queued.decrement(jobs.len() as f64);
        for job in jobs {
            if job.tx.send(Err(err.clone().into())).is_ok() {
                self.record(outcome);
            } else {
                self.record(Outcome::Skipped);
            }
        }
    }

    /// Counts a job's end: the stats, the metric, and `pending`.
    pub(crate) fn record(&self, outcome: Outcome) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.stats.outcomes[i].fetch_add(1, Ordering::Relaxed);
        self.stats.pending.fetch_sub(1, Ordering::Relaxed);
        self.metrics.job(outcome);
    }

    pub(crate) fn restarted(&self, why: Restart) {
        self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        self.metrics.restarted(why);
    }

    /// A factory call failed; returns whether the pool gave up (and closed).
    pub(crate) fn factory_failed(&self, err: tower::BoxError) -> bool {
        self.stats.factory_failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.factory_failures.increment(1);
        let n = self.factory_failures.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::warn!(pool = %self.settings.name, error = %err, failures = n, "worker factory failed");
        if n < self.settings.max_factory_failures {
            return false;
        }
        let reason = Closed::FactoryFailed(crate::error::SharedError::new(err));
        tracing::error!(pool = %self.settings.name, failures = n, "worker factory keeps failing; pool closed");
        self.close(reason.clone());
        self.fail_queued(&Error::Closed(reason), Outcome::Refused);
        true
    }

    pub(crate) fn factory_succeeded(&self) {
        self.factory_failures.store(0, Ordering::Release);
    }

    /// Why the pool closed, if it did.
    pub(crate) fn closed(&self) -> Option<&Closed> {
        self.closed.get()
    }

    /// The reason to give a caller refused by a closed pool.
    pub(crate) fn closed_reason(&self) -> Closed {
        self.closed.get().cloned().unwrap_or(Closed::WorkerGone)
    }

    pub(crate) fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    pub(crate) fn cut_token(&self) -> &CancellationToken {
        &self.cut
    }

    /// A drain deadline passed: close, answer the queue with `Error::Cut`,
    /// and tell running workers to cut their jobs.
    pub(crate) fn cut(&self) {
        self.close(Closed::Shutdown);
        self.cut.cancel();
        self.fail_queued(&Error::Cut, Outcome::Cut);
    }

    pub(crate) fn finished(&self) -> &CancellationToken {
        &self.finished
    }

    pub(crate) fn handle_added(&self) {
        self.handles.fetch_add(1, Ordering::Relaxed);
    }

    /// A service handle was dropped; the last one closes the pool.
    pub(crate) fn handle_dropped(&self) {
        if self.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.close(Closed::Shutdown);
        }
    }

    /// A worker task ended (normally or dropped with its runtime). The last
    /// one answers whatever is still queued and marks the pool finished.
    pub(crate) fn worker_exited(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.close(Closed::WorkerGone);
            let reason = self.closed_reason();
            self.fail_queued(&Error::Closed(reason), Outcome::Refused);
            tracing::debug!(pool = %self.settings.name, "pool workers finished");
            self.finished.cancel();
        }
    }
}
