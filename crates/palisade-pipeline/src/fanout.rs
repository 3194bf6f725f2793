//! Fan-out: every result to several branches, each with its own bounded
//! buffer and overflow policy, so one slow sink cannot stall its siblings.
//!
//! Invariant of a branch buffer: `items.len() <= capacity`; the one task
//! that pushes (the distributor) and the one consumer that pops share it
//! under a mutex held only for the push or pop itself.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::stream::{Stream, StreamExt};
use tokio::sync::{Notify, mpsc};

use crate::error::{ConfigError, Error};
use crate::handle::Control;
use crate::metrics::BranchMetrics;
use crate::output::Output;
use crate::spawn::spawn_task;

/// What a full branch buffer does with the next result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Wait for room: nothing is lost, and the branch back-pressures the
    /// whole pipeline (and so its siblings).
    #[default]
    Block,
    /// Drop the incoming result (counted): keep the oldest.
    DropNewest,
    /// Drop the oldest buffered result (counted): keep the freshest.
    DropOldest,
}

impl Overflow {
    fn as_str(self) -> &'static str {
        match self {
            Overflow::Block => "block",
            Overflow::DropNewest => "drop_newest",
            Overflow::DropOldest => "drop_oldest",
        }
    }
}

/// One fan-out branch: a name, a buffer capacity (default 64) and an
/// overflow policy (default [`Overflow::Block`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchConfig {
    name: String,
    capacity: usize,
    overflow: Overflow,
}

impl BranchConfig {
    /// A branch named `name` (the `branch` metrics label).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            capacity: 64,
            overflow: Overflow::Block,
        }
    }

    /// Results buffered for this branch (default 64).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// What happens when the buffer is full (default [`Overflow::Block`]).
    pub fn overflow(mut self, policy: Overflow) -> Self {
        self.overflow = policy;
        self
    }
}

pub(crate) fn check(branches: &[BranchConfig]) -> Result<(), ConfigError> {
    if branches.is_empty() {
        return Err(ConfigError::new(
            None,
            "branches",
            "needs at least one branch",
        ));
    }
    for (i, b) in branches.iter().enumerate() {
        if b.name.is_empty() {
            return Err(ConfigError::new(
                None,
                "branches",
                "a branch name must not be empty",
            ));
        }
        if b.capacity == 0 {
            return Err(ConfigError::new(
                None,
                "branches",
                format!("branch {:?}: capacity must be at least 1", b.name),
            ));
        }
        if branches[..i].iter().any(|o| o.name == b.name) {
            return Err(ConfigError::new(
                None,
                "branches",
                format!("branch {:?} is named twice", b.name),
            ));
        }
    }
    Ok(())
}

/// One branch's counters (see [`PipelineHandle::branches`](crate::PipelineHandle::branches)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BranchStats {
    /// The branch's name.
    pub name: String,
    /// Results put into its buffer.
    pub delivered: u64,
    /// Results its overflow policy dropped (or that arrived after its
    /// output was dropped).
    pub dropped: u64,
    /// Results in its buffer now.
    pub depth: usize,
}

struct Queue<T> {
    items: VecDeque<T>,
    /// The distributor is done: no more results.
    closed: bool,
    reader_gone: bool,
    reader: Option<Waker>,
}

struct Branch<T> {
    name: String,
    capacity: usize,
    overflow: Overflow,
    queue: Mutex<Queue<T>>,
    room: Notify,
    delivered: AtomicU64,
    dropped: AtomicU64,
    metrics: BranchMetrics,
}

impl<T> Branch<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> BranchStats {
        BranchStats {
            name: self.name.clone(),
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            depth: self.lock().items.len(),
        }
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.metrics.dropped.increment(1);
    }

    /// Puts `item` into the buffer under the overflow policy; waits only
    /// under [`Overflow::Block`].
    async fn push(&self, item: T) {
        let mut item = Some(item);
        loop {
            {
                let mut q = self.lock();
                if q.reader_gone {
                    drop(q);
                    self.drop_one();
                    return;
                }
                if q.items.len() >= self.capacity {
                    match self.overflow {
                        Overflow::Block => {}
                        Overflow::DropNewest => {
                            drop(q);
                            self.drop_one();
                            return;
                        }
                        Overflow::DropOldest => {
                            q.items.pop_front();
                            self.drop_one();
                        }
                    }
                }
                if q.items.len() < self.capacity {
                    q.items.push_back(item.take().expect("pushed once"));
                    self.metrics.depth.set(q.items.len() as f64);
                    let waker = q.reader.take();
                    drop(q);
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    self.metrics.delivered.increment(1);
                    if let Some(w) = waker {
                        w.wake();
                    }
                    return;
                }
            }
            // `notify_one` keeps a permit when nobody waits, so a pop between
            // the unlock above and this await is not missed.
            self.room.notified().await;
        }
    }

    fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        let waker = q.reader.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// One branch's results; from [`Pipeline::run_fan_out`](crate::Pipeline::run_fan_out).
/// Ends after the pipeline drained and the buffer is empty.
pub struct BranchOutput<T> {
    branch: Arc<Branch<Result<T, Error>>>,
}

impl<T> Stream for BranchOutput<T> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let branch = &self.branch;
        let mut q = branch.lock();
        if let Some(item) = q.items.pop_front() {
            branch.metrics.depth.set(q.items.len() as f64);
            drop(q);
            branch.room.notify_one();
            return Poll::Ready(Some(item));
        }
        if q.closed {
            return Poll::Ready(None);
        }
        q.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for BranchOutput<T> {
    fn drop(&mut self) {
        let mut q = self.branch.lock();
        q.reader_gone = true;
        q.items.clear();
        drop(q);
        // A distributor blocked on this branch must not wait for a reader
        // that is gone.
        self.branch.room.notify_one();
    }
}

impl<T> fmt::Debug for BranchOutput<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BranchOutput")
            .field("branch", &self.branch.name)
            .finish_non_exhaustive()
    }
}

/// Spawns the distributor: it reads `output` and pushes each result into
/// every branch, the last one by move.
pub(crate) fn spawn<T: Clone + Send + 'static>(
    mut output: Output<T>,
    configs: &[BranchConfig],
    control: Arc<Control>,
    alive: mpsc::Sender<()>,
) -> Vec<BranchOutput<T>> {
    let branches: Vec<Arc<Branch<Result<T, Error>>>> = configs
        .iter()
        .map(|c| {
            Arc::new(Branch {
                name: c.name.clone(),
                capacity: c.capacity,
                overflow: c.overflow,
                queue: Mutex::new(Queue {
                    items: VecDeque::with_capacity(c.capacity),
                    closed: false,
                    reader_gone: false,
                    reader: None,
                }),
                room: Notify::new(),
                delivered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                metrics: BranchMetrics::new(&control.name, &c.name, c.overflow.as_str()),
            })
        })
        .collect();
    {
        let mut all = control.branches.lock().unwrap_or_else(|p| p.into_inner());
        for b in &branches {
            let b = b.clone();
            all.push(Arc::new(move || b.stats()));
        }
    }
    let outputs = branches
        .iter()
        .map(|b| BranchOutput { branch: b.clone() })
        .collect();
    let name = control.name.clone();
    spawn_task(&name, "fan-out", async move {
        let _alive = alive;
        loop {
            let next = tokio::select! {
                biased;
                () = control.cut.cancelled() => None,
                next = output.next() => next,
            };
            let Some(result) = next else { break };
            let pushed = async {
                let (last, rest) = branches.split_last().expect("at least one branch");
                for b in rest {
                    b.push(result.clone()).await;
                }
                last.push(result).await;
            };
            tokio::select! {
                biased;
                () = control.cut.cancelled() => {
                    control.discarded.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                () = pushed => {}
            }
        }
        for b in &branches {
            b.close();
        }
        // Count what the last stage sent but this task never took (a cut)
        // before `_alive` goes: the drain's report is read as soon as the
        // last sender is dropped, and a captured value would only be
        // dropped after it.
        drop(output);
    });
    outputs
}
