//! A pick, a cache hit and a cache update allocate nothing: counted by a
//! global allocator wrapper, on the calling thread only, after the thread's
//! first pick has set up its cache.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use langcluster_core::balancer::{
    Adaptive, Balancer, ConsistentHash, LeastConnections, NodeSpec, PowerOfTwoChoices, Random,
    RoundRobin, Strategy, WeightedRoundRobin,
};
use langcluster_core::cache::{Cache, Config, Now, PolicyKind, Removed, Write};
use langcluster_core::hash::{hash_bytes, hash_i64};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards unchanged to the system allocator, which
// upholds GlobalAlloc's contract; the only addition is a thread-local counter
// bump, which neither allocates nor touches the returned memory.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn nodes(n: usize) -> Vec<NodeSpec<u32>> {
    (0..n)
        .map(|i| NodeSpec::new(format!("node-{i}"), 1.0 + (i % 3) as f64, i as u32))
        .collect()
}

fn assert_no_alloc<S: Strategy>(name: &str, b: Balancer<u32, S>, key: Option<u64>) {
    for i in 0..b.len() {
        let id = format!("node-{i}");
        b.begin(&id).unwrap();
        b.end(&id, 0.001 * (i + 1) as f64, true).unwrap();
    }
    b.pick_with(key, |m| m.handle).unwrap(); // first pick sets up this thread's cache
    let before = allocations();
    let mut sum = 0u64;
    for _ in 0..10_000 {
        sum += u64::from(b.pick_with(key, |m| m.handle).unwrap());
    }
    assert_eq!(allocations() - before, 0, "{name} allocated while picking");
    assert!(sum > 0 || b.len() == 1);
}

#[test]
fn picks_do_not_allocate() {
    let key = Some(hash_bytes(b"user-42"));
    assert_no_alloc(
        "round robin",
        Balancer::new(RoundRobin::default(), nodes(8)).unwrap(),
        None,
    );
    assert_no_alloc(
        "weighted round robin",
        Balancer::new(WeightedRoundRobin::default(), nodes(8)).unwrap(),
        None,
    );
    assert_no_alloc(
        "least connections",
        Balancer::new(LeastConnections, nodes(8)).unwrap(),
        None,
    );
    assert_no_alloc(
        "p2c",
        Balancer::new(PowerOfTwoChoices, nodes(8)).unwrap(),
        None,
    );
    assert_no_alloc("random", Balancer::new(Random, nodes(8)).unwrap(), None);
    assert_no_alloc("adaptive", Balancer::new(Adaptive, nodes(8)).unwrap(), None);
    assert_no_alloc(
        "consistent hash",
        Balancer::new(ConsistentHash::default(), nodes(100)).unwrap(),
        key,
    );
    assert_no_alloc(
        "bounded consistent hash",
        Balancer::new(ConsistentHash::new(160, Some(1.25)).unwrap(), nodes(100)).unwrap(),
        key,
    );
}

#[test]
fn begin_and_end_by_state_do_not_allocate() {
    let b = Balancer::new(LeastConnections, nodes(8)).unwrap();
    let state = b
        .pick_with(None, |m| std::sync::Arc::clone(&m.state))
        .unwrap();
    let before = allocations();
    for _ in 0..1_000 {
        state.begin();
        state.end(0.002, true);
    }
    assert_eq!(allocations() - before, 0);
}

#[test]
fn cache_hits_and_updates_do_not_allocate() {
    for policy in [
        PolicyKind::TinyLfu,
        PolicyKind::Lru,
        PolicyKind::Lfu,
        PolicyKind::Fifo,
    ] {
        let cache: Cache<u64, u64> = Cache::new(Config {
            capacity: 1_000,
            policy,
            shards: Some(4),
            ttl: None,
            tti: None,
            weighted: false,
        })
        .unwrap();
        let mut out = Removed::new();
        for k in 0..500u64 {
            cache.insert(
                Now::LAZY,
                hash_i64(k as i64),
                || k,
                k,
                Write::DEFAULT,
                |x| *x == k,
                &mut out,
            );
        }
        let before = allocations();
        let mut sum = 0;
        for i in 0..10_000u64 {
            let k = i % 500;
            let h = hash_i64(k as i64);
            let mut out = Removed::new();
            sum += cache
                .get(Now::LAZY, h, |x| *x == k, |v| *v, &mut out)
                .unwrap_or(0);
            cache.insert(Now::LAZY, h, || k, i, Write::DEFAULT, |x| *x == k, &mut out);
            let missing = k + 1_000_000;
            let _ = cache.get(
                Now::LAZY,
                hash_i64(missing as i64),
                |x| *x == missing,
                |v| *v,
                &mut out,
            );
        }
        assert_eq!(
            allocations() - before,
            0,
            "{policy:?} allocated on a hit, a miss or an update"
        );
        assert!(sum > 0);
    }
}
