//! Putting stages together: [`PipelineBuilder`] checks each stage's types
//! against the previous one at compile time and its settings at
//! [`build`](PipelineBuilder::build); [`Pipeline::run`] spawns the tasks.

use std::fmt;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::stream::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::BoxError;
use tower_service::Service;

use crate::config::{DEFAULT_OUTPUT_CAPACITY, OnError, Order, StageConfig};
use crate::error::ConfigError;
use crate::fanout::{self, BranchConfig, BranchOutput};
use crate::handle::{Control, PipelineHandle};
use crate::item::Item;
use crate::output::Output;
use crate::reorder::Mode;
use crate::spawn::spawn_task;
use crate::stats::StageShared;
use crate::worker::{FlushFn, KeyFn, StageTask};

/// Where a stage (or the feeder) sends: the queue in front of the next
/// stage and the counter of items sent into it.
pub(crate) struct Downstream<T> {
    pub(crate) tx: mpsc::Sender<Item<T>>,
    pub(crate) sent: Arc<AtomicU64>,
}

/// What spawning the stages collects.
pub(crate) struct Assembly {
    pub(crate) pipeline: Arc<str>,
    /// Last stage first while assembling; reversed before use.
    pub(crate) stages: Vec<Arc<StageShared>>,
    pub(crate) cut: CancellationToken,
    pub(crate) alive: mpsc::Sender<()>,
}

/// Spawns the stages from the last to the first: given where the last one
/// sends, returns where the first one reads from.
type Chain<In, Out> = Box<dyn FnOnce(Downstream<Out>, &mut Assembly) -> Downstream<In> + Send>;

/// Builds a [`Pipeline`] stage by stage; see the crate docs for an example.
///
/// `PipelineBuilder<In, Out>`: the pipeline takes `In` and, with the stages
/// added so far, produces `Out`. Each [`stage`](Self::stage) must be a
/// `Service<Out>`, so a type mismatch between stages is a compile error.
pub struct PipelineBuilder<In, Out> {
    name: String,
    on_error: OnError,
    output_capacity: usize,
    cancel: Option<CancellationToken>,
    stages: Vec<String>,
    error: Option<ConfigError>,
    chain: Chain<In, Out>,
    /// The flush hook of the last stage added.
    flush: Option<Arc<std::sync::Mutex<Option<FlushFn>>>>,
}

impl<In: Send + 'static> PipelineBuilder<In, In> {
    /// An empty pipeline named `name` (the `pipeline` metrics label).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            on_error: OnError::Continue,
            output_capacity: DEFAULT_OUTPUT_CAPACITY,
            cancel: None,
            stages: Vec::new(),
            error: None,
            chain: Box::new(|downstream, _| downstream),
            flush: None,
        }
    }
}

impl<In: Send + 'static, Out: Send + 'static> PipelineBuilder<In, Out> {
    /// Adds a stage: `service` is called with each output of the stage
    /// before, under `config`'s concurrency, queue and order.
    pub fn stage<S>(self, config: StageConfig, service: S) -> PipelineBuilder<In, S::Response>
    where
        S: Service<Out> + Send + 'static,
        S::Response: Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let mode = match config.order {
            Order::Ordered => Mode::Ordered,
            Order::Unordered => Mode::Unordered,
        };
        self.push(config, mode, None, service)
    }

    /// Adds a stage whose output keeps the input order among items with the
    /// same `key` only: items of different keys overtake each other.
    /// `config`'s order is ignored.
    pub fn stage_by_key<S, K, F>(
        self,
        config: StageConfig,
        key: F,
        service: S,
    ) -> PipelineBuilder<In, S::Response>
    where
        S: Service<Out> + Send + 'static,
        S::Response: Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        F: Fn(&Out) -> K + Send + Sync + 'static,
        K: Hash,
    {
        let key: KeyFn<Out> = Arc::new(move |item| {
            let mut h = DefaultHasher::new();
            key(item).hash(&mut h);
            h.finish()
        });
        self.push(config, Mode::PerKey, Some(key), service)
    }

    fn push<S>(
        mut self,
        config: StageConfig,
        mode: Mode,
        key: Option<KeyFn<Out>>,
        service: S,
    ) -> PipelineBuilder<In, S::Response>
    where
        S: Service<Out> + Send + 'static,
        S::Response: Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        if self.error.is_none() {
            self.error = config.check().err().or_else(|| {
                self.stages.contains(&config.name).then(|| {
                    ConfigError::new(Some(&config.name), "name", "is used by an earlier stage")
                })
            });
        }
        self.stages.push(config.name.clone());
        let prev = self.chain;
        let flush_slot = Arc::new(std::sync::Mutex::new(None::<FlushFn>));
        let flush = flush_slot.clone();
        PipelineBuilder {
            name: self.name,
            on_error: self.on_error,
            output_capacity: self.output_capacity,
            cancel: self.cancel,
            stages: self.stages,
            error: self.error,
            flush: Some(flush_slot),
            chain: Box::new(
                move |downstream: Downstream<S::Response>, asm: &mut Assembly| {
                    let (tx, rx) = mpsc::channel(config.queue_capacity);
                    let arrived = Arc::new(AtomicU64::new(0));
                    let mut shared = StageShared::new(
                        &asm.pipeline,
                        config.name.as_str().into(),
                        config.concurrency,
                        config.window(),
                        config.queue_capacity,
                        arrived.clone(),
                    );
                    shared.out = downstream.sent;
                    let shared = Arc::new(shared);
                    asm.stages.push(shared.clone());
                    let task = StageTask {
                        service,
                        rx,
                        tx: downstream.tx,
                        shared,
                        mode,
                        key,
                        cut: asm.cut.clone(),
                        flush: flush.lock().unwrap_or_else(|p| p.into_inner()).take(),
                        _alive: asm.alive.clone(),
                    };
                    spawn_task(&asm.pipeline, &config.name, task.run());
                    prev(Downstream { tx, sent: arrived }, asm)
                },
            ),
        }
    }

    /// Calls `flush` once, on the stage added last, when its input has
    /// ended and it has handed every item it holds to its service: the
    /// moment to make a service that buffers let go, so a drain does not
    /// wait for its timer. For a palisade-batch stage: `move ||
    /// batch_handle.close()`, which sends what is queued at once.
    pub fn flush_with(self, flush: impl FnOnce() + Send + 'static) -> Self {
        if let Some(slot) = &self.flush {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(flush));
        }
        self
    }

    /// What to do when a stage fails an item (default [`OnError::Continue`]).
    pub fn on_error(mut self, policy: OnError) -> Self {
        self.on_error = policy;
        self
    }

    /// Results the output buffers before the last stage waits for the
    /// consumer (default 64).
    pub fn output_capacity(mut self, n: usize) -> Self {
        self.output_capacity = n;
        self
    }

    /// Stop taking input when `token` is cancelled, then drain: what was
    /// admitted still comes out (as [`PipelineHandle::close`] does).
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Checks the settings; the error names the first bad one (its stage and
    /// field).
    pub fn build(self) -> Result<Pipeline<In, Out>, ConfigError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.name.is_empty() {
            return Err(ConfigError::new(None, "name", "must not be empty"));
        }
        if self.stages.is_empty() {
            return Err(ConfigError::new(None, "stage", "needs at least one stage"));
        }
        if self.output_capacity == 0 {
            return Err(ConfigError::new(
                None,
                "output_capacity",
                "must be at least 1",
            ));
        }
        Ok(Pipeline {
            name: self.name,
            on_error: self.on_error,
            output_capacity: self.output_capacity,
            cancel: self.cancel,
            chain: self.chain,
        })
    }
}

impl<In, Out> fmt::Debug for PipelineBuilder<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("name", &self.name)
            .field("stages", &self.stages)
            .field("on_error", &self.on_error)
            .field("output_capacity", &self.output_capacity)
            .finish_non_exhaustive()
    }
}

/// A checked pipeline, not running yet: [`run`](Self::run) it on an input.
pub struct Pipeline<In, Out> {
    name: String,
    on_error: OnError,
    output_capacity: usize,
    cancel: Option<CancellationToken>,
    chain: Chain<In, Out>,
}

impl<In, Out> fmt::Debug for Pipeline<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<In: Send + 'static, Out: Send + 'static> Pipeline<In, Out> {
    /// Spawns the stages and a feeder reading `input`; returns the handle
    /// (stats, close, drain) and the output stream, one result per admitted
    /// item. When `input` ends, the pipeline drains and the output ends after
    /// the last result.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn run<St>(self, input: St) -> (PipelineHandle, Output<Out>)
    where
        St: Stream<Item = In> + Send + 'static,
    {
        let (control, rx, alive) = self.start(|_| input, true);
        drop(alive);
        let output = Output::new(rx, control.clone());
        (PipelineHandle::new(control), output)
    }

    /// [`run`](Self::run) on a channel's receiver (a bounded channel gives
    /// its senders backpressure, or `try_send` overflow, in front of the
    /// first stage).
    ///
    /// What the channel holds counts as admitted: closing the pipeline
    /// ([`PipelineHandle::close`], a drain, [`cancel_on`](PipelineBuilder::cancel_on))
    /// closes the channel, so senders get an error from then on, and every
    /// item already in it still goes through.
    pub fn run_channel(self, mut input: mpsc::Receiver<In>) -> (PipelineHandle, Output<Out>) {
        let (control, rx, alive) = self.start(
            move |close| {
                let mut close = Box::pin(close.clone().cancelled_owned());
                let mut closed = false;
                futures_util::stream::poll_fn(move |cx| {
                    if !closed && close.as_mut().poll(cx).is_ready() {
                        closed = true;
                        input.close();
                    }
                    input.poll_recv(cx)
                })
            },
            false,
        );
        drop(alive);
        let output = Output::new(rx, control.clone());
        (PipelineHandle::new(control), output)
    }

    /// Like [`run`](Self::run), but every result goes to each of `branches`,
    /// each with its own buffer and overflow policy, so a slow branch does
    /// not stall the others (unless its policy is
    /// [`Overflow::Block`](crate::Overflow::Block)). Outputs come back in
    /// the order of `branches`.
    pub fn run_fan_out<St>(
        self,
        input: St,
        branches: Vec<BranchConfig>,
    ) -> Result<(PipelineHandle, Vec<BranchOutput<Out>>), ConfigError>
    where
        St: Stream<Item = In> + Send + 'static,
        Out: Clone,
    {
        fanout::check(&branches)?;
        let (control, rx, alive) = self.start(|_| input, true);
        let output = Output::new(rx, control.clone());
        let outputs = fanout::spawn(output, &branches, control.clone(), alive);
        Ok((PipelineHandle::new(control), outputs))
    }

    /// Spawns everything; `input` is made from the close token. With
    /// `stop_on_close` the feeder stops reading at close; without, the input
    /// must end by itself once closed (a channel closed and emptied).
    fn start<St>(
        self,
        input: impl FnOnce(&CancellationToken) -> St,
        stop_on_close: bool,
    ) -> (Arc<Control>, mpsc::Receiver<Item<Out>>, mpsc::Sender<()>)
    where
        St: Stream<Item = In> + Send + 'static,
    {
        let pipeline: Arc<str> = self.name.as_str().into();
        let (alive, alive_rx) = mpsc::channel(1);
        let cut = CancellationToken::new();
        let close = self
            .cancel
            .map_or_else(CancellationToken::new, |t| t.child_token());
        let (out_tx, out_rx) = mpsc::channel(self.output_capacity);
        let completed = Arc::new(AtomicU64::new(0));
        let mut asm = Assembly {
            pipeline: pipeline.clone(),
            stages: Vec::new(),
            cut: cut.clone(),
            alive: alive.clone(),
        };
        let first = (self.chain)(
            Downstream {
                tx: out_tx,
                sent: completed.clone(),
            },
            &mut asm,
        );
        let Assembly { mut stages, .. } = asm;
        stages.reverse();
        let control = Arc::new(Control::new(
            pipeline.clone(),
            stages,
            first.sent.clone(),
            completed,
            self.on_error,
            close.clone(),
            cut.clone(),
        ));
        let input = input(&close);
        spawn_task(
            &pipeline,
            "input",
            feed(input, first, control.clone(), stop_on_close, alive.clone()),
        );
        let finished = control.finished.clone();
        spawn_task(&pipeline, "drain-watch", async move {
            let mut alive_rx = alive_rx;
            // Every task holds a sender; `None` means all have ended.
            while alive_rx.recv().await.is_some() {}
            finished.cancel();
        });
        (control, out_rx, alive)
    }
}

/// Moves items from `input` into the first stage's queue, numbering them,
/// until the input ends, the pipeline is closed, or it is cut.
async fn feed<In, St>(
    input: St,
    first: Downstream<In>,
    control: Arc<Control>,
    stop_on_close: bool,
    _alive: mpsc::Sender<()>,
) where
    St: Stream<Item = In>,
{
    let input = std::pin::pin!(input);
    let mut input = input.fuse();
    let mut seq = 0u64;
    // Made once: a cancellation future registers with its token when
    // polled, which is not free per item.
    let mut cut = std::pin::pin!(control.cut.clone().cancelled_owned());
    let mut close = std::pin::pin!(control.close.clone().cancelled_owned());
    loop {
        let next = tokio::select! {
            biased;
            () = &mut cut => break,
            () = &mut close, if stop_on_close => break,
            next = input.next() => next,
        };
        let Some(value) = next else { break };
        // Taken from the input, it is the pipeline's: only a cut drops it.
        let item = Item {
            seq,
            value: Ok(value),
        };
        if let Err(e) = first.tx.try_send(item) {
            let mpsc::error::TrySendError::Full(item) = e else {
                control.input_cut.fetch_add(1, Ordering::Relaxed);
                break;
            };
            let permit = tokio::select! {
                biased;
                () = &mut cut => None,
                permit = first.tx.reserve() => permit.ok(),
            };
            let Some(permit) = permit else {
                control.input_cut.fetch_add(1, Ordering::Relaxed);
                break;
            };
            permit.send(item);
        }
        first.sent.fetch_add(1, Ordering::Release);
        seq += 1;
    }
}
