//! Test helpers shared by the pool's test files.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::{BoxError, Service, service_fn};

pub const MS: Duration = Duration::from_millis(1);

/// One job: runs `dur`, then answers `id` (or panics, or fails).
#[derive(Debug, Clone, Copy)]
pub struct Task {
    pub id: u32,
    pub dur: Duration,
    pub fate: Fate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Ok,
    Fail,
    Panic,
}

impl Task {
    pub fn ok(id: u32, dur: Duration) -> Self {
        Self {
            id,
            dur,
            fate: Fate::Ok,
        }
    }
}

/// What the workers did, in order: (worker, job id, start time).
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<(usize, u32, Instant)>>>);

impl Log {
    pub fn entries(&self) -> Vec<(usize, u32, Instant)> {
        self.0.lock().unwrap().clone()
    }

    pub fn ids(&self) -> Vec<u32> {
        self.entries().into_iter().map(|(_, id, _)| id).collect()
    }
}

/// A worker service: logs each start, sleeps, answers.
pub fn worker(
    index: usize,
    log: Log,
) -> impl Service<Task, Response = u32, Error = BoxError, Future: Send> + Send + 'static {
    service_fn(move |t: Task| {
        log.0.lock().unwrap().push((index, t.id, Instant::now()));
        async move {
            tokio::time::sleep(t.dur).await;
            match t.fate {
                Fate::Ok => Ok(t.id),
                Fate::Fail => Err(BoxError::from(format!("job {} failed", t.id))),
                Fate::Panic => panic!("job {} panicked", t.id),
            }
        }
    })
}

/// Bounds a wait a test expects to end: a hang fails the test.
pub async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), f)
        .await
        .expect("bounded wait timed out: the pool hung")
}

/// The pool's own error inside a boxed one.
pub fn pool_error(e: BoxError) -> palisade_pool::Error {
    e.downcast_ref::<palisade_pool::Error>()
        .unwrap_or_else(|| panic!("not a pool error: {e}"))
        .clone()
}
