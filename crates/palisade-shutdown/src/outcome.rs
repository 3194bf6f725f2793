//! The report a finished shutdown hands back.

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

/// What started the shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A process signal, e.g. `"SIGTERM"`.
    Signal(&'static str),
    /// [`Shutdown::start`](crate::Shutdown::start) called by the program.
    Requested,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Signal(name) => f.write_str(name),
            Trigger::Requested => f.write_str("requested"),
        }
    }
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseStatus {
    /// The phase's work finished before its deadline.
    Completed,
    /// The deadline passed; whatever was still running was cut.
    DeadlineExceeded,
    /// A forced shutdown (second signal, [`Shutdown::force`](crate::Shutdown::force))
    /// cut the phase short.
    Forced,
    /// The phase never ran because the shutdown was forced before it.
    Skipped,
}

impl PhaseStatus {
    /// A short lowercase name, used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseStatus::Completed => "completed",
            PhaseStatus::DeadlineExceeded => "deadline_exceeded",
            PhaseStatus::Forced => "forced",
            PhaseStatus::Skipped => "skipped",
        }
    }
}

impl fmt::Display for PhaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The report of one phase.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PhaseOutcome {
    /// The phase's name.
    pub name: String,
    /// The phase's configured deadline.
    pub deadline: Duration,
    /// How long the phase ran (zero when skipped).
    pub elapsed: Duration,
    /// How it ended.
    pub status: PhaseStatus,
    /// What finished in time, as reported by the phase (e.g. "12 connections
    /// closed gracefully").
    pub finished: Vec<String>,
    /// What was cut: tasks aborted at the deadline, connections force-closed,
    /// requests that never completed.
    pub cut: Vec<String>,
}

impl PhaseOutcome {
    /// Whether the phase completed and cut nothing.
    pub fn is_clean(&self) -> bool {
        self.status == PhaseStatus::Completed && self.cut.is_empty()
    }
}

impl fmt::Display for PhaseOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "phase {}: {} in {:?} (deadline {:?})",
            self.name, self.status, self.elapsed, self.deadline
        )?;
        if !self.finished.is_empty() {
            write!(f, "; finished: {}", self.finished.join(", "))?;
        }
        if !self.cut.is_empty() {
            write!(f, "; cut: {}", self.cut.join(", "))?;
        }
        Ok(())
    }
}

/// The report of a whole shutdown, returned by
/// [`Shutdown::run`](crate::Shutdown::run).
///
/// Log it (its `Display` prints one line per phase) and exit with
/// [`Outcome::exit_code`]: 0 when every phase completed and nothing was cut,
/// 1 when something was cut at a deadline, 3 when the shutdown was forced
/// (2 is left to command-line usage errors, which clap and most tools exit
/// with).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// What started the shutdown.
    pub trigger: Trigger,
    /// Whether a second signal or [`Shutdown::force`](crate::Shutdown::force)
    /// cut the shutdown short.
    pub forced: bool,
    /// One entry per registered phase, in order.
    pub phases: Vec<PhaseOutcome>,
    /// Time from the start of the first phase to the end of the last.
    pub elapsed: Duration,
}

impl Outcome {
    /// Whether every phase completed and nothing was cut.
    pub fn is_clean(&self) -> bool {
        !self.forced && self.phases.iter().all(PhaseOutcome::is_clean)
    }

    /// Everything that was cut, as `(phase, what)` pairs.
    pub fn cut(&self) -> impl Iterator<Item = (&str, &str)> {
        self.phases
            .iter()
            .flat_map(|p| p.cut.iter().map(move |c| (p.name.as_str(), c.as_str())))
    }

    /// The phase named `name`, if registered.
    pub fn phase(&self, name: &str) -> Option<&PhaseOutcome> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// 0 when clean, 1 when something was cut at a deadline, 3 when forced.
    pub fn code(&self) -> u8 {
        if self.forced {
            3
        } else if self.is_clean() {
            0
        } else {
            1
        }
    }

    /// [`Outcome::code`] as a process exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shutdown ({}) {} in {:?}",
            self.trigger,
            if self.forced {
                "forced"
            } else if self.is_clean() {
                "clean"
            } else {
                "cut"
            },
            self.elapsed
        )?;
        for phase in &self.phases {
            write!(f, "\n  {phase}")?;
        }
        Ok(())
    }
}
