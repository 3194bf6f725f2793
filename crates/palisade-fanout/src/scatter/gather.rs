//! Gathering strategies: pure decision logic, no I/O and no timers. The
//! scatter future feeds each branch's result to the strategy and acts on the
//! [`Step`] it returns.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::BoxError;

use crate::error::{AllFailed, BranchError, ConfigError, QuorumFailed};

/// What the scatter future does after a branch result was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep waiting for the other branches.
    Continue,
    /// Finish now: the branches still running are cancelled (dropped).
    Done,
    /// The result is decided, but keep collecting stragglers for at most
    /// this long (or until every branch is in), then finish.
    Grace(Duration),
}

/// How a scatter call gathers its branches' results into one output.
///
/// The built-in strategies are [`All`], [`FirstOk`], [`Quorum`] and
/// [`Merged`] (any of them followed by a user reduction, see
/// [`GatherExt::merge`]). A strategy is shared by every call; the per-call
/// bookkeeping lives in [`Gather::State`].
pub trait Gather<T>: Strategy {
    /// What a successful call returns.
    type Output;
    /// Per-call state.
    type State;

    /// Starts a call over `branches` branches.
    fn begin(&self, branches: usize) -> Self::State;

    /// Records one branch's result. Every branch is recorded at most once;
    /// branches cut by a timeout or the deadline are recorded with that
    /// error.
    fn record(
        &self,
        state: &mut Self::State,
        branch: usize,
        result: Result<T, BranchError>,
    ) -> Step;

    /// Builds the call's result once [`record`](Gather::record) returned
    /// [`Step::Done`], the grace window ended, or every branch was
    /// recorded. Branches never recorded were cancelled.
    fn finish(&self, state: Self::State) -> Result<Self::Output, BoxError>;
}

/// The part of a strategy that does not depend on the response type:
/// its validation against the number of branches, run once when the
/// scatter service is built.
pub trait Strategy {
    /// Checks the strategy against the number of branches. The default
    /// accepts any number.
    fn validate(&self, branches: usize) -> Result<(), ConfigError> {
        let _ = branches;
        Ok(())
    }
}

/// Adds [`merge`](GatherExt::merge) to every [`Gather`].
pub trait GatherExt: Sized {
    /// Reduces this strategy's output to one value with `f` (a user merge:
    /// a union of search results, the newest version of a key).
    fn merge<F>(self, f: F) -> Merged<Self, F> {
        Merged {
            inner: self,
            f: Arc::new(f),
        }
    }
}

impl<G> GatherExt for G {}

// === impl All ===

/// Waits for every branch and returns each branch's own result, in branch
/// order: partial failures are kept, labelled by position.
#[derive(Debug, Clone, Copy, Default)]
pub struct All;

impl Strategy for All {}

impl<T> Gather<T> for All {
    type Output = Vec<Result<T, BranchError>>;
    type State = Vec<Option<Result<T, BranchError>>>;

    fn begin(&self, branches: usize) -> Self::State {
        (0..branches).map(|_| None).collect()
    }

    fn record(
        &self,
        state: &mut Self::State,
        branch: usize,
        result: Result<T, BranchError>,
    ) -> Step {
        state[branch] = Some(result);
        Step::Continue
    }

    fn finish(&self, state: Self::State) -> Result<Self::Output, BoxError> {
        // Every branch is recorded before `finish` for `All` (it never says
        // Done), so `None` only appears if the contract was broken.
        Ok(state
            .into_iter()
            .map(|r| r.unwrap_or(Err(BranchError::Deadline)))
            .collect())
    }
}

// === impl FirstOk ===

/// The first successful branch wins and the others are cancelled. When every
/// branch fails, the error is an [`AllFailed`] holding each failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct FirstOk;

/// The winning branch of a [`FirstOk`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Won<T> {
    /// The branch's position in the service set.
    pub branch: usize,
    /// Its response.
    pub response: T,
}

/// Per-call state of [`FirstOk`].
#[derive(Debug)]
pub struct FirstOkState<T> {
    won: Option<Won<T>>,
    failures: Vec<(usize, BranchError)>,
}

impl Strategy for FirstOk {}

impl<T> Gather<T> for FirstOk {
    type Output = Won<T>;
    type State = FirstOkState<T>;

    fn begin(&self, _branches: usize) -> Self::State {
        FirstOkState {
            won: None,
            failures: Vec::new(),
        }
    }

    fn record(
        &self,
        state: &mut Self::State,
        branch: usize,
        result: Result<T, BranchError>,
    ) -> Step {
        match result {
            Ok(response) => {
                state.won = Some(Won { branch, response });
                Step::Done
            }
            Err(e) => {
                state.failures.push((branch, e));
                Step::Continue
            }
        }
    }

    fn finish(&self, state: Self::State) -> Result<Self::Output, BoxError> {
        match state.won {
            Some(won) => Ok(won),
            None => {
                let mut failures = state.failures;
                failures.sort_by_key(|(i, _)| *i);
                Err(AllFailed { failures }.into())
            }
        }
    }
}

// === impl Quorum ===

/// Done as soon as `k` branches succeeded; fails as soon as `k` successes
/// became impossible. With a [`grace`](Quorum::grace) window, the call keeps
/// collecting successes that arrive within it after the quorum was reached.
///
/// The output is `(branch, response)` of the successes in the order they
/// arrived: exactly `k` without grace, `k` or more with it.
#[derive(Debug, Clone, Copy)]
pub struct Quorum {
    k: usize,
    grace: Option<Duration>,
}

impl Quorum {
    /// A quorum of `k` successes. `k` is checked against the number of
    /// branches when the scatter service is built: `0` or more than the
    /// branches is a [`ConfigError`] naming `quorum.k`.
    pub fn new(k: usize) -> Self {
        Self { k, grace: None }
    }

    /// Keeps collecting stragglers for `grace` after the quorum is reached.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// The quorum size.
    pub fn k(&self) -> usize {
        self.k
    }
}

/// Per-call state of [`Quorum`].
#[derive(Debug)]
pub struct QuorumState<T> {
    branches: usize,
    successes: Vec<(usize, T)>,
    failures: Vec<(usize, BranchError)>,
}

impl Strategy for Quorum {
    fn validate(&self, branches: usize) -> Result<(), ConfigError> {
        if self.k == 0 {
            return Err(crate::error::config_error("quorum.k", "must be at least 1"));
        }
        if self.k > branches {
            return Err(crate::error::config_error(
                "quorum.k",
                format!("is {} but there are only {branches} branches", self.k),
            ));
        }
        if self.grace.is_some_and(|g| g.is_zero()) {
            return Err(crate::error::config_error(
                "quorum.grace",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

impl<T> Gather<T> for Quorum {
    type Output = Vec<(usize, T)>;
    type State = QuorumState<T>;

    fn begin(&self, branches: usize) -> Self::State {
        QuorumState {
            branches,
            successes: Vec::with_capacity(self.k),
            failures: Vec::new(),
        }
    }

    fn record(
        &self,
        state: &mut Self::State,
        branch: usize,
        result: Result<T, BranchError>,
    ) -> Step {
        match result {
            Ok(response) => {
                state.successes.push((branch, response));
                if state.successes.len() == self.k {
                    return match self.grace {
                        Some(grace) => Step::Grace(grace),
                        None => Step::Done,
                    };
                }
                Step::Continue
            }
            Err(e) => {
                state.failures.push((branch, e));
                // Once decided, a late failure changes nothing.
                let decided = state.successes.len() >= self.k;
                if !decided && state.failures.len() > state.branches - self.k {
                    return Step::Done;
                }
                Step::Continue
            }
        }
    }

    fn finish(&self, state: Self::State) -> Result<Self::Output, BoxError> {
        if state.successes.len() >= self.k {
            Ok(state.successes)
        } else {
            Err(QuorumFailed {
                needed: self.k,
                succeeded: state.successes.iter().map(|(i, _)| *i).collect(),
                failures: state.failures,
            }
            .into())
        }
    }
}

// === impl Merged ===

/// A strategy whose output is reduced by a user function; built by
/// [`GatherExt::merge`].
pub struct Merged<G, F> {
    inner: G,
    f: Arc<F>,
}

impl<G: Clone, F> Clone for Merged<G, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            f: self.f.clone(),
        }
    }
}

impl<G: fmt::Debug, F> fmt::Debug for Merged<G, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Merged")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<G: Strategy, F> Strategy for Merged<G, F> {
    fn validate(&self, branches: usize) -> Result<(), ConfigError> {
        self.inner.validate(branches)
    }
}

impl<T, G, F, R> Gather<T> for Merged<G, F>
where
    G: Gather<T>,
    F: Fn(G::Output) -> Result<R, BoxError>,
{
    type Output = R;
    type State = G::State;

    fn begin(&self, branches: usize) -> Self::State {
        self.inner.begin(branches)
    }

    fn record(
        &self,
        state: &mut Self::State,
        branch: usize,
        result: Result<T, BranchError>,
    ) -> Step {
        self.inner.record(state, branch, result)
    }

    fn finish(&self, state: Self::State) -> Result<Self::Output, BoxError> {
        (self.f)(self.inner.finish(state)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err() -> Result<u32, BranchError> {
        Err(BranchError::TimedOut)
    }

    #[test]
    fn quorum_fails_as_soon_as_k_is_impossible() {
        let q = Quorum::new(2);
        let mut s = Gather::<u32>::begin(&q, 3);
        assert_eq!(q.record(&mut s, 0, err()), Step::Continue);
        assert_eq!(q.record(&mut s, 1, err()), Step::Done);
        let e = Gather::<u32>::finish(&q, s).unwrap_err();
        let e = e.downcast_ref::<QuorumFailed>().unwrap();
        assert_eq!(e.needed(), 2);
        assert_eq!(e.failures().len(), 2);
    }

    #[test]
    fn quorum_with_grace_asks_for_the_window_then_ignores_late_failures() {
        let q = Quorum::new(1).grace(Duration::from_millis(5));
        let mut s = Gather::<u32>::begin(&q, 3);
        assert_eq!(
            q.record(&mut s, 2, Ok(7)),
            Step::Grace(Duration::from_millis(5))
        );
        assert_eq!(q.record(&mut s, 0, err()), Step::Continue);
        assert_eq!(q.record(&mut s, 1, err()), Step::Continue);
        assert_eq!(Gather::<u32>::finish(&q, s).unwrap(), vec![(2, 7)]);
    }

    #[test]
    fn quorum_k_is_validated_against_the_branches() {
        assert_eq!(
            Strategy::validate(&Quorum::new(0), 3).unwrap_err().field(),
            "quorum.k"
        );
        assert_eq!(
            Strategy::validate(&Quorum::new(4), 3).unwrap_err().field(),
            "quorum.k"
        );
        assert!(Strategy::validate(&Quorum::new(3), 3).is_ok());
    }

    #[test]
    fn first_ok_sorts_failures_by_branch() {
        let mut s = Gather::<u32>::begin(&FirstOk, 2);
        assert_eq!(FirstOk.record(&mut s, 1, err()), Step::Continue);
        assert_eq!(FirstOk.record(&mut s, 0, err()), Step::Continue);
        let e = Gather::<u32>::finish(&FirstOk, s).unwrap_err();
        let e = e.downcast_ref::<AllFailed>().unwrap();
        let order: Vec<usize> = e.failures().iter().map(|(i, _)| *i).collect();
        assert_eq!(order, [0, 1]);
    }
}
