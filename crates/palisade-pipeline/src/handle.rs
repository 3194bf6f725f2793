//! Watching, closing and draining a running pipeline: [`PipelineHandle`],
//! its [`DrainReport`], and the palisade-shutdown phase built from it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::OnError;
use crate::fanout::BranchStats;
use crate::stats::{StageShared, StageStats, bottleneck};

/// Name under which [`DrainReport::cut`] lists an item the feeder had taken
/// from the input but not yet queued.
pub const INPUT: &str = "input";

/// What every part of one running pipeline shares.
pub(crate) struct Control {
    pub(crate) name: Arc<str>,
    pub(crate) stages: Vec<Arc<StageShared>>,
    /// Items queued in front of the first stage.
    pub(crate) admitted: Arc<AtomicU64>,
    /// Items the last stage handed to the output.
    pub(crate) completed: Arc<AtomicU64>,
    /// Items taken from the input and dropped by a cut before being queued.
    pub(crate) input_cut: AtomicU64,
    /// Completed items nobody read: the output was dropped or stopped.
    pub(crate) discarded: AtomicU64,
    pub(crate) on_error: OnError,
    /// Stops the feeder (a drain).
    pub(crate) close: CancellationToken,
    /// Makes every task drop what it holds, count it, and end.
    pub(crate) cut: CancellationToken,
    /// Cancelled once every task has ended.
    pub(crate) finished: CancellationToken,
    pub(crate) branches: Mutex<Vec<Arc<dyn Fn() -> BranchStats + Send + Sync>>>,
}

impl Control {
    pub(crate) fn new(
        name: Arc<str>,
        stages: Vec<Arc<StageShared>>,
        admitted: Arc<AtomicU64>,
        completed: Arc<AtomicU64>,
        on_error: OnError,
        close: CancellationToken,
        cut: CancellationToken,
    ) -> Self {
        Self {
            name,
            stages,
            admitted,
            completed,
            input_cut: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            on_error,
            close,
            cut,
            finished: CancellationToken::new(),
            branches: Mutex::new(Vec::new()),
        }
    }
}

/// Watches and stops a running pipeline; from [`Pipeline::run`](crate::Pipeline::run).
/// Clones control the same pipeline.
#[derive(Clone)]
pub struct PipelineHandle {
    control: Arc<Control>,
}

/// What a drain found when every task had ended.
///
/// `admitted == completed + cut.iter().map(|(_, n)| n).sum()` always holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Items taken from the input.
    pub admitted: u64,
    /// Items that came out of the last stage (failed ones included).
    pub completed: u64,
    /// Items dropped by the deadline, by stage (in pipeline order, only the
    /// stages that dropped any; [`INPUT`] for one the feeder held).
    pub cut: Vec<(String, u64)>,
    /// Completed items nobody read, because the output was dropped or
    /// stopped by [`OnError::Stop`](crate::OnError::Stop).
    pub discarded: u64,
}

impl DrainReport {
    /// Items cut, over all stages.
    pub fn total_cut(&self) -> u64 {
        self.cut.iter().map(|(_, n)| n).sum()
    }
}

impl PipelineHandle {
    pub(crate) fn new(control: Arc<Control>) -> Self {
        Self { control }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.control.name
    }

    /// Stops taking input; what was admitted keeps flowing and comes out.
    /// Returns at once (see [`drain`](Self::drain) to wait).
    pub fn close(&self) {
        self.control.close.cancel();
    }

    /// Whether every stage task has ended (the input ended, or a drain or
    /// cut finished).
    pub fn is_finished(&self) -> bool {
        self.control.finished.is_cancelled()
    }

    /// Every stage's counters, in pipeline order.
    pub fn stats(&self) -> Vec<StageStats> {
        self.control.stages.iter().map(|s| s.snapshot()).collect()
    }

    /// Every fan-out branch's counters, in the order given to
    /// [`run_fan_out`](crate::Pipeline::run_fan_out); empty otherwise.
    pub fn branches(&self) -> Vec<BranchStats> {
        let all = self
            .control
            .branches
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.iter().map(|f| f()).collect()
    }

    /// The stage limiting throughput now: the one using the largest fraction
    /// of its capacity (ties: the deeper queue). Also sets the
    /// `palisade_pipeline_bottleneck` gauge to 1 for it and 0 for the others.
    /// `None` before any stage has worked.
    pub fn bottleneck(&self) -> Option<StageStats> {
        let stats = self.stats();
        let best = bottleneck(&stats);
        for (i, s) in self.control.stages.iter().enumerate() {
            s.metrics
                .bottleneck
                .set(if Some(i) == best { 1.0 } else { 0.0 });
        }
        best.map(|i| stats[i].clone())
    }

    /// Closes, then waits until every admitted item has come out of the
    /// last stage and every task has ended. The output must keep being read
    /// (or be dropped), or the last stage waits for room.
    pub async fn drain(&self) -> DrainReport {
        self.close();
        self.control.finished.cancelled().await;
        self.report()
    }

    /// Like [`drain`](Self::drain), but at `deadline` every stage drops
    /// what it still holds (queued, in flight, waiting) and counts it; the
    /// report says how many items were cut at which stage.
    pub async fn drain_until(&self, deadline: Instant) -> DrainReport {
        self.close();
        tokio::select! {
            () = self.control.finished.cancelled() => {}
            () = tokio::time::sleep_until(deadline) => {
                self.control.cut.cancel();
                self.control.finished.cancelled().await;
            }
        }
        let report = self.report();
        tracing::info!(
            pipeline = %self.control.name,
            completed = report.completed,
            cut = report.total_cut(),
            "pipeline drained"
        );
        report
    }

    /// The counters as a [`DrainReport`] (final once
    /// [`is_finished`](Self::is_finished)).
    pub fn report(&self) -> DrainReport {
        let c = &self.control;
        let input_cut = c.input_cut.load(Ordering::Relaxed);
        let mut cut = Vec::new();
        if input_cut > 0 {
            cut.push((INPUT.to_owned(), input_cut));
        }
        for s in &c.stages {
            let n = s.cut.load(Ordering::Relaxed);
            if n > 0 {
                cut.push((s.name.to_string(), n));
            }
        }
        DrainReport {
            admitted: c.admitted.load(Ordering::Acquire) + input_cut,
            completed: c.completed.load(Ordering::Acquire),
            cut,
            discarded: c.discarded.load(Ordering::Relaxed),
        }
    }

    /// A palisade-shutdown phase that drains this pipeline within
    /// `deadline`: it reports `"N pipeline item(s) completed"` as finished
    /// and, when the deadline cuts it, `"M pipeline item(s) cut (stage: n,
    /// ...)"`.
    ///
    /// Place it after the phases that stop the producers (in a server: after
    /// the requests have drained), so nothing arrives once it closes.
    #[cfg(feature = "shutdown")]
    pub fn drain_phase(
        &self,
        name: impl Into<String>,
        deadline: std::time::Duration,
    ) -> palisade_shutdown::Phase {
        let handle = self.clone();
        palisade_shutdown::Phase::new(name, deadline).action(move |ctx| async move {
            let report = handle.drain_until(ctx.deadline()).await;
            ctx.finished(format!("{} pipeline item(s) completed", report.completed));
            if report.total_cut() > 0 {
                let by_stage: Vec<String> = report
                    .cut
                    .iter()
                    .map(|(s, n)| format!("{s}: {n}"))
                    .collect();
                ctx.cut(format!(
                    "{} pipeline item(s) cut ({})",
                    report.total_cut(),
                    by_stage.join(", ")
                ));
            }
        })
    }
}

impl fmt::Debug for PipelineHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineHandle")
            .field("name", &self.control.name)
            .field("stages", &self.control.stages.len())
            .field("finished", &self.is_finished())
            .finish()
    }
}
