//! What travels from a caller to the worker, and what the worker keeps of a
//! batch while it is in flight.

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::Error;

/// The channel a caller is answered on: exactly one send per item.
pub(crate) type Tx<Resp> = oneshot::Sender<Result<Resp, Error>>;

/// One queued item.
pub(crate) struct Entry<Req, Resp> {
    pub(crate) req: Req,
    pub(crate) tx: Tx<Resp>,
    pub(crate) weight: u64,
    /// When it was queued; only read (and only taken) in `Flush::Timer`
    /// mode, the one mode with a latency deadline.
    pub(crate) at: Option<Instant>,
}

/// Everyone waiting for one request of a batch: one caller, or several with
/// the same de-duplication key.
pub(crate) enum Waiters<Resp> {
    One(Tx<Resp>),
    Many(Vec<Tx<Resp>>),
}

impl<Resp> Waiters<Resp> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Waiters::One(_) => 1,
            Waiters::Many(v) => v.len(),
        }
    }

    /// Answers every caller with `resp` (cloned with `clone` for all but
    /// one); returns how many had gone away.
    pub(crate) fn answer(self, resp: Resp, clone: Option<fn(&Resp) -> Resp>) -> usize {
        match self {
            Waiters::One(tx) => usize::from(tx.send(Ok(resp)).is_err()),
            Waiters::Many(mut txs) => {
                let last = txs.pop();
                let mut gone = 0;
                if let Some(clone) = clone {
                    for tx in txs {
                        gone += usize::from(tx.send(Ok(clone(&resp))).is_err());
                    }
                }
                if let Some(tx) = last {
                    gone += usize::from(tx.send(Ok(resp)).is_err());
                }
                gone
            }
        }
    }

    /// Fails every caller with `err`.
    pub(crate) fn fail(self, err: &Error) {
        match self {
            Waiters::One(tx) => {
                let _ = tx.send(Err(err.clone()));
            }
            Waiters::Many(txs) => {
                for tx in txs {
                    let _ = tx.send(Err(err.clone()));
                }
            }
        }
    }
}

/// Why a batch went out (the `reason` label of the flush metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// It reached `max_items`.
    Size,
    /// The next item would have taken it past `max_weight`.
    Weight,
    /// Its oldest item reached `max_latency` (`Flush::Timer`).
    Latency,
    /// A batch slot was free and the inner service ready
    /// (`Flush::Opportunistic`).
    Opportunistic,
    /// The batcher is closing and flushes what it holds.
    Shutdown,
    /// Half of a failed batch, retried by bisection.
    Retry,
}

impl Reason {
    pub(crate) const ALL: [Reason; 6] = [
        Reason::Size,
        Reason::Weight,
        Reason::Latency,
        Reason::Opportunistic,
        Reason::Shutdown,
        Reason::Retry,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Size => "size",
            Reason::Weight => "weight",
            Reason::Latency => "latency",
            Reason::Opportunistic => "opportunistic",
            Reason::Shutdown => "shutdown",
            Reason::Retry => "retry",
        }
    }
}

/// A batch ready to send: the requests the inner service gets and, index for
/// index, who waits for each result.
pub(crate) struct Formed<Req, Resp> {
    pub(crate) reqs: Vec<Req>,
    pub(crate) waiters: Vec<Waiters<Resp>>,
    /// Bisection depth: 0 for a batch formed from the queue.
    pub(crate) depth: u32,
    pub(crate) reason: Reason,
}

impl<Req, Resp> Formed<Req, Resp> {
    /// Callers waiting on this batch.
    pub(crate) fn callers(&self) -> usize {
        self.waiters.iter().map(Waiters::len).sum()
    }
}
