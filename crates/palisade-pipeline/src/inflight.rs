//! The calls a stage has in flight.
//!
//! A small concurrency gets fixed slots, allocated once and polled in
//! turn with the stage's own waker: no allocation and no extra waker per
//! call, which is most of a no-op stage's cost. A large one gets a
//! `FuturesUnordered`, which polls only the calls that were woken.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};

/// Up to this concurrency, slots; above, `FuturesUnordered`.
const MAX_SLOTS: usize = 4;

pub(crate) enum InFlight<F> {
    Slots {
        slots: Vec<Pin<Box<Option<F>>>>,
        len: usize,
    },
    Unordered(FuturesUnordered<F>),
}

impl<F: Future> InFlight<F> {
    pub(crate) fn new(concurrency: usize) -> Self {
        if concurrency <= MAX_SLOTS {
            Self::Slots {
                slots: (0..concurrency).map(|_| Box::pin(None)).collect(),
                len: 0,
            }
        } else {
            Self::Unordered(FuturesUnordered::new())
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Slots { len, .. } => *len,
            Self::Unordered(f) => f.len(),
        }
    }

    /// Adds a call; the caller keeps `len() < concurrency`.
    pub(crate) fn push(&mut self, fut: F) {
        match self {
            Self::Slots { slots, len } => {
                let slot = slots
                    .iter_mut()
                    .find(|s| s.is_none())
                    .expect("a free slot: the worker admits below its concurrency");
                slot.set(Some(fut));
                *len += 1;
            }
            Self::Unordered(f) => f.push(fut),
        }
    }

    /// Polls the calls and hands every finished one to `done`.
    pub(crate) fn poll_done(&mut self, cx: &mut Context<'_>, mut done: impl FnMut(F::Output)) {
        match self {
            Self::Slots { slots, len } => {
                for slot in slots.iter_mut().filter(|s| s.is_some()) {
                    let fut = slot.as_mut().as_pin_mut().expect("filtered on is_some");
                    if let Poll::Ready(out) = fut.poll(cx) {
                        slot.set(None);
                        *len -= 1;
                        done(out);
                    }
                }
            }
            Self::Unordered(f) => {
                while let Poll::Ready(Some(out)) = f.poll_next_unpin(cx) {
                    done(out);
                }
            }
        }
    }
}
