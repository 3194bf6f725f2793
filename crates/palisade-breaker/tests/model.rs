//! proptest: the breaker against a plain reference model of its state
//! machine, over random sequences of calls (success, failure, ignored,
//! cancelled) and clock advances.

mod support;

use std::collections::VecDeque;
use std::time::Duration;

use palisade_breaker::{Outcome, Rejected, State};
use proptest::prelude::*;
use support::{Log, ManualClock, build, builder};

#[derive(Debug, Clone, Copy)]
enum Op {
    Advance(u64),
    Call(Outcome),
    Cancel,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            2 => (1u64..400).prop_map(Op::Advance),
            3 => Just(Op::Call(Outcome::Success)),
            3 => Just(Op::Call(Outcome::Failure)),
            1 => Just(Op::Call(Outcome::Ignored)),
            1 => Just(Op::Cancel),
        ],
        0..200,
    )
}

#[derive(Debug, Clone, Copy)]
struct Params {
    window: usize,
    minimum: usize,
    threshold: f64,
    probes: u64,
    wait_ms: u64,
    max_wait_ms: u64,
    max_half_open_ms: u64,
}

/// The reference: the documented rules, written plainly.
#[derive(Debug)]
struct Model {
    p: Params,
    now: u64,
    state: State,
    window: VecDeque<bool>,
    openings: u32,
    open_until: u64,
    half_open_until: u64,
    tally: (u64, u64),
}

impl Model {
    fn open(&mut self) {
        self.openings += 1;
        let wait = (self.p.wait_ms << (self.openings - 1).min(20)).min(self.p.max_wait_ms);
        self.state = State::Open;
        self.open_until = self.now + wait;
    }

    /// `Ok(())` when admitted, else the expected rejection.
    fn acquire(&mut self) -> Result<(), Rejected> {
        loop {
            match self.state {
                State::Closed => return Ok(()),
                State::Open if self.now < self.open_until => {
                    return Err(Rejected::Open {
                        retry_after: Duration::from_millis(self.open_until - self.now),
                    });
                }
                State::Open => {
                    self.state = State::HalfOpen;
                    self.tally = (0, 0);
                    self.half_open_until = self.now + self.p.max_half_open_ms;
                }
                State::HalfOpen if self.now >= self.half_open_until => self.open(),
                State::HalfOpen => return Ok(()),
                _ => unreachable!(),
            }
        }
    }

    fn record(&mut self, failure: bool) {
        match self.state {
            State::Closed => {
                self.window.push_back(failure);
                if self.window.len() > self.p.window {
                    self.window.pop_front();
                }
                let calls = self.window.len();
                let fails = self.window.iter().filter(|f| **f).count();
                if calls >= self.p.minimum.min(self.p.window)
                    && fails as f64 >= self.p.threshold * calls as f64
                {
                    self.open();
                }
            }
            State::HalfOpen => {
                self.tally.0 += 1;
                self.tally.1 += u64::from(failure);
                let (calls, fails) = self.tally;
                let n = self.p.probes;
                let limit = self.p.threshold * n as f64;
                if fails as f64 >= limit {
                    self.open();
                } else if ((fails + n - calls) as f64) < limit {
                    self.state = State::Closed;
                    self.window.clear();
                    self.openings = 0;
                }
            }
            _ => unreachable!(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn breaker_matches_model(
        window in 1usize..8,
        minimum in 1usize..10,
        threshold in prop::sample::select(vec![0.25, 0.5, 0.75, 1.0]),
        probes in 1u64..4,
        max_half_open_ms in 50u64..2_000,
        ops in ops(),
    ) {
        let p = Params {
            window, minimum, threshold, probes,
            wait_ms: 100, max_wait_ms: 1_000, max_half_open_ms,
        };
        let clock = ManualClock::default();
        let b = build(
            builder(&Log::default())
                .clock(clock.clone())
                .count_window(window as u32)
                .minimum_calls(minimum as u32)
                .failure_rate_threshold(threshold)
                .half_open_probes(probes as u32)
                .wait_duration(Duration::from_millis(p.wait_ms))
                .max_wait_duration(Duration::from_millis(p.max_wait_ms))
                .max_half_open_duration(Duration::from_millis(max_half_open_ms)),
        );
        let mut model = Model {
            p, now: 0, state: State::Closed, window: VecDeque::new(), openings: 0,
            open_until: 0, half_open_until: 0, tally: (0, 0),
        };
        for op in ops {
            match op {
                Op::Advance(ms) => {
                    clock.advance(Duration::from_millis(ms));
                    model.now += ms;
                }
                Op::Call(outcome) => {
                    let got = b.try_acquire();
                    let expected = model.acquire();
                    prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), expected);
                    if let Ok(permit) = got {
                        permit.record(outcome);
                        if outcome != Outcome::Ignored {
                            model.record(outcome == Outcome::Failure);
                        }
                    }
                }
                Op::Cancel => {
                    let got = b.try_acquire();
                    prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), model.acquire());
                    drop(got);
                }
            }
            prop_assert_eq!(b.state(), model.state);
            prop_assert_eq!(b.consecutive_openings(), model.openings);
            if model.state == State::Closed {
                let fails = model.window.iter().filter(|f| **f).count() as u64;
                prop_assert_eq!(b.counts().calls, model.window.len() as u64);
                prop_assert_eq!(b.counts().failures, fails);
            }
        }
    }
}
