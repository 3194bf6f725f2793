//! [`Carry`]: state carried over from one generation to the next.
//!
//! The rule: a stateful part (a rate limiter, a circuit breaker) is looked up
//! by its **name**; the previous generation's instance is handed back when
//! the **parameters** it was built from compare equal (`PartialEq`) to the
//! new ones, and of the same types; otherwise a fresh one is built. Parts
//! the new generation does not ask for are dropped when it commits, so a
//! policy removed and later added again starts fresh. Nothing is committed
//! until [`Pass::commit`]: a build that fails half-way leaves the carried
//! set exactly as it was.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

type Erased = Box<dyn Any + Send + Sync>;

struct Entry {
    params: Erased,
    value: Erased,
}

/// The parts carried between generations, by name (see the crate docs for an
/// example).
///
/// **The rule:** a part is looked up by its name; the previous generation's
/// instance is handed back when the parameters it was built from compare
/// equal (`PartialEq`, same types) to the new ones, otherwise a fresh one is
/// built. Parts a generation does not ask for are dropped when it commits
/// (removed, then added again: fresh). Nothing changes until
/// [`Pass::commit`], so a build that fails half-way leaves the carried set
/// as it was.
#[derive(Default)]
pub struct Carry {
    entries: Mutex<HashMap<String, Entry>>,
}

impl fmt::Debug for Carry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<_> = entries.keys().collect();
        names.sort();
        f.debug_struct("Carry").field("names", &names).finish()
    }
}

impl Carry {
    /// An empty set: the first generation builds everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the build of a generation. Only one pass should run at a time
    /// (a [`Reloader`](crate::Reloader) runs one transaction at a time).
    pub fn pass(&self) -> Pass<'_> {
        Pass {
            carry: self,
            next: HashMap::new(),
            kept: Vec::new(),
            fresh: Vec::new(),
        }
    }

    /// The names carried now.
    pub fn names(&self) -> Vec<String> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<_> = entries.keys().cloned().collect();
        names.sort();
        names
    }
}

/// One generation's lookups; [`commit`](Pass::commit) it once the whole
/// generation is built.
pub struct Pass<'a> {
    carry: &'a Carry,
    next: HashMap<String, Entry>,
    kept: Vec<String>,
    fresh: Vec<String>,
}

impl fmt::Debug for Pass<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pass")
            .field("kept", &self.kept)
            .field("fresh", &self.fresh)
            .finish()
    }
}

impl Pass<'_> {
    /// The part named `name`: the previous generation's instance when its
    /// parameters equal `params`, else `build(&params)`.
    ///
    /// # Errors
    ///
    /// `build`'s error; nothing is recorded for `name` then.
    ///
    /// # Panics
    ///
    /// When `name` is asked for twice in one pass (two parts would share a
    /// name, a bug in the caller).
    pub fn get_or_try_build<P, V, E>(
        &mut self,
        name: &str,
        params: P,
        build: impl FnOnce(&P) -> Result<V, E>,
    ) -> Result<V, E>
    where
        P: PartialEq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        assert!(
            !self.next.contains_key(name),
            "palisade-reload: the part `{name}` was asked for twice in one pass"
        );
        let previous = {
            let entries = self
                .carry
                .entries
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            entries.get(name).and_then(|e| {
                let same = e.params.downcast_ref::<P>().is_some_and(|p| *p == params);
                same.then(|| e.value.downcast_ref::<V>().cloned()).flatten()
            })
        };
        let value = match previous {
            Some(value) => {
                self.kept.push(name.to_owned());
                value
            }
            None => {
                let value = build(&params)?;
                self.fresh.push(name.to_owned());
                value
            }
        };
        self.next.insert(
            name.to_owned(),
            Entry {
                params: Box::new(params),
                value: Box::new(value.clone()),
            },
        );
        Ok(value)
    }

    /// [`get_or_try_build`](Self::get_or_try_build) for a build that cannot
    /// fail.
    pub fn get_or_build<P, V>(&mut self, name: &str, params: P, build: impl FnOnce(&P) -> V) -> V
    where
        P: PartialEq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        match self.get_or_try_build(name, params, |p| {
            Ok::<_, std::convert::Infallible>(build(p))
        }) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// Makes this pass's parts the carried set (parts not asked for are
    /// dropped) and reports what was kept and what is fresh. Call it as the
    /// last fallible step of the build.
    pub fn commit(self) -> Carried {
        let mut entries = self
            .carry
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut dropped: Vec<String> = entries
            .keys()
            .filter(|k| !self.next.contains_key(*k))
            .cloned()
            .collect();
        dropped.sort();
        *entries = self.next;
        let carried = Carried {
            kept: self.kept,
            fresh: self.fresh,
            dropped,
        };
        tracing::debug!(kept = ?carried.kept, fresh = ?carried.fresh, dropped = ?carried.dropped, "carried state committed");
        carried
    }
}

/// What a committed [`Pass`] kept, built fresh and dropped, by name in the
/// order asked for (dropped: sorted).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Carried {
    /// Parts handed back from the previous generation.
    pub kept: Vec<String>,
    /// Parts built fresh (new, or their parameters changed).
    pub fresh: Vec<String>,
    /// Parts of the previous generation not asked for.
    pub dropped: Vec<String>,
}
