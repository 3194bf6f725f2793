//! Tail-latency simulation: no hedging vs `tower::hedge` vs palisade
//! hedging, same backend, same seed, paused time (see `sim/tail.rs`).
//!
//! `cargo bench -p palisade-fanout --bench tail_latency`

#[path = "sim/tail.rs"]
mod tail_sim;

fn main() {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let rows = tail_sim::run(seed, false);
    println!(
        "tail latency, {} requests, 1 per ms, {}% of attempts {}x the median (seed {seed})\n",
        tail_sim::REQUESTS,
        tail_sim::SLOW_FRACTION * 100.0,
        tail_sim::SLOW.as_millis() / tail_sim::MEDIAN.as_millis()
    );
    print!("{}", tail_sim::table(&rows));
    println!("\nbrownout: the same, plus every attempt from 4 s to 6 s takes 500 ms\n");
    print!("{}", tail_sim::table(&tail_sim::run(seed, true)));
}
