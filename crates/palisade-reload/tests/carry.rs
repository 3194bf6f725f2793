//! The carry-over rule: same name and equal parameters keep the instance;
//! anything else is fresh; a pass that is not committed changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use palisade_reload::{Carried, Carry};

type State = Arc<AtomicU32>;

fn fresh(_: &u32) -> State {
    Arc::new(AtomicU32::new(0))
}

#[test]
fn equal_parameters_keep_the_instance() {
    let carry = Carry::new();
    let mut pass = carry.pass();
    let a = pass.get_or_build("per-client", 10u32, fresh);
    let b = pass.get_or_build("global", 100u32, fresh);
    assert_eq!(
        pass.commit(),
        Carried {
            kept: vec![],
            fresh: vec!["per-client".into(), "global".into()],
            dropped: vec![],
        }
    );
    a.store(7, Ordering::SeqCst);
    b.store(9, Ordering::SeqCst);

    // Same name, same parameters: the same instance; `global` changed.
    let mut pass = carry.pass();
    let a2 = pass.get_or_build("per-client", 10u32, fresh);
    let b2 = pass.get_or_build("global", 50u32, fresh);
    assert_eq!(
        pass.commit(),
        Carried {
            kept: vec!["per-client".into()],
            fresh: vec!["global".into()],
            dropped: vec![],
        }
    );
    assert!(Arc::ptr_eq(&a, &a2));
    assert_eq!(a2.load(Ordering::SeqCst), 7);
    assert!(!Arc::ptr_eq(&b, &b2));
    assert_eq!(b2.load(Ordering::SeqCst), 0);
}

#[test]
fn parts_not_asked_for_are_dropped_and_return_fresh() {
    let carry = Carry::new();
    let mut pass = carry.pass();
    let a = pass.get_or_build("a", 1u32, fresh);
    pass.commit();
    let carried = carry.pass().commit();
    assert_eq!(carried.dropped, vec!["a".to_owned()]);
    assert!(carry.names().is_empty());
    let mut pass = carry.pass();
    let again = pass.get_or_build("a", 1u32, fresh);
    pass.commit();
    assert!(!Arc::ptr_eq(&a, &again));
}

#[test]
fn an_uncommitted_pass_changes_nothing() {
    let carry = Carry::new();
    let mut pass = carry.pass();
    let a = pass.get_or_build("a", 1u32, fresh);
    pass.commit();

    // A build that fails half-way: `a` changed, then `b` failed.
    let mut pass = carry.pass();
    let _ = pass.get_or_build("a", 2u32, fresh);
    let failed: Result<State, &str> =
        pass.get_or_try_build("b", 1u32, |_| Err("`b.rate`: must be positive"));
    assert_eq!(failed.unwrap_err(), "`b.rate`: must be positive");
    drop(pass);

    let mut pass = carry.pass();
    let a2 = pass.get_or_build("a", 1u32, fresh);
    assert!(Arc::ptr_eq(&a, &a2), "the old `a` is still carried");
    assert_eq!(pass.commit().kept, vec!["a".to_owned()]);
}

#[test]
fn other_parameter_or_value_types_are_fresh() {
    let carry = Carry::new();
    let mut pass = carry.pass();
    let _ = pass.get_or_build("a", 1u32, fresh);
    pass.commit();
    let mut pass = carry.pass();
    let _ = pass.get_or_build("a", 1u64, |_| Arc::new(AtomicU32::new(0)));
    assert_eq!(pass.commit().fresh, vec!["a".to_owned()]);
}

#[test]
#[should_panic(expected = "asked for twice")]
fn a_name_asked_twice_is_a_bug() {
    let carry = Carry::new();
    let mut pass = carry.pass();
    let _ = pass.get_or_build("a", 1u32, fresh);
    let _ = pass.get_or_build("a", 1u32, fresh);
}
