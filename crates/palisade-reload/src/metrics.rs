//! Metric names (the `metrics` crate; every series has a `reload` label, the
//! reloader's name).
//!
//! - [`VERSION`] (gauge): the version serving now.
//! - [`RELOADS`] (counter): reloads by `result` (`applied`, `rejected`,
//!   `rolled_back`).
//! - [`PUBLISHED`] (gauge): Unix time in seconds when the serving version was
//!   published; its age is `time() - palisade_reload_published_seconds` in
//!   PromQL (a gauge of the age itself would be stale between scrapes).

use std::time::{SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge};

/// Gauge: the version serving now.
pub const VERSION: &str = "palisade_reload_version";
/// Counter: reloads by `result` (`applied`, `rejected`, `rolled_back`).
pub const RELOADS: &str = "palisade_reload_total";
/// Gauge: Unix time (seconds) of the serving version's publication.
pub const PUBLISHED: &str = "palisade_reload_published_seconds";

#[derive(Debug)]
pub(crate) struct Metrics {
    version: Gauge,
    published: Gauge,
    applied: Counter,
    rejected: Counter,
    rolled_back: Counter,
}

impl Metrics {
    pub(crate) fn new(name: &str) -> Self {
        let name = name.to_owned();
        Self {
            version: metrics::gauge!(VERSION, "reload" => name.clone()),
            published: metrics::gauge!(PUBLISHED, "reload" => name.clone()),
            applied: metrics::counter!(RELOADS, "reload" => name.clone(), "result" => "applied"),
            rejected: metrics::counter!(RELOADS, "reload" => name.clone(), "result" => "rejected"),
            rolled_back: metrics::counter!(RELOADS, "reload" => name, "result" => "rolled_back"),
        }
    }

    pub(crate) fn serving(&self, version: u64, published: SystemTime) {
        // Versions stay far below 2^53, exact in an f64.
        self.version.set(version as f64);
        let secs = published
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.published.set(secs);
    }

    pub(crate) fn applied(&self) {
        self.applied.increment(1);
    }

    pub(crate) fn rejected(&self) {
        self.rejected.increment(1);
    }

    pub(crate) fn rolled_back(&self) {
        self.rolled_back.increment(1);
    }
}
