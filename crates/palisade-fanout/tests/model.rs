//! Property tests against plain reference models: the hedge delay's
//! percentile (through the public hedger, at microsecond resolution) and
//! the budget's bound.

use std::time::Duration;

use palisade_fanout::hedge::{Delay, HedgeConfig, HedgeLayer};
use proptest::prelude::*;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The percentile delay is within one bucket (3.2%) of the exact
    /// nearest-rank percentile of the recorded latencies.
    #[test]
    fn percentile_delay_matches_the_sorted_latencies(
        latencies in proptest::collection::vec(1u64..5_000_000, 20..200),
        q in 0.5f64..0.99,
    ) {
        runtime().block_on(async {
            let layer = HedgeLayer::new(
                HedgeConfig::builder()
                    .delay(Delay::Percentile(q))
                    .min_samples(latencies.len() as u64)
                    .latency_window(Duration::from_secs(100_000))
                    .build()
                    .unwrap(),
            );
            let hedger = layer.hedger().clone();
            // Each request takes its scripted latency; no hedge can fire
            // before the window holds all of them.
            let mut svc = layer.layer(service_fn(|us: u64| async move {
                tokio::time::sleep(Duration::from_micros(us)).await;
                Ok::<_, BoxError>(us)
            }));
            for &us in &latencies {
                svc.ready().await.unwrap().call(us).await.unwrap();
            }
            tokio::time::advance(Duration::from_secs(1)).await;
            let mut sorted = latencies.clone();
            sorted.sort_unstable();
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            // tokio's timer rounds each sleep up to the next millisecond.
            let exact = sorted[rank - 1].div_ceil(1000) * 1000;
            let got = hedger.current_delay().unwrap().as_micros() as u64;
            let tolerance = exact / 31 + 1;
            prop_assert!(got.abs_diff(exact) <= tolerance, "got {got} µs, exact {exact} µs");
            Ok(())
        })?;
    }

    /// Whatever the latencies, hedges never exceed the fraction of the
    /// primaries: summed over consecutive whole windows, the budget's
    /// invariant bounds the whole run.
    #[test]
    fn hedges_never_exceed_the_budget(
        slow in proptest::collection::vec(any::<bool>(), 50..400),
        fraction in 0.0f64..0.5,
    ) {
        runtime().block_on(async {
            let layer = HedgeLayer::new(
                HedgeConfig::builder()
                    .delay(Delay::Fixed(Duration::from_millis(5)))
                    .max_extra_load(fraction)
                    .budget_window(Duration::from_secs(1))
                    .build()
                    .unwrap(),
            );
            let hedger = layer.hedger().clone();
            let mut svc = layer.layer(service_fn(|ms: u64| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, BoxError>(ms)
            }));
            for &s in &slow {
                let ms = if s { 50 } else { 1 };
                svc.ready().await.unwrap().call(ms).await.unwrap();
            }
            let stats = hedger.stats();
            let bound = (fraction * slow.len() as f64).floor() as u64;
            prop_assert!(stats.hedges <= bound, "{stats:?} bound {bound}");
            Ok(())
        })?;
    }
}
