//! Native pick cost of every balancer (criterion). The Go design this
//! library descends from reported 25 / 80 / 50 / 100 / 120 ns per op for
//! round robin / weighted / least connections / consistent hash / adaptive.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::{Duration, Instant};

use langcluster_core::balancer::{
    Adaptive, Balancer, ConsistentHash, LeastConnections, NodeSpec, PowerOfTwoChoices, PrefixAware,
    PrefixConfig, Prompt, Random, RoundRobin, Strategy, WeightedRoundRobin,
};
use langcluster_core::hash::hash_bytes;

fn nodes(n: usize, weighted: bool) -> Vec<NodeSpec<u32>> {
    (0..n)
        .map(|i| {
            let w = if weighted { 1.0 + (i % 4) as f64 } else { 1.0 };
            NodeSpec::new(format!("node-{i}"), w, i as u32)
        })
        .collect()
}

fn bench_pick<S: Strategy>(c: &mut Criterion, name: &str, b: Balancer<u32, S>, key: Option<u64>) {
    c.bench_function(name, |bench| {
        bench.iter(|| b.pick_with(black_box(key), |m| m.handle).unwrap())
    });
}

fn warm<S: Strategy>(b: &Balancer<u32, S>) {
    for i in 0..b.len() {
        let id = format!("node-{i}");
        b.begin(&id).unwrap();
        b.end(&id, 0.001 * (1 + i % 5) as f64, true).unwrap();
    }
}

fn picks(c: &mut Criterion) {
    bench_pick(
        c,
        "round_robin/8",
        Balancer::new(RoundRobin::default(), nodes(8, false)).unwrap(),
        None,
    );
    bench_pick(
        c,
        "weighted_round_robin/8",
        Balancer::new(WeightedRoundRobin::default(), nodes(8, true)).unwrap(),
        None,
    );
    bench_pick(
        c,
        "least_connections/8",
        Balancer::new(LeastConnections, nodes(8, false)).unwrap(),
        None,
    );
    bench_pick(
        c,
        "power_of_two/8",
        Balancer::new(PowerOfTwoChoices, nodes(8, false)).unwrap(),
        None,
    );
    bench_pick(
        c,
        "random/8",
        Balancer::new(Random, nodes(8, false)).unwrap(),
        None,
    );
    let adaptive = Balancer::new(Adaptive, nodes(8, false)).unwrap();
    warm(&adaptive);
    bench_pick(c, "adaptive/8", adaptive, None);
    // Last samples seconds apart: the exponential decay path of every comparison.
    let spread = Balancer::new(Adaptive, nodes(8, false)).unwrap();
    let now = langcluster_core::clock::now_ns() + 10_000_000_000;
    for i in 0..8u64 {
        let state = spread.state_of(&format!("node-{i}")).unwrap();
        state
            .latency()
            .observe(1e6 * (1 + i % 5) as f64, now - i * 1_000_000_000);
    }
    bench_pick(c, "adaptive_samples_seconds_apart/8", spread, None);
    let key = Some(hash_bytes(b"user-12345"));
    bench_pick(
        c,
        "consistent_hash/100",
        Balancer::new(ConsistentHash::default(), nodes(100, false)).unwrap(),
        key,
    );
    bench_pick(
        c,
        "consistent_hash_bounded/100",
        Balancer::new(
            ConsistentHash::new(160, Some(1.25)).unwrap(),
            nodes(100, false),
        )
        .unwrap(),
        key,
    );
    c.bench_function("hash_key/10B", |b| {
        b.iter(|| hash_bytes(black_box(b"user-12345")))
    });
}

/// 64 prompts of 8 KB: 16 system prompts of 6 KB, each with its own questions.
fn prompts() -> Vec<Vec<u8>> {
    (0..64)
        .map(|i| {
            let mut p = format!("[system prompt {}] ", i % 16)
                .repeat(400)
                .into_bytes();
            p.truncate(6144);
            p.extend(format!("<question {i}> ").repeat(200).bytes());
            p.truncate(8192);
            p
        })
        .collect()
}

/// Prefix-aware picks for 8 KB prompts (hashing included), on one thread
/// and on `threads` threads at once, each with prompts of its own prefixes
/// (so they share no shard unless the hashing puts them together): the time
/// per pick of each thread. Equal times mean the threads do not serialise.
fn prefix_aware(c: &mut Criterion) {
    let all = prompts();
    for threads in [1usize, 2] {
        let b = Arc::new(PrefixAware::new(PrefixConfig::default(), nodes(8, false), 10.0).unwrap());
        c.bench_function(&format!("prefix_aware_8kb/threads={threads}"), |bench| {
            bench.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for t in 0..threads {
                        let (b, all) = (Arc::clone(&b), &all);
                        scope.spawn(move || {
                            for i in 0..iters as usize {
                                let p = &all[(i * threads + t) % all.len()];
                                black_box(b.pick_with(Prompt::Bytes(p), |m| m.handle).unwrap());
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = picks, prefix_aware
}
criterion_main!(benches);
