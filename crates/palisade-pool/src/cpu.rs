//! The CPU offload: synchronous functions run on a dedicated pool of
//! `threads` threads (a rayon `ThreadPool` per [`CpuPool`]), off the async
//! reactor.
//!
//! One semaphore, `admitted` (threads + queue capacity permits), bounds it:
//! `poll_ready`, `run` and `try_run` reserve a permit (waiting or failing
//! fast), the job carries it onto its thread and gives it back when it
//! ends. So at most that many jobs exist at once, and the rayon queue in
//! front of the threads never holds more than the queue capacity. A thread
//! checks, right before running a job, that its caller still waits: a
//! caller that dropped its future before the job started means the job
//! never runs.
//!
//! Why a dedicated rayon pool rather than tokio's blocking pool behind a
//! permit (the first design): for many small jobs it was 2.4x the
//! throughput (`cpu/*` in `docs/worker-pool.md`: each job through
//! `spawn_blocking` pays a mutex, a condition variable and often a thread
//! wake-up; rayon's threads take jobs from a queue they are already
//! watching), its thread count is exactly the bound, and the threads are
//! named after the pool. tokio's blocking pool stays free for file I/O.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot};
use tokio_util::sync::PollSemaphore;
use tower::BoxError;
use tower_service::Service;

use crate::config::default_parallelism;
use crate::error::{Closed, ConfigError, Error, panic_message};
use crate::metrics::{CpuMetrics, CpuOutcome};

/// Default [`CpuPoolBuilder::queue_capacity`].
pub const DEFAULT_CPU_QUEUE_CAPACITY: usize = 256;

/// A bounded CPU offload: runs synchronous functions on its own
/// [`threads`](CpuPoolBuilder::threads) threads (named
/// `palisade-cpu <name>#<i>`), with at most [`queue_capacity`](CpuPoolBuilder::queue_capacity) more
/// waiting.
///
/// - [`CpuPool::run`] and [`CpuPool::try_run`] for one closure;
/// - [`CpuPool::map`], the bounded replacement of "one `spawn_blocking`
///   per item";
/// - [`CpuPool::service`], a tower service with backpressure in
///   `poll_ready`.
///
/// A job whose caller drops its future before the job starts never runs; a
/// panic in a job is [`Error::Panicked`] for that caller only. Clones share
/// the bound. See the crate docs for an example.
#[derive(Clone)]
pub struct CpuPool {
    shared: Arc<CpuShared>,
}

struct CpuShared {
    name: Arc<str>,
    threads: usize,
    queue_capacity: usize,
    admitted: Arc<Semaphore>,
    threads_pool: rayon::ThreadPool,
    metrics: CpuMetrics,
    stats: CpuCounters,
}

#[derive(Default)]
struct CpuCounters {
    ok: AtomicU64,
    panicked: AtomicU64,
    skipped: AtomicU64,
    overloaded: AtomicU64,
}

/// A [`CpuPool`]'s counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuStats {
    /// Jobs that ran and returned.
    pub ok: u64,
    /// Jobs that panicked.
    pub panicked: u64,
    /// Jobs never run because their caller had gone.
    pub skipped: u64,
    /// [`CpuPool::try_run`] calls refused with [`Error::Overloaded`].
    pub overloaded: u64,
    /// Jobs admitted and not yet ended (running or waiting for a thread).
    pub in_flight: u64,
}

/// Builds a [`CpuPool`] (see `docs/worker-pool.md` for sizing).
#[derive(Debug, Clone)]
pub struct CpuPoolBuilder {
    name: String,
    threads: Option<usize>,
    queue_capacity: usize,
}

impl Default for CpuPoolBuilder {
    fn default() -> Self {
        Self {
            name: "cpu".to_owned(),
            threads: None,
            queue_capacity: DEFAULT_CPU_QUEUE_CAPACITY,
        }
    }
}

impl CpuPoolBuilder {
    /// The pool's name: the `pool` label of its metrics (default `"cpu"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Threads, the most jobs running at once (default
    /// [`default_parallelism`](crate::default_parallelism)). More than the
    /// cores only helps jobs that also block on I/O; fewer leaves cores to
    /// the async runtime.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// Most jobs admitted beyond the running ones, waiting for a thread
    /// (default [`DEFAULT_CPU_QUEUE_CAPACITY`]). Zero: only as many jobs as
    /// threads are admitted.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// Checks the values, starts the threads and builds the pool.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `threads` (zero, too large, or the threads
    /// could not be started), `queue_capacity` (too large) or `name`
    /// (empty).
    pub fn build(self) -> Result<CpuPool, ConfigError> {
        let threads = self.threads.unwrap_or_else(default_parallelism);
        if threads == 0 {
            return Err(crate::error::config_error("threads", "must be at least 1"));
        }
        let max = Semaphore::MAX_PERMITS / 2;
        if threads > max {
            return Err(crate::error::config_error("threads", "is too large"));
        }
        if self.queue_capacity > max {
            return Err(crate::error::config_error("queue_capacity", "is too large"));
        }
        if self.name.is_empty() {
            return Err(crate::error::config_error("name", "must not be empty"));
        }
        let metrics = CpuMetrics::new(&self.name);
        let thread_name = self.name.clone();
        let threads_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("palisade-cpu {thread_name}#{i}"))
            .build()
            .map_err(|e| {
                crate::error::config_error("threads", format!("cannot start the threads: {e}"))
            })?;
        Ok(CpuPool {
            shared: Arc::new(CpuShared {
                name: Arc::from(self.name),
                threads,
                queue_capacity: self.queue_capacity,
                admitted: Arc::new(Semaphore::new(threads + self.queue_capacity)),
                threads_pool,
                metrics,
                stats: CpuCounters::default(),
            }),
        })
    }
}

// === impl CpuPool ===

impl CpuPool {
    /// A builder with every default.
    pub fn builder() -> CpuPoolBuilder {
        CpuPoolBuilder::default()
    }

    /// A pool with every default: as many threads as cores.
    pub fn new() -> Self {
        CpuPoolBuilder::default()
            .build()
            .expect("the default CPU pool settings are valid")
    }

    /// Most jobs running at once.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// The counters now.
    pub fn stats(&self) -> CpuStats {
        let s = &self.shared.stats;
        let admitted = self.shared.threads + self.shared.queue_capacity;
        CpuStats {
            ok: s.ok.load(Ordering::Relaxed),
            panicked: s.panicked.load(Ordering::Relaxed),
            skipped: s.skipped.load(Ordering::Relaxed),
            overloaded: s.overloaded.load(Ordering::Relaxed),
            in_flight: admitted.saturating_sub(self.shared.admitted.available_permits()) as u64,
        }
    }

    /// Stops admitting jobs: later calls fail with
    /// [`Closed::Shutdown`](crate::Closed::Shutdown); admitted jobs finish.
    pub fn close(&self) {
        self.shared.admitted.close();
    }

    /// Runs `job` on a pool thread, waiting for admission if the pool is
    /// full. Dropping the future before the job starts cancels it. The
    /// future does not borrow the pool (spawn it freely).
    pub fn run<F, R>(&self, job: F) -> impl Future<Output = Result<R, Error>> + Send + 'static
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let shared = self.shared.clone();
        async move {
            let permit = shared
                .admitted
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::Closed(Closed::Shutdown))?;
            execute(shared, permit, job).await
        }
    }

    /// Runs `job` if the pool can admit it now; otherwise the future
    /// resolves at once to [`Error::Overloaded`] (load shedding: an HTTP
    /// handler answers 503). Admission happens in this call, not when the
    /// future is first polled.
    pub fn try_run<F, R>(&self, job: F) -> impl Future<Output = Result<R, Error>> + Send + 'static
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let admitted = match self.shared.admitted.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(TryAcquireError::NoPermits) => {
                self.shared.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.job(CpuOutcome::Overloaded);
                Err(Error::Overloaded)
            }
            Err(TryAcquireError::Closed) => Err(Error::Closed(Closed::Shutdown)),
        };
        let shared = self.shared.clone();
        async move { execute(shared, admitted?, job).await }
    }

    /// Runs `f` on every item, at most `threads` at once, and returns the
    /// results in item order; a panic is that item's own
    /// [`Error::Panicked`]. The bounded form of spawning one blocking task
    /// per item.
    pub async fn map<I, T, R, F>(&self, items: I, f: F) -> Vec<Result<R, Error>>
    where
        I: IntoIterator<Item = T>,
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(T) -> R + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let jobs = items.into_iter().map(|item| {
            let f = f.clone();
            self.run(move || f(item))
        });
        futures_util::future::join_all(jobs).await
    }

    /// A tower service running `f` on this pool: `poll_ready` reserves
    /// admission (`Pending` while the pool is full), `call` runs `f(req)`.
    /// Clones start unreserved.
    pub fn service<F, Req, Resp>(&self, f: F) -> Offload<F>
    where
        F: Fn(Req) -> Resp + Send + Sync + 'static,
    {
        Offload {
            pool: self.clone(),
            f: Arc::new(f),
            wait: PollSemaphore::new(self.shared.admitted.clone()),
            permit: None,
        }
    }
}

impl Default for CpuPool {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CpuPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuPool")
            .field("name", &self.shared.name)
            .field("threads", &self.shared.threads)
            .field("queue_capacity", &self.shared.queue_capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Runs an admitted job: hands the function to the pool's threads with its
/// admission permit, and waits for the answer.
async fn execute<F, R>(
    shared: Arc<CpuShared>,
    admitted: OwnedSemaphorePermit,
    job: F,
) -> Result<R, Error>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    shared.metrics.queued.increment(1.0);
    let on_thread = shared.clone();
    shared.threads_pool.spawn(move || {
        let s = &on_thread;
        s.metrics.queued.decrement(1.0);
        if tx.is_closed() {
            s.stats.skipped.fetch_add(1, Ordering::Relaxed);
            s.metrics.job(CpuOutcome::Skipped);
            drop(admitted);
            return;
        }
        s.metrics.running.increment(1.0);
        let out = catch_unwind(AssertUnwindSafe(job));
        s.metrics.running.decrement(1.0);
        let answer = match out {
            Ok(r) => {
                s.stats.ok.fetch_add(1, Ordering::Relaxed);
                s.metrics.job(CpuOutcome::Ok);
                Ok(r)
            }
            Err(panic) => {
                s.stats.panicked.fetch_add(1, Ordering::Relaxed);
                s.metrics.job(CpuOutcome::Panic);
                Err(Error::Panicked(panic_message(&*panic)))
            }
        };
        // Released before the answer is sent, so a caller that has its
        // answer also sees the capacity back.
        drop(admitted);
        let _ = tx.send(answer);
    });
    rx.await.unwrap_or(Err(Error::Closed(Closed::WorkerGone)))
}

/// A tower service running a synchronous function on a [`CpuPool`]; made
/// by [`CpuPool::service`].
pub struct Offload<F> {
    pool: CpuPool,
    f: Arc<F>,
    wait: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
}

impl<F> Clone for Offload<F> {
    /// A clone shares the pool and the function and starts unreserved.
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            f: self.f.clone(),
            wait: PollSemaphore::new(self.pool.shared.admitted.clone()),
            permit: None,
        }
    }
}

impl<F> fmt::Debug for Offload<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offload")
            .field("pool", &self.pool.shared.name)
            .field("reserved", &self.permit.is_some())
            .finish()
    }
}

/// Response future of [`Offload`].
pub type OffloadFuture<Resp> = Pin<Box<dyn Future<Output = Result<Resp, BoxError>> + Send>>;

impl<F, Req, Resp> Service<Req> for Offload<F>
where
    F: Fn(Req) -> Resp + Send + Sync + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = OffloadFuture<Resp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.wait.poll_acquire(cx)) {
            Some(permit) => {
                self.permit = Some(permit);
                Poll::Ready(Ok(()))
            }
            None => Poll::Ready(Err(Error::Closed(Closed::Shutdown).into())),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = self.permit.take().expect(
            "Offload::call without poll_ready returning Ready (admission is reserved there)",
        );
        let f = self.f.clone();
        let shared = self.pool.shared.clone();
        Box::pin(async move {
            execute(shared, permit, move || f(req))
                .await
                .map_err(BoxError::from)
        })
    }
}
