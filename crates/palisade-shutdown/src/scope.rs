//! Scopes: a tree of cancellation tokens, each with the tasks spawned in it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// A node in the shutdown tree: a cancellation token plus the tasks spawned in
/// it.
///
/// Cancelling a scope cancels every scope created from it with
/// [`Scope::child`], never its parent or siblings. Tasks spawned with
/// [`Scope::spawn`] are tracked by name, so a shutdown phase can wait for them
/// ([`Scope::wait`]) and, at its deadline, abort the ones still running and
/// report their names ([`Scope::abort`]).
///
/// Clones share the same scope. The root scope of a shutdown is
/// [`Shutdown::scope`](crate::Shutdown::scope). See the crate docs for an
/// example.
#[derive(Clone)]
pub struct Scope {
    inner: Arc<ScopeInner>,
}

struct ScopeInner {
    /// Full path from the root, `/`-separated, used in reports.
    path: String,
    token: CancellationToken,
    tasks: Mutex<Tasks>,
    /// Notified (all waiters) whenever the last live task of this scope
    /// ends. Waiters register before checking `live`, so an end between
    /// the check and the await still wakes them; nothing is ever closed or
    /// reopened, so one waiter can never undo what another waits for.
    idle: Notify,
    children: Mutex<Vec<Scope>>,
}

#[derive(Default)]
struct Tasks {
    next_id: u64,
    live: HashMap<u64, (Cow<'static, str>, AbortHandle)>,
}

/// Removes a task's entry when its future is dropped: on completion, on panic
/// and on abort alike.
struct Registration {
    scope: Arc<ScopeInner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut tasks = lock(&self.scope.tasks);
        tasks.live.remove(&self.id);
        if tasks.live.is_empty() {
            drop(tasks);
            self.scope.idle.notify_waiters();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked: every
    // critical section is a single insert/remove/clone.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// === impl Scope ===

impl Scope {
    /// Creates a new root scope named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_token(name.into(), CancellationToken::new())
    }

    fn with_token(path: String, token: CancellationToken) -> Self {
        Self {
            inner: Arc::new(ScopeInner {
                path,
                token,
                tasks: Mutex::new(Tasks::default()),
                idle: Notify::new(),
                children: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Creates a child scope. Cancelling `self` cancels the child; cancelling
    /// the child leaves `self` untouched.
    ///
    /// Children live as long as their parent (the parent keeps them to wait
    /// for and abort their tasks), so create scopes per component, not per
    /// connection or request.
    pub fn child(&self, name: &str) -> Scope {
        let child = Scope::with_token(
            format!("{}/{}", self.inner.path, name),
            self.inner.token.child_token(),
        );
        lock(&self.inner.children).push(child.clone());
        child
    }

    /// The scope's path from the root, e.g. `shutdown/batcher`.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// Spawns `future` on the current tokio runtime as a task of this scope,
    /// under `name` (used in the outcome report if it has to be cut).
    ///
    /// The task should watch [`Scope::cancelled`] to wind down on its own.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime, like [`tokio::spawn`].
    pub fn spawn<F>(&self, name: impl Into<Cow<'static, str>>, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut tasks = lock(&self.inner.tasks);
        let id = tasks.next_id;
        tasks.next_id += 1;
        let registration = Registration {
            scope: self.inner.clone(),
            id,
        };
        let name = name.into();
        // Named `palisade-shutdown <name>` under `--cfg tokio_unstable`.
        let handle = palisade_core::task::spawn_named(
            format_args!("palisade-shutdown {name}"),
            async move {
                let _registration = registration;
                future.await
            },
        );
        // The entry is inserted while the lock is held, so a task finishing
        // on another worker removes it only after it exists.
        tasks.live.insert(id, (name, handle.abort_handle()));
        handle
    }

    /// The scope's cancellation token (a clone; cancelling it cancels the
    /// scope).
    pub fn token(&self) -> CancellationToken {
        self.inner.token.clone()
    }

    /// Cancels this scope and all of its descendants.
    pub fn cancel(&self) {
        self.inner.token.cancel();
    }

    /// Whether this scope (or one of its ancestors) was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Resolves when this scope (or one of its ancestors) is cancelled.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.inner.token.cancelled()
    }

    /// Number of tasks still running in this scope and its descendants.
    pub fn running(&self) -> usize {
        let own = lock(&self.inner.tasks).live.len();
        own + self.children().iter().map(Scope::running).sum::<usize>()
    }

    /// Waits until every task of this scope and its descendants has finished.
    ///
    /// Tasks spawned while waiting are waited for too.
    /// Any number of tasks may wait at once.
    pub async fn wait(&self) {
        loop {
            self.wait_own().await;
            for child in self.children() {
                Box::pin(child.wait()).await;
            }
            if self.running() == 0 {
                return;
            }
        }
    }

    /// Waits until this scope's own tasks have all ended.
    async fn wait_own(&self) {
        loop {
            let notified = self.inner.idle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.inner.tasks).live.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Aborts every task still running in this scope and its descendants and
    /// returns their names as `path/name`, sorted.
    pub fn abort(&self) -> Vec<String> {
        let mut cut = Vec::new();
        self.abort_into(&mut cut);
        cut.sort();
        cut
    }

    fn abort_into(&self, cut: &mut Vec<String>) {
        for (name, handle) in lock(&self.inner.tasks).live.values() {
            handle.abort();
            cut.push(format!("{}/{}", self.inner.path, name));
        }
        for child in self.children() {
            child.abort_into(cut);
        }
    }

    fn children(&self) -> Vec<Scope> {
        lock(&self.inner.children).clone()
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("path", &self.inner.path)
            .field("cancelled", &self.is_cancelled())
            .field("running", &self.running())
            .finish()
    }
}
