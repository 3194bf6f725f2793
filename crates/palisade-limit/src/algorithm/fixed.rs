//! A limit that does not move.

use super::{Algorithm, Bounds, Sample};

/// A static limit: the same concurrency whatever the samples say.
///
/// For a capacity you know and want enforced with the limiter's machinery
/// (the CoDel queue, classes, deadlines, draining), and for tests that need
/// a limit that stays put. Anything the capacity depends on changing makes
/// it wrong; prefer an adaptive algorithm then (docs/overload.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    limit: usize,
}

impl Fixed {
    /// A limit of `limit` calls in flight (at least 1: the limiter's build
    /// refuses 0, naming `min_limit`).
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl Algorithm for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            min: self.limit,
            max: self.limit,
            initial: self.limit,
        }
    }

    fn update(&mut self, _sample: &Sample, _limit: usize) -> usize {
        self.limit
    }
}
