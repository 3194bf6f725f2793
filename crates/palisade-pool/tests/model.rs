//! Property tests against a plain reference model: every job runs at most
//! once and is answered exactly once, keyed jobs keep their order on one
//! worker, and unkeyed jobs start exactly when a list scheduler over N
//! workers says (the head-of-line property, at any mix of durations).

mod common;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use common::{Fate, Log, Task, pool_error, worker};
use palisade_pool::{Error, Pool};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

#[derive(Debug, Clone)]
struct Spec {
    key: Option<u8>,
    ms: u64,
    fate: Fate,
    cancel: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop_oneof![3 => Just(None), 1 => (0u8..3).prop_map(Some)],
        0u64..40,
        prop_oneof![8 => Just(Fate::Ok), 1 => Just(Fate::Fail), 1 => Just(Fate::Panic)],
        prop::bool::weighted(0.15),
    )
        .prop_map(|(key, ms, fate, cancel)| Spec {
            key,
            ms,
            fate,
            cancel,
        })
}

/// Start offsets of the kept jobs under greedy list scheduling: each job, in
/// submission order, starts when the earliest worker frees up.
fn list_schedule(workers: usize, durations: &[u64]) -> Vec<u64> {
    let mut free: BinaryHeap<Reverse<u64>> = (0..workers).map(|_| Reverse(0)).collect();
    durations
        .iter()
        .map(|d| {
            let Reverse(t) = free.pop().expect("at least one worker");
            free.push(Reverse(t + d));
            t
        })
        .collect()
}

fn check(workers: usize, specs: Vec<Spec>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let log = Log::default();
        let l = log.clone();
        let keys: HashMap<u32, u8> = specs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.key.map(|k| (i as u32, k)))
            .collect();
        let mut pool: Pool<Task, u32> = Pool::builder()
            .workers(workers)
            .affinity(move |t: &Task| keys.get(&t.id).copied())
            .build_fn(move |i| worker(i, l.clone()))
            .unwrap();
        let handle = pool.handle();
        let t0 = Instant::now();
        // Submitted back to back with no yield: no worker has run yet, so a
        // job dropped here is certainly dropped before it started.
        let mut kept = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            pool.ready().await.unwrap();
            let fut = pool.call(Task {
                id: i as u32,
                dur: Duration::from_millis(s.ms),
                fate: s.fate,
            });
            if !s.cancel {
                kept.push((i as u32, fut));
            }
        }
        let mut answered = 0;
        for (id, fut) in kept {
            let r = tokio::time::timeout(Duration::from_secs(3600), fut)
                .await
                .expect("every kept job is answered");
            answered += 1;
            match specs[id as usize].fate {
                Fate::Ok => prop_assert_eq!(r.unwrap(), id),
                Fate::Fail => {
                    prop_assert_eq!(r.unwrap_err().to_string(), format!("job {id} failed"))
                }
                Fate::Panic => {
                    prop_assert!(matches!(pool_error(r.unwrap_err()), Error::Panicked(_)))
                }
            }
        }
        // Let the workers reach the cancelled jobs left at the queue's end.
        drop(pool);
        tokio::time::timeout(Duration::from_secs(3600), handle.drain())
            .await
            .expect("the drain ends");
        let entries = log.entries();
        // At most once, and never a cancelled job.
        let mut runs: HashMap<u32, usize> = HashMap::new();
        for (_, id, _) in &entries {
            *runs.entry(*id).or_default() += 1;
        }
        for (i, s) in specs.iter().enumerate() {
            let n = runs.get(&(i as u32)).copied().unwrap_or(0);
            prop_assert_eq!(n, usize::from(!s.cancel), "job {} ran {} times", i, n);
        }
        // Keyed: submission order, one worker per key.
        for key in 0..3u8 {
            let mine: Vec<(usize, u32)> = entries
                .iter()
                .filter(|(_, id, _)| specs[*id as usize].key == Some(key))
                .map(|(w, id, _)| (*w, *id))
                .collect();
            prop_assert!(
                mine.windows(2).all(|w| w[0].1 < w[1].1),
                "key {} order {:?}",
                key,
                mine
            );
            prop_assert!(
                mine.iter().all(|m| m.0 == mine[0].0),
                "key {} moved {:?}",
                key,
                mine
            );
        }
        // Unkeyed only: start times match the list scheduler exactly.
        if specs.iter().all(|s| s.key.is_none()) {
            let durations: Vec<u64> = specs.iter().filter(|s| !s.cancel).map(|s| s.ms).collect();
            let want = list_schedule(workers, &durations);
            let mut got: Vec<(u32, u64)> = entries
                .iter()
                .map(|(_, id, at)| (*id, (*at - t0).as_millis() as u64))
                .collect();
            got.sort_unstable();
            let got: Vec<u64> = got.into_iter().map(|g| g.1).collect();
            prop_assert_eq!(got, want);
        }
        let s = handle.stats();
        let cancelled = specs.iter().filter(|s| s.cancel).count() as u64;
        prop_assert_eq!(s.skipped, cancelled);
        prop_assert_eq!(s.ended(), specs.len() as u64);
        prop_assert_eq!(s.pending, 0);
        prop_assert_eq!(answered as u64 + cancelled, specs.len() as u64);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_job_runs_at_most_once_is_answered_once_and_keys_keep_order(
        workers in 1usize..5,
        specs in prop::collection::vec(spec(), 0..40),
    ) {
        check(workers, specs)?;
    }

    #[test]
    fn unkeyed_jobs_start_when_the_list_scheduler_says(
        workers in 1usize..5,
        specs in prop::collection::vec(spec().prop_map(|s| Spec { key: None, ..s }), 0..40),
    ) {
        check(workers, specs)?;
    }
}

#[test]
fn list_schedule_reference() {
    assert_eq!(list_schedule(2, &[10, 1, 1, 1]), [0, 0, 1, 2]);
    assert_eq!(list_schedule(1, &[3, 4]), [0, 3]);
}
