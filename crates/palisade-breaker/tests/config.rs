//! Invalid configuration is an `Err` naming the field, never a panic.

use std::time::Duration;

use palisade_breaker::{Config, ConfigBuilder, KeyedBreakers};

fn field(b: ConfigBuilder) -> &'static str {
    b.build().expect_err("invalid").field()
}

#[test]
fn errors_name_the_field() {
    let b = Config::builder;
    assert_eq!(
        field(b().failure_rate_threshold(1.5)),
        "failure_rate_threshold"
    );
    assert_eq!(
        field(b().failure_rate_threshold(0.0)),
        "failure_rate_threshold"
    );
    assert_eq!(
        field(b().failure_rate_threshold(-0.1)),
        "failure_rate_threshold"
    );
    assert_eq!(
        field(b().failure_rate_threshold(f64::NAN)),
        "failure_rate_threshold"
    );
    assert_eq!(
        field(b().slow_call_rate_threshold(2.0)),
        "slow_call_rate_threshold"
    );
    assert_eq!(field(b().count_window(0)), "sliding_window.size");
    assert_eq!(field(b().count_window(2_000_000)), "sliding_window.size");
    assert_eq!(
        field(b().time_window(Duration::ZERO, 10)),
        "sliding_window.duration"
    );
    assert_eq!(
        field(b().time_window(Duration::from_nanos(5), 10)),
        "sliding_window.duration"
    );
    assert_eq!(
        field(b().time_window(Duration::from_secs(10), 0)),
        "sliding_window.buckets"
    );
    assert_eq!(field(b().minimum_calls(0)), "minimum_calls");
    assert_eq!(field(b().consecutive_failures(0)), "consecutive_failures");
    assert_eq!(
        field(b().slow_call_duration(Duration::ZERO)),
        "slow_call_duration"
    );
    assert_eq!(field(b().wait_duration(Duration::ZERO)), "wait_duration");
    assert_eq!(field(b().wait_multiplier(0.5)), "wait_multiplier");
    assert_eq!(field(b().wait_multiplier(f64::INFINITY)), "wait_multiplier");
    assert_eq!(
        field(
            b().wait_duration(Duration::from_secs(10))
                .max_wait_duration(Duration::from_secs(5))
        ),
        "max_wait_duration"
    );
    assert_eq!(field(b().wait_jitter(1.0)), "wait_jitter");
    assert_eq!(field(b().wait_jitter(-0.1)), "wait_jitter");
    assert_eq!(field(b().half_open_probes(0)), "half_open_probes");
    assert_eq!(
        field(b().max_half_open_duration(Duration::ZERO)),
        "max_half_open_duration"
    );
    assert_eq!(
        KeyedBreakers::<String>::new(Config::default(), 0)
            .unwrap_err()
            .field(),
        "max_keys"
    );
}

#[test]
fn message_names_field_and_reason() {
    let err = Config::builder()
        .failure_rate_threshold(1.5)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid circuit breaker configuration: `failure_rate_threshold` must be in (0, 1], got 1.5"
    );
}

#[test]
fn defaults_are_valid_and_documented() {
    let c = Config::default();
    assert_eq!(c.name(), "default");
    assert_eq!(
        c.window(),
        palisade_breaker::SlidingWindow::Count { size: 100 }
    );
    assert_eq!(
        c.failure_mode(),
        palisade_breaker::FailureMode::Rate { threshold: 0.5 }
    );
    assert_eq!(c.wait_duration(), Duration::from_secs(5));
    assert_eq!(c.half_open_probes(), 5);
    // Edge values are accepted.
    Config::builder()
        .failure_rate_threshold(1.0)
        .wait_multiplier(1.0)
        .wait_jitter(0.0)
        .count_window(1)
        .minimum_calls(1_000)
        .build()
        .unwrap();
}

#[test]
fn same_parameters_compares_every_knob_but_the_clock() {
    let a = Config::builder()
        .name("up")
        .minimum_calls(5)
        .build()
        .unwrap();
    let b = Config::builder()
        .name("up")
        .minimum_calls(5)
        .build()
        .unwrap();
    assert!(a.same_parameters(&b));
    assert!(a.same_parameters(&a.clone()));
    let other = Config::builder()
        .name("up")
        .minimum_calls(6)
        .build()
        .unwrap();
    assert!(!a.same_parameters(&other));
    let renamed = Config::builder()
        .name("down")
        .minimum_calls(5)
        .build()
        .unwrap();
    assert!(!a.same_parameters(&renamed));
    let waits = Config::builder()
        .name("up")
        .minimum_calls(5)
        .wait_duration(Duration::from_secs(1))
        .build()
        .unwrap();
    assert!(!a.same_parameters(&waits));
}

#[test]
fn with_breaker_keeps_an_existing_breaker_and_its_state() {
    let config = Config::builder().name("upstream").build().unwrap();
    let first = KeyedBreakers::new(config.clone(), 2)
        .unwrap()
        .with_keys([0usize, 1])
        .unwrap();
    let open = first.get(&0);
    open.force_open();
    let second = KeyedBreakers::new(config.clone(), 2)
        .unwrap()
        .with_breaker(0usize, open.clone())
        .unwrap()
        .with_keys([1usize])
        .unwrap();
    assert_eq!(second.get(&0).state(), palisade_breaker::State::ForcedOpen);
    assert_eq!(second.get(&1).state(), palisade_breaker::State::Closed);
    assert_eq!(second.fixed().count(), 2);
    // More fixed keys than max_keys is the same error as with_keys'.
    let full = KeyedBreakers::new(config, 1)
        .unwrap()
        .with_keys([0usize])
        .unwrap()
        .with_breaker(1usize, open)
        .unwrap_err();
    assert_eq!(full.field(), "max_keys");
}
