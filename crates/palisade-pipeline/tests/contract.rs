//! The pipeline's promises, one test each, under paused time: throughput,
//! bounds, order, failures, drain and fan-out.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use palisade_pipeline::{
    BranchConfig, OnError, Order, Overflow, PipelineBuilder, Stage, StageConfig, from_fn,
    from_stage,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

const MS: Duration = Duration::from_millis(1);

fn sleeper(
    d: Duration,
) -> impl FnMut(u64) -> std::pin::Pin<Box<dyn Future<Output = Result<u64, Infallible>> + Send>> + Clone
{
    move |x| {
        Box::pin(async move {
            sleep(d).await;
            Ok(x)
        })
    }
}

/// Counts calls in flight and remembers the most at once.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Gauge {
    fn enter(&self) -> impl Drop {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        let now = self.now.clone();
        scopeguard(move || {
            now.fetch_sub(1, Ordering::SeqCst);
        })
    }
}

struct Guard<F: FnMut()>(F);
impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
fn scopeguard<F: FnMut()>(f: F) -> Guard<F> {
    Guard(f)
}

#[tokio::test(start_paused = true)]
async fn a_stage_with_concurrency_c_and_latency_d_achieves_c_over_d() {
    for c in [1usize, 4, 8] {
        let n = 64u64;
        let p = PipelineBuilder::new("throughput")
            .stage(
                StageConfig::new("work").concurrency(c).unordered(),
                from_fn(sleeper(10 * MS)),
            )
            .build()
            .unwrap();
        let start = Instant::now();
        let (_h, out) = p.run(futures_util::stream::iter(0..n));
        assert_eq!(out.count().await, n as usize);
        // n / c rounds of 10 ms: throughput exactly c / d.
        assert_eq!(
            start.elapsed(),
            10 * MS * (n as u32).div_ceil(c as u32),
            "concurrency {c}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn three_one_ms_stages_overlap_instead_of_adding_up() {
    let n = 30u64;
    let mut b = PipelineBuilder::new("overlap").stage(StageConfig::new("a"), from_fn(sleeper(MS)));
    b = b.stage(StageConfig::new("b"), from_fn(sleeper(MS)));
    let p = b
        .stage(StageConfig::new("c"), from_fn(sleeper(MS)))
        .build()
        .unwrap();
    let start = Instant::now();
    let (_h, out) = p.run(futures_util::stream::iter(0..n));
    let got: Vec<u64> = out.map(Result::unwrap).collect().await;
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    // One item per ms once the pipe is full, plus 2 ms to fill it; the
    // seed's one-task-per-item design needs 3 ms per item (90 ms).
    assert_eq!(start.elapsed(), (n as u32 + 2) * MS);
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_never_exceeded() {
    let gauge = Gauge::default();
    let g = gauge.clone();
    let p = PipelineBuilder::new("bound")
        .stage(
            StageConfig::new("limited").concurrency(3).unordered(),
            from_fn(move |x: u64| {
                let g = g.clone();
                async move {
                    let _in = g.enter();
                    sleep(MS * (1 + (x % 5) as u32)).await;
                    Ok::<_, Infallible>(x)
                }
            }),
        )
        .build()
        .unwrap();
    let (h, out) = p.run(futures_util::stream::iter(0..200u64));
    assert_eq!(out.count().await, 200);
    assert_eq!(gauge.peak.load(Ordering::SeqCst), 3);
    assert_eq!(h.stats()[0].peak_in_flight, 3);
}

#[tokio::test(start_paused = true)]
async fn the_reorder_window_bounds_what_an_ordered_stage_holds() {
    // Item 0 takes 100 ms, the rest 1 ms: with a window of 5 the stage holds
    // item 0 plus four finished successors, then stops taking input.
    let p = PipelineBuilder::new("window")
        .stage(
            StageConfig::new("ordered").concurrency(2).reorder_window(5),
            from_fn(|x: u64| async move {
                sleep(if x == 0 { 100 * MS } else { MS }).await;
                Ok::<_, Infallible>(x)
            }),
        )
        .build()
        .unwrap();
    let (h, out) = p.run(futures_util::stream::iter(0..50u64));
    let got: Vec<u64> = out.map(Result::unwrap).collect().await;
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    let s = &h.stats()[0];
    assert_eq!(s.peak_held, 5);
    assert_eq!(s.peak_in_flight, 2);
}

#[tokio::test(start_paused = true)]
async fn an_item_comes_out_without_waiting_for_the_next_one() {
    let (tx, rx) = mpsc::channel(4);
    let p = PipelineBuilder::new("prompt")
        .stage(
            StageConfig::new("batchy").concurrency(4),
            from_fn(sleeper(5 * MS)),
        )
        .build()
        .unwrap();
    let (_h, mut out) = p.run_channel(rx);
    tx.send(7).await.unwrap();
    let start = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(1), out.next())
        .await
        .expect("not stuck");
    assert_eq!(got.unwrap().unwrap(), 7);
    assert_eq!(start.elapsed(), 5 * MS);
    drop(tx);
    assert!(out.next().await.is_none());
}

fn failing_pipeline(policy: OnError) -> palisade_pipeline::Pipeline<u64, u64> {
    PipelineBuilder::new("failures")
        .on_error(policy)
        .stage(
            StageConfig::new("check").concurrency(2),
            from_fn(|x: u64| async move {
                match x {
                    3 => Err("three is bad".into()),
                    5 => panic!("five panics"),
                    _ => Ok::<_, tower::BoxError>(x),
                }
            }),
        )
        .stage(
            StageConfig::new("double"),
            from_fn(|x: u64| async move { Ok::<_, Infallible>(x * 2) }),
        )
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn failed_and_panicking_items_come_out_in_their_place() {
    let (h, mut out) = failing_pipeline(OnError::Continue).run(futures_util::stream::iter(0..8u64));
    let mut got = Vec::new();
    while let Some((seq, r)) = out.next_with_seq().await {
        got.push((seq, r));
    }
    assert_eq!(got.len(), 8);
    for (i, (seq, r)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        match i {
            3 => {
                let e = r.as_ref().unwrap_err();
                assert_eq!((e.stage(), e.seq(), e.is_panic()), ("check", 3, false));
                assert_eq!(e.service_error().unwrap().to_string(), "three is bad");
            }
            5 => {
                let e = r.as_ref().unwrap_err();
                assert_eq!((e.stage(), e.seq(), e.is_panic()), ("check", 5, true));
                assert!(e.to_string().contains("five panics"), "{e}");
            }
            _ => assert_eq!(*r.as_ref().unwrap(), 2 * i as u64),
        }
    }
    let s = h.stats();
    assert_eq!((s[0].failed, s[0].panicked), (1, 1));
    // The second stage passed the failures on without calling its service.
    assert_eq!((s[1].items_in, s[1].items_out, s[1].failed), (8, 8, 0));
}

#[tokio::test(start_paused = true)]
async fn on_error_stop_ends_the_output_after_the_first_error() {
    let (h, out) = failing_pipeline(OnError::Stop).run(futures_util::stream::iter(0..100u64));
    let got: Vec<_> = out.collect().await;
    assert_eq!(got.len(), 4);
    assert_eq!(got[3].as_ref().unwrap_err().seq(), 3);
    let report = h.drain().await;
    assert!(h.is_finished());
    assert_eq!(report.admitted, report.completed + report.total_cut());
    assert!(report.completed >= 4);
}

#[tokio::test(start_paused = true)]
async fn a_drain_delivers_every_admitted_item() {
    let (tx, rx) = mpsc::channel(100);
    for i in 0..40u64 {
        tx.send(i).await.unwrap();
    }
    let p = PipelineBuilder::new("drain")
        .stage(
            StageConfig::new("a").concurrency(2).queue_capacity(4),
            from_fn(sleeper(3 * MS)),
        )
        .stage(
            StageConfig::new("b").queue_capacity(4),
            from_fn(sleeper(MS)),
        )
        .build()
        .unwrap();
    let (h, out) = p.run_channel(rx);
    let reader = tokio::spawn(out.map(Result::unwrap).collect::<Vec<u64>>());
    sleep(10 * MS).await;
    let report = h.drain().await;
    // Closing closed the channel: its sender is refused from then on, and
    // everything it had accepted went through.
    assert!(tx.send(40).await.is_err());
    assert_eq!(
        (report.admitted, report.completed, report.total_cut()),
        (40, 40, 0)
    );
    let got = reader.await.unwrap();
    assert_eq!(got, (0..40).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_drain_deadline_cuts_and_reports_where() {
    let p = PipelineBuilder::new("cut")
        .stage(
            StageConfig::new("fast").queue_capacity(8),
            from_fn(sleeper(MS)),
        )
        .stage(
            StageConfig::new("slow")
                .queue_capacity(4)
                .concurrency(2)
                .reorder_window(2),
            from_fn(sleeper(Duration::from_secs(1))),
        )
        .build()
        .unwrap();
    let (h, out) = p.run(futures_util::stream::iter(0..1000u64));
    let reader = tokio::spawn(out.count());
    sleep(50 * MS).await;
    let report = h
        .drain_until(Instant::now() + Duration::from_millis(1500))
        .await;
    // At the deadline (1.55 s): "slow" finished 2 items at 1.002 s and
    // holds 2 more, its queue holds 4; "fast" holds 1 and its queue 8.
    assert_eq!(report.completed, 2);
    let cut: Vec<(&str, u64)> = report.cut.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    assert_eq!(cut, [("fast", 9), ("slow", 6)]);
    assert_eq!(report.admitted, report.completed + report.total_cut());
    assert_eq!(reader.await.unwrap(), 2);
    let s = h.stats();
    for st in &s {
        assert_eq!(st.items_in, st.items_out + st.cut, "{st:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_on_token_drains_like_close() {
    let token = CancellationToken::new();
    let p = PipelineBuilder::new("token")
        .cancel_on(token.clone())
        .stage(StageConfig::new("a"), from_fn(sleeper(MS)))
        .build()
        .unwrap();
    let (h, out) = p.run(futures_util::stream::iter(0..u64::MAX));
    let reader = tokio::spawn(out.count());
    sleep(20 * MS).await;
    token.cancel();
    let n = reader.await.unwrap() as u64;
    let report = h.drain().await;
    assert_eq!((report.completed, report.total_cut()), (n, 0));
    assert_eq!(report.admitted, n);
}

#[tokio::test(start_paused = true)]
async fn a_slow_branch_with_a_drop_policy_never_stalls_its_sibling() {
    let p = PipelineBuilder::new("fan")
        .stage(
            StageConfig::new("id"),
            from_fn(|x: u64| async move { Ok::<_, Infallible>(x) }),
        )
        .build()
        .unwrap();
    let (h, mut outs) = p
        .run_fan_out(
            futures_util::stream::iter(0..1000u64),
            vec![
                BranchConfig::new("fast"),
                BranchConfig::new("stuck")
                    .capacity(4)
                    .overflow(Overflow::DropOldest),
                BranchConfig::new("stuck-newest")
                    .capacity(3)
                    .overflow(Overflow::DropNewest),
            ],
        )
        .unwrap();
    let newest = outs.pop().unwrap();
    let stuck = outs.pop().unwrap();
    let fast = outs.pop().unwrap();
    // Nobody reads the two stuck branches while the fast one takes all.
    let got: Vec<u64> =
        tokio::time::timeout(Duration::from_secs(5), fast.map(Result::unwrap).collect())
            .await
            .expect("the fast branch is not stalled");
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    h.drain().await;
    let stuck: Vec<u64> = stuck.map(Result::unwrap).collect().await;
    assert_eq!(stuck, [996, 997, 998, 999]);
    let newest: Vec<u64> = newest.map(Result::unwrap).collect().await;
    assert_eq!(newest, [0, 1, 2]);
    let b = h.branches();
    assert_eq!((b[0].delivered, b[0].dropped), (1000, 0));
    assert_eq!((b[1].delivered, b[1].dropped), (1000, 996));
    assert_eq!((b[2].delivered, b[2].dropped), (3, 997));
}

#[tokio::test(start_paused = true)]
async fn a_per_key_stage_keeps_order_within_each_key_only() {
    // Key 0 items are slow, key 1 fast: key 1 overtakes, each key in order.
    let p = PipelineBuilder::new("keyed")
        .stage_by_key(
            StageConfig::new("by-key").concurrency(4).reorder_window(8),
            |x: &u64| x % 2,
            from_fn(|x: u64| async move {
                sleep(if x.is_multiple_of(2) { 10 * MS } else { MS } * (1 + (x % 3) as u32)).await;
                Ok::<_, Infallible>(x)
            }),
        )
        .build()
        .unwrap();
    let (_h, out) = p.run(futures_util::stream::iter(0..40u64));
    let got: Vec<u64> = out.map(Result::unwrap).collect().await;
    assert_ne!(got, (0..40).collect::<Vec<_>>(), "keys overtake each other");
    for k in 0..2 {
        let of_key: Vec<u64> = got.iter().copied().filter(|x| x % 2 == k).collect();
        assert_eq!(of_key, (0..40).filter(|x| x % 2 == k).collect::<Vec<_>>());
    }
}

#[tokio::test(start_paused = true)]
async fn the_bottleneck_is_the_stage_using_most_of_its_capacity() {
    let p = PipelineBuilder::new("neck")
        .stage(
            StageConfig::new("parse").concurrency(2),
            from_fn(sleeper(MS)),
        )
        .stage(
            StageConfig::new("enrich").concurrency(4),
            from_fn(sleeper(20 * MS)),
        )
        .stage(StageConfig::new("write"), from_fn(sleeper(2 * MS)))
        .build()
        .unwrap();
    let (h, out) = p.run(futures_util::stream::iter(0..200u64));
    let reader = tokio::spawn(out.count());
    sleep(200 * MS).await;
    let neck = h.bottleneck().expect("stages have worked");
    assert_eq!(neck.name, "enrich");
    // 36 calls of 20 ms finished by 200 ms, on 4 slots: 720 ms of 800.
    assert_eq!(neck.busy, 720 * MS);
    assert!(
        h.stats()
            .iter()
            .all(|s| s.busy_fraction <= neck.busy_fraction)
    );
    // The stage before it is held back: its queue is full.
    let s = h.stats();
    assert_eq!(s[1].queue_depth, s[1].queue_capacity as u64);
    // The drain stops the input and delivers what was admitted.
    let report = h.drain().await;
    assert_eq!(
        (report.total_cut(), reader.await.unwrap() as u64),
        (0, report.completed)
    );
    assert_eq!(report.admitted, report.completed);
}

struct Tag;

impl Stage<u64> for Tag {
    type Out = String;
    type Error = Infallible;

    async fn process(&self, n: u64) -> Result<String, Infallible> {
        sleep(MS).await;
        Ok(format!("#{n}"))
    }
}

#[tokio::test(start_paused = true)]
async fn stages_can_be_trait_structs_and_tower_layered_services() {
    let limited = tower::ServiceBuilder::new()
        .concurrency_limit(1)
        .service(from_fn(sleeper(MS)));
    let p = PipelineBuilder::new("kinds")
        // The limit inside allows 1 call although the stage allows 4: the
        // stage waits on poll_ready without stalling its calls in flight.
        .stage(StageConfig::new("limited").concurrency(4), limited)
        .stage(
            StageConfig::new("tag").order(Order::Unordered),
            from_stage(Tag),
        )
        .build()
        .unwrap();
    let start = Instant::now();
    let (h, out) = p.run(futures_util::stream::iter(0..10u64));
    let got: Vec<String> = out.map(Result::unwrap).collect().await;
    assert_eq!(got, (0..10).map(|n| format!("#{n}")).collect::<Vec<_>>());
    assert_eq!(start.elapsed(), 11 * MS);
    assert_eq!(h.stats()[0].peak_in_flight, 1);
}

#[test]
fn bad_settings_are_refused_naming_the_field() {
    let id = || from_fn(|x: u64| async move { Ok::<_, Infallible>(x) });
    let err = |b: Result<palisade_pipeline::Pipeline<u64, u64>, palisade_pipeline::ConfigError>| {
        b.unwrap_err()
    };
    let e = err(PipelineBuilder::new("p")
        .stage(StageConfig::new("a").concurrency(0), id())
        .build());
    assert_eq!((e.stage(), e.field()), (Some("a"), "concurrency"));
    let e = err(PipelineBuilder::new("p")
        .stage(StageConfig::new("a").queue_capacity(0), id())
        .build());
    assert_eq!(e.field(), "queue_capacity");
    let e = err(PipelineBuilder::new("p")
        .stage(StageConfig::new("a").concurrency(4).reorder_window(2), id())
        .build());
    assert_eq!(e.field(), "reorder_window");
    assert_eq!(
        e.to_string(),
        "pipeline stage \"a\": `reorder_window` (2) must be at least the concurrency (4)"
    );
    let e = err(PipelineBuilder::new("p")
        .stage(StageConfig::new("a"), id())
        .stage(StageConfig::new("a"), id())
        .build());
    assert_eq!((e.stage(), e.field()), (Some("a"), "name"));
    let e = err(PipelineBuilder::new("p").build());
    assert_eq!((e.stage(), e.field()), (None, "stage"));
    let e = err(PipelineBuilder::new("p")
        .output_capacity(0)
        .stage(StageConfig::new("a"), id())
        .build());
    assert_eq!(e.field(), "output_capacity");
}

#[tokio::test(start_paused = true)]
async fn the_drain_phase_reports_to_the_shutdown_coordinator() {
    let p = PipelineBuilder::new("phase")
        .stage(
            StageConfig::new("slow").queue_capacity(2),
            from_fn(sleeper(Duration::from_secs(10))),
        )
        .build()
        .unwrap();
    let (h, out) = p.run(futures_util::stream::iter(0..10u64));
    let _reader = tokio::spawn(out.count());
    sleep(MS).await;
    let shutdown = palisade_shutdown::Shutdown::new();
    shutdown
        .add_phase(h.drain_phase("flush", Duration::from_secs(1)))
        .unwrap();
    shutdown.start(palisade_shutdown::Trigger::Requested);
    let outcome = shutdown.run().await;
    assert!(!outcome.is_clean());
    let text = outcome.to_string();
    assert!(text.contains("0 pipeline item(s) completed"), "{text}");
    assert!(
        text.contains("5 pipeline item(s) cut (input: 1, slow: 4)"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_buffering_stage_is_flushed_when_its_input_ends() {
    // Calls finish only once flushed (like a batcher waiting for a long
    // timer): the drain flushes instead of waiting.
    let flushed = CancellationToken::new();
    let f = flushed.clone();
    let p = PipelineBuilder::new("flush")
        .stage(
            StageConfig::new("buffering").concurrency(8).unordered(),
            from_fn(move |x: u64| {
                let f = f.clone();
                async move {
                    f.cancelled().await;
                    Ok::<_, Infallible>(x)
                }
            }),
        )
        .flush_with({
            let flushed = flushed.clone();
            move || flushed.cancel()
        })
        .build()
        .unwrap();
    let start = Instant::now();
    let (h, out) = p.run(futures_util::stream::iter(0..5u64));
    assert_eq!(out.count().await, 5);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(h.drain().await.completed, 5);
}
