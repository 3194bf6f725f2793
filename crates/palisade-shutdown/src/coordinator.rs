//! The shutdown coordinator: a root handle, ordered phases with deadlines,
//! and the outcome report.

use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};

use crate::error::Error;
use crate::metric_names;
use crate::outcome::{Outcome, PhaseOutcome, PhaseStatus, Trigger};
use crate::readiness::Readiness;
use crate::scope::Scope;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
type Action = Box<dyn FnOnce(PhaseContext) -> BoxFuture + Send + 'static>;

/// Default time a phase's action gets, after its deadline, to react to
/// [`PhaseContext::expired`] (force-close, count what it cut) before it is
/// dropped.
pub const DEFAULT_CUT_GRACE: Duration = Duration::from_millis(250);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The root shutdown handle.
///
/// Create one per process, register its [phases](Phase) in order with
/// [`Shutdown::add_phase`], spawn tasks in its [scope](Shutdown::scope) (or
/// child scopes), start it with [`Shutdown::start`] or the
/// [signal helper](crate::signal), and await [`Shutdown::run`] for the
/// [`Outcome`].
///
/// Clones share the same shutdown. See the crate docs for an example.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    root: Scope,
    readiness: Readiness,
    started: CancellationToken,
    forced: CancellationToken,
    trigger: Mutex<Option<Trigger>>,
    /// `None` once [`Shutdown::run`] has taken the phases.
    phases: Mutex<Option<Vec<Phase>>>,
}

// === impl Shutdown ===

impl Shutdown {
    /// Creates a shutdown with no phases, a root scope named `shutdown` and a
    /// ready [`Readiness`] flag.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                root: Scope::new("shutdown"),
                readiness: Readiness::new(true),
                started: CancellationToken::new(),
                forced: CancellationToken::new(),
                trigger: Mutex::new(None),
                phases: Mutex::new(Some(Vec::new())),
            }),
        }
    }

    /// The root scope. It is cancelled after the last phase has run.
    pub fn scope(&self) -> Scope {
        self.inner.root.clone()
    }

    /// The readiness flag; it turns `false` as soon as the shutdown starts.
    pub fn readiness(&self) -> Readiness {
        self.inner.readiness.clone()
    }

    /// Appends a phase; phases run in the order they were added.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming `phase.name` if the name is empty or
    /// already used, [`Error::AlreadyStarted`] once [`Shutdown::run`] has
    /// begun running the phases.
    pub fn add_phase(&self, phase: Phase) -> Result<(), Error> {
        if phase.name.is_empty() {
            return Err(Error::invalid("phase.name", "must not be empty"));
        }
        let mut phases = lock(&self.inner.phases);
        let phases = phases.as_mut().ok_or(Error::AlreadyStarted)?;
        if phases.iter().any(|p| p.name == phase.name) {
            return Err(Error::invalid(
                "phase.name",
                format!("`{}` is registered twice", phase.name),
            ));
        }
        phases.push(phase);
        Ok(())
    }

    /// Starts the shutdown: readiness turns `false` and [`Shutdown::run`]
    /// begins the phases. Returns `true` if this call started it, `false` if
    /// it had already started (the first trigger is kept).
    pub fn start(&self, trigger: Trigger) -> bool {
        {
            let mut slot = lock(&self.inner.trigger);
            if slot.is_some() {
                return false;
            }
            *slot = Some(trigger);
        }
        self.inner.readiness.set(false);
        tracing::info!(%trigger, "shutdown started");
        metrics::counter!(metric_names::STARTED, "trigger" => trigger.to_string()).increment(1);
        self.inner.started.cancel();
        true
    }

    /// Forces the shutdown: the running phase is cut at once (its action gets
    /// one last poll), the remaining phases are skipped. Starts the shutdown
    /// first if needed.
    pub fn force(&self) {
        self.start(Trigger::Requested);
        if !self.inner.forced.is_cancelled() {
            tracing::warn!("shutdown forced");
            metrics::counter!(metric_names::FORCED).increment(1);
            self.inner.forced.cancel();
        }
    }

    /// Whether the shutdown has started.
    pub fn is_started(&self) -> bool {
        self.inner.started.is_cancelled()
    }

    /// Whether the shutdown was forced.
    pub fn is_forced(&self) -> bool {
        self.inner.forced.is_cancelled()
    }

    /// Resolves when the shutdown starts.
    pub fn started(&self) -> WaitForCancellationFuture<'_> {
        self.inner.started.cancelled()
    }

    /// Waits for the shutdown to start, runs every phase in order, cancels
    /// the root scope and returns the report. It also logs the report: one
    /// `info` event per clean phase, a `warn` event naming what was cut.
    ///
    /// Call it once; a second call finds no phases to run.
    pub async fn run(&self) -> Outcome {
        self.started().await;
        let phases = lock(&self.inner.phases).take().unwrap_or_default();
        let trigger = lock(&self.inner.trigger).unwrap_or(Trigger::Requested);
        let begin = Instant::now();
        let mut reports = Vec::with_capacity(phases.len());
        for phase in phases {
            let report = if self.is_forced() {
                PhaseOutcome {
                    name: phase.name,
                    deadline: phase.deadline,
                    elapsed: Duration::ZERO,
                    status: PhaseStatus::Skipped,
                    finished: Vec::new(),
                    cut: Vec::new(),
                }
            } else {
                self.run_phase(phase).await
            };
            log_phase(&report);
            reports.push(report);
        }
        self.inner.root.cancel();
        let forced = reports
            .iter()
            .any(|p| matches!(p.status, PhaseStatus::Forced | PhaseStatus::Skipped));
        let outcome = Outcome {
            trigger,
            forced,
            phases: reports,
            elapsed: begin.elapsed(),
        };
        if outcome.is_clean() {
            tracing::info!(elapsed = ?outcome.elapsed, "shutdown complete");
        } else {
            let cut: Vec<String> = outcome.cut().map(|(p, c)| format!("{p}: {c}")).collect();
            tracing::warn!(
                elapsed = ?outcome.elapsed,
                forced = outcome.forced,
                cut = %cut.join("; "),
                "shutdown cut work short"
            );
        }
        outcome
    }

    async fn run_phase(&self, phase: Phase) -> PhaseOutcome {
        let Phase {
            name,
            deadline: budget,
            grace,
            kind,
            cancel,
            wait,
        } = phase;
        let start = Instant::now();
        let deadline = start + budget;
        tracing::info!(phase = %name, deadline = ?budget, "shutdown phase started");
        metrics::gauge!(metric_names::PHASE, "phase" => name.clone()).set(1.0);
        let ctx = PhaseContext {
            inner: Arc::new(ContextInner {
                name: name.clone(),
                deadline,
                expired: CancellationToken::new(),
                notes: Mutex::new(Notes::default()),
            }),
        };
        for scope in &cancel {
            scope.cancel();
        }
        let tasks_before: Vec<usize> = wait.iter().map(Scope::running).collect();

        let status = match kind {
            Kind::Delay => {
                tokio::select! {
                    biased;
                    () = sleep_until(deadline) => PhaseStatus::Completed,
                    () = self.inner.forced.cancelled() => PhaseStatus::Forced,
                }
            }
            Kind::Work(action) => {
                let action_done = AtomicBool::new(false);
                let action = action.map(|a| a(ctx.clone()));
                let mut work = pin!(async {
                    if let Some(action) = action {
                        action.await;
                    }
                    action_done.store(true, Ordering::Release);
                    for scope in &wait {
                        scope.wait().await;
                    }
                });
                let status = tokio::select! {
                    biased;
                    () = &mut work => PhaseStatus::Completed,
                    () = self.inner.forced.cancelled() => PhaseStatus::Forced,
                    () = sleep_until(deadline) => PhaseStatus::DeadlineExceeded,
                };
                if status != PhaseStatus::Completed {
                    ctx.inner.expired.cancel();
                    for scope in &wait {
                        for task in scope.abort() {
                            ctx.cut(format!("task {task}"));
                        }
                    }
                    // Let the action react to the expiry (force-close, count
                    // what it cut); a forced shutdown gives it one poll.
                    let grace = if status == PhaseStatus::Forced {
                        Duration::ZERO
                    } else {
                        grace
                    };
                    let _ = timeout(grace, &mut work).await;
                    if !action_done.load(Ordering::Acquire) {
                        ctx.cut(format!("action of phase `{name}`"));
                    }
                }
                status
            }
        };
        if status == PhaseStatus::Completed {
            for (scope, n) in wait.iter().zip(tasks_before) {
                if n > 0 {
                    ctx.finished(format!("{n} task(s) in {}", scope.path()));
                }
            }
        }
        ctx.inner.expired.cancel();
        let notes = std::mem::take(&mut *lock(&ctx.inner.notes));
        let elapsed = start.elapsed();
        metrics::gauge!(metric_names::PHASE, "phase" => name.clone()).set(0.0);
        metrics::histogram!(
            metric_names::PHASE_DURATION,
            "phase" => name.clone(),
            "status" => status.as_str()
        )
        .record(elapsed.as_secs_f64());
        if !notes.cut.is_empty() {
            metrics::counter!(metric_names::CUT, "phase" => name.clone())
                .increment(notes.cut.len() as u64);
        }
        PhaseOutcome {
            name,
            deadline: budget,
            elapsed,
            status,
            finished: notes.finished,
            cut: notes.cut,
        }
    }
}

fn log_phase(report: &PhaseOutcome) {
    if report.is_clean() {
        tracing::info!(
            phase = %report.name,
            status = %report.status,
            elapsed = ?report.elapsed,
            finished = %report.finished.join(", "),
            "shutdown phase finished"
        );
    } else {
        tracing::warn!(
            phase = %report.name,
            status = %report.status,
            elapsed = ?report.elapsed,
            finished = %report.finished.join(", "),
            cut = %report.cut.join(", "),
            "shutdown phase cut work"
        );
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phases: Option<Vec<String>> = lock(&self.inner.phases)
            .as_ref()
            .map(|ps| ps.iter().map(|p| p.name.clone()).collect());
        f.debug_struct("Shutdown")
            .field("started", &self.is_started())
            .field("forced", &self.is_forced())
            .field("phases", &phases)
            .field("root", &self.inner.root)
            .finish()
    }
}

/// One step of the shutdown sequence, with a deadline.
///
/// A phase may run an [action](Phase::action), [cancel](Phase::cancel)
/// scopes when it starts and [wait](Phase::wait) for the tasks of scopes.
/// It completes when the action has returned and the waited scopes are empty.
/// At the deadline, the tasks still running in the waited scopes are aborted
/// and reported as cut, the action's [`PhaseContext::expired`] fires and the
/// action gets a short [grace](Phase::cut_grace) to force-close what it owns
/// and report it, then it is dropped.
///
/// A [delay](Phase::delay) phase just waits its whole duration (the
/// readiness delay) and counts as completed.
pub struct Phase {
    name: String,
    deadline: Duration,
    grace: Duration,
    kind: Kind,
    cancel: Vec<Scope>,
    wait: Vec<Scope>,
}

enum Kind {
    Delay,
    Work(Option<Action>),
}

// === impl Phase ===

impl Phase {
    /// A phase named `name` that must finish within `deadline`. Without an
    /// action, scopes to cancel or scopes to wait for, it completes at once.
    pub fn new(name: impl Into<String>, deadline: Duration) -> Self {
        Self {
            name: name.into(),
            deadline,
            grace: DEFAULT_CUT_GRACE,
            kind: Kind::Work(None),
            cancel: Vec::new(),
            wait: Vec::new(),
        }
    }

    /// A phase that waits for `delay` and then completes, e.g. to keep
    /// serving after readiness turned off until load balancers have noticed.
    pub fn delay(name: impl Into<String>, delay: Duration) -> Self {
        Self {
            kind: Kind::Delay,
            ..Self::new(name, delay)
        }
    }

    /// Runs `action` when the phase starts; the phase is not complete until
    /// the returned future resolves. The [`PhaseContext`] tells the action its
    /// deadline and lets it report what finished and what it cut.
    ///
    /// Replaces a previous action. Has no effect on a [delay](Phase::delay)
    /// phase.
    pub fn action<F, Fut>(mut self, action: F) -> Self
    where
        F: FnOnce(PhaseContext) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if let Kind::Work(slot) = &mut self.kind {
            *slot = Some(Box::new(move |ctx| Box::pin(action(ctx))));
        }
        self
    }

    /// Cancels `scope` (and its children) when the phase starts.
    pub fn cancel(mut self, scope: &Scope) -> Self {
        self.cancel.push(scope.clone());
        self
    }

    /// Waits for every task of `scope` (and its children); at the deadline
    /// the ones still running are aborted and reported as cut. Has no effect
    /// on a [delay](Phase::delay) phase.
    pub fn wait(mut self, scope: &Scope) -> Self {
        self.wait.push(scope.clone());
        self
    }

    /// How long the action may still run after the deadline to react to
    /// [`PhaseContext::expired`] (default [`DEFAULT_CUT_GRACE`]).
    pub fn cut_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The phase's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The phase's deadline.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }
}

impl fmt::Debug for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Phase")
            .field("name", &self.name)
            .field("deadline", &self.deadline)
            .field("delay", &matches!(self.kind, Kind::Delay))
            .field("cancel", &self.cancel)
            .field("wait", &self.wait)
            .finish()
    }
}

/// What a phase's action gets: its deadline, a signal when the deadline has
/// passed, and a place to report what finished and what was cut.
///
/// Clones share the same phase.
#[derive(Clone)]
pub struct PhaseContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    name: String,
    deadline: Instant,
    expired: CancellationToken,
    notes: Mutex<Notes>,
}

#[derive(Default)]
struct Notes {
    finished: Vec<String>,
    cut: Vec<String>,
}

// === impl PhaseContext ===

impl PhaseContext {
    /// The phase's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The instant at which the phase is cut.
    pub fn deadline(&self) -> Instant {
        self.inner.deadline
    }

    /// Whether the deadline has passed (or the shutdown was forced).
    pub fn is_expired(&self) -> bool {
        self.inner.expired.is_cancelled()
    }

    /// Resolves when the deadline has passed or the shutdown was forced:
    /// time to force-close what is left and report it with
    /// [`PhaseContext::cut`].
    pub fn expired(&self) -> WaitForCancellationFutureOwned {
        self.inner.expired.clone().cancelled_owned()
    }

    /// Records something that finished in time.
    pub fn finished(&self, what: impl Into<String>) {
        lock(&self.inner.notes).finished.push(what.into());
    }

    /// Records something that was cut.
    pub fn cut(&self, what: impl Into<String>) {
        lock(&self.inner.notes).cut.push(what.into());
    }
}

impl fmt::Debug for PhaseContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhaseContext")
            .field("name", &self.inner.name)
            .field("deadline", &self.inner.deadline)
            .field("expired", &self.is_expired())
            .finish()
    }
}
