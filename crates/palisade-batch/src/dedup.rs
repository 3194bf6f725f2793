//! De-duplication (DataLoader mode): one request per key per batch.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;

use crate::message::{Tx, Waiters};

/// Groups the items of one batch by key. Object-safe so that the key type
/// does not become a type parameter of the service.
pub(crate) trait Dedup<Req, Resp>: Send + Sync {
    /// Appends each distinct request of `items` (first occurrence, in order)
    /// to `reqs`, and who waits for it to `waiters`.
    fn group(
        &self,
        items: Vec<(Req, Tx<Resp>)>,
        reqs: &mut Vec<Req>,
        waiters: &mut Vec<Waiters<Resp>>,
    );

    /// How one result is copied to the other callers of its key.
    fn clone_resp(&self) -> fn(&Resp) -> Resp;
}

pub(crate) struct KeyDedup<F, Resp> {
    key: F,
    clone: fn(&Resp) -> Resp,
}

impl<F, Resp: Clone> KeyDedup<F, Resp> {
    pub(crate) fn new(key: F) -> Self {
        Self {
            key,
            clone: Resp::clone,
        }
    }
}

impl<F, K, Req, Resp> Dedup<Req, Resp> for KeyDedup<F, Resp>
where
    F: Fn(&Req) -> K + Send + Sync,
    K: Hash + Eq,
    Resp: 'static,
{
    fn group(
        &self,
        items: Vec<(Req, Tx<Resp>)>,
        reqs: &mut Vec<Req>,
        waiters: &mut Vec<Waiters<Resp>>,
    ) {
        let mut seen: HashMap<K, usize, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(items.len(), Default::default());
        for (req, tx) in items {
            match seen.entry((self.key)(&req)) {
                Entry::Occupied(at) => {
                    let w = &mut waiters[*at.get()];
                    *w = match std::mem::replace(w, Waiters::Many(Vec::new())) {
                        Waiters::One(first) => Waiters::Many(vec![first, tx]),
                        Waiters::Many(mut txs) => {
                            txs.push(tx);
                            Waiters::Many(txs)
                        }
                    };
                }
                Entry::Vacant(slot) => {
                    slot.insert(reqs.len());
                    reqs.push(req);
                    waiters.push(Waiters::One(tx));
                }
            }
        }
    }

    fn clone_resp(&self) -> fn(&Resp) -> Resp {
        self.clone
    }
}
