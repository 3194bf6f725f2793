use std::task::Context;
use std::time::Duration;

use super::*;
use crate::algorithm::{Aimd, Fixed};

fn fixed(limit: usize) -> LimiterBuilder {
    Limiter::builder().algorithm(Fixed::new(limit))
}

fn reserve(slot: &mut Slot, limiter: &Limiter) -> Poll<()> {
    slot.poll_reserve(limiter, &mut Context::from_waker(Waker::noop()))
}

#[test]
fn try_acquire_takes_up_to_the_limit_and_permits_give_slots_back() {
    let limiter = fixed(2).build().unwrap();
    let a = limiter.try_acquire(0).unwrap();
    let b = limiter.try_acquire(0).unwrap();
    let refused = limiter.try_acquire(0).unwrap_err();
    assert_eq!(refused.reason(), Reason::LimitReached);
    assert_eq!(refused.retry_after(), Duration::from_secs(1));
    assert_eq!(limiter.in_flight(), 2);
    a.record(Outcome::Success);
    drop(b);
    assert_eq!(limiter.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_gets_the_next_free_slot_oldest_first() {
    let limiter = fixed(1).mode(Mode::Queue).build().unwrap();
    let held = limiter.try_acquire(0).unwrap();
    let (mut first, mut second) = (Slot::Empty, Slot::Empty);
    assert!(reserve(&mut first, &limiter).is_pending());
    assert!(reserve(&mut second, &limiter).is_pending());
    assert_eq!(limiter.queued(), 2);
    drop(held);
    assert!(reserve(&mut first, &limiter).is_ready());
    assert!(matches!(first, Slot::Reserved(_)));
    assert!(reserve(&mut second, &limiter).is_pending());
    assert_eq!((limiter.in_flight(), limiter.queued()), (1, 1));
    // the first gives its unused reservation back: the second gets it
    drop(first);
    assert!(reserve(&mut second, &limiter).is_ready());
    assert!(matches!(second, Slot::Reserved(_)));
    drop(second);
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_is_refused_after_the_maximum_wait() {
    let limiter = fixed(1)
        .mode(Mode::Queue)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let _held = limiter.try_acquire(0).unwrap();
    let mut slot = Slot::Empty;
    assert!(reserve(&mut slot, &limiter).is_pending());
    tokio::time::advance(Duration::from_millis(49)).await;
    assert!(reserve(&mut slot, &limiter).is_pending());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(reserve(&mut slot, &limiter).is_ready());
    assert!(matches!(slot, Slot::Refused(Reason::QueueTimeout)));
    assert_eq!((limiter.in_flight(), limiter.queued()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once_and_close_refuses_the_waiters() {
    let limiter = fixed(1).mode(Mode::Queue).max_queue(1).build().unwrap();
    let held = limiter.try_acquire(0).unwrap();
    let (mut queued, mut over) = (Slot::Empty, Slot::Empty);
    assert!(reserve(&mut queued, &limiter).is_pending());
    assert!(reserve(&mut over, &limiter).is_ready());
    assert!(matches!(over, Slot::Refused(Reason::LimitReached)));
    limiter.close();
    assert!(reserve(&mut queued, &limiter).is_ready());
    assert!(matches!(queued, Slot::Refused(Reason::LimitReached)));
    assert_eq!(limiter.queued(), 0);
    // idle resolves once the last call in flight ends
    let idle = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.idle().await }
    });
    tokio::task::yield_now().await;
    assert!(!idle.is_finished());
    drop(held);
    tokio::time::timeout(Duration::from_secs(1), idle)
        .await
        .expect("idle resolves")
        .unwrap();
    assert!(limiter.try_acquire(0).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_standing_queue_serves_the_newest_first_and_sheds_the_oldest() {
    let limiter = fixed(1)
        .mode(Mode::Queue)
        .max_wait(Duration::from_secs(1))
        .target_delay(Duration::from_millis(5))
        .interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut held = limiter.try_acquire(0).unwrap();
    // make the queue stand: for two intervals, every waiter waits 8 ms
    // (above the 5 ms target, below the 10 ms at which a standing queue
    // sheds)
    for _ in 0..12 {
        let mut slot = Slot::Empty;
        assert!(reserve(&mut slot, &limiter).is_pending());
        tokio::time::advance(Duration::from_millis(8)).await;
        drop(held);
        assert!(reserve(&mut slot, &limiter).is_ready());
        let Slot::Reserved(r) = slot else {
            panic!("granted")
        };
        held = r.admit(0).unwrap();
    }
    // now three waiters, 12/8/4 ms old: the oldest is past twice the target
    let mut slots: Vec<Slot> = (0..3).map(|_| Slot::Empty).collect();
    for slot in &mut slots {
        assert!(reserve(slot, &limiter).is_pending());
        tokio::time::advance(Duration::from_millis(4)).await;
    }
    drop(held);
    let states: Vec<String> = slots
        .iter_mut()
        .map(|slot| {
            let _ = reserve(slot, &limiter);
            format!("{slot:?}")
        })
        .collect();
    assert_eq!(states, ["Refused(queue_shed)", "Waiting", "Reserved"]);
}

#[tokio::test(start_paused = true)]
async fn samples_move_the_limit_within_its_bounds_and_cancellations_are_not_samples() {
    let limiter = Limiter::builder()
        .algorithm(
            Aimd::builder()
                .min_limit(2)
                .initial_limit(4)
                .max_limit(5)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    for _ in 0..10 {
        let permits: Vec<_> = (0..limiter.limit())
            .map(|_| limiter.try_acquire(0).unwrap())
            .collect();
        for p in permits {
            p.record(Outcome::Success);
        }
    }
    assert_eq!(limiter.limit(), 5);
    for _ in 0..20 {
        limiter.try_acquire(0).unwrap().record(Outcome::Failure);
    }
    assert_eq!(limiter.limit(), 2);
    // dropped and ignored: no samples
    for _ in 0..10 {
        drop(limiter.try_acquire(0).unwrap());
        limiter.try_acquire(0).unwrap().record(Outcome::Ignored);
    }
    assert_eq!(limiter.limit(), 2);
    assert_eq!(limiter.in_flight(), 0);
}
