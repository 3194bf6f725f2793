//! The results stream, [`Output`].

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use futures_util::stream::Stream;
use tokio::sync::mpsc;

use crate::config::OnError;
use crate::error::Error;
use crate::handle::Control;
use crate::item::Item;

/// The pipeline's results: one per admitted item, `Ok` with the last
/// stage's output or the [`Error`] a stage failed it with. Ends once the
/// pipeline has drained (or, with [`OnError::Stop`], after the first error).
///
/// Dropping it cuts the pipeline: the last stage can deliver nothing more,
/// so every stage drops and counts what it holds.
pub struct Output<T> {
    rx: mpsc::Receiver<Item<T>>,
    control: Arc<Control>,
    stopped: bool,
}

impl<T> Output<T> {
    pub(crate) fn new(rx: mpsc::Receiver<Item<T>>, control: Arc<Control>) -> Self {
        Self {
            rx,
            control,
            stopped: false,
        }
    }

    /// Like [`StreamExt::next`](futures_util::StreamExt::next), with the
    /// item's sequence number (its position in the input) alongside.
    pub async fn next_with_seq(&mut self) -> Option<(u64, Result<T, Error>)> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<(u64, Result<T, Error>)>> {
        if self.stopped {
            return Poll::Ready(None);
        }
        let Some(item) = ready!(self.rx.poll_recv(cx)) else {
            return Poll::Ready(None);
        };
        if item.value.is_err() && self.control.on_error == OnError::Stop {
            self.stopped = true;
            self.control.close.cancel();
            self.control.cut.cancel();
            self.discard_rest();
        }
        Poll::Ready(Some((item.seq, item.value)))
    }

    fn discard_rest(&mut self) {
        self.rx.close();
        let mut n = 0;
        while self.rx.try_recv().is_ok() {
            n += 1;
        }
        self.control.discarded.fetch_add(n, Ordering::Relaxed);
    }
}

impl<T> Stream for Output<T> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.poll_item(cx).map(|o| o.map(|(_, v)| v))
    }
}

impl<T> Drop for Output<T> {
    fn drop(&mut self) {
        self.discard_rest();
    }
}

impl<T> fmt::Debug for Output<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("pipeline", &self.control.name)
            .field("stopped", &self.stopped)
            .finish()
    }
}
