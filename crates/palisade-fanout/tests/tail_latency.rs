//! The deterministic tail-latency simulation (`benches/sim/tail.rs`) as a
//! test: the hedging targets of docs/fan-out.md, asserted on virtual time.

#[path = "../benches/sim/tail.rs"]
mod tail_sim;

#[test]
fn hedging_at_p95_with_a_5_percent_budget_cuts_p99_at_least_5x() {
    let rows = tail_sim::run(1, false);
    println!("{}", tail_sim::table(&rows));
    let (none, tower, palisade) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(none.p99, tail_sim::SLOW);
    assert!(palisade.p99 * 5 <= none.p99, "{palisade:?}");
    assert!(palisade.extra_load <= 0.05, "{palisade:?}");
    // Never worse than tower::hedge at the 99th, better further out (tower
    // does not hedge until its first histogram period is full).
    assert!(palisade.p99 <= tower.p99, "{palisade:?} vs {tower:?}");
    assert!(palisade.p999 < tower.p999, "{palisade:?} vs {tower:?}");
}

#[test]
fn in_a_brownout_the_budget_caps_the_extra_load() {
    let rows = tail_sim::run(1, true);
    println!("{}", tail_sim::table(&rows));
    let (tower, palisade) = (&rows[1], &rows[2]);
    assert!(palisade.extra_load <= 0.05, "{palisade:?}");
    assert!(
        palisade.extra_load < tower.extra_load,
        "{palisade:?} vs {tower:?}"
    );
}
