use std::time::Duration;

use super::*;

type TestCache = Cache<u64, u64>;

fn cache(capacity: usize, policy: PolicyKind) -> TestCache {
    Cache::new(Config {
        capacity,
        policy,
        shards: Some(1),
        ttl: None,
    })
    .unwrap()
}

fn h(k: u64) -> u64 {
    crate::hash::hash_i64(k as i64)
}

fn get(c: &TestCache, k: u64) -> Option<u64> {
    let mut out = Removed::new();
    c.get(Now::LAZY, h(k), |x| *x == k, |v| *v, &mut out)
}

fn set(c: &TestCache, k: u64, v: u64) -> Removed<u64, u64> {
    let mut out = Removed::new();
    c.insert(Now::LAZY, h(k), || k, v, None, |x| *x == k, &mut out);
    out
}

fn replace(c: &TestCache, k: u64, v: u64) -> Option<u64> {
    let mut out = Removed::new();
    c.insert(Now::LAZY, h(k), || k, v, None, |x| *x == k, &mut out)
}

fn set_ttl(c: &TestCache, k: u64, ttl: Duration) {
    let mut out = Removed::new();
    c.insert(Now::LAZY, h(k), || k, k, Some(ttl), |x| *x == k, &mut out);
}

fn sorted_keys(c: &TestCache) -> Vec<u64> {
    let mut keys = c.keys(Now::LAZY, |k| *k);
    keys.sort_unstable();
    keys
}

#[test]
fn lru_evicts_the_least_recently_used() {
    let c = cache(3, PolicyKind::Lru);
    for k in 1..=3 {
        set(&c, k, k * 10);
    }
    assert_eq!(get(&c, 1), Some(10));
    let out = set(&c, 4, 40);
    assert_eq!(out.as_slice(), &[(2, 20, Cause::Size)]);
    assert_eq!(sorted_keys(&c), vec![1, 3, 4]);
    set(&c, 3, 33); // an update counts as a use
    set(&c, 5, 50);
    assert_eq!(sorted_keys(&c), vec![3, 4, 5]);
}

#[test]
fn fifo_ignores_hits_and_updates() {
    let c = cache(3, PolicyKind::Fifo);
    for k in 1..=3 {
        set(&c, k, k);
    }
    get(&c, 1);
    set(&c, 1, 100);
    let out = set(&c, 4, 4);
    assert_eq!(out.as_slice(), &[(1, 100, Cause::Size)]);
}

#[test]
fn replacing_returns_the_old_value() {
    let c = cache(3, PolicyKind::Lru);
    assert_eq!(replace(&c, 1, 10), None);
    assert_eq!(replace(&c, 1, 11), Some(10));
    assert_eq!(get(&c, 1), Some(11));
    assert_eq!(c.len(), 1);
}

#[test]
fn lfu_evicts_the_least_used_and_ages() {
    let c = cache(3, PolicyKind::Lfu);
    for k in 1..=3 {
        set(&c, k, k);
    }
    for _ in 0..5 {
        get(&c, 1);
        get(&c, 3);
    }
    set(&c, 4, 4);
    assert_eq!(sorted_keys(&c), vec![1, 3, 4]);
    // Key 4 becomes the favourite for long enough that the old counts are
    // halved away; then 1 and 3 are no longer untouchable.
    for _ in 0..200 {
        get(&c, 4);
    }
    set(&c, 5, 5);
    set(&c, 6, 6);
    assert!(c.len() == 3 && get(&c, 4) == Some(4));
}

#[test]
fn every_policy_stays_within_capacity() {
    for policy in [
        PolicyKind::Lru,
        PolicyKind::Fifo,
        PolicyKind::Lfu,
        PolicyKind::TinyLfu,
    ] {
        let c = Cache::new(Config {
            capacity: 100,
            policy,
            shards: Some(4),
            ttl: None,
        })
        .unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let k = rng.u64(..1000);
            if get(&c, k).is_none() {
                set(&c, k, k);
            }
            assert!(c.len() <= 100, "{policy:?}");
        }
        let stats = c.stats();
        assert_eq!(stats.hits + stats.misses, 20_000);
        assert_eq!(stats.size, c.len());
        assert!(stats.evictions > 0);
    }
}

#[test]
fn capacity_is_split_exactly() {
    let c: TestCache = Cache::new(Config {
        capacity: 10,
        policy: PolicyKind::Lru,
        shards: Some(3),
        ttl: None,
    })
    .unwrap();
    let sizes: Vec<usize> = c.shards.iter().map(|s| s.0.lock().capacity).collect();
    assert_eq!(sizes, vec![4, 3, 3]);
}

#[test]
fn bad_configs_name_the_argument() {
    let bad = |capacity, shards| {
        Cache::<u64, u64>::new(Config {
            capacity,
            policy: PolicyKind::Lru,
            shards,
            ttl: None,
        })
        .err()
        .unwrap()
        .to_string()
    };
    assert!(bad(0, None).starts_with("capacity:"));
    assert!(bad(4, Some(5)).starts_with("shards:"));
    assert!(bad(4, Some(0)).starts_with("shards:"));
    assert!(PolicyKind::parse("arc")
        .unwrap_err()
        .to_string()
        .starts_with("policy:"));
    assert!(ttl_from_secs("ttl", -1.0)
        .unwrap_err()
        .to_string()
        .starts_with("ttl:"));
    assert!(ttl_from_secs("ttl", f64::NAN).is_err());
    assert_eq!(
        ttl_from_secs("ttl", 1.5).unwrap(),
        Duration::from_millis(1500)
    );
}

#[test]
fn tinylfu_keeps_frequent_keys_through_a_scan() {
    let c = cache(100, PolicyKind::TinyLfu);
    for _ in 0..20 {
        for k in 0..50 {
            if get(&c, k).is_none() {
                set(&c, k, k);
            }
        }
    }
    // A scan of keys seen once each, five times the capacity.
    for k in 1000..1500 {
        if get(&c, k).is_none() {
            set(&c, k, k);
        }
    }
    let kept = (0..50).filter(|&k| get(&c, k).is_some()).count();
    assert!(
        kept >= 45,
        "only {kept} of the 50 hot keys survived the scan"
    );
}

#[test]
fn tinylfu_beats_lru_on_a_loop() {
    // Keys 0..200 in a loop through a cache of 100: LRU always misses.
    let ratio = |policy| {
        let c = cache(100, policy);
        let mut hits = 0;
        for _ in 0..50 {
            for k in 0..200 {
                if get(&c, k).is_some() {
                    hits += 1;
                } else {
                    set(&c, k, k);
                }
            }
        }
        hits as f64 / 10_000.0
    };
    assert_eq!(ratio(PolicyKind::Lru), 0.0);
    assert!(ratio(PolicyKind::TinyLfu) > 0.3);
}

#[test]
fn tinylfu_window_adapts() {
    let c = cache(1000, PolicyKind::TinyLfu);
    let initial = c.shards[0].0.lock().policy_sizes().3;
    // Pure recency: every key comes back once, 1 to 300 new keys later, so
    // a window larger than the initial 1% catches more of the returns.
    let mut rng = fastrand::Rng::with_seed(3);
    for i in 300..300_000u64 {
        for k in [i, i - rng.u64(1..300)] {
            if get(&c, k).is_none() {
                set(&c, k, k);
            }
        }
    }
    let grown = c.shards[0].0.lock().policy_sizes().3;
    assert!(grown > initial, "window {initial} -> {grown}");
}

#[test]
fn entries_expire_and_are_freed() {
    let c = cache(100, PolicyKind::Lru);
    set_ttl(&c, 1, Duration::from_millis(30));
    set_ttl(&c, 2, Duration::from_secs(60));
    set(&c, 3, 3);
    assert_eq!(get(&c, 1), Some(1));
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(get(&c, 1), None);
    assert_eq!(get(&c, 2), Some(2));
    assert_eq!(c.stats().expirations, 1);
    assert_eq!(c.len(), 2);
}

#[test]
fn expired_entries_are_swept_without_being_read() {
    let c = cache(1000, PolicyKind::TinyLfu);
    for k in 0..100 {
        set_ttl(&c, k, Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(20));
    // Reads of other keys (all misses) sweep the queue a few at a time.
    for k in 1000..1000 + 64 * 20 {
        get(&c, k);
    }
    assert_eq!(c.len(), 0);
    assert_eq!(c.stats().expirations, 100);
}

#[test]
fn purge_expired_frees_everything_due() {
    let c = Cache::<u64, u64>::new(Config {
        capacity: 100,
        policy: PolicyKind::Fifo,
        shards: Some(2),
        ttl: Some(Duration::from_millis(5)),
    })
    .unwrap();
    for k in 0..10 {
        set(&c, k, k);
    }
    set_ttl(&c, 99, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(10));
    let purged = c.purge_expired(Now::LAZY);
    assert_eq!(purged.len(), 10);
    assert!(purged.iter().all(|(_, _, cause)| *cause == Cause::Expired));
    assert_eq!(sorted_keys(&c), vec![99]);
}

#[test]
fn a_full_cache_drops_dead_entries_before_live_ones() {
    let c = cache(4, PolicyKind::Lru);
    set_ttl(&c, 1, Duration::from_millis(5));
    for k in 2..=4 {
        set(&c, k, k);
    }
    get(&c, 1);
    std::thread::sleep(Duration::from_millis(10));
    let out = set(&c, 5, 5);
    assert_eq!(out.as_slice(), &[(1, 1, Cause::Expired)]);
    assert_eq!(sorted_keys(&c), vec![2, 3, 4, 5]);
}

#[test]
fn rewriting_ttl_entries_keeps_the_queue_bounded() {
    let c = cache(10, PolicyKind::Lru);
    for round in 0..10_000u64 {
        set_ttl(&c, round % 10, Duration::from_secs(3600 + round));
    }
    let shard = c.shards[0].0.lock();
    assert_eq!(shard.expiry.live, 10);
    assert!(shard.expiry.heap_bytes() < 2 * (2 * 10 + 64) * 16 + 1024);
}

#[test]
fn clearing_returns_every_entry_and_keeps_working() {
    let c = cache(10, PolicyKind::TinyLfu);
    for k in 0..10 {
        set(&c, k, k);
    }
    assert_eq!(c.clear().len(), 10);
    assert_eq!(c.len(), 0);
    set(&c, 1, 1);
    assert_eq!(get(&c, 1), Some(1));
}
