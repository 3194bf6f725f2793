//! Property tests against a sequential model: whatever the stages'
//! concurrency, order modes, latencies and failures, the pipeline produces
//! exactly the model's results, each exactly once, in input order when every
//! stage is ordered and in per-key order when every stage is ordered or keyed.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use palisade_pipeline::{Order, PipelineBuilder, StageConfig, from_fn};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ordered,
    Unordered,
    Keyed,
}

#[derive(Debug, Clone, Copy)]
struct StageSpec {
    mode: Mode,
    concurrency: usize,
    extra_window: usize,
    queue: usize,
    /// Items whose id hashes to 0 modulo this fail (0: never).
    fail_every: u64,
    latency_ms: u64,
}

fn stage_spec() -> impl Strategy<Value = StageSpec> {
    (
        prop_oneof![
            Just(Mode::Ordered),
            Just(Mode::Unordered),
            Just(Mode::Keyed)
        ],
        1usize..6,
        0usize..6,
        1usize..8,
        prop_oneof![Just(0u64), 3u64..11],
        0u64..6,
    )
        .prop_map(
            |(mode, concurrency, extra_window, queue, fail_every, latency_ms)| StageSpec {
                mode,
                concurrency,
                extra_window,
                queue,
                fail_every,
                latency_ms,
            },
        )
}

/// A per-(stage, item) pseudo-random number: the same in the model and in
/// the stage.
fn mix(stage: usize, id: u64) -> u64 {
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (stage as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x.wrapping_mul(0x94D0_49BB_1331_11EB) >> 7
}

fn key(id: u64) -> u64 {
    id % 3
}

/// What happens to item `id` at stage `s`: `Err(panics?)` or the latency.
fn fate(spec: &StageSpec, s: usize, id: u64) -> Result<u64, bool> {
    let r = mix(s, id);
    if spec.fail_every > 0 && r.is_multiple_of(spec.fail_every) {
        return Err(r.is_multiple_of(2));
    }
    Ok(r % (spec.latency_ms + 1))
}

/// The model: each item through the stages in series; the first failure
/// wins.
fn model(specs: &[StageSpec], n: u64) -> Vec<Result<(u64, u64), (String, u64)>> {
    (0..n)
        .map(|id| {
            let mut v = id;
            for (s, spec) in specs.iter().enumerate() {
                match fate(spec, s, id) {
                    Ok(_) => v += 1,
                    Err(_) => return Err((format!("s{s}"), id)),
                }
            }
            Ok((id, v))
        })
        .collect()
}

type Out = Vec<Result<(u64, u64), (String, u64)>>;

fn run(specs: Vec<StageSpec>, n: u64) -> Out {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut b = PipelineBuilder::<(u64, u64), (u64, u64)>::new("model").stage(
            StageConfig::new("start"),
            from_fn(|x: (u64, u64)| async move { Ok::<_, std::convert::Infallible>(x) }),
        );
        for (s, spec) in specs.iter().copied().enumerate() {
            let config = StageConfig::new(format!("s{s}"))
                .concurrency(spec.concurrency)
                .reorder_window(spec.concurrency + spec.extra_window)
                .queue_capacity(spec.queue)
                .order(if spec.mode == Mode::Unordered {
                    Order::Unordered
                } else {
                    Order::Ordered
                });
            let service = from_fn(move |(id, v): (u64, u64)| async move {
                match fate(&spec, s, id) {
                    Ok(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok((id, v + 1))
                    }
                    Err(true) => panic!("stage {s} panics on {id}"),
                    Err(false) => Err(tower::BoxError::from(format!("stage {s} fails {id}"))),
                }
            });
            b = if spec.mode == Mode::Keyed {
                b.stage_by_key(config, |(id, _): &(u64, u64)| key(*id), service)
            } else {
                b.stage(config, service)
            };
        }
        let (h, out) = b
            .build()
            .unwrap()
            .run(futures_util::stream::iter((0..n).map(|id| (id, id))));
        let got: Out = tokio::time::timeout(Duration::from_secs(3600), out.collect::<Vec<_>>())
            .await
            .expect("the pipeline finishes")
            .into_iter()
            .map(|r| r.map_err(|e| (e.stage().to_owned(), e.seq())))
            .collect();
        let report = h.drain().await;
        assert_eq!(
            (report.admitted, report.completed, report.total_cut()),
            (n, n, 0)
        );
        for s in h.stats() {
            assert!(s.peak_in_flight <= s.concurrency, "{s:?}");
            assert!(s.peak_held <= s.reorder_window, "{s:?}");
            assert_eq!(s.items_in, s.items_out, "{s:?}");
        }
        got
    })
}

fn id_of(r: &Result<(u64, u64), (String, u64)>) -> u64 {
    match r {
        Ok((id, _)) => *id,
        Err((_, id)) => *id,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_pipeline_matches_the_sequential_model(
        specs in proptest::collection::vec(stage_spec(), 1..4),
        n in 0u64..60,
    ) {
        // Panics in stages are part of the test; keep their messages quiet.
        std::panic::set_hook(Box::new(|_| {}));
        let expected = model(&specs, n);
        let got = run(specs.clone(), n);
        let _ = std::panic::take_hook();

        // Every item exactly once, with the model's result.
        let mut sorted = got.clone();
        sorted.sort_by_key(id_of);
        prop_assert_eq!(&sorted, &expected);

        if specs.iter().all(|s| s.mode == Mode::Ordered) {
            prop_assert_eq!(&got, &expected);
        } else if specs.iter().all(|s| s.mode != Mode::Unordered) {
            // Successful items keep their per-key order (failed ones leave
            // as soon as they fail).
            let mut last: HashMap<u64, u64> = HashMap::new();
            for r in got.iter().filter(|r| r.is_ok()) {
                let id = id_of(r);
                if let Some(prev) = last.insert(key(id), id) {
                    prop_assert!(prev < id, "key {} out of order: {} after {}", key(id), id, prev);
                }
            }
        }
    }
}
