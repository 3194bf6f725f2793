//! Which requests may be hedged and what an attempt's result means.

/// What one attempt's result means for a hedged call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A success: it wins, the other attempts are cancelled.
    Success,
    /// A failure another attempt may still beat: the call waits for the
    /// attempts still running (and may send the next hedge at once); it
    /// returns this result only if nothing better arrives.
    Retryable,
    /// A failure that ends the call at once (another replica would answer
    /// the same): it is returned and the other attempts are cancelled.
    Fatal,
}

/// Decides which requests are hedged and classifies attempt results.
///
/// A request is only hedged when [`hedgeable`](Policy::hedgeable) says so:
/// a hedge runs the request twice (or more), so it must be safe to repeat
/// (idempotent). The default methods hedge every request and treat `Ok` as
/// a success and `Err` as retryable; [`DefaultPolicy`] is exactly that.
pub trait Policy<Req, T, E> {
    /// Whether `req` may be sent more than once.
    fn hedgeable(&self, req: &Req) -> bool {
        let _ = req;
        true
    }

    /// What an attempt's result means.
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Retryable,
        }
    }
}

/// Hedges every request; `Ok` wins, `Err` waits for the other attempts.
///
/// Only right for requests that are all idempotent. Over HTTP use
/// `http::HttpPolicy` (feature `http`): GET, HEAD and OPTIONS only, 5xx
/// retryable.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultPolicy;

impl<Req, T, E> Policy<Req, T, E> for DefaultPolicy {}

/// A [`Policy`] from a predicate over the request (results classified as by
/// [`DefaultPolicy`]); see [`hedge_if`].
#[derive(Debug, Clone, Copy)]
pub struct HedgeIf<F>(F);

/// Hedges the requests for which `f` returns true.
pub fn hedge_if<F>(f: F) -> HedgeIf<F> {
    HedgeIf(f)
}

impl<Req, T, E, F> Policy<Req, T, E> for HedgeIf<F>
where
    F: Fn(&Req) -> bool,
{
    fn hedgeable(&self, req: &Req) -> bool {
        (self.0)(req)
    }
}
