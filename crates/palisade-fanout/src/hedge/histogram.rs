//! Log-linear latency buckets in microseconds: exact below 64 µs, then 32
//! sub-buckets per power of two (at most 1/32 = 3.1% relative error), up to
//! 2^40 µs (12.7 days); longer values land in the last bucket. Pure maths,
//! no state.

/// Values below this are their own bucket.
const LINEAR: u64 = 64;
/// Sub-buckets per power of two, as a bit count.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Largest power of two tracked.
const MAX_MSB: u32 = 40;

/// Number of buckets.
pub(crate) const BUCKETS: usize = (LINEAR + (MAX_MSB as u64 - 6 + 1) * SUB) as usize;

/// The bucket of `micros`.
pub(crate) fn bucket(micros: u64) -> usize {
    if micros < LINEAR {
        return micros as usize;
    }
    let micros = micros.min((1 << (MAX_MSB + 1)) - 1);
    let msb = 63 - micros.leading_zeros();
    let sub = (micros >> (msb - SUB_BITS)) & (SUB - 1);
    (LINEAR + u64::from(msb - 6) * SUB + sub) as usize
}

/// The smallest value in bucket `index`.
pub(crate) fn lower(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let k = index - LINEAR;
    let msb = (k / SUB) as u32 + 6;
    (1 << msb) | ((k % SUB) << (msb - SUB_BITS))
}

/// The largest value in bucket `index`.
pub(crate) fn upper(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let k = index - LINEAR;
    let msb = (k / SUB) as u32 + 6;
    let sub = k % SUB;
    let lower = (1 << msb) | (sub << (msb - SUB_BITS));
    lower + (1 << (msb - SUB_BITS)) - 1
}

/// The value at quantile `q` (0.0..=1.0) of `counts` holding `total`
/// samples: the bucket holding the `ceil(q * total)`-th sample, with the
/// rank interpolated linearly across that bucket's range (as Prometheus'
/// `histogram_quantile` does), so the estimate is off by at most one
/// bucket width (3.1%) instead of always sitting at the bucket's top.
/// `None` when empty.
pub(crate) fn quantile(counts: &[u32], total: u64, q: f64) -> Option<u64> {
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        let c = u64::from(c);
        if seen + c >= rank {
            let (lo, hi) = (lower(i), upper(i));
            let within = (rank - seen) as f64 / c as f64;
            return Some(lo + ((hi - lo) as f64 * within).round() as u64);
        }
        seen += c;
    }
    Some(upper(counts.len() - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_below_64us_and_within_3_percent_above() {
        for v in 0..64 {
            assert_eq!(upper(bucket(v)), v);
            assert_eq!(lower(bucket(v)), v);
        }
        for v in [64, 65, 100, 999, 1_000, 12_345, 1_000_000, 123_456_789] {
            let up = upper(bucket(v));
            assert!(up >= v, "{v} -> {up}");
            assert!(lower(bucket(v)) <= v, "{v}");
            assert!((up - v) as f64 <= v as f64 / 32.0, "{v} -> {up}");
        }
    }

    #[test]
    fn buckets_are_monotonic_and_in_range() {
        let mut last = 0;
        for v in (0..2_000_000u64).step_by(997) {
            let b = bucket(v);
            assert!(b >= last);
            assert!(b < BUCKETS);
            last = b;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantile_picks_the_rank() {
        let mut counts = vec![0u32; BUCKETS];
        for v in 1..=100u64 {
            counts[bucket(v * 1000)] += 1;
        }
        let p95 = quantile(&counts, 100, 0.95).unwrap();
        assert!(
            (95_000 - 95_000 / 32..=95_000 + 95_000 / 32).contains(&p95),
            "{p95}"
        );
        assert_eq!(quantile(&counts, 0, 0.95), None);
    }
}
