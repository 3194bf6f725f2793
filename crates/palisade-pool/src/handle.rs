//! Closing and draining a pool: [`PoolHandle`], its counters, and the
//! palisade-shutdown phase built from it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Outcome;
use crate::shared::Shared;

/// What a handle does to a pool, whatever its request and response types.
trait Control: Send + Sync {
    fn close(&self);
    fn cut(&self);
    fn finished(&self) -> CancellationToken;
    fn stats(&self) -> PoolStats;
}

impl<Req: Send, Resp: Send> Control for Shared<Req, Resp> {
    fn close(&self) {
        Shared::close(self, crate::error::Closed::Shutdown);
    }

    fn cut(&self) {
        Shared::cut(self);
    }

    fn finished(&self) -> CancellationToken {
        Shared::finished(self).clone()
    }

    fn stats(&self) -> PoolStats {
        let s = &self.stats;
        PoolStats {
            queued: self.queued() as u64,
            busy: s.busy.load(Ordering::Relaxed),
            pending: s.pending.load(Ordering::Relaxed),
            ok: s.get(Outcome::Ok),
            errors: s.get(Outcome::Error),
            panicked: s.get(Outcome::Panic),
            skipped: s.get(Outcome::Skipped),
            abandoned: s.get(Outcome::Abandoned),
            cut: s.get(Outcome::Cut),
            refused: s.get(Outcome::Refused),
            restarts: s.restarts.load(Ordering::Relaxed),
            factory_failures: s.factory_failures.load(Ordering::Relaxed),
        }
    }
}

/// The pool's counters at one moment (the same numbers as its metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Jobs waiting for a worker.
    pub queued: u64,
    /// Workers running a job.
    pub busy: u64,
    /// Jobs submitted and not yet answered or skipped.
    pub pending: u64,
    /// Jobs the inner service answered `Ok`.
    pub ok: u64,
    /// Jobs the inner service answered `Err`.
    pub errors: u64,
    /// Jobs that panicked.
    pub panicked: u64,
    /// Jobs never run because their caller had gone.
    pub skipped: u64,
    /// Jobs whose caller left while they ran (their future was dropped).
    pub abandoned: u64,
    /// Jobs answered with [`Error::Cut`](crate::Error::Cut).
    pub cut: u64,
    /// Jobs answered with a close error without running.
    pub refused: u64,
    /// Worker services replaced (dead, or after a panic).
    pub restarts: u64,
    /// Factory calls that failed.
    pub factory_failures: u64,
}

impl PoolStats {
    /// Jobs that have ended, however: the sum of every outcome.
    pub fn ended(&self) -> u64 {
        self.ok
            + self.errors
            + self.panicked
            + self.skipped
            + self.abandoned
            + self.cut
            + self.refused
    }
}

/// Closes and drains a [`Pool`](crate::Pool), and reads its counters.
///
/// Closing stops new jobs (`poll_ready` and `call` fail with
/// [`Closed::Shutdown`](crate::Closed::Shutdown)); every queued job still
/// runs, then the workers exit. A handle does not keep the pool open.
#[derive(Clone)]
pub struct PoolHandle {
    pool: Arc<dyn Control>,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Jobs that ran to an answer (`Ok`, `Err` or a panic) between the start
    /// of the drain and its end.
    pub finished: u64,
    /// Jobs answered with [`Error::Cut`](crate::Error::Cut) because the
    /// deadline passed first.
    pub cut: u64,
}

impl PoolHandle {
    pub(crate) fn new<Req: Send + 'static, Resp: Send + 'static>(
        shared: Arc<Shared<Req, Resp>>,
    ) -> Self {
        Self { pool: shared }
    }

    /// Stops taking jobs; queued jobs still run. Returns at once (see
    /// [`PoolHandle::drain`] to wait).
    pub fn close(&self) {
        self.pool.close();
    }

    /// The pool's counters now.
    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Closes, then waits until every queued job has run and the workers
    /// have exited.
    pub async fn drain(&self) -> DrainReport {
        self.drain_inner(None).await
    }

    /// Like [`PoolHandle::drain`], but at `deadline` every job still queued
    /// or running is answered with [`Error::Cut`](crate::Error::Cut)
    /// (running inner futures are dropped) and counted in the report.
    pub async fn drain_until(&self, deadline: Instant) -> DrainReport {
        self.drain_inner(Some(deadline)).await
    }

    async fn drain_inner(&self, deadline: Option<Instant>) -> DrainReport {
        let before = self.pool.stats();
        self.pool.close();
        let finished = self.pool.finished();
        match deadline {
            None => finished.cancelled().await,
            Some(deadline) => {
                tokio::select! {
                    () = finished.cancelled() => {}
                    () = tokio::time::sleep_until(deadline) => {
                        self.pool.cut();
                        // Each worker answers its job with Cut on its next
                        // poll and exits.
                        finished.cancelled().await;
                    }
                }
            }
        }
        let after = self.pool.stats();
        let ran = |s: &PoolStats| s.ok + s.errors + s.panicked;
        let report = DrainReport {
            finished: ran(&after) - ran(&before),
            cut: after.cut - before.cut,
        };
        tracing::info!(finished = report.finished, cut = report.cut, "pool drained");
        report
    }

    /// A palisade-shutdown phase that drains this pool within `deadline`:
    /// it reports `"N pool job(s) finished"` and, when the deadline cuts it,
    /// `"M pool job(s) cut"`.
    ///
    /// Place it after the phase that drains the requests feeding the pool.
    #[cfg(feature = "shutdown")]
    pub fn drain_phase(
        &self,
        name: impl Into<String>,
        deadline: std::time::Duration,
    ) -> palisade_shutdown::Phase {
        let handle = self.clone();
        palisade_shutdown::Phase::new(name, deadline).action(move |ctx| async move {
            let report = handle.drain_until(ctx.deadline()).await;
            ctx.finished(format!("{} pool job(s) finished", report.finished));
            if report.cut > 0 {
                ctx.cut(format!("{} pool job(s) cut", report.cut));
            }
        })
    }
}

impl fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolHandle")
            .field("stats", &self.stats())
            .finish()
    }
}
