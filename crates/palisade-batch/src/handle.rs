//! Closing and draining batchers: [`BatchHandle`], and the palisade-shutdown
//! phase built from it.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

/// What a handle does to one batcher, whatever its request and response
/// types.
pub(crate) trait Control: Send + Sync {
    fn close(&self);
    fn cut(&self);
    fn finished(&self) -> CancellationToken;
    fn counts(&self) -> Counts;
}

/// Counters of one batcher at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pending: u64,
    answered: u64,
    cut: u64,
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

    fn counts(&self) -> Counts {
        let s = &self.stats;
        Counts {
            pending: s.pending.load(Ordering::Relaxed),
            answered: s.answered.load(Ordering::Relaxed),
            cut: s.cut.load(Ordering::Relaxed),
        }
    }
}

/// The batchers a [`BatchLayer`](crate::BatchLayer) built (each `layer`
/// call spawns one), or the single one of a [`Batch`](crate::Batch).
#[derive(Default)]
pub(crate) struct Registry {
    batchers: Mutex<Vec<Weak<dyn Control>>>,
}

impl Registry {
    pub(crate) fn add(&self, batcher: Weak<dyn Control>) {
        let mut all = self.batchers.lock().unwrap_or_else(|p| p.into_inner());
        // Forget batchers that are gone, so a layer applied per connection
        // does not grow this list without bound.
        all.retain(|b| b.strong_count() > 0);
        all.push(batcher);
    }

    fn live(&self) -> Vec<Arc<dyn Control>> {
        let all = self.batchers.lock().unwrap_or_else(|p| p.into_inner());
        all.iter().filter_map(Weak::upgrade).collect()
    }
}

/// Closes and drains batchers: the ones a [`BatchLayer`](crate::BatchLayer)
/// built (from [`BatchLayer::handle`](crate::BatchLayer::handle)), or one
/// [`Batch`](crate::Batch) (from [`Batch::handle`](crate::Batch::handle)).
///
/// Closing stops new items (`poll_ready` and `call` fail with
/// [`Closed::Shutdown`](crate::Closed::Shutdown)); everything already queued
/// is flushed at once, without waiting for a timer, and answered. Clones
/// control the same batchers.
#[derive(Clone)]
pub struct BatchHandle {
    registry: Arc<Registry>,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Items answered (with their result or their batch's error) between the
    /// start of the drain and its end.
    pub flushed: u64,
    /// Items answered with [`Error::Cut`](crate::Error::Cut) because the
    /// deadline passed first.
    pub cut: u64,
}

impl BatchHandle {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    pub(crate) fn single<Req: Send + 'static, Resp: Send + 'static>(
        shared: Arc<Shared<Req, Resp>>,
    ) -> Self {
        let registry = Arc::new(Registry::default());
        let shared: Arc<dyn Control> = shared;
        registry.add(Arc::downgrade(&shared));
        Self { registry }
    }

    /// Stops taking items and flushes what is queued; returns at once (see
    /// [`BatchHandle::drain`] to wait).
    pub fn close(&self) {
        for b in self.registry.live() {
            b.close();
        }
    }

    /// Items queued or in flight, not yet answered.
    pub fn pending(&self) -> u64 {
        self.registry
            .live()
            .iter()
            .map(|b| b.counts().pending)
            .sum()
    }

    /// Closes, then waits until every item has been answered and the workers
    /// have exited.
    pub async fn drain(&self) -> DrainReport {
        self.drain_inner(None).await
    }

    /// Like [`BatchHandle::drain`], but at `deadline` whatever is still
    /// queued or in flight is answered with [`Error::Cut`](crate::Error::Cut)
    /// (in-flight inner calls are dropped) and counted in the report.
    pub async fn drain_until(&self, deadline: Instant) -> DrainReport {
        self.drain_inner(Some(deadline)).await
    }

    async fn drain_inner(&self, deadline: Option<Instant>) -> DrainReport {
        let batchers = self.registry.live();
        let before: Vec<Counts> = batchers.iter().map(|b| b.counts()).collect();
        for b in &batchers {
            b.close();
        }
        for b in &batchers {
            let finished = b.finished();
            match deadline {
                None => finished.cancelled().await,
                Some(deadline) => {
                    tokio::select! {
                        () = finished.cancelled() => {}
                        () = tokio::time::sleep_until(deadline) => {
                            b.cut();
                            // The worker answers everything with Cut on
                            // its next poll and exits.
                            finished.cancelled().await;
                        }
                    }
                }
            }
        }
        let mut report = DrainReport::default();
        for (b, before) in batchers.iter().zip(before) {
            let after = b.counts();
            report.flushed += after.answered - before.answered;
            report.cut += after.cut - before.cut;
        }
        tracing::info!(
            flushed = report.flushed,
            cut = report.cut,
            "batchers drained"
        );
        report
    }

    /// A palisade-shutdown phase that drains these batchers within
    /// `deadline`: it reports `"N batch item(s) flushed"` as finished and,
    /// when the deadline cuts it, `"M batch item(s) cut"`.
    ///
    /// Place it after the phase that drains the requests feeding the
    /// batchers (their callers must have stopped arriving first).
    #[cfg(feature = "shutdown")]
    pub fn drain_phase(
        &self,
        name: impl Into<String>,
        deadline: std::time::Duration,
    ) -> palisade_shutdown::Phase {
        let handle = self.clone();
        palisade_shutdown::Phase::new(name, deadline).action(move |ctx| async move {
            // Cut at the phase's own deadline; the coordinator's cut grace
            // leaves time to answer the cut items and write the report.
            let report = handle.drain_until(ctx.deadline()).await;
            ctx.finished(format!("{} batch item(s) flushed", report.flushed));
            if report.cut > 0 {
                ctx.cut(format!("{} batch item(s) cut", report.cut));
            }
        })
    }
}

impl fmt::Debug for BatchHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchHandle")
            .field("batchers", &self.registry.live().len())
            .field("pending", &self.pending())
            .finish()
    }
}
