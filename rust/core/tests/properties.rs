//! Properties of the core's arithmetic and state machines over any input
//! the bindings can pass: every f64 bit pattern, every i64, any sequence of
//! calls. Each property says what must hold; none may panic.
//!
//! `make test` fixes the seed (PROPTEST_RNG_SEED), so every run tries the
//! same cases; `make fuzz` runs with fresh seeds and
//! LANGCLUSTER_FUZZ_SCALE times the cases.

use std::time::Duration;

use langcluster_core::balancer::{
    check_node, smooth_schedule, Adaptive, Balancer, ConsistentHash, LeastConnections, NodeSpec,
    PowerOfTwoChoices, Random, Ring, RoundRobin, Strategy as Picking, WeightedRoundRobin,
    MAX_WEIGHT,
};
use langcluster_core::breaker::{Admission, BreakerSettings, CircuitBreaker, State};
use langcluster_core::cache::{Cache, Config, Now, PolicyKind, Removed, Write};
use langcluster_core::error::{count_in, latency_seconds, positive_seconds, MAX_LATENCY_S};
use langcluster_core::Error;
use proptest::prelude::*;

/// `cases` cases, times LANGCLUSTER_FUZZ_SCALE when it is set.
fn cases(cases: u32) -> ProptestConfig {
    let scale = std::env::var("LANGCLUSTER_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1);
    ProptestConfig::with_cases(cases.saturating_mul(scale.max(1)))
}

/// Any f64: every bit pattern, so NaNs, infinities, subnormals and -0.0.
fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        prop::sample::select(vec![
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            1e-300,
            1.0,
            MAX_WEIGHT,
            MAX_WEIGHT * (1.0 + f64::EPSILON),
            MAX_LATENCY_S,
            1.9e19,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ]),
        -1e7..1e7f64,
    ]
}

/// A weight a balancer accepts.
fn weight() -> impl Strategy<Value = f64> {
    prop_oneof![
        1e-9..=MAX_WEIGHT,
        (1..=100u32).prop_map(f64::from),
        prop::sample::select(vec![f64::MIN_POSITIVE, 1e-300, MAX_WEIGHT]),
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn a_node_is_accepted_exactly_in_the_documented_range(id in ".{0,4}", w in any_f64()) {
        let ok = check_node(&id, w).is_ok();
        prop_assert_eq!(ok, !id.is_empty() && w > 0.0 && w <= MAX_WEIGHT);
    }

    #[test]
    fn durations_are_checked_not_trusted(secs in any_f64()) {
        match positive_seconds("t", secs) {
            Ok(d) => {
                prop_assert!(secs.is_finite() && secs > 0.0);
                prop_assert!((d.as_secs_f64() - secs).abs() <= secs * 1e-9 + 1e-9);
            }
            Err(Error::InvalidArgument { name, .. }) => prop_assert_eq!(name, "t"),
            Err(other) => prop_assert!(false, "{other:?}"),
        }
        let latency = latency_seconds("latency_s", secs);
        prop_assert_eq!(latency.is_ok(), (0.0..=MAX_LATENCY_S).contains(&secs));
    }

    #[test]
    fn counts_are_checked_not_cast(value in any::<i64>(), max in any::<u32>()) {
        match count_in("n", value, max) {
            Ok(n) => prop_assert!(value >= 1 && i64::from(n) == value && n <= max),
            Err(_) => prop_assert!(value < 1 || value > i64::from(max)),
        }
    }

    #[test]
    fn a_smooth_schedule_serves_every_node(weights in prop::collection::vec(weight(), 1..40)) {
        let schedule = smooth_schedule(&weights);
        let mut seen = vec![0usize; weights.len()];
        for &i in &schedule {
            seen[i as usize] += 1;
        }
        prop_assert!(seen.iter().all(|&n| n >= 1), "{seen:?}");
        // The cycle is bounded whatever the ratios (a million to one).
        prop_assert!(schedule.len() <= 1 << 22, "{}", schedule.len());
    }

    #[test]
    fn a_smooth_schedule_keeps_integer_ratios_exactly(
        weights in prop::collection::vec(1..=20u32, 1..12),
    ) {
        let schedule = smooth_schedule(&weights.iter().map(|&w| f64::from(w)).collect::<Vec<_>>());
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        for (i, &w) in weights.iter().enumerate() {
            let n = schedule.iter().filter(|&&j| j as usize == i).count() as u64;
            // n / len == w / total, without rounding.
            prop_assert_eq!(n * total, u64::from(w) * schedule.len() as u64);
        }
    }
}

/// The ring's point budget (`MAX_POINTS` in consistent_hash.rs).
const MAX_POINTS: usize = 4_000_000;

proptest! {
    #![proptest_config(cases(24))]

    #[test]
    fn a_ring_stays_within_its_budget_and_finds_an_owner(
        vnodes in prop_oneof![1..=200u32, Just(10_000u32)],
        weights in prop::collection::vec(weight(), 1..300),
        hashes in prop::collection::vec(any::<u64>(), 16),
    ) {
        let ids: Vec<String> = (0..weights.len()).map(|i| format!("n{i}")).collect();
        let ring = Ring::build(
            vnodes,
            ids.iter().zip(&weights).enumerate().map(|(i, (id, &w))| (id.as_str(), w, i as u32)),
        );
        prop_assert!(ring.len() >= weights.len());
        prop_assert!(ring.len() <= MAX_POINTS + weights.len(), "{}", ring.len());
        for hash in hashes.into_iter().chain([0, u64::MAX]) {
            let at = ring.locate(hash);
            prop_assert!(at < ring.len());
            prop_assert!((ring.owner_at(at) as usize) < weights.len());
        }
    }
}

// ---------------------------------------------------------------- balancers

#[derive(Clone, Debug)]
enum Op {
    Update(Vec<f64>),
    SetAvailable(usize, bool),
    Begin(usize),
    End(usize, f64, bool),
    Release(usize),
    Pick(Option<u64>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        prop::collection::vec(prop_oneof![weight(), any_f64()], 0..6).prop_map(Op::Update),
        (0..8usize, any::<bool>()).prop_map(|(i, a)| Op::SetAvailable(i, a)),
        (0..8usize).prop_map(Op::Begin),
        (0..8usize, any_f64(), any::<bool>()).prop_map(|(i, l, ok)| Op::End(i, l, ok)),
        (0..8usize).prop_map(Op::Release),
        any::<Option<u64>>().prop_map(Op::Pick),
        any::<Option<u64>>().prop_map(Op::Pick),
    ]
}

fn specs(weights: &[f64]) -> Vec<NodeSpec<String>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| NodeSpec::new(format!("n{i}"), w, format!("n{i}")))
        .collect()
}

/// Runs `ops` on a balancer: whatever they are, nothing panics, a pick is
/// an available node (or NoAvailableNode when there is none), and every
/// refusal is a named argument or an unknown node.
fn exercise<S: Picking>(balancer: Result<Balancer<String, S>, Error>, ops: &[Op]) {
    let Ok(balancer) = balancer else { return };
    let mut available: Vec<bool> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    balancer.with_members(|m| {
        ids = m.iter().map(|m| m.handle.clone()).collect();
        available = vec![true; ids.len()];
    });
    let id = |i: usize| format!("n{i}");
    for op in ops {
        match op {
            Op::Update(weights) => {
                if balancer.update(specs(weights)).is_ok() {
                    // Kept nodes keep their availability; new ones start available.
                    let old: Vec<(String, bool)> =
                        ids.iter().cloned().zip(available.iter().copied()).collect();
                    ids = (0..weights.len()).map(id).collect();
                    available = ids
                        .iter()
                        .map(|n| old.iter().find(|(o, _)| o == n).is_none_or(|(_, a)| *a))
                        .collect();
                }
            }
            Op::SetAvailable(i, a) => match balancer.set_available(&id(*i), *a) {
                Ok(_) => available[*i] = *a,
                Err(e) => assert!(*i >= ids.len(), "{e:?}"),
            },
            Op::Begin(i) => {
                let _ = balancer.begin(&id(*i));
            }
            Op::End(i, latency, ok) => match balancer.end(&id(*i), *latency, *ok) {
                Ok(_) => {}
                Err(Error::InvalidArgument { name, .. }) => assert_eq!(name, "latency_s"),
                Err(e) => panic!("{e:?}"),
            },
            Op::Release(i) => {
                balancer.release(&id(*i));
            }
            Op::Pick(key) => match balancer.pick_with(*key, |m| m.handle.clone()) {
                Ok(picked) => {
                    let at = ids.iter().position(|n| *n == picked).expect("a known node");
                    assert!(available[at], "picked {picked}, which is out of rotation");
                }
                Err(Error::NoAvailableNode) => assert!(!available.iter().any(|&a| a)),
                Err(Error::KeyRequired) => assert!(key.is_none()),
                Err(e) => panic!("{e:?}"),
            },
        }
        assert!(balancer.total_in_flight() >= 0);
    }
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn balancers_survive_any_sequence_of_calls(
        weights in prop::collection::vec(weight(), 0..6),
        ops in prop::collection::vec(op(), 0..60),
        vnodes in 1..=64i64,
        load_factor in prop::option::of(prop_oneof![1.0..4.0f64, any_f64()]),
        decay_s in any_f64(),
    ) {
        let nodes = || specs(&weights);
        exercise(Balancer::new(RoundRobin::default(), nodes()), &ops);
        exercise(Balancer::new(WeightedRoundRobin::default(), nodes()), &ops);
        exercise(Balancer::new(LeastConnections, nodes()), &ops);
        exercise(Balancer::new(Random, nodes()), &ops);
        exercise(Balancer::new(PowerOfTwoChoices, nodes()), &ops);
        exercise(Balancer::with_decay(Adaptive, nodes(), decay_s), &ops);
        if let Ok(ring) = ConsistentHash::from_settings(vnodes, load_factor) {
            exercise(Balancer::new(ring, nodes()), &ops);
        }
    }
}

// ------------------------------------------------------------------ breaker

#[derive(Clone, Debug)]
enum Event {
    Acquire,
    Success(Option<f64>),
    Failure(Option<f64>),
    Release,
    Advance(u64),
    HalfOpen,
    ForceOpen,
    Reset,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => Just(Event::Acquire),
        3 => prop::option::of(0.0..10.0f64).prop_map(Event::Success),
        4 => prop::option::of(0.0..10.0f64).prop_map(Event::Failure),
        1 => Just(Event::Release),
        3 => prop_oneof![0..2_000_000_000u64, any::<u64>()].prop_map(Event::Advance),
        1 => Just(Event::HalfOpen),
        1 => Just(Event::ForceOpen),
        1 => Just(Event::Reset),
    ]
}

/// The longest open time a breaker allows (`MAX_OPEN` in breaker/mod.rs),
/// plus the millisecond a deadline is rounded up to.
const MAX_OPEN_NS: u64 = 30 * 86_400 * 1_000_000_000 + 1_000_000;

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn breaker_settings_are_checked_not_trusted(
        rates in (any_f64(), any_f64()),
        slow in prop::option::of(any_f64()),
        counts in (any::<i64>(), any::<i64>(), any::<i64>()),
        times in (any_f64(), prop::option::of(any_f64())),
        window in prop::sample::select(vec!["count", "time", "sliding", ""]),
    ) {
        let settings = BreakerSettings {
            failure_rate_threshold: rates.0,
            slow_call_rate_threshold: rates.1,
            slow_call_duration_s: slow,
            window: window.to_owned(),
            window_size: counts.0,
            minimum_calls: counts.1,
            open_timeout_s: times.0,
            half_open_max_calls: counts.2,
            max_open_timeout_s: times.1,
        };
        if let Ok(config) = settings.config() {
            prop_assert!(CircuitBreaker::new(config).is_ok());
        }
    }

    #[test]
    fn a_breaker_survives_any_sequence_and_its_waits_are_bounded(
        start in prop_oneof![0..1_000_000_000u64, Just(1_800_000_000_000_000_000u64), any::<u64>()],
        open_s in prop_oneof![0.001..10.0f64, Just(30.0 * 86_400.0)],
        max_open_s in prop::option::of(prop_oneof![10.0..100.0f64, Just(30.0 * 86_400.0)]),
        events in prop::collection::vec(event(), 0..200),
    ) {
        let settings = BreakerSettings {
            window_size: 4,
            minimum_calls: 2,
            open_timeout_s: open_s,
            max_open_timeout_s: max_open_s.map(|m| m.max(open_s)),
            ..BreakerSettings::default()
        };
        let breaker = CircuitBreaker::new(settings.config().unwrap()).unwrap();
        let mut now = start;
        for event in events {
            let clock = || now;
            match event {
                Event::Acquire => {
                    if let (Admission::Refused { retry_after_ns }, _) = breaker.try_acquire(clock) {
                        prop_assert!(retry_after_ns <= MAX_OPEN_NS, "{retry_after_ns}");
                    }
                }
                Event::Success(l) => {
                    breaker.on_success(clock, l.map(Duration::from_secs_f64));
                }
                Event::Failure(l) => {
                    breaker.on_failure(clock, l.map(Duration::from_secs_f64));
                }
                Event::Release => breaker.release(),
                Event::Advance(by) => now = now.saturating_add(by),
                Event::HalfOpen => {
                    breaker.half_open(clock);
                }
                Event::ForceOpen => {
                    breaker.force_open(clock);
                }
                Event::Reset => {
                    breaker.reset(clock);
                }
            }
            let metrics = breaker.metrics(now);
            prop_assert!(metrics.retry_after_ns <= MAX_OPEN_NS);
            if metrics.state == State::Open && now < u64::MAX - MAX_OPEN_NS {
                // An open breaker always lets a trial through by its deadline.
                let later = now + metrics.retry_after_ns;
                prop_assert!(matches!(
                    breaker.metrics(later).retry_after_ns,
                    0
                ));
            }
        }
    }
}

// -------------------------------------------------------------------- cache

#[derive(Clone, Debug)]
enum CacheOp {
    /// Key, TTL, time-to-idle, weight.
    Insert(u16, Option<u64>, Option<u64>, u32),
    Get(u16),
    Remove(u16),
    Advance(u64),
    Purge,
}

fn cache_op() -> impl Strategy<Value = CacheOp> {
    let key = prop_oneof![0..64u16, any::<u16>()];
    let time = || prop::option::of(1..5_000_000_000u64);
    let weight = prop_oneof![0..4u32, 0..400u32, Just(u32::MAX)];
    prop_oneof![
        4 => (key.clone(), time(), time(), weight)
            .prop_map(|(k, t, i, w)| CacheOp::Insert(k, t, i, w)),
        4 => key.clone().prop_map(CacheOp::Get),
        2 => key.prop_map(CacheOp::Remove),
        1 => prop_oneof![0..3_000_000_000u64, any::<u64>()].prop_map(CacheOp::Advance),
        1 => Just(CacheOp::Purge),
    ]
}

fn h(k: u16) -> u64 {
    langcluster_core::hash::hash_i64(i64::from(k))
}

proptest! {
    #![proptest_config(cases(96))]

    #[test]
    fn a_cache_never_holds_more_than_its_capacity(
        capacity in 1..300u64,
        shards in prop::option::of(1..8usize),
        policy in prop::sample::select(vec![
            PolicyKind::TinyLfu, PolicyKind::Lru, PolicyKind::Lfu, PolicyKind::Fifo,
        ]),
        ttl in prop::option::of(1..10_000_000_000u64),
        tti in prop::option::of(1..10_000_000_000u64),
        weighted in any::<bool>(),
        ops in prop::collection::vec(cache_op(), 0..400),
    ) {
        let config = Config {
            capacity,
            policy,
            shards,
            ttl: ttl.map(Duration::from_nanos),
            tti: tti.map(Duration::from_nanos),
            weighted,
        };
        let Ok(cache) = Cache::<u16, u16>::new(config) else {
            prop_assert!(shards.is_some_and(|s| s as u64 > capacity));
            return Ok(());
        };
        // The weight each stored key was last written with.
        let mut weights = std::collections::HashMap::new();
        let mut now = 1u64;
        for op in ops {
            let mut out = Removed::new();
            match op {
                CacheOp::Insert(k, t, i, w) => {
                    let write = Write {
                        ttl: t.map(Duration::from_nanos),
                        tti: i.map(Duration::from_nanos),
                        weight: w,
                    };
                    let back = cache.insert(Now::at(now), h(k), || k, k, write, |x| *x == k, &mut out);
                    let w = if weighted { w } else { 1 };
                    let stored = cache.contains(Now::at(now), h(k), |x| *x == k, &mut out);
                    let largest_shard = capacity.div_ceil(cache.shard_count() as u64);
                    if u64::from(w) > largest_shard {
                        prop_assert_eq!(back, Some(k), "a rejected value comes back");
                        prop_assert!(!stored);
                    } else if u64::from(w) <= cache.max_weight() && now < u64::MAX / 2 {
                        // (At the end of time a deadline saturates to now: dead.)
                        prop_assert!(stored, "an entry that fits any shard is stored");
                    }
                    weights.insert(k, u64::from(w));
                }
                CacheOp::Get(k) => {
                    if let Some(v) = cache.get(Now::at(now), h(k), |x| *x == k, |v| *v, &mut out) {
                        prop_assert_eq!(v, k);
                    }
                }
                CacheOp::Remove(k) => {
                    cache.remove(Now::at(now), h(k), |x| *x == k, &mut out);
                    prop_assert!(!cache.contains(Now::at(now), h(k), |x| *x == k, &mut out));
                }
                CacheOp::Advance(by) => now = now.saturating_add(by),
                CacheOp::Purge => {
                    cache.purge_expired(Now::at(now));
                }
            }
            let stats = cache.stats();
            prop_assert!(stats.weighted_size <= capacity, "{} > {capacity}", stats.weighted_size);
            prop_assert_eq!(stats.size, cache.len());
            // Every stored entry, expired or not (time 1 is before any deadline).
            let stored = cache.keys(Now::at(1), |k| *k);
            let total: u64 = stored.iter().map(|k| weights[k]).sum();
            prop_assert_eq!(stats.weighted_size, total);
            if !weighted {
                prop_assert_eq!(stats.weighted_size, stats.size as u64);
            }
        }
    }
}
