//! The coordinator under paused time: scopes, phase order, deadlines, forcing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_shutdown::{Error, Phase, PhaseStatus, Scope, Shutdown, Trigger, signal};
use tokio::sync::mpsc;
use tokio::time::{Instant, advance, sleep};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Lets spawned tasks run to their next await point without moving time.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_scope_cancels_children_never_parent_or_siblings() {
    let root = Scope::new("root");
    let a = root.child("a");
    let a1 = a.child("a1");
    let b = root.child("b");
    assert_eq!(a1.path(), "root/a/a1");

    a.cancel();
    assert!(a.is_cancelled());
    assert!(a1.is_cancelled());
    assert!(!root.is_cancelled());
    assert!(!b.is_cancelled());

    // A child created from a cancelled scope starts cancelled.
    assert!(a.child("late").is_cancelled());

    root.cancel();
    assert!(b.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn scopes_track_their_tasks_and_their_childrens() {
    let root = Scope::new("root");
    let child = root.child("child");
    for (scope, name, after) in [(&root, "r", 1), (&child, "c1", 2), (&child, "c2", 3)] {
        let token = scope.token();
        scope.spawn(name, async move {
            token.cancelled().await;
            sleep(secs(after)).await;
        });
    }
    settle().await;
    assert_eq!(root.running(), 3);
    assert_eq!(child.running(), 2);

    root.cancel();
    let start = Instant::now();
    child.wait().await;
    assert_eq!(start.elapsed(), secs(3));
    assert_eq!(child.running(), 0);
    assert_eq!(root.running(), 0, "the root task finished at 1s");
    root.wait().await;
    assert_eq!(start.elapsed(), secs(3));
}

#[tokio::test(start_paused = true)]
async fn abort_names_every_task_left_and_ends_them() {
    let root = Scope::new("root");
    let child = root.child("db");
    root.spawn("forever", std::future::pending::<()>());
    child.spawn("pool", std::future::pending::<()>());
    child.spawn("quick", async {});
    settle().await;
    assert_eq!(root.running(), 2);
    assert_eq!(root.abort(), vec!["root/db/pool", "root/forever"]);
    root.wait().await;
    assert_eq!(root.running(), 0);
}

#[tokio::test(start_paused = true)]
async fn phases_run_in_order_each_after_the_previous_one() {
    let shutdown = Shutdown::new();
    let log = Arc::new(Mutex::new(Vec::<(&str, Duration)>::new()));
    let t0 = Instant::now();
    for (name, work) in [
        ("readiness-off", 0),
        ("stop-accepting", 1),
        ("drain", 4),
        ("flush", 2),
    ] {
        let log = log.clone();
        shutdown
            .add_phase(Phase::new(name, secs(10)).action(move |_ctx| async move {
                log.lock().unwrap().push((name, t0.elapsed()));
                sleep(secs(work)).await;
            }))
            .unwrap();
        if name == "readiness-off" {
            shutdown.add_phase(Phase::delay("delay", secs(5))).unwrap();
        }
    }
    assert!(shutdown.start(Trigger::Requested));
    assert!(
        !shutdown.start(Trigger::Signal("SIGTERM")),
        "only the first trigger counts"
    );
    let outcome = shutdown.run().await;

    assert_eq!(
        *log.lock().unwrap(),
        vec![
            ("readiness-off", secs(0)),
            ("stop-accepting", secs(5)),
            ("drain", secs(6)),
            ("flush", secs(10)),
        ]
    );
    let names: Vec<_> = outcome.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["readiness-off", "delay", "stop-accepting", "drain", "flush"]
    );
    let elapsed: Vec<_> = outcome.phases.iter().map(|p| p.elapsed).collect();
    assert_eq!(elapsed, [secs(0), secs(5), secs(1), secs(4), secs(2)]);
    assert!(
        outcome
            .phases
            .iter()
            .all(|p| p.status == PhaseStatus::Completed)
    );
    assert_eq!(outcome.trigger, Trigger::Requested);
    assert_eq!(outcome.elapsed, secs(12));
    assert!(outcome.is_clean());
    assert_eq!(outcome.code(), 0);
    assert!(
        shutdown.scope().is_cancelled(),
        "root scope cancelled after the last phase"
    );
}

#[tokio::test(start_paused = true)]
async fn readiness_turns_off_when_shutdown_starts_before_any_phase() {
    let shutdown = Shutdown::new();
    let readiness = shutdown.readiness();
    assert!(readiness.is_ready());
    shutdown.start(Trigger::Signal("SIGTERM"));
    assert!(!readiness.is_ready());
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_tasks_still_running_and_names_them() {
    let shutdown = Shutdown::new();
    let workers = shutdown.scope().child("workers");
    // One worker stops 2s after being told, one ignores cancellation.
    let token = workers.token();
    workers.spawn("polite", async move {
        token.cancelled().await;
        sleep(secs(2)).await;
    });
    workers.spawn("stuck", std::future::pending::<()>());
    let later = shutdown.scope().child("later");
    later.spawn("after", std::future::pending::<()>());
    settle().await;

    shutdown
        .add_phase(
            Phase::new("flush", secs(10))
                .cancel(&workers)
                .wait(&workers),
        )
        .unwrap();
    shutdown
        .add_phase(Phase::new("close", secs(1)).cancel(&later).wait(&later))
        .unwrap();
    shutdown.start(Trigger::Requested);
    let outcome = shutdown.run().await;

    let flush = outcome.phase("flush").unwrap();
    assert_eq!(flush.status, PhaseStatus::DeadlineExceeded);
    assert_eq!(flush.elapsed, secs(10));
    assert_eq!(flush.cut, vec!["task shutdown/workers/stuck"]);
    assert!(flush.finished.is_empty());
    assert_eq!(workers.running(), 0);

    // The next phase still ran, with its own deadline.
    let close = outcome.phase("close").unwrap();
    assert_eq!(close.status, PhaseStatus::DeadlineExceeded);
    assert_eq!(close.cut, vec!["task shutdown/later/after"]);

    assert!(!outcome.is_clean());
    assert!(!outcome.forced);
    assert_eq!(outcome.code(), 1);
    let cut: Vec<_> = outcome.cut().collect();
    assert_eq!(
        cut,
        vec![
            ("flush", "task shutdown/workers/stuck"),
            ("close", "task shutdown/later/after")
        ]
    );
    let report = outcome.to_string();
    assert!(
        report.contains("cut: task shutdown/workers/stuck"),
        "{report}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_scope_that_empties_in_time_reports_what_finished() {
    let shutdown = Shutdown::new();
    let workers = shutdown.scope().child("workers");
    for name in ["a", "b"] {
        let token = workers.token();
        workers.spawn(name, async move {
            token.cancelled().await;
            sleep(secs(1)).await;
        });
    }
    settle().await;
    shutdown
        .add_phase(Phase::new("flush", secs(5)).cancel(&workers).wait(&workers))
        .unwrap();
    shutdown.start(Trigger::Requested);
    let outcome = shutdown.run().await;
    let flush = outcome.phase("flush").unwrap();
    assert_eq!(flush.status, PhaseStatus::Completed);
    assert_eq!(flush.elapsed, secs(1));
    assert_eq!(flush.finished, vec!["2 task(s) in shutdown/workers"]);
    assert!(outcome.is_clean());
}

#[tokio::test(start_paused = true)]
async fn an_action_reacts_to_expiry_within_the_grace_and_reports_cuts() {
    let shutdown = Shutdown::new();
    shutdown
        .add_phase(Phase::new("drain", secs(30)).action(|ctx| async move {
            ctx.finished("7 connections closed gracefully");
            ctx.expired().await;
            // Force-closing takes a moment, well within the grace.
            sleep(Duration::from_millis(10)).await;
            ctx.cut("2 connections force-closed");
        }))
        .unwrap();
    shutdown
        .add_phase(
            Phase::new("deaf", secs(1))
                .cut_grace(secs(2))
                .action(|_ctx| std::future::pending::<()>()),
        )
        .unwrap();
    shutdown.start(Trigger::Requested);
    let outcome = shutdown.run().await;

    let drain = outcome.phase("drain").unwrap();
    assert_eq!(drain.status, PhaseStatus::DeadlineExceeded);
    assert_eq!(drain.elapsed, secs(30) + Duration::from_millis(10));
    assert_eq!(drain.finished, vec!["7 connections closed gracefully"]);
    assert_eq!(drain.cut, vec!["2 connections force-closed"]);

    // An action that ignores expiry is dropped after its grace.
    let deaf = outcome.phase("deaf").unwrap();
    assert_eq!(deaf.status, PhaseStatus::DeadlineExceeded);
    assert_eq!(deaf.elapsed, secs(3));
    assert_eq!(deaf.cut, vec!["action of phase `deaf`"]);
    assert_eq!(outcome.code(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_first_signal_starts_and_a_second_forces() {
    let shutdown = Shutdown::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    shutdown
        .add_phase(Phase::new("drain", secs(60)).action(move |ctx| async move {
            o.lock().unwrap().push("drain started");
            ctx.expired().await;
            o.lock().unwrap().push("drain saw expiry");
            ctx.cut("1 request");
        }))
        .unwrap();
    shutdown.add_phase(Phase::new("flush", secs(5))).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let signals = tokio::spawn(signal::handle(shutdown.clone(), rx));
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { shutdown.run().await }
    });

    settle().await;
    assert!(!shutdown.is_started());
    tx.send("SIGTERM").unwrap();
    settle().await;
    assert!(shutdown.is_started());
    assert!(!shutdown.is_forced());
    assert_eq!(*order.lock().unwrap(), vec!["drain started"]);

    advance(secs(3)).await;
    tx.send("SIGINT").unwrap();
    let outcome = run.await.unwrap();
    signals.await.unwrap();

    assert!(shutdown.is_forced());
    assert_eq!(outcome.trigger, Trigger::Signal("SIGTERM"));
    assert!(outcome.forced);
    let drain = outcome.phase("drain").unwrap();
    assert_eq!(drain.status, PhaseStatus::Forced);
    assert_eq!(drain.elapsed, secs(3));
    // The action got its one last poll and reported the cut.
    assert_eq!(drain.cut, vec!["1 request"]);
    assert_eq!(
        *order.lock().unwrap(),
        vec!["drain started", "drain saw expiry"]
    );
    let flush = outcome.phase("flush").unwrap();
    assert_eq!(flush.status, PhaseStatus::Skipped);
    assert_eq!(flush.elapsed, Duration::ZERO);
    assert_eq!(outcome.code(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_signal_after_a_requested_start_forces() {
    let shutdown = Shutdown::new();
    shutdown.add_phase(Phase::delay("delay", secs(5))).unwrap();
    shutdown.start(Trigger::Requested);
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send("SIGTERM").unwrap();
    signal::handle(shutdown.clone(), rx).await;
    assert!(shutdown.is_forced());
    let outcome = shutdown.run().await;
    assert_eq!(outcome.phases[0].status, PhaseStatus::Skipped);
    assert_eq!(outcome.code(), 3);
}

#[tokio::test(start_paused = true)]
async fn force_interrupts_a_delay_phase() {
    let shutdown = Shutdown::new();
    shutdown.add_phase(Phase::delay("delay", secs(5))).unwrap();
    shutdown.start(Trigger::Requested);
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { shutdown.run().await }
    });
    settle().await;
    advance(secs(2)).await;
    shutdown.force();
    let outcome = run.await.unwrap();
    assert_eq!(outcome.phases[0].status, PhaseStatus::Forced);
    assert_eq!(outcome.phases[0].elapsed, secs(2));
}

#[tokio::test(start_paused = true)]
async fn invalid_phase_registration_is_an_error_naming_the_field() {
    let shutdown = Shutdown::new();
    shutdown.add_phase(Phase::new("drain", secs(1))).unwrap();
    let dup = shutdown
        .add_phase(Phase::new("drain", secs(2)))
        .unwrap_err();
    assert!(
        matches!(
            dup,
            Error::InvalidConfig {
                field: "phase.name",
                ..
            }
        ),
        "{dup}"
    );
    let empty = shutdown.add_phase(Phase::new("", secs(2))).unwrap_err();
    assert!(matches!(
        empty,
        Error::InvalidConfig {
            field: "phase.name",
            ..
        }
    ));

    shutdown.start(Trigger::Requested);
    let outcome = shutdown.run().await;
    assert_eq!(outcome.phases.len(), 1);
    assert_eq!(
        shutdown.add_phase(Phase::new("late", secs(1))).unwrap_err(),
        Error::AlreadyStarted
    );
}

#[tokio::test(start_paused = true)]
async fn many_scopes_and_tasks_all_finish_or_are_cut_exactly() {
    // Stress: 50 scopes x 40 tasks; odd scopes' tasks stop when cancelled,
    // even scopes' tasks every 4th ignores cancellation.
    let shutdown = Shutdown::new();
    let parent = shutdown.scope().child("pool");
    let mut expected_cut = Vec::new();
    for s in 0..50u64 {
        let scope = parent.child(&format!("s{s}"));
        for t in 0..40u64 {
            let name = format!("t{t}");
            if s % 2 == 0 && t % 4 == 0 {
                expected_cut.push(format!("task shutdown/pool/s{s}/{name}"));
                scope.spawn(name, std::future::pending::<()>());
            } else {
                let token = scope.token();
                scope.spawn(name, async move {
                    token.cancelled().await;
                    sleep(Duration::from_millis(s * 10 + t)).await;
                });
            }
        }
    }
    settle().await;
    assert_eq!(parent.running(), 2000);
    shutdown
        .add_phase(Phase::new("stop", secs(5)).cancel(&parent).wait(&parent))
        .unwrap();
    shutdown.start(Trigger::Requested);
    let outcome = shutdown.run().await;
    let stop = outcome.phase("stop").unwrap();
    expected_cut.sort();
    assert_eq!(stop.cut, expected_cut);
    assert_eq!(stop.cut.len(), 25 * 10);
    assert_eq!(stop.elapsed, secs(5));
    assert_eq!(parent.running(), 0);
}

mod model {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random phases (work, deadline) against a model: phases start one
        /// after the other; a phase whose work fits its deadline completes in
        /// `work`, otherwise it is cut at exactly `deadline`.
        #[test]
        fn phases_match_a_sequential_model(
            phases in proptest::collection::vec((0u64..50, 1u64..50), 1..8)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            let (outcome, starts) = rt.block_on(async {
                let shutdown = Shutdown::new();
                let t0 = Instant::now();
                let starts = Arc::new(Mutex::new(Vec::new()));
                for (i, &(work, deadline)) in phases.iter().enumerate() {
                    let starts = starts.clone();
                    shutdown
                        .add_phase(
                            Phase::new(format!("p{i}"), Duration::from_millis(deadline)).action(
                                move |ctx| async move {
                                    starts.lock().unwrap().push(t0.elapsed());
                                    tokio::select! {
                                        () = sleep(Duration::from_millis(work)) => ctx.finished("work"),
                                        () = ctx.expired() => ctx.cut("work"),
                                    }
                                },
                            ),
                        )
                        .unwrap();
                }
                shutdown.start(Trigger::Requested);
                let outcome = shutdown.run().await;
                let starts = starts.lock().unwrap().clone();
                (outcome, starts)
            });

            let mut clock = 0;
            let mut expected_starts = Vec::new();
            for (i, &(work, deadline)) in phases.iter().enumerate() {
                expected_starts.push(Duration::from_millis(clock));
                let p = &outcome.phases[i];
                prop_assert_eq!(&p.name, &format!("p{i}"));
                if work <= deadline {
                    prop_assert_eq!(p.status, PhaseStatus::Completed);
                    prop_assert_eq!(p.elapsed, Duration::from_millis(work));
                    prop_assert_eq!(&p.finished, &vec!["work".to_owned()]);
                    prop_assert!(p.cut.is_empty());
                    clock += work;
                } else {
                    prop_assert_eq!(p.status, PhaseStatus::DeadlineExceeded);
                    prop_assert_eq!(p.elapsed, Duration::from_millis(deadline));
                    prop_assert_eq!(&p.cut, &vec!["work".to_owned()]);
                    clock += deadline;
                }
            }
            prop_assert_eq!(starts, expected_starts);
            prop_assert_eq!(outcome.elapsed, Duration::from_millis(clock));
            let all_fit = phases.iter().all(|&(w, d)| w <= d);
            prop_assert_eq!(outcome.code(), if all_fit { 0 } else { 1 });
        }
    }
}

// Two tasks waiting for one scope at once. Before the fix each waiter closed
// the scope's task tracker, waited, then reopened it: a waiter that reopened
// while the other was still waiting left that one waiting on an open tracker,
// which never reports "closed and empty" again, so it hung once the last task
// ended between the reopen and the first waiter's final count.
#[tokio::test(start_paused = true)]
async fn two_concurrent_waiters_both_return_when_the_tasks_end() {
    let scope = Scope::new("root");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    scope.spawn("first", async move {
        let _ = rx.await;
    });
    let a = tokio::spawn({
        let scope = scope.clone();
        async move { scope.wait().await }
    });
    let b = tokio::spawn({
        let scope = scope.clone();
        async move { scope.wait().await }
    });
    settle().await;
    // A task spawned while both wait, ending after the first: waited for.
    let (tx2, rx2) = tokio::sync::oneshot::channel::<()>();
    scope.spawn("second", async move {
        let _ = rx2.await;
    });
    tx.send(()).unwrap();
    settle().await;
    assert!(!a.is_finished() && !b.is_finished());
    tx2.send(()).unwrap();
    tokio::time::timeout(secs(1), a).await.unwrap().unwrap();
    tokio::time::timeout(secs(1), b).await.unwrap().unwrap();
    assert_eq!(scope.running(), 0);
}

// The race itself, on real threads: waiters and tasks ending on different
// workers. Every wait is bounded; a hang fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waiters_on_worker_threads_never_hang() {
    for round in 0..300u32 {
        let scope = Scope::new("root");
        for i in 0..3u32 {
            scope.spawn("task", async move {
                for _ in 0..(round + i) % 4 {
                    tokio::task::yield_now().await;
                }
            });
        }
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let scope = scope.clone();
                tokio::spawn(async move { scope.wait().await })
            })
            .collect();
        for _ in 0..(round % 3) {
            tokio::task::yield_now().await;
        }
        scope.spawn("late", async {
            tokio::task::yield_now().await;
        });
        for waiter in waiters {
            tokio::time::timeout(secs(5), waiter)
                .await
                .unwrap_or_else(|_| panic!("a waiter hung in round {round}"))
                .unwrap();
        }
    }
}

// The interleaving that hung before the fix, step by step on one thread:
// `a` is woken by the end of `u` but, before it runs, `b` starts waiting
// because `w` was spawned; `a` then reopens the tracker and waits for the
// child, `w` ends while the tracker is open (no notification), and `b`
// waited forever.
#[tokio::test(start_paused = true)]
async fn a_waiter_reopening_the_scope_never_strands_the_other() {
    let root = Scope::new("root");
    let child = root.child("child");
    let (tx_u, rx_u) = tokio::sync::oneshot::channel::<()>();
    let (tx_x, rx_x) = tokio::sync::oneshot::channel::<()>();
    let (tx_b, rx_b) = tokio::sync::oneshot::channel::<()>();
    root.spawn("u", async move {
        let _ = rx_u.await;
    });
    child.spawn("x", async move {
        let _ = rx_x.await;
    });
    let a = tokio::spawn({
        let root = root.clone();
        async move { root.wait().await }
    });
    let b = tokio::spawn({
        let root = root.clone();
        async move {
            let _ = rx_b.await;
            root.spawn("w", async {});
            root.wait().await;
        }
    });
    settle().await;
    // Wakes `u` then `b`: `u` ends (waking `a`), `b` spawns `w` and waits,
    // then `a` runs, then `w`.
    tx_u.send(()).unwrap();
    tx_b.send(()).unwrap();
    settle().await;
    tx_x.send(()).unwrap();
    tokio::time::timeout(secs(1), a).await.unwrap().unwrap();
    tokio::time::timeout(secs(1), b)
        .await
        .expect("the second waiter returns")
        .unwrap();
    assert_eq!(root.running(), 0);
}
