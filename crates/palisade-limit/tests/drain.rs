//! The limiter as a palisade-shutdown phase (feature `shutdown`): queued
//! calls are refused at once, calls in flight are waited for until the
//! phase's deadline, and the report says how many finished or were still
//! running.
#![cfg(feature = "shutdown")]

use std::time::Duration;

use palisade_limit::{Fixed, Limiter, Mode, Outcome, Reason};
use palisade_shutdown::{Shutdown, Trigger};
use tower::{Layer, ServiceExt};

fn fixed(limit: usize) -> Limiter {
    Limiter::builder()
        .name("upstream")
        .mode(Mode::Queue)
        .max_wait(Duration::from_secs(10))
        .target_delay(Duration::from_millis(5))
        .algorithm(Fixed::new(limit))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_drain_phase_refuses_the_queue_and_waits_for_calls_in_flight() {
    for (release_after, expect_cut) in [
        (Duration::from_millis(100), false),
        (Duration::from_secs(5), true),
    ] {
        let limiter = fixed(1);
        let shutdown = Shutdown::new();
        shutdown
            .add_phase(limiter.drain_phase("limit", Duration::from_secs(1)))
            .unwrap();
        let running = limiter.try_acquire(0).unwrap();
        // A queued call, waiting for the one slot.
        let svc = palisade_limit::AdaptiveLimitLayer::new(limiter.clone()).layer(
            tower::service_fn(|()| async { Ok::<_, tower::BoxError>(()) }),
        );
        let queued = tokio::spawn(svc.oneshot(()));
        tokio::task::yield_now().await;
        assert_eq!(limiter.queued(), 1);
        tokio::spawn(async move {
            tokio::time::sleep(release_after).await;
            running.record(Outcome::Success);
        });
        shutdown.start(Trigger::Requested);
        let outcome = tokio::time::timeout(Duration::from_secs(30), shutdown.run())
            .await
            .expect("the phase ends by its deadline");
        let phase = &outcome.phases[0];
        if expect_cut {
            assert_eq!(
                phase.finished,
                vec!["0 call(s) under limit upstream finished".to_owned()]
            );
            assert_eq!(
                phase.cut,
                vec!["1 call(s) under limit upstream still in flight".to_owned()]
            );
        } else {
            assert!(outcome.is_clean(), "{outcome}");
            assert_eq!(
                phase.finished,
                vec!["1 call(s) under limit upstream finished".to_owned()]
            );
        }
        // The queued call was answered (refused), not left waiting.
        let refused = queued.await.unwrap().unwrap_err();
        assert_eq!(
            refused
                .downcast_ref::<palisade_limit::Overloaded>()
                .unwrap()
                .reason(),
            Reason::LimitReached
        );
        assert!(limiter.try_acquire(0).is_err(), "closed");
    }
}
