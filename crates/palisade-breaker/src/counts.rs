//! The totals a breaker decides on (public: `Breaker::counts`, transitions).

/// Totals of a window at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Outcomes in the window (successes and failures; ignored outcomes are
    /// never recorded).
    pub calls: u64,
    /// Failures among them.
    pub failures: u64,
    /// Slow calls among them (successful or not).
    pub slow_calls: u64,
}

impl WindowCounts {
    /// `failures / calls`, or 0 for an empty window.
    pub fn failure_rate(&self) -> f64 {
        ratio(self.failures, self.calls)
    }

    /// `slow_calls / calls`, or 0 for an empty window.
    pub fn slow_call_rate(&self) -> f64 {
        ratio(self.slow_calls, self.calls)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
