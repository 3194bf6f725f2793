//! The output-order bookkeeping of one stage, without any I/O: which
//! completed items may leave, in which order.
//!
//! Every item admitted to a stage gets a ticket (its arrival order at that
//! stage). Invariant: `held` counts the tickets admitted and not yet
//! released, whatever their state (in flight, or completed and waiting for an
//! earlier ticket); the worker admits only while `held` is below the stage's
//! reorder window, which is how the window bounds memory.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// How a stage orders its output (see [`Order`](crate::Order)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Release in ticket order.
    Ordered,
    /// Release as completed.
    Unordered,
    /// Release in ticket order among items with the same key.
    PerKey,
}

#[derive(Debug)]
pub(crate) struct Reorder<T> {
    mode: Mode,
    next_ticket: u64,
    next_release: u64,
    done: BTreeMap<u64, T>,
    /// PerKey: the unreleased tickets of each key, in admission order.
    keys: HashMap<u64, VecDeque<u64>>,
    held: usize,
}

impl<T> Reorder<T> {
    pub(crate) fn new(mode: Mode) -> Self {
        Self {
            mode,
            next_ticket: 0,
            next_release: 0,
            done: BTreeMap::new(),
            keys: HashMap::new(),
            held: 0,
        }
    }

    /// Tickets admitted and not yet released.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Admits one item with `key` (ignored unless per-key) and returns its
    /// ticket.
    pub(crate) fn admit(&mut self, key: u64) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.held += 1;
        if self.mode == Mode::PerKey {
            self.keys.entry(key).or_default().push_back(ticket);
        }
        ticket
    }

    /// Records that `ticket` (admitted with `key`) completed with `value`,
    /// and appends to `out` every value that may now leave, in order.
    pub(crate) fn complete(&mut self, ticket: u64, key: u64, value: T, out: &mut VecDeque<T>) {
        match self.mode {
            Mode::Unordered => {
                self.held -= 1;
                out.push_back(value);
            }
            // The common case, in order already: no map traffic.
            Mode::Ordered if ticket == self.next_release => {
                self.next_release += 1;
                self.held -= 1;
                out.push_back(value);
                while let Some(v) = self.done.remove(&self.next_release) {
                    self.next_release += 1;
                    self.held -= 1;
                    out.push_back(v);
                }
            }
            Mode::Ordered => {
                self.done.insert(ticket, value);
                while let Some(v) = self.done.remove(&self.next_release) {
                    self.next_release += 1;
                    self.held -= 1;
                    out.push_back(v);
                }
            }
            Mode::PerKey => {
                self.done.insert(ticket, value);
                let queue = self
                    .keys
                    .get_mut(&key)
                    .expect("a completed ticket was admitted with its key");
                while let Some(front) = queue.front() {
                    let Some(v) = self.done.remove(front) else {
                        break;
                    };
                    queue.pop_front();
                    self.held -= 1;
                    out.push_back(v);
                }
                if queue.is_empty() {
                    self.keys.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: Mode, keys: &[u64], completion: &[usize]) -> Vec<usize> {
        let mut r = Reorder::new(mode);
        let tickets: Vec<u64> = keys.iter().map(|&k| r.admit(k)).collect();
        let mut out = VecDeque::new();
        for &i in completion {
            r.complete(tickets[i], keys[i], i, &mut out);
        }
        assert_eq!(r.held(), 0);
        out.into()
    }

    #[test]
    fn ordered_releases_in_admission_order() {
        assert_eq!(run(Mode::Ordered, &[0; 4], &[2, 0, 3, 1]), vec![0, 1, 2, 3]);
    }

    #[test]
    fn unordered_releases_on_completion() {
        assert_eq!(
            run(Mode::Unordered, &[0; 4], &[2, 0, 3, 1]),
            vec![2, 0, 3, 1]
        );
    }

    #[test]
    fn per_key_orders_within_a_key_only() {
        // Items 0 and 2 share key 7, 1 and 3 key 9.
        let keys = [7, 9, 7, 9];
        assert_eq!(run(Mode::PerKey, &keys, &[3, 2, 1, 0]), vec![1, 3, 0, 2]);
    }

    #[test]
    fn held_counts_completed_items_waiting_for_an_earlier_one() {
        let mut r = Reorder::new(Mode::Ordered);
        let a = r.admit(0);
        let b = r.admit(0);
        let mut out = VecDeque::new();
        r.complete(b, 0, "b", &mut out);
        assert!(out.is_empty());
        assert_eq!(r.held(), 2);
        r.complete(a, 0, "a", &mut out);
        assert_eq!(out, ["a", "b"]);
        assert_eq!(r.held(), 0);
    }
}
