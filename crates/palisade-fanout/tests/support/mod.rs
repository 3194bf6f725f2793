//! Scripted mock services for the fan-out tests: each call's latency and
//! outcome come from a script; the shared [`Stats`] count calls, live
//! futures (created and not yet dropped), completions and cancellations, and
//! record the virtual time of every call.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{BoxError, Service};

/// What one call does.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// Answers `Ok(value)` after the latency.
    Ok(Duration, u32),
    /// Fails after the latency.
    Err(Duration),
}

pub fn ok(ms: u64, value: u32) -> Step {
    Step::Ok(Duration::from_millis(ms), value)
}

pub fn err(ms: u64) -> Step {
    Step::Err(Duration::from_millis(ms))
}

/// Counters shared by a mock and its clones.
#[derive(Debug, Default)]
pub struct Stats {
    pub calls: AtomicUsize,
    pub live: AtomicUsize,
    pub max_live: AtomicUsize,
    pub completed: AtomicUsize,
    pub cancelled: AtomicUsize,
    /// Virtual time of each call, from the mock's creation.
    pub called_at: Mutex<Vec<Duration>>,
}

impl Stats {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
    pub fn max_live(&self) -> usize {
        self.max_live.load(Ordering::SeqCst)
    }
    pub fn completed(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }
    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }
    pub fn called_at_ms(&self) -> Vec<u64> {
        self.called_at
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.as_millis() as u64)
            .collect()
    }
}

/// When the mock is ready.
#[derive(Debug, Clone, Copy)]
pub enum Ready {
    Always,
    /// Never ready (and never wakes the caller).
    Never,
    /// Ready from this offset after the mock's creation on.
    After(Duration),
}

/// A service following a script: the n-th call does `script[n % len]`.
#[derive(Debug, Clone)]
pub struct Mock {
    script: Arc<Vec<Step>>,
    ready: Ready,
    origin: Instant,
    sleep: Option<Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>>,
    pub stats: Arc<Stats>,
}

impl Mock {
    pub fn new(script: impl IntoIterator<Item = Step>) -> Self {
        Self {
            script: Arc::new(script.into_iter().collect()),
            ready: Ready::Always,
            origin: Instant::now(),
            sleep: None,
            stats: Arc::default(),
        }
    }

    pub fn ready(mut self, ready: Ready) -> Self {
        self.ready = ready;
        if let Ready::After(d) = ready {
            self.sleep = Some(Arc::new(Mutex::new(Box::pin(tokio::time::sleep_until(
                self.origin + d,
            )))));
        }
        self
    }
}

/// A call in progress; counts itself live until dropped.
pub struct Call {
    inner: Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>,
    stats: Arc<Stats>,
    done: bool,
}

impl Future for Call {
    type Output = Result<u32, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let out = self.inner.as_mut().poll(cx);
        if out.is_ready() {
            self.done = true;
            self.stats.completed.fetch_add(1, Ordering::SeqCst);
        }
        out
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.stats.live.fetch_sub(1, Ordering::SeqCst);
        if !self.done {
            self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl<Req> Service<Req> for Mock {
    type Response = u32;
    type Error = BoxError;
    type Future = Call;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.ready {
            Ready::Always => Poll::Ready(Ok(())),
            Ready::Never => Poll::Pending,
            Ready::After(_) => {
                let sleep = self.sleep.as_ref().expect("set with Ready::After");
                sleep.lock().unwrap().as_mut().poll(cx).map(Ok)
            }
        }
    }

    fn call(&mut self, _req: Req) -> Call {
        let n = self.stats.calls.fetch_add(1, Ordering::SeqCst);
        let live = self.stats.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.stats.max_live.fetch_max(live, Ordering::SeqCst);
        self.stats
            .called_at
            .lock()
            .unwrap()
            .push(Instant::now() - self.origin);
        let step = self.script[n % self.script.len()];
        let inner: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
            match step {
                Step::Ok(latency, value) => {
                    tokio::time::sleep(latency).await;
                    Ok(value)
                }
                Step::Err(latency) => {
                    tokio::time::sleep(latency).await;
                    Err(BoxError::from(format!(
                        "scripted failure after {latency:?}"
                    )))
                }
            }
        });
        Call {
            inner,
            stats: self.stats.clone(),
            done: false,
        }
    }
}

/// Runs `fut` to completion under paused time, bounded: a hang fails the
/// test after 1 h of virtual time instead of hanging it. Returns the output
/// and the virtual time it took.
pub async fn timed<F: Future>(fut: F) -> (F::Output, Duration) {
    let start = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(3600), fut)
        .await
        .expect("the call finished within the bound");
    (out, Instant::now() - start)
}

/// A small seeded generator (SplitMix64) for reproducible latency scripts.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0.0..1.0.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Polls `fut` once with a no-op waker.
pub fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(std::task::Waker::noop()))
}
