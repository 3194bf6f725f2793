//! Metric handles, registered once per pool so the hot path formats no
//! labels.

use metrics::{Counter, Gauge};

use crate::metric_names as names;

/// How a pooled job ended (the `outcome` label of the jobs counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The inner service answered `Ok`.
    Ok,
    /// The inner service answered `Err` (passed to the caller unchanged).
    Error,
    /// The job panicked.
    Panic,
    /// Its caller had gone before a worker took it: never run.
    Skipped,
    /// Its caller went while it ran: the inner future was dropped.
    Abandoned,
    /// Answered with `Error::Cut` at a drain deadline.
    Cut,
    /// Answered with a close error (the factory kept failing, or the
    /// workers are gone) without running.
    Refused,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::Panic,
        Outcome::Skipped,
        Outcome::Abandoned,
        Outcome::Cut,
        Outcome::Refused,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Panic => "panic",
            Outcome::Skipped => "skipped",
            Outcome::Abandoned => "abandoned",
            Outcome::Cut => "cut",
            Outcome::Refused => "refused",
        }
    }

    fn index(self) -> usize {
        Outcome::ALL
            .iter()
            .position(|o| *o == self)
            .expect("every outcome is in Outcome::ALL")
    }
}

/// Why a worker's service was replaced (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    /// Its `poll_ready` failed (or panicked): tower's signal of a dead
    /// service.
    Dead,
    /// A call on it panicked; its state may be broken.
    Panic,
}

pub(crate) struct PoolMetrics {
    jobs: [Counter; Outcome::ALL.len()],
    restart_dead: Counter,
    restart_panic: Counter,
    pub(crate) factory_failures: Counter,
    pub(crate) queued: Gauge,
    pub(crate) busy: Gauge,
}

impl PoolMetrics {
    pub(crate) fn new(pool: &str) -> Self {
        let p = pool.to_owned();
        let restarts = |reason: &'static str| metrics::counter!(names::WORKER_RESTARTS, "pool" => p.clone(), "reason" => reason);
        Self {
            jobs: Outcome::ALL.map(
                |o| metrics::counter!(names::JOBS, "pool" => p.clone(), "outcome" => o.as_str()),
            ),
            restart_dead: restarts("dead"),
            restart_panic: restarts("panic"),
            factory_failures: metrics::counter!(names::FACTORY_FAILURES, "pool" => p.clone()),
            queued: metrics::gauge!(names::QUEUED, "pool" => p.clone()),
            busy: metrics::gauge!(names::BUSY_WORKERS, "pool" => p),
        }
    }

    pub(crate) fn job(&self, outcome: Outcome) {
        self.jobs[outcome.index()].increment(1);
    }

    pub(crate) fn restarted(&self, why: Restart) {
        match why {
            Restart::Dead => self.restart_dead.increment(1),
            Restart::Panic => self.restart_panic.increment(1),
        }
    }
}

/// How a CPU job ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CpuOutcome {
    Ok,
    Panic,
    Skipped,
    Overloaded,
}

pub(crate) struct CpuMetrics {
    ok: Counter,
    panic: Counter,
    skipped: Counter,
    overloaded: Counter,
    pub(crate) running: Gauge,
    pub(crate) queued: Gauge,
}

impl CpuMetrics {
    pub(crate) fn new(pool: &str) -> Self {
        let p = pool.to_owned();
        let jobs = |outcome: &'static str| metrics::counter!(names::CPU_JOBS, "pool" => p.clone(), "outcome" => outcome);
        Self {
            ok: jobs("ok"),
            panic: jobs("panic"),
            skipped: jobs("skipped"),
            overloaded: jobs("overloaded"),
            running: metrics::gauge!(names::CPU_RUNNING, "pool" => p.clone()),
            queued: metrics::gauge!(names::CPU_QUEUED, "pool" => p),
        }
    }

    pub(crate) fn job(&self, outcome: CpuOutcome) {
        match outcome {
            CpuOutcome::Ok => self.ok.increment(1),
            CpuOutcome::Panic => self.panic.increment(1),
            CpuOutcome::Skipped => self.skipped.increment(1),
            CpuOutcome::Overloaded => self.overloaded.increment(1),
        }
    }
}
