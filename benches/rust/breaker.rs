//! Native cost of asking a closed breaker and reporting a success, per
//! window kind (criterion).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use langcluster_core::breaker::{BreakerConfig, CircuitBreaker, WindowKind};
use langcluster_core::clock::now_ns;

fn bench(c: &mut Criterion) {
    for (name, window) in [("count", WindowKind::Count), ("time", WindowKind::Time)] {
        let breaker = CircuitBreaker::new(BreakerConfig {
            window,
            ..BreakerConfig::default()
        })
        .unwrap();
        c.bench_function(&format!("breaker/{name}/acquire_and_success"), |b| {
            b.iter(|| {
                black_box(breaker.try_acquire(now_ns));
                black_box(breaker.on_success(now_ns, None));
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
