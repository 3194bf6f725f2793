//! Model test of versions: a sequence of publishes, loads, kept snapshots
//! and watcher polls against a plain list of the published values.

use std::sync::Arc;

use futures_util::FutureExt;
use palisade_reload::{Shared, Versioned};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Publish(u32),
    /// Reader `i` loads.
    Load(usize),
    /// A snapshot is kept for later.
    Keep,
    /// The watcher polls `changed()` once.
    Watch,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u32>().prop_map(Op::Publish),
        4 => (0..3usize).prop_map(Op::Load),
        2 => Just(Op::Keep),
        2 => Just(Op::Watch),
    ]
}

proptest! {
    #[test]
    fn versions_match_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        // The model: every published value, version i + 1 at index i.
        let mut published: Vec<u32> = vec![0];
        let shared = Shared::new(0u32);
        let mut last_seen = [0u64; 3];
        let mut kept: Vec<(u64, u32, Arc<Versioned<u32>>)> = Vec::new();
        // Published versions no read has observed yet, and how each
        // published version ended: seen by a read, or superseded by a newer
        // one that a read saw.
        let mut unobserved: Vec<u64> = vec![1];
        let (mut seen, mut superseded) = (0usize, 0usize);
        let mut observe = |version: u64, unobserved: &mut Vec<u64>| -> Result<(), TestCaseError> {
            for v in unobserved.drain(..) {
                prop_assert!(v <= version, "a read missed version {} (saw {})", v, version);
                if v == version { seen += 1 } else { superseded += 1 }
            }
            Ok(())
        };
        let mut watcher = shared.watch();
        let mut watcher_seen = 1u64;
        for op in ops {
            match op {
                Op::Publish(v) => {
                    let version = shared.publish(v);
                    published.push(v);
                    unobserved.push(version);
                    prop_assert_eq!(version, published.len() as u64);
                }
                Op::Load(r) => {
                    let snap = shared.load();
                    // Single-threaded: a load sees exactly the newest version.
                    prop_assert_eq!(snap.version(), published.len() as u64);
                    prop_assert_eq!(*snap, published[snap.version() as usize - 1]);
                    prop_assert!(snap.version() >= last_seen[r], "went backwards");
                    last_seen[r] = snap.version();
                    observe(snap.version(), &mut unobserved)?;
                    prop_assert_eq!(shared.version(), snap.version());
                }
                Op::Keep => {
                    let snap = shared.load_full();
                    kept.push((snap.version(), *snap.value(), snap));
                }
                Op::Watch => {
                    let newest = published.len() as u64;
                    match watcher.changed().now_or_never() {
                        Some(current) => {
                            prop_assert!(newest > watcher_seen);
                            // Intermediate versions are superseded, not replayed.
                            prop_assert_eq!(current.version(), newest);
                            watcher_seen = newest;
                            observe(newest, &mut unobserved)?;
                        }
                        None => prop_assert_eq!(newest, watcher_seen),
                    }
                    prop_assert_eq!(watcher.seen(), watcher_seen);
                }
            }
            // Snapshots stay valid, and unchanged, after newer writes.
            for (version, value, snap) in &kept {
                prop_assert_eq!(snap.version(), *version);
                prop_assert_eq!(*snap.value(), *value);
                prop_assert_eq!(published[*version as usize - 1], *value);
            }
        }
        // Every published version was seen or superseded: a final read
        // accounts for the rest, and the tally covers every version.
        let newest = shared.load();
        prop_assert_eq!(newest.version(), published.len() as u64);
        observe(newest.version(), &mut unobserved)?;
        prop_assert_eq!(seen + superseded, published.len());
    }
}

#[test]
fn update_is_read_copy_update() {
    let shared = Shared::new(vec![1]);
    let v = shared
        .update(|old| Ok::<_, ()>(old.iter().chain([&2]).copied().collect()))
        .unwrap();
    assert_eq!(v, 2);
    assert_eq!(*shared.load(), vec![1, 2]);
    // A failed update publishes nothing.
    assert_eq!(shared.update(|_| Err::<Vec<i32>, _>("no")), Err("no"));
    assert_eq!(shared.version(), 2);
    assert_eq!(*shared.load(), vec![1, 2]);
}

#[tokio::test(start_paused = true)]
async fn age_follows_the_paused_clock() {
    let shared = Shared::new(1);
    tokio::time::advance(std::time::Duration::from_secs(5)).await;
    assert_eq!(shared.age(), std::time::Duration::from_secs(5));
    shared.publish(2);
    assert_eq!(shared.age(), std::time::Duration::ZERO);
}

#[tokio::test]
async fn watcher_wakes_on_publish() {
    let shared = Shared::new(0u32);
    let mut watcher = shared.watch();
    let task = tokio::spawn(async move { watcher.changed().await.version() });
    tokio::task::yield_now().await;
    shared.publish(7);
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("the watcher woke")
        .unwrap();
    assert_eq!(seen, 2);
}
