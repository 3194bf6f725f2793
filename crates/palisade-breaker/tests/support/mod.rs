//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_breaker::{Breaker, Clock, Config, ConfigBuilder, Reason, State, Transition};

/// A clock the test moves by hand (for multi-threaded tests, where tokio's
/// paused clock is not available).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// Every transition, in order.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Transition>>>);

impl Log {
    pub fn steps(&self) -> Vec<(State, State, Reason)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|t| (t.from, t.to, t.reason))
            .collect()
    }

    pub fn all(&self) -> Vec<Transition> {
        self.0.lock().unwrap().clone()
    }
}

/// A deterministic builder (no jitter) that logs transitions.
pub fn builder(log: &Log) -> ConfigBuilder {
    let log = log.clone();
    Config::builder()
        .wait_jitter(0.0)
        .on_transition(move |t| log.0.lock().unwrap().push(t.clone()))
}

pub fn build(b: ConfigBuilder) -> Breaker {
    Breaker::new(b.build().expect("valid config"))
}

pub fn ok(b: &Breaker) {
    b.try_acquire().expect("admitted").success();
}

pub fn fail(b: &Breaker) {
    b.try_acquire().expect("admitted").failure();
}
