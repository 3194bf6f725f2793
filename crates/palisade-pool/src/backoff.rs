//! The restart delay of a worker slot: pure maths, so it is tested alone.

use std::time::Duration;

/// The delay before the `attempt`-th consecutive attempt to make a worker's
/// service (1 = the first attempt after a death or a factory failure):
/// `initial * 2^(attempt-1)`, capped at `max`. Attempt 0 (a fresh slot, or
/// one whose last service served a job successfully) waits nothing.
pub(crate) fn delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let shift = (attempt - 1).min(31);
    initial
        .checked_mul(1u32 << shift)
        .map_or(max, |d| d.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_initial_and_caps() {
        let got: Vec<Duration> = (0..8).map(|a| delay(a, 10 * MS, 100 * MS)).collect();
        assert_eq!(
            got,
            [0, 10, 20, 40, 80, 100, 100, 100]
                .map(|ms| ms * MS)
                .to_vec()
        );
    }

    #[test]
    fn huge_attempts_do_not_overflow() {
        assert_eq!(delay(u32::MAX, 10 * MS, 5000 * MS), 5000 * MS);
        assert_eq!(
            delay(40, Duration::from_secs(u64::MAX / 2), 5000 * MS),
            5000 * MS
        );
    }
}
