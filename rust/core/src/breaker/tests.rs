use std::sync::Arc;
use std::time::Duration;

use super::*;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

fn breaker(f: impl FnOnce(&mut BreakerConfig)) -> CircuitBreaker {
    let mut config = BreakerConfig {
        window_size: 10,
        minimum_calls: 4,
        open_timeout: Duration::from_secs(1),
        half_open_max_calls: 2,
        max_open_timeout: None,
        ..BreakerConfig::default()
    };
    f(&mut config);
    CircuitBreaker::new(config).unwrap()
}

fn allowed(b: &CircuitBreaker, now: u64) -> bool {
    matches!(b.try_acquire(|| now).0, Admission::Allowed { .. })
}

#[test]
fn opens_at_the_failure_rate_once_minimum_calls_are_in() {
    let b = breaker(|_| {});
    assert_eq!(b.on_failure(|| 0, None), None);
    assert_eq!(b.on_failure(|| 0, None), None);
    assert_eq!(
        b.on_failure(|| 0, None),
        None,
        "3 calls: below minimum_calls"
    );
    let t = b.on_success(|| 0, None);
    assert_eq!(
        t,
        Some(Transition {
            from: State::Closed,
            to: State::Open
        }),
        "3 of 4 failed: 75 % >= 50 %"
    );
    assert!(!allowed(&b, 500 * MS));
    assert_eq!(
        b.try_acquire(|| 500 * MS).0,
        Admission::Refused {
            retry_after_ns: 500 * MS
        }
    );
}

#[test]
fn stays_closed_below_the_threshold() {
    let b = breaker(|_| {});
    for i in 0..100 {
        let t = if i % 3 == 2 {
            b.on_failure(|| 0, None)
        } else {
            b.on_success(|| 0, None)
        };
        assert_eq!(t, None);
    }
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn half_open_admits_exactly_the_trial_permits_and_closes_on_success() {
    let b = breaker(|_| {});
    for _ in 0..4 {
        b.on_failure(|| 0, None);
    }
    assert_eq!(b.state(), State::Open);
    let (first, t) = b.try_acquire(|| S);
    assert_eq!(first, Admission::Allowed { trial: true });
    assert_eq!(
        t,
        Some(Transition {
            from: State::Open,
            to: State::HalfOpen
        })
    );
    assert!(allowed(&b, S));
    assert!(!allowed(&b, S), "a third trial is refused");
    assert_eq!(b.on_success(|| S, None), None);
    assert_eq!(
        b.on_success(|| S, None),
        Some(Transition {
            from: State::HalfOpen,
            to: State::Closed
        })
    );
    assert_eq!(b.metrics(S).calls, 0, "closing empties the window");
}

#[test]
fn a_failed_trial_reopens_and_backoff_grows_with_jitter() {
    let b = breaker(|c| c.max_open_timeout = Some(Duration::from_secs(3)));
    for _ in 0..4 {
        b.on_failure(|| 0, None);
    }
    let mut now = 0;
    let mut opens = Vec::new();
    for _ in 0..4 {
        let retry = match b.try_acquire(|| now).0 {
            Admission::Refused { retry_after_ns } => retry_after_ns,
            other => panic!("expected refusal, got {other:?}"),
        };
        opens.push(retry);
        now += retry;
        assert!(allowed(&b, now));
        assert!(allowed(&b, now));
        b.on_failure(|| now, None);
        b.on_failure(|| now, None);
        assert_eq!(b.state(), State::Open);
    }
    // 1 s, 2 s, then capped at 3 s; each between 80 % and 100 % (+1 ms rounding).
    for (retry, nominal) in opens.iter().zip([1, 2, 3, 3]) {
        assert!(
            *retry >= nominal * S * 8 / 10 && *retry <= nominal * S + MS,
            "{opens:?}"
        );
    }
}

#[test]
fn ignored_calls_give_their_permit_back() {
    let b = breaker(|c| c.half_open_max_calls = 1);
    for _ in 0..4 {
        b.on_failure(|| 0, None);
    }
    assert!(allowed(&b, S));
    assert!(!allowed(&b, S));
    b.release();
    assert!(allowed(&b, S));
}

#[test]
fn slow_calls_trip_the_slow_call_rate() {
    let b = breaker(|c| {
        c.slow_call_duration = Some(Duration::from_millis(100));
        c.slow_call_rate_threshold = 0.5;
    });
    let slow = Some(Duration::from_millis(150));
    b.on_success(|| 0, slow);
    b.on_success(|| 0, slow);
    b.on_success(|| 0, Some(Duration::from_millis(10)));
    assert_eq!(b.state(), State::Closed);
    b.on_success(|| 0, None);
    assert_eq!(b.state(), State::Open, "2 of 4 slow: 50 %");
}

#[test]
fn time_window_counts_only_recent_seconds() {
    let b = breaker(|c| {
        c.window = WindowKind::Time;
        c.window_size = 2;
    });
    b.on_failure(|| 0, None);
    b.on_failure(|| 0, None);
    b.on_failure(|| 0, None);
    // Five seconds later the old failures have left the window.
    b.on_failure(|| 5 * S, None);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics(5 * S).calls, 1);
}

#[test]
fn forced_states_and_reset() {
    let b = breaker(|_| {});
    assert!(b.force_open(|| 0).is_some());
    assert!(!allowed(&b, 100 * S));
    assert_eq!(b.on_success(|| 0, None), None);
    assert!(b.disable(|| 0).is_some());
    for _ in 0..20 {
        b.on_failure(|| 0, None);
    }
    assert!(allowed(&b, 0));
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(
        b.reset(|| 0),
        Some(Transition {
            from: State::Disabled,
            to: State::Closed
        })
    );
    assert_eq!(b.reset(|| 0), None, "already closed");
}

#[test]
fn half_open_ends_an_open_period_early_and_only_that() {
    let b = breaker(|_| {});
    assert_eq!(b.half_open(|| 0), None, "closed: nothing to end");
    for _ in 0..4 {
        b.on_failure(|| 0, None);
    }
    assert_eq!(b.state(), State::Open);
    assert!(!allowed(&b, MS), "open for a second");
    assert_eq!(
        b.half_open(|| MS),
        Some(Transition {
            from: State::Open,
            to: State::HalfOpen
        })
    );
    assert!(allowed(&b, 2 * MS), "a trial goes through at once");
    b.on_failure(|| 2 * MS, None); // one trial of two fails (the service was still down)
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(
        b.half_open(|| 3 * MS),
        Some(Transition {
            from: State::HalfOpen,
            to: State::HalfOpen
        }),
        "a fresh trial period"
    );
    for _ in 0..2 {
        assert!(allowed(&b, 4 * MS));
        b.on_success(|| 4 * MS, None);
    }
    assert_eq!(
        b.state(),
        State::Closed,
        "the failure before the recovery is forgotten"
    );
}

#[test]
fn bad_configs_name_the_argument() {
    let bad = |f: fn(&mut BreakerConfig)| {
        let mut c = BreakerConfig::default();
        f(&mut c);
        CircuitBreaker::new(c).err().unwrap().to_string()
    };
    assert!(bad(|c| c.failure_rate_threshold = 0.0).starts_with("failure_rate_threshold:"));
    assert!(bad(|c| c.slow_call_rate_threshold = 1.5).starts_with("slow_call_rate_threshold:"));
    assert!(bad(|c| c.window_size = 0).starts_with("window_size:"));
    assert!(bad(|c| c.minimum_calls = 0).starts_with("minimum_calls:"));
    assert!(bad(|c| c.minimum_calls = 101).starts_with("minimum_calls:"));
    assert!(bad(|c| c.half_open_max_calls = 0).starts_with("half_open_max_calls:"));
    assert!(bad(|c| c.open_timeout = Duration::ZERO).starts_with("open_timeout_s:"));
    assert!(bad(|c| c.max_open_timeout = Some(Duration::from_secs(1)))
        .starts_with("max_open_timeout_s:"));
}

#[test]
fn concurrent_half_open_never_admits_more_than_the_permits() {
    let b = Arc::new(breaker(|c| c.half_open_max_calls = 3));
    for _ in 0..4 {
        b.on_failure(|| 0, None);
    }
    let admitted: usize = (0..8)
        .map(|_| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || (0..1000).filter(|_| allowed(&b, 2 * S)).count())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .sum();
    assert_eq!(admitted, 3);
    assert_eq!(b.state(), State::HalfOpen);
}

#[test]
fn an_open_deadline_holds_whatever_the_clock_origin() {
    // A wall clock (`time.time()` in ns, beyond 40 bits of ms), the far end
    // of a saturated clock, and a process clock that has run for 40 years.
    for start in [1_800_000_000 * S, u64::MAX - 10 * S, 40 * 365 * 86_400 * S] {
        let b = breaker(|_| {});
        for _ in 0..4 {
            b.on_failure(|| start, None);
        }
        assert_eq!(b.state(), State::Open, "start {start}");
        assert!(!allowed(&b, start), "start {start}");
        assert!(!allowed(&b, start + 999 * MS), "start {start}");
        match b.try_acquire(|| start + 500 * MS).0 {
            Admission::Refused { retry_after_ns } => {
                // Deadlines are kept in whole milliseconds.
                assert!(
                    retry_after_ns <= 501 * MS,
                    "start {start}: {retry_after_ns}"
                )
            }
            other => panic!("start {start}: {other:?}"),
        }
        if start < u64::MAX - 10 * S {
            assert!(allowed(&b, start + 1000 * MS), "start {start}");
        }
    }
}

#[test]
fn open_for_holds_off_until_the_given_deadline_then_trials_decide() {
    let b = breaker(|_| {});
    assert_eq!(
        b.open_for(3 * S, || 0),
        Some(Transition {
            from: State::Closed,
            to: State::Open
        })
    );
    assert!(
        !allowed(&b, 2 * S),
        "the configured second is not what counts"
    );
    assert!(
        allowed(&b, 3 * S + MS),
        "a trial once the given time is over"
    );
    assert_eq!(b.state(), State::HalfOpen);
    b.on_success(|| 3 * S + MS, None);
    assert!(allowed(&b, 3 * S + MS));
    b.on_success(|| 3 * S + MS, None);
    assert_eq!(b.state(), State::Closed);
    b.force_open(|| 4 * S);
    assert!(
        b.open_for(S, || 4 * S).is_some(),
        "a forced-open breaker too"
    );
    assert!(allowed(&b, 5 * S + MS));
    b.disable(|| 6 * S);
    assert_eq!(b.open_for(S, || 6 * S), None, "never when disabled");
}
