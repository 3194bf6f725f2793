//! One worker: a task owning one inner service, taking jobs from the shared
//! queue one at a time, and replacing its service when it dies.
//!
//! The loop, in order: make a service if it has none (after the restart
//! delay; a factory that keeps failing closes the pool); wait until the
//! service is ready (an error or panic there means dead: replace it); only
//! then take a job, so a worker that cannot serve never holds one; skip the
//! job if its caller has gone; run it, racing the caller leaving and a
//! drain cut; answer. Every job a worker takes is answered exactly once.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use futures_util::FutureExt;
use tower::BoxError;
use tower_service::Service;
use tracing::Instrument;

use crate::backoff;
use crate::error::{Error, panic_message};
use crate::factory;
use crate::message::Job;
use crate::metrics::{Outcome, Restart};
use crate::shared::Shared;

pub(crate) struct Worker<M, S, Req, Resp> {
    index: usize,
    shared: Arc<Shared<Req, Resp>>,
    factory: Arc<tokio::sync::Mutex<M>>,
    service: Option<S>,
    /// Failures of this slot in a row (deaths and factory errors); sets the
    /// restart delay. Reset by a completed job.
    attempt: u32,
    /// Made with the worker, not when its task first runs: a worker future
    /// dropped unpolled (its runtime shutting down) still counts as gone.
    _live: LiveGuard<Req, Resp>,
}

/// Marks the worker gone however its task ends, including being dropped
/// with its runtime.
struct LiveGuard<Req, Resp>(Arc<Shared<Req, Resp>>);

impl<Req, Resp> Drop for LiveGuard<Req, Resp> {
    fn drop(&mut self) {
        self.0.worker_exited();
    }
}

/// What running one job came to.
enum Ran<T> {
    Done(Result<T, BoxError>),
    Panicked(Arc<str>),
    Abandoned,
    Cut,
}

// === impl Worker ===

impl<M, S, Req, Resp> Worker<M, S, Req, Resp>
where
    M: Service<usize, Response = S>,
    M::Error: Into<BoxError>,
    S: Service<Req, Response = Resp>,
    S::Error: Into<BoxError>,
{
    pub(crate) fn new(
        index: usize,
        shared: Arc<Shared<Req, Resp>>,
        factory: Arc<tokio::sync::Mutex<M>>,
    ) -> Self {
        Self {
            index,
            _live: LiveGuard(shared.clone()),
            shared,
            factory,
            service: None,
            attempt: 0,
        }
    }

    pub(crate) async fn run(mut self) {
        let shared = self.shared.clone();
        let cut = shared.cut_token().clone();
        let closing = shared.closing().clone();
        let i = self.index;
        tracing::debug!("pool worker started");
        // Set once this worker has reacted to the close, so a cancelled
        // token does not spin the select below.
        let mut close_seen = false;
        loop {
            if cut.is_cancelled() {
                break;
            }
            let Some(service) = self.service.as_mut() else {
                if shared.done_for(i) {
                    break;
                }
                let wait = backoff::delay(
                    self.attempt,
                    shared.settings.backoff_initial,
                    shared.settings.backoff_max,
                );
                // While closing, jobs wait on this worker: no delay.
                if !wait.is_zero() && !closing.is_cancelled() {
                    tokio::select! {
                        biased;
                        () = cut.cancelled() => break,
                        () = closing.cancelled() => continue,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                let made = tokio::select! {
                    biased;
                    () = cut.cancelled() => break,
                    made = factory::make(&self.factory, i) => made,
                };
                match made {
                    Ok(service) => {
                        shared.factory_succeeded();
                        self.service = Some(service);
                    }
                    Err(e) => {
                        self.attempt = self.attempt.saturating_add(1);
                        if shared.factory_failed(e) {
                            break;
                        }
                    }
                }
                continue;
            };

            let ready = std::future::poll_fn(|cx| {
                match catch_unwind(AssertUnwindSafe(|| service.poll_ready(cx))) {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(r)) => Poll::Ready(r.map_err(Into::into)),
                    Err(panic) => Poll::Ready(Err(format!(
                        "poll_ready panicked: {}",
                        panic_message(&*panic)
                    )
                    .into())),
                }
            });
            let ready = tokio::select! {
                biased;
                () = cut.cancelled() => break,
                r = ready => r,
                () = closing.cancelled(), if !close_seen => {
                    close_seen = true;
                    if shared.done_for(i) {
                        break;
                    }
                    continue;
                }
            };
            if let Err(e) = ready {
                tracing::warn!(error = %e, "pool worker's service failed poll_ready; replacing it");
                self.replace(Restart::Dead);
                continue;
            }

            let job = tokio::select! {
                biased;
                () = cut.cancelled() => break,
                job = shared.next_job(i) => job,
            };
            let Some(job) = job else { break };
            self.serve(job, &cut).await;
        }
        tracing::debug!("pool worker finished");
    }

    fn replace(&mut self, why: Restart) {
        self.service = None;
        if why == Restart::Dead {
            self.attempt = self.attempt.saturating_add(1);
        }
        self.shared.restarted(why);
    }

    /// Runs one job on the ready service and answers it.
    async fn serve(&mut self, job: Job<Req, Resp>, cut: &tokio_util::sync::CancellationToken) {
        let shared = &self.shared;
        let Job {
            req, mut tx, span, ..
        } = job;
        if tx.is_closed() {
            shared.record(Outcome::Skipped);
            return;
        }
        let service = self
            .service
            .as_mut()
            .expect("serve is only called with a ready service");
        shared.stats.busy.fetch_add(1, Ordering::Relaxed);
        shared.metrics.busy.increment(1.0);
        let ran = match catch_unwind(AssertUnwindSafe(|| span.in_scope(|| service.call(req)))) {
            Err(panic) => Ran::Panicked(panic_message(&*panic)),
            Ok(future) => {
                let future = AssertUnwindSafe(future).catch_unwind().instrument(span);
                tokio::select! {
                    biased;
                    () = cut.cancelled() => Ran::Cut,
                    out = future => match out {
                        Ok(result) => Ran::Done(result.map_err(Into::into)),
                        Err(panic) => Ran::Panicked(panic_message(&*panic)),
                    },
                    () = tx.closed() => Ran::Abandoned,
                }
            }
        };
        shared.stats.busy.fetch_sub(1, Ordering::Relaxed);
        shared.metrics.busy.decrement(1.0);
        match ran {
            Ran::Done(result) => {
                self.attempt = 0;
                let outcome = if result.is_ok() {
                    Outcome::Ok
                } else {
                    Outcome::Error
                };
                let _ = tx.send(result);
                shared.record(outcome);
            }
            Ran::Panicked(msg) => {
                tracing::error!(panic = %msg, "pooled job panicked");
                let _ = tx.send(Err(Error::Panicked(msg).into()));
                shared.record(Outcome::Panic);
                if shared.settings.replace_on_panic {
                    self.replace(Restart::Panic);
                }
            }
            Ran::Abandoned => shared.record(Outcome::Abandoned),
            Ran::Cut => {
                let _ = tx.send(Err(Error::Cut.into()));
                shared.record(Outcome::Cut);
            }
        }
    }
}
