//! A model upstream and an open-loop load under `tokio::time::pause()`, for
//! the simulation tests and the algorithm comparison bench.
//!
//! The upstream has `slots` slots (changeable while it runs); each call
//! waits FIFO in an unbounded queue for a slot and holds it for the service
//! time. Work that started, or is queued, finishes even when its caller
//! gave up (as most real backends do). Clients arrive open-loop (Poisson,
//! seeded) and give up after their deadline.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_limit::{AdaptiveLimitLayer, Limiter, Overloaded};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

/// The model upstream.
#[derive(Clone)]
pub struct Upstream {
    slots: Arc<Semaphore>,
    capacity: Arc<AtomicUsize>,
    pub service: Duration,
    pub served: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn new(slots: usize, service: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            capacity: Arc::new(AtomicUsize::new(slots)),
            service,
            served: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Changes the number of slots (taking slots away waits for calls to
    /// give them back, as a shrinking backend would).
    pub fn set_slots(&self, slots: usize) {
        let old = self.capacity.swap(slots, Ordering::SeqCst);
        if slots > old {
            self.slots.add_permits(slots - old);
        } else if slots < old {
            let sem = self.slots.clone();
            let take = (old - slots) as u32;
            tokio::spawn(async move {
                sem.acquire_many(take).await.expect("open").forget();
            });
        }
    }

    /// One call: queue, serve, answer (spawned, so a caller that leaves
    /// does not cancel it).
    pub async fn call(&self, class: usize) -> Result<usize, BoxError> {
        let this = self.clone();
        let work = tokio::spawn(async move {
            let _slot = this.slots.acquire().await.expect("open");
            tokio::time::sleep(this.service).await;
            this.served.fetch_add(1, Ordering::Relaxed);
            class
        });
        Ok(work.await?)
    }
}

/// What one run measured.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub sent: usize,
    pub good: usize,
    pub rejected: usize,
    pub timed_out: usize,
    pub good_latencies: Vec<Duration>,
    pub reject_latencies: Vec<Duration>,
    /// Per class: (sent, good).
    pub classes: Vec<(usize, usize)>,
    /// Per class: the latencies of its good answers.
    pub class_latencies: Vec<Vec<Duration>>,
    pub seconds: f64,
}

impl Report {
    pub fn goodput(&self) -> f64 {
        self.good as f64 / self.seconds
    }

    pub fn p99(&self) -> Duration {
        percentile(&self.good_latencies, 0.99)
    }

    pub fn class_success(&self, class: usize) -> f64 {
        let (sent, good) = self.classes[class];
        good as f64 / sent.max(1) as f64
    }
}

pub fn percentile(latencies: &[Duration], q: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// A deterministic xorshift for arrivals.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_f64(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponential gap with mean `mean`.
    pub fn exp(&mut self, mean: Duration) -> Duration {
        let u = self.next_f64().max(1e-12);
        mean.mul_f64(-u.ln())
    }
}

/// One stream of arrivals: a rate over a time span, of one class.
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    pub class: usize,
    pub rate: f64,
    pub from: Duration,
    pub until: Duration,
}

/// The service a client calls: the upstream behind a limit (or not).
pub type Svc = tower::util::BoxCloneService<usize, usize, BoxError>;

pub fn limited(limiter: Option<Limiter>, upstream: &Upstream) -> Svc {
    let up = upstream.clone();
    let inner = service_fn(move |class: usize| {
        let up = up.clone();
        async move { up.call(class).await }
    });
    match limiter {
        Some(limiter) => tower::util::BoxCloneService::new(
            AdaptiveLimitLayer::new(limiter)
                .policy(ByClass)
                .layer(inner),
        ),
        None => tower::util::BoxCloneService::new(inner),
    }
}

/// The upstream as a service, with nothing in front.
pub fn upstream_service(upstream: &Upstream) -> Svc {
    let up = upstream.clone();
    tower::util::BoxCloneService::new(service_fn(move |class: usize| {
        let up = up.clone();
        async move { up.call(class).await }
    }))
}

/// The upstream behind any layer (tower's, a third party's), its errors
/// boxed: the anchors the bench measures palisade against.
pub fn layered<L>(layer: L, upstream: &Upstream) -> Svc
where
    L: Layer<Svc>,
    L::Service: Service<usize, Response = usize> + Clone + Send + 'static,
    <L::Service as Service<usize>>::Error: Into<BoxError>,
    <L::Service as Service<usize>>::Future: Send + 'static,
{
    tower::util::BoxCloneService::new(layer.layer(upstream_service(upstream)).map_err(Into::into))
}

/// The request is its class.
#[derive(Debug, Clone, Copy)]
pub struct ByClass;

impl palisade_limit::RequestPolicy<usize> for ByClass {
    fn class(&self, req: &usize) -> usize {
        *req
    }
}

/// Runs `streams` against `svc`, each client giving up after `deadline`;
/// counts only what arrives in `[measure_from, end of streams)`. Must run
/// in a paused runtime. A refusal is palisade's [`Overloaded`]; any other
/// error panics.
pub async fn run(
    svc: Svc,
    streams: &[Stream],
    deadline: Duration,
    measure_from: Duration,
    seed: u64,
) -> Report {
    run_classified(svc, streams, deadline, measure_from, seed, is_overloaded).await
}

/// Whether `e` is palisade's refusal.
pub fn is_overloaded(e: &BoxError) -> bool {
    e.downcast_ref::<Overloaded>().is_some()
}

/// [`run`], with `rejected` deciding which errors are refusals (for layers
/// other than palisade's); any other error still panics.
pub async fn run_classified(
    svc: Svc,
    streams: &[Stream],
    deadline: Duration,
    measure_from: Duration,
    seed: u64,
    rejected: fn(&BoxError) -> bool,
) -> Report {
    let start = Instant::now();
    let end = streams.iter().map(|s| s.until).max().unwrap_or_default();
    let classes = streams.iter().map(|s| s.class).max().unwrap_or(0) + 1;
    let mut arrivals: Vec<(Duration, usize)> = Vec::new();
    for (k, stream) in streams.iter().enumerate() {
        let mut rng = Rng::new(seed.wrapping_add(k as u64 * 7919));
        let mean = Duration::from_secs_f64(1.0 / stream.rate);
        let mut t = stream.from + rng.exp(mean);
        while t < stream.until {
            arrivals.push((t, stream.class));
            t += rng.exp(mean);
        }
    }
    arrivals.sort();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (at, class) in arrivals {
        tokio::time::sleep_until(start + at).await;
        let svc = svc.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = tokio::time::timeout(deadline, svc.oneshot(class)).await;
            let took = sent.elapsed();
            let kind = match outcome {
                Ok(Ok(_)) => 0,
                Ok(Err(e)) if rejected(&e) => 1,
                Ok(Err(e)) => panic!("unexpected error: {e}"),
                Err(_) => 2,
            };
            let _ = tx.send((at, class, kind, took));
        });
    }
    drop(tx);
    let mut report = Report {
        classes: vec![(0, 0); classes],
        class_latencies: vec![Vec::new(); classes],
        seconds: (end - measure_from).as_secs_f64(),
        ..Report::default()
    };
    while let Some((at, class, kind, took)) = rx.recv().await {
        if at < measure_from {
            continue;
        }
        report.sent += 1;
        report.classes[class].0 += 1;
        match kind {
            0 => {
                report.good += 1;
                report.classes[class].1 += 1;
                report.good_latencies.push(took);
                report.class_latencies[class].push(took);
            }
            1 => {
                report.rejected += 1;
                report.reject_latencies.push(took);
            }
            _ => report.timed_out += 1,
        }
    }
    report
}

/// A steady stream of class 0.
pub fn steady(rate: f64, seconds: u64) -> Vec<Stream> {
    vec![Stream {
        class: 0,
        rate,
        from: Duration::ZERO,
        until: Duration::from_secs(seconds),
    }]
}
