//! Goodput under overload, with the anchors measured in the same run: the
//! simulation tests' model upstream (8 slots × 20 ms = 400 req/s, FIFO, no
//! cancellation) under `tokio::time::pause()`, offered open-loop Poisson
//! load by clients that give up after 1 s, behind each contender in turn:
//!
//! - no limit;
//! - tower's static `ConcurrencyLimit` under `LoadShed` (how tower users
//!   build a static shedder), at 8, 12 and 16;
//! - tower-resilience's adaptive layer, AIMD and Vegas, as its users get it
//!   (it waits in `poll_ready` when full) and under `LoadShed`;
//! - palisade-limit with each algorithm.
//!
//! Every contender gets the same arrivals (one seed per scenario) and a
//! fresh runtime and upstream. 12 s per run, the first 2 s not counted.
//! Prints markdown tables; `cargo bench -p palisade-limit --bench overload`.
//!
//! Caveat for the tower-resilience rows: that crate times calls with
//! `std::time::Instant`, which paused tokio time does not move, so its
//! algorithms see microseconds of wall time instead of the model's
//! latencies (AIMD never crosses its latency threshold; Vegas reacts to
//! executor noise, so its rows vary between runs). `-- --wall-clock
//! resilience` runs those rows in real time instead (12 s a run).
#![allow(missing_docs)]
// The run's own wall time is reported, to show the bench stays fast.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use palisade_limit::{Aimd, Algorithm, Gradient2, Limiter, ProbingGradient, Vegas};
use support::{Report, Svc, Upstream, layered, limited, percentile, run_classified, steady};
use tower::{BoxError, ServiceBuilder};
use tower_resilience::adaptive as tr;

const SERVICE: Duration = Duration::from_millis(20);
const DEADLINE: Duration = Duration::from_secs(1);
const SLOTS: usize = 8;
const CAPACITY: f64 = SLOTS as f64 / 0.020; // 400 req/s
const SECONDS: u64 = 12;
const WARMUP: Duration = Duration::from_secs(2);
/// tower-resilience AIMD's latency threshold: two service times, the same
/// ceiling palisade's AIMD gets (its own default is 100 ms).
const TR_AIMD_THRESHOLD: Duration = Duration::from_millis(40);

const NO_LIMIT: &str = "no limit";
const PALISADE_DEFAULT: &str = "palisade ProbingGradient (default)";

type Build = Box<dyn Fn(&Upstream) -> Svc>;

struct Contender {
    name: String,
    build: Build,
}

fn contender(name: impl Into<String>, build: impl Fn(&Upstream) -> Svc + 'static) -> Contender {
    Contender {
        name: name.into(),
        build: Box::new(build),
    }
}

/// A refusal from any contender: palisade's `Overloaded` (exactly as the
/// simulation tests count it), tower's `LoadShed`, tower-resilience's
/// `LimitReached`. Any other error panics in the run.
fn refused(e: &BoxError) -> bool {
    support::is_overloaded(e)
        || e.is::<tower::load_shed::error::Overloaded>()
        || matches!(
            e.downcast_ref::<tr::AdaptiveError<BoxError>>(),
            Some(tr::AdaptiveError::LimitReached)
        )
}

fn palisade<A: Algorithm>(algorithm: fn() -> A) -> impl Fn(&Upstream) -> Svc {
    move |upstream: &Upstream| {
        let limiter = Limiter::builder().algorithm(algorithm()).build().unwrap();
        limited(Some(limiter), upstream)
    }
}

fn tr_aimd() -> tr::Aimd {
    tr::Aimd::builder()
        .latency_threshold(TR_AIMD_THRESHOLD)
        .build()
        .unwrap()
}

fn tr_vegas() -> tr::Vegas {
    tr::Vegas::builder().build().unwrap()
}

fn palisade_aimd() -> Aimd {
    Aimd::builder().timeout(2 * SERVICE).build().unwrap()
}

fn contenders() -> Vec<Contender> {
    let mut all = vec![contender(NO_LIMIT, |up: &Upstream| limited(None, up))];
    for limit in [8, 12, 16] {
        all.push(contender(
            format!("tower ConcurrencyLimit({limit}) + LoadShed"),
            move |up: &Upstream| {
                layered(
                    ServiceBuilder::new().load_shed().concurrency_limit(limit),
                    up,
                )
            },
        ));
    }
    all.extend([
        contender("tower-resilience AIMD (waits)", |up: &Upstream| {
            layered(tr::AdaptiveLimiterLayer::new(tr_aimd()), up)
        }),
        contender("tower-resilience AIMD + LoadShed", |up: &Upstream| {
            layered(
                ServiceBuilder::new()
                    .load_shed()
                    .layer(tr::AdaptiveLimiterLayer::new(tr_aimd())),
                up,
            )
        }),
        contender("tower-resilience Vegas (waits)", |up: &Upstream| {
            layered(tr::AdaptiveLimiterLayer::new(tr_vegas()), up)
        }),
        contender("tower-resilience Vegas + LoadShed", |up: &Upstream| {
            layered(
                ServiceBuilder::new()
                    .load_shed()
                    .layer(tr::AdaptiveLimiterLayer::new(tr_vegas())),
                up,
            )
        }),
        contender(PALISADE_DEFAULT, palisade(ProbingGradient::default)),
        contender("palisade Gradient2", palisade(Gradient2::default)),
        contender("palisade Vegas", palisade(Vegas::default)),
        contender("palisade AIMD (40 ms ceiling)", palisade(palisade_aimd)),
    ]);
    all
}

/// One run in a fresh runtime (paused unless `wall_clock`) with a fresh
/// upstream.
fn measure(contender: &Contender, factor: f64, seed: u64, wall_clock: bool) -> Report {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(!wall_clock)
        .build()
        .unwrap();
    rt.block_on(async {
        let upstream = Upstream::new(SLOTS, SERVICE);
        run_classified(
            (contender.build)(&upstream),
            &steady(CAPACITY * factor, SECONDS),
            DEADLINE,
            WARMUP,
            seed,
            refused,
        )
        .await
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn table(
    title: &str,
    factor: f64,
    seed: u64,
    contenders: &[&Contender],
    wall_clock: bool,
) -> Vec<Report> {
    println!(
        "\n### {title}: {:.0} req/s offered ({factor}x capacity), seed {seed}\n",
        CAPACITY * factor
    );
    println!(
        "| contender | goodput req/s | % of capacity | p99 of good answers | rejected | p99 of rejection latency | timed out |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut reports = Vec::new();
    for c in contenders {
        let r = measure(c, factor, seed, wall_clock);
        let good_p99 = if r.good == 0 {
            "–".into()
        } else {
            ms(r.p99())
        };
        let reject_p99 = if r.rejected == 0 {
            "–".into()
        } else {
            ms(percentile(&r.reject_latencies, 0.99))
        };
        println!(
            "| {} | {:.0} | {:.1}% | {} | {} | {} | {} |",
            c.name,
            r.goodput(),
            100.0 * r.goodput() / CAPACITY,
            good_p99,
            r.rejected,
            reject_p99,
            r.timed_out,
        );
        reports.push(r);
    }
    if let Some(r) = reports.first() {
        println!(
            "\n{} requests sent in the measured {:.0} s.",
            r.sent, r.seconds
        );
    }
    reports
}

/// `cargo bench -p palisade-limit --bench overload [-- [--wall-clock] [FILTER]]`:
/// FILTER keeps the contenders whose name contains it; `--wall-clock` runs
/// in real time (12 s a run), which gives tower-resilience its latencies.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs bench binaries without `--bench`.
    if !args.iter().any(|a| a == "--bench") {
        println!("overload: run with `cargo bench -p palisade-limit --bench overload`");
        return;
    }
    let wall_clock = args.iter().any(|a| a == "--wall-clock");
    let filter = args.iter().find(|a| !a.starts_with("--"));
    let keep = |c: &&Contender| filter.is_none_or(|f| c.name.contains(f.as_str()));
    let started = std::time::Instant::now();
    let all = contenders();
    let refs: Vec<&Contender> = all.iter().filter(keep).collect();
    println!(
        "## Goodput under overload: {SLOTS} slots × {} ms = {CAPACITY:.0} req/s, 1 s client deadlines, {SECONDS} s runs, first {} s excluded, {} time",
        SERVICE.as_millis(),
        WARMUP.as_secs(),
        if wall_clock { "wall-clock" } else { "paused" }
    );
    table("3x", 3.0, 11, &refs, wall_clock);
    table("10x", 10.0, 12, &refs, wall_clock);
    let half: Vec<&Contender> = all
        .iter()
        .filter(|c| c.name == NO_LIMIT || c.name == PALISADE_DEFAULT)
        .filter(keep)
        .collect();
    if !half.is_empty() {
        let reports = table("0.5x", 0.5, 31, &half, wall_clock);
        for (c, r) in half.iter().zip(&reports) {
            assert_eq!(r.rejected, 0, "{} refused at half load", c.name);
        }
    }
    eprintln!("\n(wall time {:.1} s)", started.elapsed().as_secs_f64());
}
