//! Quotas and the GCRA arithmetic shared by the in-memory limiters.

use std::time::Duration;

use crate::error::QuotaError;

/// The largest delay tolerance (`burst × emission interval`) a quota may have.
///
/// Keeping it far below `u64::MAX` nanoseconds (about 146 years) means
/// `now + tolerance` can never overflow in the GCRA step.
const MAX_TOLERANCE_NANOS: u128 = 1 << 62;

/// A rate limit: `rate` cells per `period`, with up to `burst` cells at once.
///
/// A quota is a *generic cell rate*: one cell is emitted every
/// `period / rate` (the emission interval), and a client that has been idle
/// may spend up to `burst` cells back to back. Build one with
/// [`Quota::per_second`], [`Quota::per_minute`] or [`Quota::builder`]; every
/// invalid combination is an `Err` naming the field.
///
/// ```
/// use std::time::Duration;
/// use palisade_ratelimit::Quota;
///
/// let quota = Quota::builder().rate(100).per(Duration::from_secs(60)).burst(10).build()?;
/// assert_eq!(quota.burst(), 10);
/// assert_eq!(quota.emission_interval(), Duration::from_millis(600));
/// # Ok::<(), palisade_ratelimit::QuotaError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    /// Nanoseconds between two cells.
    pub(crate) emission: u64,
    /// Cells a fully rested client may spend at once.
    pub(crate) burst: u32,
}

impl Quota {
    /// `rate` cells per second, with a burst of `rate`.
    pub fn per_second(rate: u32) -> Result<Self, QuotaError> {
        Self::builder()
            .rate(rate)
            .per(Duration::from_secs(1))
            .build()
    }

    /// `rate` cells per minute, with a burst of `rate`.
    pub fn per_minute(rate: u32) -> Result<Self, QuotaError> {
        Self::builder()
            .rate(rate)
            .per(Duration::from_secs(60))
            .build()
    }

    /// A builder; `rate` and `per` are required, `burst` defaults to `rate`.
    pub fn builder() -> QuotaBuilder {
        QuotaBuilder::default()
    }

    /// Returns this quota with a different burst.
    pub fn with_burst(self, burst: u32) -> Result<Self, QuotaError> {
        check(self.emission, burst)
    }

    /// The time between two cells (`period / rate`).
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.emission)
    }

    /// The number of cells a rested client may spend at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The time a fully drained quota takes to refill (`burst × emission
    /// interval`); the `w` (window) of the `RateLimit-Policy` header.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.tolerance())
    }

    /// Delay tolerance in nanoseconds (`burst × emission`), bounded at build.
    #[inline]
    pub(crate) fn tolerance(&self) -> u64 {
        self.emission * u64::from(self.burst)
    }
}

/// Builds a [`Quota`]; see [`Quota::builder`].
#[derive(Clone, Copy, Debug, Default)]
pub struct QuotaBuilder {
    rate: Option<u32>,
    period: Option<Duration>,
    burst: Option<u32>,
}

impl QuotaBuilder {
    /// Cells per period (required, at least 1).
    pub fn rate(mut self, rate: u32) -> Self {
        self.rate = Some(rate);
        self
    }

    /// The period the rate is measured over (required, non-zero).
    pub fn per(mut self, period: Duration) -> Self {
        self.period = Some(period);
        self
    }

    /// Cells a rested client may spend at once (default: the rate).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Validates the quota.
    pub fn build(self) -> Result<Quota, QuotaError> {
        let rate = self.rate.ok_or(QuotaError::Missing { field: "rate" })?;
        let period = self.period.ok_or(QuotaError::Missing { field: "period" })?;
        if rate == 0 {
            return Err(QuotaError::Zero { field: "rate" });
        }
        if period.is_zero() {
            return Err(QuotaError::Zero { field: "period" });
        }
        let emission = period.as_nanos() / u128::from(rate);
        if emission == 0 {
            // More than one cell per nanosecond cannot be represented.
            return Err(QuotaError::Overflow { field: "rate" });
        }
        if emission > MAX_TOLERANCE_NANOS {
            return Err(QuotaError::Overflow { field: "period" });
        }
        check(emission as u64, self.burst.unwrap_or(rate))
    }
}

fn check(emission: u64, burst: u32) -> Result<Quota, QuotaError> {
    if burst == 0 {
        return Err(QuotaError::Zero { field: "burst" });
    }
    if u128::from(emission) * u128::from(burst) > MAX_TOLERANCE_NANOS {
        return Err(QuotaError::Overflow { field: "burst" });
    }
    Ok(Quota { emission, burst })
}

/// What a limiter decided for one request.
///
/// Everything an HTTP layer needs: whether the request may proceed, how many
/// cells remain, when the quota is fully replenished and, when limited, how
/// long until enough cells are available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub(crate) allowed: bool,
    /// Unused tolerance in nanoseconds; `remaining()` divides it by the
    /// emission interval only when asked, keeping a division (tens of
    /// cycles) off the hot path.
    pub(crate) slack_nanos: u64,
    pub(crate) emission: u64,
    pub(crate) reset_nanos: u64,
    pub(crate) retry_nanos: u64,
}

impl Decision {
    /// Whether the request was admitted (its cells were consumed).
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// Cells still available right now, after this decision.
    pub fn remaining(&self) -> u32 {
        // Fits: slack <= burst × emission.
        (self.slack_nanos / self.emission) as u32
    }

    /// Time until the quota is fully replenished (all `burst` cells).
    pub fn reset_after(&self) -> Duration {
        Duration::from_nanos(self.reset_nanos)
    }

    /// Time until this request would be admitted; zero when allowed.
    pub fn retry_after(&self) -> Duration {
        Duration::from_nanos(self.retry_nanos)
    }
}

/// The GCRA test for a request of `cost` cells at `now` against the state
/// `tat` (theoretical arrival time, in the clock's nanoseconds): the new TAT
/// when admitted. Only arithmetic, so the caller's compare-and-swap is not
/// preceded by stores (a locked instruction waits for them to drain).
///
/// The caller guarantees `cost <= burst`, so `increment <= tolerance` and
/// nothing overflows.
#[inline]
pub(crate) fn admit(tat: u64, now: u64, cost: u32, quota: &Quota) -> Option<u64> {
    // The state may lag `now` (rested client) but never counts idle time twice.
    let base = if tat > now { tat } else { now };
    let next = base + quota.emission * u64::from(cost);
    (next - now <= quota.tolerance()).then_some(next)
}

/// The decision for an admitted request whose new TAT is `next`.
#[inline]
pub(crate) fn admitted(next: u64, now: u64, quota: &Quota) -> Decision {
    let fill = next - now;
    Decision {
        allowed: true,
        slack_nanos: quota.tolerance() - fill,
        emission: quota.emission,
        reset_nanos: fill,
        retry_nanos: 0,
    }
}

/// The decision for a rejected request (the state `tat` is unchanged).
#[cold]
pub(crate) fn rejected(tat: u64, now: u64, cost: u32, quota: &Quota) -> Decision {
    let base = tat.max(now);
    let tolerance = quota.tolerance();
    let current = base - now;
    Decision {
        allowed: false,
        slack_nanos: tolerance.saturating_sub(current),
        emission: quota.emission,
        reset_nanos: current,
        retry_nanos: (base + quota.emission * u64::from(cost) - now) - tolerance,
    }
}
