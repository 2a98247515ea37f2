use std::time::Duration;

use super::*;

type TestCache = Cache<u64, u64>;

fn cache(capacity: u64, policy: PolicyKind) -> TestCache {
    Cache::new(Config {
        capacity,
        policy,
        shards: Some(1),
        ttl: None,
        tti: None,
        weighted: false,
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
    c.insert(
        Now::LAZY,
        h(k),
        || k,
        v,
        Write::DEFAULT,
        |x| *x == k,
        &mut out,
    );
    out
}

fn replace(c: &TestCache, k: u64, v: u64) -> Option<u64> {
    let mut out = Removed::new();
    c.insert(
        Now::LAZY,
        h(k),
        || k,
        v,
        Write::DEFAULT,
        |x| *x == k,
        &mut out,
    )
}

fn set_ttl(c: &TestCache, k: u64, ttl: Duration) {
    let mut out = Removed::new();
    let write = Write {
        ttl: Some(ttl),
        ..Write::DEFAULT
    };
    c.insert(Now::LAZY, h(k), || k, k, write, |x| *x == k, &mut out);
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

const POLICIES: [PolicyKind; 4] = [
    PolicyKind::Lru,
    PolicyKind::Fifo,
    PolicyKind::Lfu,
    PolicyKind::TinyLfu,
];

#[test]
fn every_policy_stays_within_capacity() {
    for policy in POLICIES {
        let c = Cache::new(Config {
            capacity: 100,
            policy,
            shards: Some(4),
            ttl: None,
            tti: None,
            weighted: false,
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
        tti: None,
        weighted: false,
    })
    .unwrap();
    let sizes: Vec<u64> = c.shards.iter().map(|s| s.0.lock().capacity).collect();
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
            tti: None,
            weighted: false,
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
        tti: None,
        weighted: false,
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

fn weighted(capacity: u64, policy: PolicyKind) -> TestCache {
    Cache::new(Config {
        capacity,
        policy,
        shards: Some(1),
        ttl: None,
        tti: None,
        weighted: true,
    })
    .unwrap()
}

fn set_weighed(c: &TestCache, k: u64, weight: u32) -> (Option<u64>, Removed<u64, u64>) {
    let mut out = Removed::new();
    let write = Write {
        weight,
        ..Write::DEFAULT
    };
    let back = c.insert(Now::LAZY, h(k), || k, k, write, |x| *x == k, &mut out);
    (back, out)
}

#[test]
fn a_weighted_cache_evicts_by_weight_and_rejects_the_too_heavy() {
    for policy in POLICIES {
        let c = weighted(100, policy);
        for k in 0..10 {
            set_weighed(&c, k, 10);
        }
        assert_eq!(c.stats().weighted_size, 100, "{policy:?}");
        // One entry of 35 pushes out at least 35 of weight.
        set_weighed(&c, 100, 35);
        let stats = c.stats();
        assert!(stats.weighted_size <= 100, "{policy:?}");
        assert!(stats.evictions >= 4, "{policy:?}: {stats:?}");
        // Heavier than the whole capacity: handed back, counted, not stored.
        let (back, out) = set_weighed(&c, 200, 101);
        assert_eq!(back, Some(200), "{policy:?}");
        assert!(out.is_empty(), "{policy:?}");
        assert_eq!(c.stats().rejections, 1, "{policy:?}");
        assert_eq!(get(&c, 200), None, "{policy:?}");
        // Zero weighs nothing.
        let before = c.stats().weighted_size;
        set_weighed(&c, 300, 0);
        assert_eq!(c.stats().weighted_size, before, "{policy:?}");
    }
}

#[test]
fn a_rewrite_reweighs_and_others_make_room_for_it() {
    for policy in POLICIES {
        let c = weighted(100, policy);
        for k in 0..5 {
            set_weighed(&c, k, 20);
        }
        // Key 0 is the oldest: FIFO's and LRU's victim. It grows to 90 and
        // stays; the others leave.
        let (back, _) = set_weighed(&c, 0, 90);
        assert_eq!(back, Some(0), "{policy:?}: the replaced value comes back");
        assert_eq!(get(&c, 0), Some(0), "{policy:?}");
        let stats = c.stats();
        assert!(stats.weighted_size <= 100, "{policy:?}: {stats:?}");
        assert_eq!(stats.weighted_size, 90 + 10 * (stats.size as u64 - 1));
        // Rewritten too heavy, the key's old value is evicted: never stale.
        let (back, out) = set_weighed(&c, 0, 500);
        assert_eq!(back, Some(0));
        assert_eq!(out.as_slice(), &[(0, 0, Cause::Size)], "{policy:?}");
        assert_eq!(get(&c, 0), None, "{policy:?}");
    }
}

#[test]
fn tinylfu_measures_its_segments_in_weight() {
    let c = weighted(10_000, PolicyKind::TinyLfu);
    for k in 0..2_000u64 {
        set_weighed(&c, k, 1 + (k % 13) as u32);
        get(&c, k % 97);
    }
    let (window, probation, protected) = c.shards[0].0.lock().policy_weights();
    let stats = c.stats();
    assert_eq!(window + probation + protected, stats.weighted_size);
    assert!(stats.weighted_size <= 10_000);
    let (_, _, _, max_window) = c.shards[0].0.lock().policy_sizes();
    assert!(window <= max_window as u64 + 12, "{window} > {max_window}");
    // The frequently read keys survived the churn.
    let kept = (0..97).filter(|&k| get(&c, k).is_some()).count();
    assert!(kept > 90, "{kept} of 97 hot keys kept");
}

fn at(c: &TestCache, k: u64, now: u64) -> Option<u64> {
    let mut out = Removed::new();
    c.get(Now::at(now), h(k), |x| *x == k, |v| *v, &mut out)
}

fn set_at(c: &TestCache, k: u64, now: u64, ttl: Option<u64>, tti: Option<u64>) {
    let mut out = Removed::new();
    let write = Write {
        ttl: ttl.map(Duration::from_nanos),
        tti: tti.map(Duration::from_nanos),
        weight: 1,
    };
    c.insert(Now::at(now), h(k), || k, k, write, |x| *x == k, &mut out);
}

#[test]
fn idle_entries_expire_and_reads_keep_them_alive() {
    let c = cache(100, PolicyKind::TinyLfu);
    set_at(&c, 1, 1_000, None, Some(100));
    set_at(&c, 2, 1_000, None, Some(100));
    // Key 1 is read every 60 ns, well past its first idle deadline.
    for now in (1_060..=1_600).step_by(60) {
        assert_eq!(at(&c, 1, now), Some(1), "at {now}");
    }
    assert_eq!(at(&c, 2, 1_600), None, "key 2 sat idle");
    assert_eq!(at(&c, 1, 1_700), None, "then key 1 did too");
    assert_eq!(c.stats().expirations, 2);
    // A TTL caps a time-to-idle: whichever comes first.
    set_at(&c, 3, 2_000, Some(150), Some(100));
    assert_eq!(at(&c, 3, 2_090), Some(3));
    assert_eq!(at(&c, 3, 2_140), Some(3));
    assert_eq!(at(&c, 3, 2_150), None);
    // A write counts as a use.
    set_at(&c, 4, 3_000, None, Some(100));
    set_at(&c, 4, 3_090, None, Some(100));
    assert_eq!(at(&c, 4, 3_150), Some(4));
}

#[test]
fn sweeps_reschedule_idle_entries_that_were_read() {
    let c = cache(100, PolicyKind::Lru);
    set_at(&c, 1, 1_000, None, Some(100));
    set_at(&c, 2, 1_000, None, Some(100));
    at(&c, 1, 1_090);
    // At 1_150 both first deadlines are due; key 1 was read, so it moves on.
    let expired = c.purge_expired(Now::at(1_150));
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].0, 2);
    assert_eq!(c.len(), 1);
    assert!(c.purge_expired(Now::at(1_189)).is_empty());
    assert_eq!(c.purge_expired(Now::at(1_190)).len(), 1);
    assert!(c.is_empty());
}

#[test]
fn buffered_hits_reach_the_policy_before_it_evicts() {
    // More hits than the read buffer holds, then an eviction: LRU order
    // must reflect every one of them.
    let c = cache(40, PolicyKind::Lru);
    for k in 0..40 {
        set(&c, k, k);
    }
    for k in (0..40).rev() {
        if k != 7 {
            get(&c, k);
        }
    }
    let out = set(&c, 100, 100);
    assert_eq!(out.as_slice(), &[(7, 7, Cause::Size)]);
    // A few hits, fewer than the buffer holds, count too.
    get(&c, 0);
    let out = set(&c, 101, 101);
    assert_eq!(out.as_slice(), &[(39, 39, Cause::Size)]);
}
