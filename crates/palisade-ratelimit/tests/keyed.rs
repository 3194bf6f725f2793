//! Keyed limits: the hard cap, eviction order, overrides, shadow mode and
//! several policies on one request.

use std::{net::Ipv6Addr, time::Duration};

use palisade_ratelimit::{
    Clock, KeyedLimiter, Limiter, PerKey, Policy, Quota, RateLimitLayer, key_fn,
};
use tower::{BoxError, ServiceBuilder, ServiceExt};

fn per_second(n: u32) -> Quota {
    Quota::per_second(n).unwrap()
}

#[test]
fn a_million_distinct_keys_never_exceed_the_cap() {
    let (clock, time) = Clock::manual();
    let limiter = KeyedLimiter::builder(per_second(10))
        .max_keys(10_000)
        .shards(16)
        .clock(clock)
        .build()
        .unwrap();
    assert_eq!(limiter.capacity(), 10_000);
    let mut max_seen = 0;
    for i in 0..1_000_000u128 {
        // Random-looking IPv6 addresses, as a scanner would send.
        let key = Ipv6Addr::from(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
        assert!(limiter.check(&key).allowed(), "a new key is admitted");
        max_seen = max_seen.max(limiter.len());
        if i % 1_000 == 0 {
            time.advance(Duration::from_micros(10));
        }
    }
    assert!(max_seen <= 10_000, "tracked {max_seen} keys");
    assert!(limiter.len() <= 10_000);
    assert!(
        limiter.len() >= 10_000 - 10_000 / 8 - 1_000,
        "len {}",
        limiter.len()
    );
}

#[test]
fn eviction_drops_expired_keys_before_recent_ones() {
    let (clock, time) = Clock::manual();
    // One shard of 8 keys so the order is observable.
    let limiter = KeyedLimiter::builder(per_second(1))
        .max_keys(8)
        .shards(1)
        .clock(clock)
        .build()
        .unwrap();
    // Keys 0..4 drain their burst at t = 0 ...
    for key in 0..4u32 {
        assert!(limiter.check(&key).allowed());
    }
    // ... and have fully replenished (expired) one second later, when keys
    // 4..8 are used.
    time.advance(Duration::from_secs(1));
    for key in 4..8u32 {
        assert!(limiter.check(&key).allowed());
    }
    assert_eq!(limiter.len(), 8);
    // A ninth key makes room: the four expired keys go, the recent ones stay
    // (still limited, so their state was not lost).
    assert!(limiter.check(&8).allowed());
    assert_eq!(limiter.len(), 5);
    for key in 4..8u32 {
        assert!(!limiter.check(&key).allowed(), "key {key} kept its state");
    }
}

#[test]
fn eviction_falls_back_to_least_recently_seen() {
    let (clock, time) = Clock::manual();
    let limiter = KeyedLimiter::builder(per_second(1))
        .max_keys(8)
        .shards(1)
        .clock(clock)
        .build()
        .unwrap();
    for key in 0..8u32 {
        assert!(limiter.check(&key).allowed());
        time.advance(Duration::from_millis(10));
    }
    // Nobody expired (burst 1 refills in 1 s); key 0 is the least recently
    // seen and is evicted (an eighth of 8 = 1 key).
    assert!(limiter.check(&100).allowed());
    assert_eq!(limiter.len(), 8);
    assert!(
        limiter.check(&0).allowed(),
        "key 0 was evicted and starts fresh"
    );
    assert!(!limiter.check(&7).allowed(), "key 7 kept its state");
}

#[test]
fn overrides_give_a_key_its_own_quota() {
    let (clock, _time) = Clock::manual();
    let limiter = KeyedLimiter::builder(per_second(1))
        .with_override("partner", per_second(5))
        .clock(clock)
        .build()
        .unwrap();
    assert_eq!(limiter.quota_for(&"partner").burst(), 5);
    let admitted = (0..10)
        .filter(|_| limiter.check(&"partner").allowed())
        .count();
    assert_eq!(admitted, 5);
    let admitted = (0..10)
        .filter(|_| limiter.check(&"anyone").allowed())
        .count();
    assert_eq!(admitted, 1);
}

#[test]
fn a_small_cap_holds_every_key_with_default_shards() {
    let (clock, _time) = Clock::manual();
    // 64 keys fit in the 64-key cap: the default shard count keeps at least
    // MIN_KEYS_PER_SHARD keys per shard instead of splitting the cap into
    // 16 × CPUs shards of a few keys each (which evicted at 3 keys).
    let limiter = KeyedLimiter::builder(per_second(1))
        .max_keys(64)
        .clock(clock)
        .build()
        .unwrap();
    assert_eq!(limiter.capacity(), 64);
    for key in 0..64u32 {
        assert!(limiter.check(&key).allowed());
    }
    assert_eq!(limiter.len(), 64);
    for key in 0..64u32 {
        assert!(!limiter.check(&key).allowed(), "key {key} kept its state");
    }
    // A large cap still shards by CPU count.
    let large = KeyedLimiter::<u32>::builder(per_second(1))
        .max_keys(1 << 20)
        .build()
        .unwrap();
    let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
    assert_eq!(large.capacity(), 1 << 20);
    assert!(format!("{large:?}").contains(&format!(
        "shards: {}",
        (cpus * 16).min(256).next_power_of_two()
    )));
}

#[test]
fn invalid_limiter_settings_name_the_field() {
    let err = KeyedLimiter::<u32>::builder(per_second(1))
        .max_keys(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_keys");
    let err = KeyedLimiter::<u32>::builder(per_second(1))
        .shards(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "shards");
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_counts_but_admits() {
    let limiter = Limiter::builder(per_second(1))
        .shadow(true)
        .clock(Clock::tokio())
        .build();
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter))
        .service_fn(|n: u32| async move { Ok::<_, BoxError>(n) });
    for n in 0..5 {
        assert_eq!(svc.clone().oneshot(n).await.unwrap(), n);
    }
    // The limiter itself still reports the real decision.
    let (verdict, _) =
        Policy::<u32>::check(&Limiter::builder(per_second(1)).shadow(true).build(), &0);
    assert_eq!(verdict.limited, None);
    assert_eq!(verdict.tightest, None);
}

#[tokio::test(start_paused = true)]
async fn all_policies_must_admit_and_a_rejection_refunds_the_others() {
    // Per client: burst 2. Global: burst 3.
    let per_client = PerKey::new(
        KeyedLimiter::builder(per_second(2))
            .name("per-client")
            .clock(Clock::tokio())
            .build()
            .unwrap(),
        key_fn(|req: &&'static str| Some(*req)),
    );
    let global = Limiter::builder(per_second(3))
        .clock(Clock::tokio())
        .build();
    let policy = (per_client, global);

    let check = |req: &'static str| policy.check(&req).0;
    let v = check("a");
    assert_eq!(v.limited, None);
    // The tightest admitting policy is reported: per-client has 1 left, global 2.
    let tightest = v.tightest.unwrap();
    assert_eq!(
        (tightest.policy, tightest.decision.remaining()),
        ("per-client", 1)
    );
    assert_eq!(check("a").limited, None);
    // Client a is out: per-client rejects before global is consulted.
    assert_eq!(check("a").limited.unwrap().policy, "per-client");
    assert_eq!(check("b").limited, None);
    // Global is out (3 admitted). Client c's request is rejected by global,
    // and the cell per-client took for it is given back ...
    assert_eq!(check("c").limited.unwrap().policy, "global");
    assert_eq!(check("c").limited.unwrap().policy, "global");
    // ... so once global has room again, c still has its full burst of 2.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(check("c").limited, None);
    assert_eq!(check("c").limited, None);
    assert_eq!(check("c").limited.unwrap().policy, "per-client");
}

#[test]
fn requests_without_a_key_are_not_limited() {
    let policy = PerKey::new(
        KeyedLimiter::builder(per_second(1)).build().unwrap(),
        key_fn(|req: &Option<u32>| *req),
    );
    for _ in 0..10 {
        assert_eq!(policy.check(&None).0.limited, None);
    }
    assert!(policy.limiter().is_empty());
    assert_eq!(policy.check(&Some(1)).0.limited, None);
    assert!(policy.check(&Some(1)).0.limited.is_some());
}

#[test]
fn optional_policies_switch_off_cleanly() {
    let off: Option<Limiter> = None;
    let on = Some(Limiter::new(per_second(1)));
    let policy = (off, on);
    assert_eq!(policy.check(&()).0.limited, None);
    assert!(policy.check(&()).0.limited.is_some());
}

#[test]
fn sequential_keys_spread_over_shards() {
    // Under the cap, no key is evicted: the shards fill evenly enough.
    let limiter = KeyedLimiter::builder(per_second(1))
        .max_keys(200_000)
        .build()
        .unwrap();
    for key in 0..100_000u64 {
        limiter.check(&key);
    }
    assert_eq!(limiter.len(), 100_000);
}

#[test]
fn purge_drops_only_replenished_keys() {
    let (clock, time) = Clock::manual();
    let limiter = KeyedLimiter::builder(per_second(2))
        .clock(clock)
        .build()
        .unwrap();
    limiter.check(&"rested");
    time.advance(Duration::from_millis(400));
    limiter.check(&"busy");
    limiter.check(&"busy");
    assert_eq!(limiter.len(), 2);
    // "rested" refilled at 500 ms; "busy" needs until 1,400 ms.
    time.advance(Duration::from_millis(100));
    limiter.purge_expired();
    assert_eq!(limiter.len(), 1);
    assert!(!limiter.check(&"busy").allowed(), "busy kept its state");
    time.advance(Duration::from_millis(900));
    limiter.purge_expired();
    assert!(limiter.is_empty());
}
