//! Bounded fan-out/fan-in as plain async functions, for code that is not a
//! tower stack.

use std::future::Future;

use futures_util::stream::{FuturesUnordered, StreamExt};

/// Runs `f` on every item with at most `concurrency` futures in flight and
/// returns the outputs in input order.
///
/// The next item is taken only when a slot is free, so a long or endless
/// iterator is never drained ahead of the work. `concurrency` 0 is treated
/// as 1. Completed outputs wait in a reorder buffer while an earlier item is
/// still running; they do not hold a slot, so one slow item never shrinks
/// the window (unlike `buffered`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use palisade_fanout::spread::fan_out_fan_in;
/// let lengths = fan_out_fan_in(["a", "bb", "ccc"], 2, |s| async move { s.len() }).await;
/// assert_eq!(lengths, [1, 2, 3]);
/// # }
/// ```
pub async fn fan_out_fan_in<I, F, Fut>(items: I, concurrency: usize, f: F) -> Vec<Fut::Output>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
{
    let run = run(items, concurrency, f, |_| false).await;
    match run {
        Ok(outputs) => outputs,
        Err(_) => unreachable!("no output stops the run"),
    }
}

/// Like [`fan_out_fan_in`] for fallible work: the first error is returned at
/// once, the futures in flight are dropped (cancelled) and no further item
/// is taken.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use palisade_fanout::spread::try_fan_out_fan_in;
/// let parsed = try_fan_out_fan_in(["1", "x", "3"], 2, |s| async move { s.parse::<u32>() }).await;
/// assert!(parsed.is_err());
/// # }
/// ```
pub async fn try_fan_out_fan_in<I, F, Fut, T, E>(
    items: I,
    concurrency: usize,
    f: F,
) -> Result<Vec<T>, E>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match run(items, concurrency, f, Result::is_err).await {
        Ok(outputs) => outputs.into_iter().collect(),
        Err(Err(e)) => Err(e),
        Err(Ok(_)) => unreachable!("only an error stops the run"),
    }
}

/// The shared loop: stops at the first output `stop` selects and returns it
/// as `Err`.
async fn run<I, F, Fut>(
    items: I,
    concurrency: usize,
    mut f: F,
    stop: impl Fn(&Fut::Output) -> bool,
) -> Result<Vec<Fut::Output>, Fut::Output>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
{
    let limit = concurrency.max(1);
    let mut items = items.into_iter();
    let mut in_flight = FuturesUnordered::new();
    let mut slots: Vec<Option<Fut::Output>> = Vec::new();
    let mut exhausted = false;
    loop {
        while !exhausted && in_flight.len() < limit {
            match items.next() {
                Some(item) => {
                    let index = slots.len();
                    slots.push(None);
                    let fut = f(item);
                    in_flight.push(async move { (index, fut.await) });
                }
                None => exhausted = true,
            }
        }
        match in_flight.next().await {
            Some((index, output)) => {
                if stop(&output) {
                    return Err(output);
                }
                slots[index] = Some(output);
            }
            None => break,
        }
    }
    Ok(slots
        .into_iter()
        .map(|o| o.expect("every item ran to completion"))
        .collect())
}
