//! Native cost of a cache hit, a miss and a replacing insert per policy
//! (criterion), over 10,000 u64 keys in a cache of 20,000.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use langcluster_core::cache::{Cache, Config, Now, PolicyKind, Removed, Write};
use langcluster_core::hash::hash_i64;

fn filled(policy: PolicyKind) -> Cache<u64, u64> {
    let cache = Cache::new(Config {
        capacity: 20_000,
        policy,
        shards: None,
        ttl: None,
        tti: None,
        weighted: false,
    })
    .unwrap();
    for k in 0..10_000u64 {
        let mut out = Removed::new();
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
    cache
}

fn bench(c: &mut Criterion) {
    for policy in [
        PolicyKind::TinyLfu,
        PolicyKind::Lru,
        PolicyKind::Lfu,
        PolicyKind::Fifo,
    ] {
        let cache = filled(policy);
        let name = policy.name();
        let mut k = 0u64;
        c.bench_function(&format!("cache/{name}/get_hit"), |b| {
            b.iter(|| {
                k = (k + 7919) % 10_000;
                let mut out = Removed::new();
                let key = black_box(k);
                cache.get(
                    Now::LAZY,
                    hash_i64(key as i64),
                    |x| *x == key,
                    |v| *v,
                    &mut out,
                )
            })
        });
        c.bench_function(&format!("cache/{name}/get_miss"), |b| {
            b.iter(|| {
                k = (k + 7919) % 10_000;
                let mut out = Removed::new();
                let key = black_box(k + 1_000_000);
                cache.get(
                    Now::LAZY,
                    hash_i64(key as i64),
                    |x| *x == key,
                    |v| *v,
                    &mut out,
                )
            })
        });
        c.bench_function(&format!("cache/{name}/set_replace"), |b| {
            b.iter(|| {
                k = (k + 7919) % 10_000;
                let mut out = Removed::new();
                let key = black_box(k);
                cache.insert(
                    Now::LAZY,
                    hash_i64(key as i64),
                    || key,
                    key,
                    Write::DEFAULT,
                    |x| *x == key,
                    &mut out,
                )
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
