//! Scatter-gather with scripted branches under paused time: which branches
//! are called and cancelled, what is returned, and at exactly what virtual
//! time.

mod support;

use std::time::Duration;

use palisade_fanout::scatter::{All, FirstOk, GatherExt, Quorum, Scatter, Won};
use palisade_fanout::{AllFailed, BranchError, QuorumFailed};
use support::{Mock, Ready, err, ok, timed};
use tower::{BoxError, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

fn mocks(steps: &[support::Step]) -> Vec<Mock> {
    steps.iter().map(|s| Mock::new([*s])).collect()
}

fn kinds<T>(results: &[Result<T, BranchError>]) -> Vec<&'static str> {
    results
        .iter()
        .map(|r| match r {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn all_keeps_every_branch_result_in_branch_order() {
    let branches = mocks(&[ok(10, 0), err(20), ok(30, 2)]);
    let svc = Scatter::builder(branches.clone()).build(All).unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    let out = out.unwrap();
    assert_eq!(took, 30 * MS);
    assert_eq!(kinds(&out), ["ok", "service", "ok"]);
    assert_eq!(*out[0].as_ref().unwrap(), 0);
    assert_eq!(*out[2].as_ref().unwrap(), 2);
    for b in &branches {
        assert_eq!(b.stats.calls(), 1);
        assert_eq!(b.stats.called_at_ms(), [0]);
        assert_eq!(b.stats.cancelled(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn first_ok_returns_the_first_success_and_cancels_the_rest() {
    let branches = mocks(&[err(5), ok(10, 1), ok(50, 2)]);
    let svc = Scatter::builder(branches.clone()).build(FirstOk).unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    assert_eq!(
        out.unwrap(),
        Won {
            branch: 1,
            response: 1
        }
    );
    assert_eq!(took, 10 * MS);
    assert_eq!(branches[0].stats.completed(), 1);
    assert_eq!(branches[1].stats.completed(), 1);
    assert_eq!(branches[2].stats.cancelled(), 1);
    assert!(branches.iter().all(|b| b.stats.live() == 0));
}

#[tokio::test(start_paused = true)]
async fn first_ok_with_every_branch_failing_carries_each_failure() {
    let branches = mocks(&[err(30), err(10), err(20)]);
    let svc = Scatter::builder(branches).build(FirstOk).unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    assert_eq!(took, 30 * MS);
    let e = out.unwrap_err();
    let all = e.downcast_ref::<AllFailed>().expect("AllFailed");
    let order: Vec<usize> = all.failures().iter().map(|(i, _)| *i).collect();
    assert_eq!(order, [0, 1, 2]);
    assert!(all.failures().iter().all(|(_, e)| e.kind() == "service"));
}

#[tokio::test(start_paused = true)]
async fn quorum_is_done_at_k_successes_and_cancels_the_straggler() {
    let branches = mocks(&[ok(20, 0), ok(10, 1), ok(30, 2)]);
    let svc = Scatter::builder(branches.clone())
        .build(Quorum::new(2))
        .unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    assert_eq!(out.unwrap(), [(1, 1), (0, 0)]);
    assert_eq!(took, 20 * MS);
    assert_eq!(branches[2].stats.cancelled(), 1);
}

#[tokio::test(start_paused = true)]
async fn quorum_fails_as_soon_as_k_is_impossible() {
    let branches = mocks(&[err(5), err(8), ok(100, 2)]);
    let svc = Scatter::builder(branches.clone())
        .build(Quorum::new(2))
        .unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    assert_eq!(took, 8 * MS);
    let e = out.unwrap_err();
    let q = e.downcast_ref::<QuorumFailed>().expect("QuorumFailed");
    assert_eq!(q.needed(), 2);
    assert_eq!(q.failures().len(), 2);
    assert!(q.succeeded().is_empty());
    assert_eq!(branches[2].stats.cancelled(), 1);
}

#[tokio::test(start_paused = true)]
async fn quorum_grace_window_collects_stragglers_then_cancels() {
    let branches = mocks(&[ok(10, 0), ok(20, 1), ok(40, 2)]);
    let svc = Scatter::builder(branches.clone())
        .build(Quorum::new(1).grace(15 * MS))
        .unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    assert_eq!(out.unwrap(), [(0, 0), (1, 1)]);
    assert_eq!(took, 25 * MS);
    assert_eq!(branches[2].stats.cancelled(), 1);
}

#[tokio::test(start_paused = true)]
async fn quorum_grace_ends_early_when_every_branch_is_in() {
    let branches = mocks(&[ok(10, 0), ok(12, 1)]);
    let svc = Scatter::builder(branches)
        .build(Quorum::new(1).grace(50 * MS))
        .unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    assert_eq!(out.unwrap(), [(0, 0), (1, 1)]);
    assert_eq!(took, 12 * MS);
}

#[tokio::test(start_paused = true)]
async fn merge_reduces_the_gathered_results() {
    let branches = mocks(&[ok(1, 3), err(2), ok(3, 4)]);
    let svc = Scatter::builder(branches)
        .build(All.merge(|results: Vec<Result<u32, BranchError>>| {
            Ok::<_, BoxError>(results.into_iter().filter_map(Result::ok).sum::<u32>())
        }))
        .unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    assert_eq!(out.unwrap(), 7);
    assert_eq!(took, 3 * MS);
}

#[tokio::test(start_paused = true)]
async fn an_unready_branch_fails_at_the_ready_timeout_without_blocking_the_others() {
    let stuck = Mock::new([ok(1, 9)]).ready(Ready::Never);
    let branches = vec![
        Mock::new([ok(20, 0)]),
        stuck.clone(),
        Mock::new([ok(10, 2)]),
    ];
    let svc = Scatter::builder(branches)
        .ready_timeout(5 * MS)
        .build(All)
        .unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    let out = out.unwrap();
    assert_eq!(kinds(&out), ["ok", "not_ready", "ok"]);
    assert_eq!(took, 20 * MS);
    assert_eq!(stuck.stats.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn first_ok_answers_from_a_ready_branch_while_another_is_stuck() {
    let stuck = Mock::new([ok(1, 0)]).ready(Ready::Never);
    let svc = Scatter::builder(vec![stuck.clone(), Mock::new([ok(10, 1)])])
        .build(FirstOk)
        .unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    assert_eq!(out.unwrap().branch, 1);
    assert_eq!(took, 10 * MS);
    assert_eq!(stuck.stats.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_branch_ready_late_is_called_when_it_becomes_ready() {
    let late = Mock::new([ok(10, 1)]).ready(Ready::After(30 * MS));
    let svc = Scatter::builder(vec![Mock::new([ok(5, 0)]), late.clone()])
        .build(All)
        .unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    assert_eq!(kinds(&out.unwrap()), ["ok", "ok"]);
    assert_eq!(late.stats.called_at_ms(), [30]);
    assert_eq!(took, 40 * MS);
}

#[tokio::test(start_paused = true)]
async fn branch_timeout_cuts_slow_branches_and_the_strategy_decides() {
    let branches = mocks(&[ok(10, 0), ok(100, 1)]);
    let svc = Scatter::builder(branches.clone())
        .branch_timeout(50 * MS)
        .build(All)
        .unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    assert_eq!(kinds(&out.unwrap()), ["ok", "timed_out"]);
    assert_eq!(took, 50 * MS);
    assert_eq!(branches[1].stats.cancelled(), 1);
}

#[tokio::test(start_paused = true)]
async fn deadline_returns_partial_results_for_all() {
    let branches = mocks(&[ok(10, 0), ok(100, 1), err(20)]);
    let svc = Scatter::builder(branches)
        .deadline(40 * MS)
        .build(All)
        .unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    assert_eq!(kinds(&out.unwrap()), ["ok", "deadline", "service"]);
    assert_eq!(took, 40 * MS);
}

#[tokio::test(start_paused = true)]
async fn deadline_inside_the_grace_window_keeps_the_quorum() {
    let branches = mocks(&[ok(10, 0), ok(100, 1)]);
    let svc = Scatter::builder(branches)
        .deadline(30 * MS)
        .build(Quorum::new(1).grace(50 * MS))
        .unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    assert_eq!(out.unwrap(), [(0, 0)]);
    assert_eq!(took, 30 * MS);
}

#[tokio::test(start_paused = true)]
async fn deadline_before_the_quorum_fails_it() {
    let branches = mocks(&[ok(10, 0), ok(100, 1), ok(100, 2)]);
    let svc = Scatter::builder(branches)
        .deadline(30 * MS)
        .build(Quorum::new(2))
        .unwrap();
    let (out, took) = timed(svc.oneshot("req")).await;
    let e = out.unwrap_err();
    let q = e.downcast_ref::<QuorumFailed>().expect("QuorumFailed");
    assert_eq!(q.succeeded(), [0]);
    assert!(q.failures().iter().all(|(_, e)| e.kind() == "deadline"));
    // Decided at the second deadline failure: k = 2 out of the 2 left.
    assert_eq!(took, 30 * MS);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_response_future_cancels_every_branch() {
    let branches = mocks(&[ok(100, 0), ok(100, 1), ok(100, 2)]);
    let mut svc = Scatter::builder(branches.clone()).build(All).unwrap();
    let mut fut = Box::pin(
        ServiceExt::<&str>::ready(&mut svc)
            .await
            .unwrap()
            .call("req"),
    );
    // Poll once so every branch is called.
    assert!(support::poll_once(fut.as_mut()).is_pending());
    tokio::time::advance(10 * MS).await;
    assert!(support::poll_once(fut.as_mut()).is_pending());
    let live: usize = branches.iter().map(|b| b.stats.live()).sum();
    assert_eq!(live, 3);
    drop(fut);
    for b in &branches {
        assert_eq!(b.stats.calls(), 1);
        assert_eq!(b.stats.live(), 0);
        assert_eq!(b.stats.cancelled(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn scatter_is_always_ready_and_calls_run_concurrently() {
    let branches = mocks(&[ok(10, 0), ok(10, 1)]);
    let mut svc = Scatter::builder(branches.clone()).build(All).unwrap();
    let a = ServiceExt::<&str>::ready(&mut svc).await.unwrap().call("a");
    let b = ServiceExt::<&str>::ready(&mut svc).await.unwrap().call("b");
    let (both, took) = timed(async { tokio::join!(a, b) }).await;
    assert!(both.0.is_ok() && both.1.is_ok());
    assert_eq!(took, 10 * MS);
    assert_eq!(branches[0].stats.max_live(), 2);
}

#[test]
fn build_errors_name_the_field() {
    let none: Vec<Mock> = Vec::new();
    assert_eq!(
        Scatter::builder(none).build(All).unwrap_err().field(),
        "services"
    );
    let three = || mocks(&[ok(1, 0), ok(1, 1), ok(1, 2)]);
    assert_eq!(
        Scatter::builder(three())
            .build(Quorum::new(0))
            .unwrap_err()
            .field(),
        "quorum.k"
    );
    let e = Scatter::builder(three()).build(Quorum::new(4)).unwrap_err();
    assert_eq!(e.field(), "quorum.k");
    assert!(e.to_string().contains("only 3 branches"), "{e}");
    for (field, b) in [
        (
            "ready_timeout",
            Scatter::builder(three()).ready_timeout(Duration::ZERO),
        ),
        (
            "branch_timeout",
            Scatter::builder(three()).branch_timeout(Duration::ZERO),
        ),
        (
            "deadline",
            Scatter::builder(three()).deadline(Duration::ZERO),
        ),
    ] {
        assert_eq!(b.build(All).unwrap_err().field(), field);
    }
    assert_eq!(
        Scatter::builder(three())
            .build(Quorum::new(1).grace(Duration::ZERO))
            .unwrap_err()
            .field(),
        "quorum.grace"
    );
}
