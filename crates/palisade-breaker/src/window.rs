//! The two sliding windows, lock-free.
//!
//! Both keep their totals in an [`Aggregate`] updated with atomic adds, so a
//! record costs a few uncontended-cache-line RMWs and never a lock. The
//! invariant both keep: at quiescence, the aggregate equals the sum of what the
//! slots (or buckets) hold, because every unit added to a slot is added to the
//! aggregate exactly once, and subtracted exactly once by whoever swaps it out.
//! Between those two steps another thread may observe a total that is briefly
//! off by its in-flight records (even negative), so reads clamp at zero.

use std::sync::atomic::Ordering;

use crate::sync::{AtomicI64, AtomicU8, AtomicU64, backoff};

use crate::config::SlidingWindow;
use crate::counts::WindowCounts;

#[derive(Debug, Default)]
struct Aggregate {
    calls: AtomicI64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl Aggregate {
    fn add(&self, calls: i64, failures: i64, slow: i64) {
        if calls != 0 {
            self.calls.fetch_add(calls, Ordering::AcqRel);
        }
        if failures != 0 {
            self.failures.fetch_add(failures, Ordering::AcqRel);
        }
        if slow != 0 {
            self.slow.fetch_add(slow, Ordering::AcqRel);
        }
    }

    fn load(&self) -> WindowCounts {
        let get = |a: &AtomicI64| a.load(Ordering::Acquire).max(0) as u64;
        WindowCounts {
            calls: get(&self.calls),
            failures: get(&self.failures),
            slow_calls: get(&self.slow),
        }
    }
}

/// One of the two windows.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn new(kind: SlidingWindow) -> Self {
        match kind {
            SlidingWindow::Count { size } => Window::Count(CountWindow::new(size as usize)),
            SlidingWindow::Time { duration, buckets } => {
                let width = (duration.as_nanos() / u128::from(buckets)) as u64;
                Window::Time(TimeWindow::new(buckets as usize, width))
            }
        }
    }

    /// Whether recording needs the current time.
    pub(crate) fn needs_time(&self) -> bool {
        matches!(self, Window::Time(_))
    }

    /// Records one outcome at `now` (nanoseconds; ignored by the count
    /// window). Returns the totals when they may have crossed a threshold
    /// (the outcome was a failure or slow, or the window grew), `None` when
    /// no threshold can have been crossed (a success replaced a success, or
    /// the record was too old to count).
    pub(crate) fn record(&self, now: u64, failure: bool, slow: bool) -> Option<WindowCounts> {
        match self {
            Window::Count(w) => w.record(failure, slow),
            Window::Time(w) => w.record(now, failure, slow),
        }
    }

    pub(crate) fn counts(&self, now: u64) -> WindowCounts {
        match self {
            Window::Count(w) => w.agg.load(),
            Window::Time(w) => {
                w.advance(now / w.width);
                w.agg.load()
            }
        }
    }

    /// Empties the window. Called under the breaker's transition lock, but
    /// recorders may still be running (a permit admitted just before
    /// `reset()` from Closed, or any record while MetricsOnly): clearing swaps
    /// each slot out and subtracts what it held, exactly like eviction, so a
    /// record racing the clear is either cleared with its slot or survives
    /// it, and the aggregate keeps equalling the slots.
    pub(crate) fn clear(&self) {
        match self {
            Window::Count(w) => w.clear(),
            Window::Time(w) => w.clear(),
        }
    }
}

// === impl CountWindow ===

const EMPTY: u8 = 0;
const FILLED: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

/// The last `N` outcomes in a ring of one-byte slots.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    /// Sequence number of the next record modulo `len` (see `next_slot`);
    /// its slot holds the oldest outcome once the ring is full.
    next: AtomicU64,
    agg: Aggregate,
}

impl CountWindow {
    fn new(size: usize) -> Self {
        Self {
            slots: (0..size).map(|_| AtomicU8::new(EMPTY)).collect(),
            next: AtomicU64::new(0),
            agg: Aggregate::default(),
        }
    }

    fn record(&self, failure: bool, slow: bool) -> Option<WindowCounts> {
        let slot = &self.slots[self.next_slot()];
        let new = FILLED | if failure { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        // The common case (a success replacing a success) needs no write: the
        // slot already holds what this record would put there. Skipping the
        // swap only matters if a record one lap older is still in flight on
        // this slot; it then lands after us, which keeps the totals exact
        // (it accounts for what it swaps out) and only reorders two outcomes
        // `len` calls apart.
        if slot.load(Ordering::Acquire) == new {
            return None;
        }
        let old = slot.swap(new, Ordering::AcqRel);
        if old == new {
            return None;
        }
        let bit = |v: u8, b: u8| i64::from(v & b != 0);
        let calls = i64::from(old == EMPTY);
        let failures = bit(new, FAILED) - bit(old, FAILED);
        let slows = bit(new, SLOW) - bit(old, SLOW);
        self.agg.add(calls, failures, slows);
        if calls == 0 && failures <= 0 && slows <= 0 {
            // Only improvements: no threshold can have been crossed.
            return None;
        }
        Some(self.agg.load())
    }

    /// The slot of the next record: the oldest one once the ring is full.
    ///
    /// `next` counts records modulo `len` without a division on the common
    /// path: whoever draws `len - 1` subtracts `len` once per lap. Values
    /// drawn before that subtraction lands are `>= len` and take the modulo,
    /// so every value still maps to `seq % len` of a gapless sequence.
    #[inline]
    fn next_slot(&self) -> usize {
        let len = self.slots.len() as u64;
        let drawn = self.next.fetch_add(1, Ordering::Relaxed);
        if drawn == len - 1 {
            self.next.fetch_sub(len, Ordering::Relaxed);
        }
        if drawn < len {
            drawn as usize
        } else {
            (drawn % len) as usize
        }
    }

    fn clear(&self) {
        let bit = |v: u8, b: u8| i64::from(v & b != 0);
        for slot in self.slots.iter() {
            let old = slot.swap(EMPTY, Ordering::AcqRel);
            if old != EMPTY {
                self.agg.add(-1, -bit(old, FAILED), -bit(old, SLOW));
            }
        }
    }
}

// === impl TimeWindow ===

/// Low bit of [`TimeWindow::head`]: a thread is emptying buckets.
const ADVANCING: u64 = 1;

#[derive(Debug, Default)]
struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

/// `n` buckets of `width` nanoseconds; an outcome recorded at time `t` lives
/// in bucket `t / width` and counts while that index is among the last `n`.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    width: u64,
    /// The newest bucket index the window has advanced to, shifted left by
    /// one; the low bit ([`ADVANCING`]) is set while one thread empties the
    /// buckets it is about to move over. Whoever claims the bit (one CAS
    /// winner) empties them *before* publishing the new head, so no record
    /// can land in a bucket that is still to be emptied: records only go to
    /// indices at or below a published head. Each expired bucket is emptied
    /// exactly once: O(1) amortised per record, at most `n` bucket swaps when
    /// time jumps, during which recorders of a newer bucket wait.
    head: AtomicU64,
    agg: Aggregate,
}

impl TimeWindow {
    fn new(buckets: usize, width: u64) -> Self {
        Self {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            width,
            head: AtomicU64::new(0),
            agg: Aggregate::default(),
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn bucket(&self, index: u64) -> &Bucket {
        &self.buckets[(index % self.len()) as usize]
    }

    /// Moves the head to at least `to` and returns the published head
    /// (`>= to`).
    fn advance(&self, to: u64) -> u64 {
        let mut word = self.head.load(Ordering::Acquire);
        let mut spins = 0u32;
        loop {
            let head = word >> 1;
            if to <= head {
                // Buckets at or below a published head are never emptied
                // before they expire, even while a newer advance is running.
                return head;
            }
            if word & ADVANCING == 0 {
                match self.head.compare_exchange_weak(
                    word,
                    word | ADVANCING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        let first = (head + 1).max(to.saturating_sub(self.len() - 1));
                        for index in first..=to {
                            self.empty(self.bucket(index));
                        }
                        self.head.store(to << 1, Ordering::Release);
                        return to;
                    }
                    Err(actual) => word = actual,
                }
            } else {
                // Another thread is emptying at most `n` buckets; records
                // for the buckets it publishes must wait for it.
                backoff(&mut spins);
                word = self.head.load(Ordering::Acquire);
            }
        }
    }

    fn empty(&self, bucket: &Bucket) {
        let calls = bucket.calls.swap(0, Ordering::AcqRel) as i64;
        let failures = bucket.failures.swap(0, Ordering::AcqRel) as i64;
        let slow = bucket.slow.swap(0, Ordering::AcqRel) as i64;
        self.agg.add(-calls, -failures, -slow);
    }

    fn record(&self, now: u64, failure: bool, slow: bool) -> Option<WindowCounts> {
        let index = now / self.width;
        if index + self.len() <= self.advance(index) {
            // Another thread already advanced past this outcome's bucket.
            // (A record that passes this check just before its bucket
            // expires may still land after the emptying and count one window
            // too long: an over-count by in-flight records at the far edge,
            // never a loss.)
            return None;
        }
        let bucket = self.bucket(index);
        bucket.calls.fetch_add(1, Ordering::AcqRel);
        if failure {
            bucket.failures.fetch_add(1, Ordering::AcqRel);
        }
        if slow {
            bucket.slow.fetch_add(1, Ordering::AcqRel);
        }
        self.agg.add(1, i64::from(failure), i64::from(slow));
        Some(self.agg.load())
    }

    fn clear(&self) {
        for bucket in self.buckets.iter() {
            self.empty(bucket);
        }
    }
}

#[cfg(all(test, palisade_loom))]
mod loom_tests;
#[cfg(all(test, not(palisade_loom)))]
mod tests;
