//! How a request meets one or more limits.

use std::{
    fmt,
    hash::Hash,
    sync::atomic::{AtomicBool, Ordering},
};

use metrics::Counter;

use crate::{Decision, KeyedLimiter, Limiter, MissingKey, Quota, RateLimited};

/// One policy's decision for a request, with what the HTTP headers need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// The policy's name.
    pub policy: &'static str,
    /// The quota that applied (the key's override, if any).
    pub quota: Quota,
    /// The decision.
    pub decision: Decision,
}

/// The combined outcome of the policies for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The first enforcing policy that rejected the request, if any.
    pub limited: Option<Report>,
    /// Among the enforcing policies that admitted the request, the one with
    /// the fewest remaining cells (what `RateLimit` reports on a success).
    /// Shadow policies never appear here.
    pub tightest: Option<Report>,
    /// A keyed policy found no key in the request (and does not allow
    /// that): the request is refused. Checked before `limited`.
    pub missing_key: Option<MissingKey>,
}

impl Verdict {
    /// A rejection, as the error the layer returns.
    pub fn error(&self) -> Option<RateLimited> {
        self.limited.map(|report| RateLimited {
            policy: report.policy,
            quota: report.quota,
            decision: report.decision,
        })
    }

    /// Whether the request is refused (over a limit, or no key).
    pub fn is_refused(&self) -> bool {
        self.limited.is_some() || self.missing_key.is_some()
    }

    fn admitted(report: Report) -> Self {
        Self {
            tightest: Some(report),
            ..Self::default()
        }
    }

    fn limited(report: Report) -> Self {
        Self {
            limited: Some(report),
            ..Self::default()
        }
    }

    fn tighter(a: Option<Report>, b: Option<Report>) -> Option<Report> {
        match (a, b) {
            (Some(a), Some(b)) if b.decision.remaining() < a.decision.remaining() => Some(b),
            (Some(a), _) => Some(a),
            (None, b) => b,
        }
    }
}

/// A rate limit policy applied to each request by [`RateLimit`](crate::RateLimit).
///
/// Implemented by [`Limiter`] (one limit for every request), [`PerKey`] (a
/// [`KeyedLimiter`] plus a [`KeyExtractor`]), `Option<P>` (`None` = no limit,
/// handy for limits switched on by configuration), `Arc<P>` (one policy's
/// state shared by several stacks) and tuples of up to four policies.
///
/// **Several policies** (a tuple) are checked in order and *all* must admit.
/// When one rejects, the cells the earlier ones took for this request are
/// given back, so a request rejected by the global limit does not also drain
/// its client's budget. Between the take and the give-back (nanoseconds) a
/// concurrent request may see the earlier policy slightly fuller than it will
/// end up; it errs towards limiting, never towards admitting.
pub trait Policy<Req> {
    /// What [`check`](Policy::check) consumed, to give back with
    /// [`refund`](Policy::refund).
    type Taken;

    /// Decides for `req`, consuming cells if the policy admits.
    fn check(&self, req: &Req) -> (Verdict, Self::Taken);

    /// Gives back what `check` took for `req` (another policy rejected it).
    fn refund(&self, req: &Req, taken: Self::Taken);

    /// Wait mode: books one cell now, possibly in the future, and returns
    /// the nanoseconds until it is due.
    ///
    /// - `None`: this policy books nothing here and is checked in `call`
    ///   instead (keyed policies need the request; shadow limits never hold
    ///   a request back).
    /// - `Some(Err(verdict))`: the cell would be due more than `max_wait`
    ///   nanoseconds from now; nothing is booked and the request is rejected
    ///   with `verdict`.
    ///
    /// A tuple books all its members or none: if one member's wait exceeds
    /// `max_wait`, the cells the earlier members booked are released.
    fn reserve(&self, max_wait: u64) -> Option<Result<u64, Verdict>> {
        let _ = max_wait;
        None
    }

    /// Gives back the cells booked by [`reserve`](Policy::reserve) and never
    /// used.
    fn release(&self) {}

    /// The cells booked by [`reserve`](Policy::reserve) were used by a
    /// request (counted as admitted only now, so bookings abandoned by a
    /// caller that probes readiness and then clones the service are not
    /// counted).
    fn commit(&self) {}

    /// Wait mode, in `call` after [`reserve`](Policy::reserve) booked
    /// cells: checks what `reserve` could not book (the keyed members of a
    /// tuple) and nothing else. The default checks the whole policy, right
    /// for a policy that never books.
    fn check_unbooked(&self, req: &Req) -> (Verdict, Self::Taken) {
        self.check(req)
    }
}

// === impl Limiter ===

impl<Req> Policy<Req> for Limiter {
    type Taken = bool;

    #[inline]
    fn check(&self, _req: &Req) -> (Verdict, bool) {
        let decision = self.check();
        let report = Report {
            policy: self.name(),
            quota: self.quota(),
            decision,
        };
        match (decision.allowed, self.is_shadow()) {
            (true, false) => (Verdict::admitted(report), true),
            (true, true) => (Verdict::default(), true),
            (false, false) => (Verdict::limited(report), false),
            (false, true) => (Verdict::default(), false),
        }
    }

    fn refund(&self, _req: &Req, taken: bool) {
        if taken {
            Limiter::refund(self, 1);
        }
    }

    fn reserve(&self, max_wait: u64) -> Option<Result<u64, Verdict>> {
        if self.is_shadow() {
            return None;
        }
        Some(Limiter::reserve(self, 1, max_wait).map_err(|decision| {
            Verdict::limited(Report {
                policy: self.name(),
                quota: self.quota(),
                decision,
            })
        }))
    }

    fn release(&self) {
        if !self.is_shadow() {
            Limiter::refund(self, 1);
        }
    }

    fn commit(&self) {
        if !self.is_shadow() {
            self.count_admitted();
        }
    }

    fn check_unbooked(&self, req: &Req) -> (Verdict, bool) {
        if self.is_shadow() {
            // Not booked by `reserve`: checked (and never limiting) here.
            Policy::<Req>::check(self, req)
        } else {
            (Verdict::default(), false)
        }
    }
}

// === impl PerKey ===

/// Extracts the key a request is limited by.
///
/// `None` means the request has no key: [`PerKey`] then refuses it with
/// [`MissingKey`] unless it was built with
/// [`allow_missing`](PerKey::allow_missing) (for keys a request may
/// legitimately lack, such as an optional API key header).
///
/// Implement it for your own types, or wrap a closure with [`key_fn`]. The
/// `http` feature ships extractors for the peer IP, a trusted-proxy-aware
/// client IP, a header, a route and a global key.
pub trait KeyExtractor<Req> {
    /// The key type.
    type Key;

    /// The request's key.
    fn extract(&self, req: &Req) -> Option<Self::Key>;

    /// What a request without a key lacks, for the [`MissingKey`] error and
    /// its log line (for example "peer address request extension").
    fn missing(&self) -> &'static str {
        "key (the key extractor returned None)"
    }
}

/// A [`KeyExtractor`] from a closure; see [`key_fn`].
#[derive(Clone, Copy)]
pub struct KeyFn<F>(F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

/// Wraps a closure `Fn(&Req) -> Option<K>` as a [`KeyExtractor`].
///
/// ```
/// use palisade_ratelimit::{KeyExtractor, key_fn};
///
/// let by_user = key_fn(|req: &(u32, &str)| Some(req.0));
/// assert_eq!(by_user.extract(&(7, "GET /")), Some(7));
/// ```
pub fn key_fn<F>(f: F) -> KeyFn<F> {
    KeyFn(f)
}

impl<F, Req, K> KeyExtractor<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Option<K>,
{
    type Key = K;

    #[inline]
    fn extract(&self, req: &Req) -> Option<K> {
        (self.0)(req)
    }

    fn missing(&self) -> &'static str {
        "key (the key function returned None)"
    }
}

/// A keyed policy: a [`KeyedLimiter`] and the [`KeyExtractor`] that picks
/// each request's key.
///
/// A request without a key is refused with [`MissingKey`] (HTTP: 500),
/// logged once and counted in [`MISSING_KEY`](crate::metrics::MISSING_KEY),
/// unless the policy is built with [`allow_missing`](Self::allow_missing).
#[derive(Debug)]
pub struct PerKey<K, X> {
    limiter: KeyedLimiter<K>,
    extractor: X,
    allow_missing: bool,
    warned: AtomicBool,
    missing: Counter,
}

impl<K, X> PerKey<K, X>
where
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
{
    /// Limits each request by the key `extractor` returns; a request without
    /// a key is refused.
    pub fn new(limiter: KeyedLimiter<K>, extractor: X) -> Self {
        let missing = crate::metrics::missing_key_counter(limiter.name());
        Self {
            limiter,
            extractor,
            allow_missing: false,
            warned: AtomicBool::new(false),
            missing,
        }
    }

    /// Admits requests without a key, unlimited by this policy (still
    /// counted in [`MISSING_KEY`](crate::metrics::MISSING_KEY)). For keys a
    /// request may legitimately lack; pair it with another limit (per IP,
    /// global) so those requests are still bounded.
    pub fn allow_missing(mut self) -> Self {
        self.allow_missing = true;
        self
    }

    #[cold]
    fn on_missing<Req>(&self) -> Verdict
    where
        X: KeyExtractor<Req>,
    {
        self.missing.increment(1);
        if self.allow_missing || self.limiter.is_shadow() {
            return Verdict::default();
        }
        let missing = MissingKey {
            policy: self.limiter.name(),
            missing: self.extractor.missing(),
        };
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::error!(
                policy = missing.policy,
                missing = missing.missing,
                "rate limit policy found no key in a request; refusing it (logged once per policy)"
            );
        }
        Verdict {
            missing_key: Some(missing),
            ..Verdict::default()
        }
    }

    /// The limiter (for its key count, for example).
    pub fn limiter(&self) -> &KeyedLimiter<K> {
        &self.limiter
    }

    /// The extractor.
    pub fn extractor(&self) -> &X {
        &self.extractor
    }
}

impl<Req, K, X> Policy<Req> for PerKey<K, X>
where
    X: KeyExtractor<Req, Key = K>,
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
{
    type Taken = u32;

    #[inline]
    fn check(&self, req: &Req) -> (Verdict, u32) {
        let Some(key) = self.extractor.extract(req) else {
            return (self.on_missing::<Req>(), 0);
        };
        let (taken, decision) = self.limiter.decide(&key, 1);
        if self.limiter.is_shadow() {
            return (Verdict::default(), taken);
        }
        let report = Report {
            policy: self.limiter.name(),
            quota: self.limiter.quota_for(&key),
            decision,
        };
        if decision.allowed {
            (Verdict::admitted(report), taken)
        } else {
            (Verdict::limited(report), taken)
        }
    }

    fn refund(&self, req: &Req, taken: u32) {
        if taken > 0
            && let Some(key) = self.extractor.extract(req)
        {
            self.limiter.refund(&key, taken);
        }
    }
}

// === impl Option ===

impl<Req, P: Policy<Req>> Policy<Req> for Option<P> {
    type Taken = Option<P::Taken>;

    #[inline]
    fn check(&self, req: &Req) -> (Verdict, Self::Taken) {
        match self {
            Some(policy) => {
                let (verdict, taken) = policy.check(req);
                (verdict, Some(taken))
            }
            None => (Verdict::default(), None),
        }
    }

    fn refund(&self, req: &Req, taken: Self::Taken) {
        if let (Some(policy), Some(taken)) = (self, taken) {
            policy.refund(req, taken);
        }
    }

    fn reserve(&self, max_wait: u64) -> Option<Result<u64, Verdict>> {
        self.as_ref().and_then(|p| p.reserve(max_wait))
    }

    fn release(&self) {
        if let Some(policy) = self {
            policy.release();
        }
    }

    fn commit(&self) {
        if let Some(policy) = self {
            policy.commit();
        }
    }

    fn check_unbooked(&self, req: &Req) -> (Verdict, Self::Taken) {
        match self {
            Some(policy) => {
                let (verdict, taken) = policy.check_unbooked(req);
                (verdict, Some(taken))
            }
            None => (Verdict::default(), None),
        }
    }
}

// === impl Arc ===

/// A policy shared by reference: several stacks (the generations of a hot
/// reload, for example) check and charge the same limiter state.
impl<Req, P: Policy<Req>> Policy<Req> for std::sync::Arc<P> {
    type Taken = P::Taken;

    #[inline]
    fn check(&self, req: &Req) -> (Verdict, Self::Taken) {
        (**self).check(req)
    }

    fn refund(&self, req: &Req, taken: Self::Taken) {
        (**self).refund(req, taken);
    }

    fn reserve(&self, max_wait: u64) -> Option<Result<u64, Verdict>> {
        (**self).reserve(max_wait)
    }

    fn release(&self) {
        (**self).release();
    }

    fn commit(&self) {
        (**self).commit();
    }

    fn check_unbooked(&self, req: &Req) -> (Verdict, Self::Taken) {
        (**self).check_unbooked(req)
    }
}

// === impl tuples ===

macro_rules! tuple_policy {
    ($($idx:tt $P:ident),+) => {
        impl<Req, $($P: Policy<Req>),+> Policy<Req> for ($($P,)+) {
            type Taken = ($(Option<$P::Taken>,)+);

            #[inline]
            fn check(&self, req: &Req) -> (Verdict, Self::Taken) {
                let mut taken: Self::Taken = Default::default();
                let mut tightest = None;
                $(
                    let (verdict, took) = self.$idx.check(req);
                    taken.$idx = Some(took);
                    if verdict.is_refused() {
                        self.refund(req, taken);
                        return (verdict, Default::default());
                    }
                    tightest = Verdict::tighter(tightest, verdict.tightest);
                )+
                (Verdict { tightest, ..Verdict::default() }, taken)
            }

            fn refund(&self, req: &Req, taken: Self::Taken) {
                $(if let Some(took) = taken.$idx { self.$idx.refund(req, took); })+
            }

            // All or nothing: the members book in order; when one cannot
            // (its wait exceeds `max_wait`), those before it release theirs.
            // Members that book nothing (keyed) are checked in `call` by
            // `check_unbooked`. The tuple waits for its slowest member.
            fn reserve(&self, max_wait: u64) -> Option<Result<u64, Verdict>> {
                let release_first = |n: usize| {
                    $(if $idx < n { self.$idx.release(); })+
                };
                let mut booked = 0usize;
                let mut wait: Option<u64> = None;
                $(
                    match self.$idx.reserve(max_wait) {
                        None => {}
                        Some(Ok(w)) => wait = Some(wait.map_or(w, |x| x.max(w))),
                        Some(Err(verdict)) => {
                            release_first(booked);
                            return Some(Err(verdict));
                        }
                    }
                    booked = $idx + 1;
                )+
                let _ = booked;
                wait.map(Ok)
            }

            fn release(&self) {
                $(self.$idx.release();)+
            }

            fn commit(&self) {
                $(self.$idx.commit();)+
            }

            fn check_unbooked(&self, req: &Req) -> (Verdict, Self::Taken) {
                let mut taken: Self::Taken = Default::default();
                let mut tightest = None;
                $(
                    let (verdict, took) = self.$idx.check_unbooked(req);
                    taken.$idx = Some(took);
                    if verdict.is_refused() {
                        self.refund(req, taken);
                        return (verdict, Default::default());
                    }
                    tightest = Verdict::tighter(tightest, verdict.tightest);
                )+
                (Verdict { tightest, ..Verdict::default() }, taken)
            }
        }

    };
}

tuple_policy!(0 A);
tuple_policy!(0 A, 1 B);
tuple_policy!(0 A, 1 B, 2 C);
tuple_policy!(0 A, 1 B, 2 C, 3 D);
