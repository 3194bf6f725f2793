//! Scripted inner services for the batch tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::{BoxError, Service};

/// Every batch the inner service saw, with the virtual time it arrived.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Timed>>);

type Timed = Vec<(Duration, Vec<u32>)>;

impl Log {
    pub fn batches(&self) -> Vec<Vec<u32>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    pub fn timed(&self) -> Vec<(Duration, Vec<u32>)> {
        self.0.lock().unwrap().clone()
    }

    fn push(&self, at: Duration, batch: Vec<u32>) {
        self.0.lock().unwrap().push((at, batch));
    }
}

/// What the scripted service does with one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Answer,
    Fail,
    PanicInCall,
    PanicInFuture,
    /// Answers one result too few.
    Short,
}

type Script = Arc<dyn Fn(&[u32]) -> Fate + Send + Sync>;

/// An inner service answering `x * 10` for each `x` after `latency`, doing
/// what `script` says with each batch; `start` is time zero of the log.
#[derive(Clone)]
pub struct Scripted {
    pub log: Log,
    latency: Duration,
    script: Script,
    start: Instant,
}

impl Scripted {
    pub fn new(latency: Duration) -> Self {
        Self::with_script(latency, |_| Fate::Answer)
    }

    pub fn with_script(
        latency: Duration,
        script: impl Fn(&[u32]) -> Fate + Send + Sync + 'static,
    ) -> Self {
        Self {
            log: Log::default(),
            latency,
            script: Arc::new(script),
            start: Instant::now(),
        }
    }
}

#[derive(Debug)]
pub struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for Boom {}

impl Service<Vec<u32>> for Scripted {
    type Response = Vec<u32>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Vec<u32>, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: Vec<u32>) -> Self::Future {
        self.log.push(self.start.elapsed(), batch.clone());
        let fate = (self.script)(&batch);
        if fate == Fate::PanicInCall {
            panic!("inner call panicked");
        }
        let latency = self.latency;
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            match fate {
                Fate::Answer => Ok(batch.iter().map(|x| x * 10).collect()),
                Fate::Fail => Err(Box::new(Boom) as BoxError),
                Fate::PanicInFuture => panic!("inner future panicked"),
                Fate::Short => Ok(batch.iter().skip(1).map(|x| x * 10).collect()),
                Fate::PanicInCall => unreachable!(),
            }
        })
    }
}

/// Bounds every wait in a test: a hang fails instead of blocking CI.
pub async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the test waited 60 s (virtual or real) for something that never came")
}
