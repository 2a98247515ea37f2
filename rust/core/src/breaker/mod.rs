//! A circuit breaker after Resilience4j's model, lock-free.
//!
//! - It judges by a sliding window (the last N calls, or the calls of the
//!   last N seconds) and opens when, with at least `minimum_calls` in the
//!   window, the failure rate or the slow-call rate reaches its threshold.
//! - Open, it refuses calls until its deadline; the first caller after the
//!   deadline moves it to half-open, which admits at most
//!   `half_open_max_calls` trial calls at once. When that many trials have
//!   reported, their failure and slow-call rates close or reopen it.
//! - Each reopening in a row doubles the open time, up to
//!   `max_open_timeout`, with jitter (80-100 %) so that many clients do not
//!   come back at the same instant. Without `max_open_timeout` the open time
//!   is fixed and exact.
//!
//! All state lives in two atomic words: the state word (state, a transition
//! counter and the open deadline, so a reader never pairs a state with a
//! stale deadline) and the trial word (the half-open period it belongs to,
//! permits out, and trial outcomes). A transition is one compare-exchange,
//! so exactly one caller performs it and reports it. Time is passed in by
//! the caller as a function returning monotonic nanoseconds, called only
//! when the answer depends on it (an open breaker's deadline, a time
//! window, a transition to open): a closed breaker with a count window
//! never reads the clock. A fake clock makes the state machine testable.

mod window;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{count_in, positive_seconds, Error};
pub use window::Totals;
use window::{CountWindow, TimeWindow};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    Count,
    Time,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }

    fn from_bits(bits: u64) -> State {
        match bits & STATE_MASK {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            _ => State::Disabled,
        }
    }

    fn bits(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
            State::Disabled => 4,
        }
    }
}

/// A change of state, reported once, by the call that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    pub failure_rate_threshold: f64,
    pub slow_call_rate_threshold: f64,
    pub slow_call_duration: Option<Duration>,
    pub window: WindowKind,
    pub window_size: u32,
    pub minimum_calls: u32,
    pub open_timeout: Duration,
    pub half_open_max_calls: u32,
    pub max_open_timeout: Option<Duration>,
}

/// The defaults, chosen for calls to model servers: judge the last 20 calls
/// once 5 are in, open for 5 s, then up to 60 s while trials keep failing.
pub mod defaults {
    use std::time::Duration;

    pub const FAILURE_RATE_THRESHOLD: f64 = 0.5;
    pub const SLOW_CALL_RATE_THRESHOLD: f64 = 1.0;
    pub const WINDOW_SIZE: u32 = 20;
    pub const MINIMUM_CALLS: u32 = 5;
    pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
    pub const HALF_OPEN_MAX_CALLS: u32 = 2;
    pub const MAX_OPEN_TIMEOUT: Option<Duration> = Some(Duration::from_secs(60));
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate_threshold: defaults::FAILURE_RATE_THRESHOLD,
            slow_call_rate_threshold: defaults::SLOW_CALL_RATE_THRESHOLD,
            slow_call_duration: None,
            window: WindowKind::Count,
            window_size: defaults::WINDOW_SIZE,
            minimum_calls: defaults::MINIMUM_CALLS,
            open_timeout: defaults::OPEN_TIMEOUT,
            half_open_max_calls: defaults::HALF_OPEN_MAX_CALLS,
            max_open_timeout: defaults::MAX_OPEN_TIMEOUT,
        }
    }
}

/// A breaker's settings as a caller states them: plain numbers, durations
/// in seconds, the window by name. [`BreakerSettings::config`] checks them
/// all and makes the [`BreakerConfig`]; the defaults are
/// `BreakerConfig::default()`'s.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSettings {
    pub failure_rate_threshold: f64,
    pub slow_call_rate_threshold: f64,
    pub slow_call_duration_s: Option<f64>,
    pub window: String,
    pub window_size: i64,
    pub minimum_calls: i64,
    pub open_timeout_s: f64,
    pub half_open_max_calls: i64,
    pub max_open_timeout_s: Option<f64>,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings::from(&BreakerConfig::default())
    }
}

impl From<&BreakerConfig> for BreakerSettings {
    fn from(c: &BreakerConfig) -> Self {
        BreakerSettings {
            failure_rate_threshold: c.failure_rate_threshold,
            slow_call_rate_threshold: c.slow_call_rate_threshold,
            slow_call_duration_s: c.slow_call_duration.map(|d| d.as_secs_f64()),
            window: c.window.name().to_owned(),
            window_size: i64::from(c.window_size),
            minimum_calls: i64::from(c.minimum_calls),
            open_timeout_s: c.open_timeout.as_secs_f64(),
            half_open_max_calls: i64::from(c.half_open_max_calls),
            max_open_timeout_s: c.max_open_timeout.map(|d| d.as_secs_f64()),
        }
    }
}

impl BreakerSettings {
    /// The checked config; an error names the first bad setting.
    pub fn config(&self) -> Result<BreakerConfig, Error> {
        let window = match self.window.as_str() {
            "count" => WindowKind::Count,
            "time" => WindowKind::Time,
            other => {
                return Err(invalid(
                    "window",
                    format!("must be 'count' or 'time', got '{other}'"),
                ))
            }
        };
        let seconds = |name, secs: Option<f64>| secs.map(|s| positive_seconds(name, s)).transpose();
        let config = BreakerConfig {
            failure_rate_threshold: self.failure_rate_threshold,
            slow_call_rate_threshold: self.slow_call_rate_threshold,
            slow_call_duration: seconds("slow_call_duration_s", self.slow_call_duration_s)?,
            window,
            window_size: count_in("window_size", self.window_size, MAX_WINDOW)?,
            minimum_calls: count_in("minimum_calls", self.minimum_calls, MAX_WINDOW)?,
            open_timeout: positive_seconds("open_timeout_s", self.open_timeout_s)?,
            half_open_max_calls: count_in(
                "half_open_max_calls",
                self.half_open_max_calls,
                MAX_TRIALS,
            )?,
            max_open_timeout: seconds("max_open_timeout_s", self.max_open_timeout_s)?,
        };
        config.validate()?;
        Ok(config)
    }
}

impl WindowKind {
    pub fn name(self) -> &'static str {
        match self {
            WindowKind::Count => "count",
            WindowKind::Time => "time",
        }
    }
}

fn invalid(name: &'static str, reason: String) -> Error {
    Error::invalid(name, reason)
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), Error> {
        for (name, rate) in [
            ("failure_rate_threshold", self.failure_rate_threshold),
            ("slow_call_rate_threshold", self.slow_call_rate_threshold),
        ] {
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(invalid(name, format!("must be in (0, 1], got {rate:?}")));
            }
        }
        if self.window_size == 0 || self.window_size > MAX_WINDOW {
            return Err(invalid(
                "window_size",
                format!(
                    "must be between 1 and {MAX_WINDOW}, got {}",
                    self.window_size
                ),
            ));
        }
        if self.minimum_calls == 0 {
            return Err(invalid("minimum_calls", "must be at least 1, got 0".into()));
        }
        if self.window == WindowKind::Count && self.minimum_calls > self.window_size {
            return Err(invalid(
                "minimum_calls",
                format!(
                    "a count window of {} calls never holds {}; use at most window_size",
                    self.window_size, self.minimum_calls
                ),
            ));
        }
        if self.half_open_max_calls == 0 || self.half_open_max_calls > MAX_TRIALS {
            return Err(invalid(
                "half_open_max_calls",
                format!(
                    "must be between 1 and {MAX_TRIALS}, got {}",
                    self.half_open_max_calls
                ),
            ));
        }
        if self.open_timeout.is_zero() {
            return Err(invalid("open_timeout_s", "must be positive".into()));
        }
        for (name, open) in [
            ("open_timeout_s", Some(self.open_timeout)),
            ("max_open_timeout_s", self.max_open_timeout),
        ] {
            if let Some(open) = open.filter(|d| *d > MAX_OPEN) {
                return Err(invalid(
                    name,
                    format!(
                        "must be at most {} seconds (30 days), got {}",
                        MAX_OPEN.as_secs(),
                        open.as_secs_f64()
                    ),
                ));
            }
        }
        if let Some(max) = self.max_open_timeout {
            if max < self.open_timeout {
                return Err(invalid(
                    "max_open_timeout_s",
                    "must be at least open_timeout_s".into(),
                ));
            }
        }
        if self.slow_call_duration.is_some_and(|d| d.is_zero()) {
            return Err(invalid("slow_call_duration_s", "must be positive".into()));
        }
        Ok(())
    }
}

/// The answer to "may this call go ahead?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; `trial` when the call is one of half-open's trial calls.
    Allowed { trial: bool },
    /// Refused; half-open may be tried in this many nanoseconds (0 when the
    /// breaker is forced open or its trial permits are all out).
    Refused { retry_after_ns: u64 },
}

const MAX_WINDOW: u32 = 1_000_000;
/// The longest open time: the open deadline is kept in 40 bits of
/// milliseconds (34 years) from the breaker's first opening, and 30 days
/// keeps it far from wrapping.
const MAX_OPEN: Duration = Duration::from_secs(30 * 86_400);
const MAX_TRIALS: u32 = 4095;

// State word: state (3 bits) | transition counter (21 bits) | deadline in ms
// (40 bits), counted from `CircuitBreaker::origin_ms`.
const STATE_MASK: u64 = 0b111;
const EPOCH_SHIFT: u32 = 3;
const EPOCH_MASK: u64 = (1 << 21) - 1;
const DEADLINE_SHIFT: u32 = 24;
const DEADLINE_MAX: u64 = (1 << (64 - DEADLINE_SHIFT)) - 1;
/// `origin_ms` before the first opening.
const NO_ORIGIN: u64 = u64::MAX;

fn pack(state: State, epoch: u64, deadline_ms: u64) -> u64 {
    state.bits() | ((epoch & EPOCH_MASK) << EPOCH_SHIFT) | (deadline_ms << DEADLINE_SHIFT)
}

fn epoch_of(word: u64) -> u64 {
    (word >> EPOCH_SHIFT) & EPOCH_MASK
}

// Trial word: half-open period (16 bits) | permits out | successes | failures | slow (12 bits each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Trials {
    period: u64,
    out: u64,
    ok: u64,
    failed: u64,
    slow: u64,
}

impl Trials {
    fn unpack(w: u64) -> Trials {
        Trials {
            period: w >> 48,
            out: (w >> 36) & 0xfff,
            ok: (w >> 24) & 0xfff,
            failed: (w >> 12) & 0xfff,
            slow: w & 0xfff,
        }
    }

    fn pack(self) -> u64 {
        (self.period << 48) | (self.out << 36) | (self.ok << 24) | (self.failed << 12) | self.slow
    }

    fn fresh(period: u64) -> Trials {
        Trials {
            period,
            out: 0,
            ok: 0,
            failed: 0,
            slow: 0,
        }
    }
}

enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

pub struct CircuitBreaker {
    config: BreakerConfig,
    word: AtomicU64,
    trials: AtomicU64,
    reopened: AtomicU32,
    /// The clock's reading, in ms, at the first opening: open deadlines are
    /// kept relative to it, so a clock of any origin (`time.time()` as well
    /// as a process clock) fits their 40 bits.
    origin_ms: AtomicU64,
    window: Window,
}

/// A snapshot for `metrics()`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    pub state: State,
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
    pub failure_rate: Option<f64>,
    pub slow_call_rate: Option<f64>,
    pub retry_after_ns: u64,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Result<Self, Error> {
        config.validate()?;
        let size = config.window_size as usize;
        Ok(CircuitBreaker {
            window: match config.window {
                WindowKind::Count => Window::Count(CountWindow::new(size)),
                WindowKind::Time => Window::Time(TimeWindow::new(size)),
            },
            config,
            word: AtomicU64::new(pack(State::Closed, 0, 0)),
            trials: AtomicU64::new(Trials::fresh(0).pack()),
            reopened: AtomicU32::new(0),
            origin_ms: AtomicU64::new(NO_ORIGIN),
        })
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    pub fn state(&self) -> State {
        State::from_bits(self.word.load(Ordering::Acquire))
    }

    /// Moves from the state in `word` to `to`; `None` if another caller
    /// changed the state first.
    fn transition(&self, word: u64, to: State, now: impl Fn() -> u64) -> Option<Transition> {
        self.transition_for(word, to, None, now)
    }

    /// `transition`, with the open time given (`open_ns`) instead of the
    /// one the configuration and the reopenings say.
    fn transition_for(
        &self,
        word: u64,
        to: State,
        open_ns: Option<u64>,
        now: impl Fn() -> u64,
    ) -> Option<Transition> {
        let from = State::from_bits(word);
        let deadline_ms = if to == State::Open {
            // A reopening after failed trials backs off further; a first
            // opening (from closed, or forced) starts from open_timeout.
            let reopenings = if from == State::HalfOpen {
                self.reopened.load(Ordering::Acquire) + 1
            } else {
                0
            };
            let now_ns = now();
            let origin = self.origin_ms(now_ns / 1_000_000);
            now_ns
                .saturating_add(open_ns.unwrap_or_else(|| self.open_time_ns(reopenings)))
                .div_ceil(1_000_000)
                .saturating_sub(origin)
                .min(DEADLINE_MAX)
        } else {
            0
        };
        let epoch = epoch_of(word) + 1;
        let next = pack(to, epoch, deadline_ms);
        if to == State::HalfOpen {
            // Trials of this period are told apart by the epoch's low bits:
            // permits or outcomes of an older period cannot leak in. Set
            // before the state is published; a caller racing to make the
            // same transition finds the period already set and leaves the
            // permits the winner's callers may have taken.
            let period = epoch & 0xffff;
            let _ = self
                .trials
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                    (Trials::unpack(w).period != period).then(|| Trials::fresh(period).pack())
                });
        }
        self.word
            .compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        match (from, to) {
            (State::HalfOpen, State::Open) => {
                self.reopened.fetch_add(1, Ordering::AcqRel);
            }
            (_, State::Closed) => {
                self.reopened.store(0, Ordering::Release);
                self.reset_window();
            }
            _ => {}
        }
        Some(Transition { from, to })
    }

    /// The origin of open deadlines, set (to `now_ms`) by the first opening.
    /// It is stored before the state word that uses it is published, and
    /// read after that word is loaded (acquire), so readers always see it.
    fn origin_ms(&self, now_ms: u64) -> u64 {
        match self.origin_ms.compare_exchange(
            NO_ORIGIN,
            now_ms,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => now_ms,
            Err(origin) => origin,
        }
    }

    /// The open deadline of `word`, in the clock's nanoseconds.
    fn deadline_ns(&self, word: u64) -> u64 {
        let origin = self.origin_ms.load(Ordering::Acquire);
        let origin = if origin == NO_ORIGIN { 0 } else { origin };
        origin
            .saturating_add(word >> DEADLINE_SHIFT)
            .saturating_mul(1_000_000)
    }

    /// How long the next open period lasts: doubling per reopening in a
    /// row, capped, with jitter, when `max_open_timeout` is set.
    fn open_time_ns(&self, reopenings: u32) -> u64 {
        let base = self.config.open_timeout.as_nanos() as u64;
        let Some(max) = self.config.max_open_timeout else {
            return base;
        };
        let max = max.as_nanos() as u64;
        let grown = base.saturating_mul(1 << reopenings.min(62)).min(max);
        (grown as f64 * (0.8 + 0.2 * fastrand::f64())) as u64
    }

    fn reset_window(&self) {
        match &self.window {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }

    /// Asks to make a call. An allowed call must later be reported with
    /// [`CircuitBreaker::on_success`], [`CircuitBreaker::on_failure`] or
    /// [`CircuitBreaker::release`] (for an outcome that counts as neither).
    pub fn try_acquire(&self, now: impl Fn() -> u64) -> (Admission, Option<Transition>) {
        let mut transition = None;
        loop {
            let word = self.word.load(Ordering::Acquire);
            match State::from_bits(word) {
                State::Closed | State::Disabled => {
                    return (Admission::Allowed { trial: false }, transition)
                }
                State::ForcedOpen => return (Admission::Refused { retry_after_ns: 0 }, transition),
                State::Open => {
                    let deadline = self.deadline_ns(word);
                    let now_ns = now();
                    if now_ns < deadline {
                        let wait = deadline - now_ns;
                        return (
                            Admission::Refused {
                                retry_after_ns: wait,
                            },
                            transition,
                        );
                    }
                    if let Some(t) = self.transition(word, State::HalfOpen, || now_ns) {
                        transition = Some(t);
                    }
                }
                State::HalfOpen => {
                    let period = epoch_of(word) & 0xffff;
                    let max = u64::from(self.config.half_open_max_calls);
                    let taken = self
                        .trials
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                            let t = Trials::unpack(w);
                            let t = if t.period == period {
                                t
                            } else {
                                Trials::fresh(period)
                            };
                            (t.out + t.ok + t.failed < max).then(|| {
                                Trials {
                                    out: t.out + 1,
                                    ..t
                                }
                                .pack()
                            })
                        })
                        .is_ok();
                    return if taken {
                        (Admission::Allowed { trial: true }, transition)
                    } else {
                        (Admission::Refused { retry_after_ns: 0 }, transition)
                    };
                }
            }
        }
    }

    fn is_slow(&self, latency: Option<Duration>) -> bool {
        matches!((self.config.slow_call_duration, latency), (Some(limit), Some(l)) if l >= limit)
    }

    pub fn on_success(
        &self,
        now: impl Fn() -> u64,
        latency: Option<Duration>,
    ) -> Option<Transition> {
        self.record(now, false, self.is_slow(latency))
    }

    pub fn on_failure(
        &self,
        now: impl Fn() -> u64,
        latency: Option<Duration>,
    ) -> Option<Transition> {
        self.record(now, true, self.is_slow(latency))
    }

    /// Gives back an admitted call's permit without an outcome (an ignored
    /// exception, a cancelled call).
    pub fn release(&self) {
        let word = self.word.load(Ordering::Acquire);
        if State::from_bits(word) != State::HalfOpen {
            return;
        }
        let period = epoch_of(word) & 0xffff;
        let _ = self
            .trials
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let t = Trials::unpack(w);
                (t.period == period && t.out > 0).then(|| {
                    Trials {
                        out: t.out - 1,
                        ..t
                    }
                    .pack()
                })
            });
    }

    fn tripped(&self, calls: u64, failures: u64, slow: u64) -> bool {
        let calls_f = calls as f64;
        failures as f64 >= self.config.failure_rate_threshold * calls_f
            || (self.config.slow_call_duration.is_some()
                && slow as f64 >= self.config.slow_call_rate_threshold * calls_f)
    }

    fn record(&self, now: impl Fn() -> u64, failed: bool, slow: bool) -> Option<Transition> {
        let word = self.word.load(Ordering::Acquire);
        match State::from_bits(word) {
            State::Closed => {
                let t = match &self.window {
                    Window::Count(w) => w.record(failed, slow),
                    Window::Time(w) => w.record(now(), failed, slow),
                };
                if t.calls >= u64::from(self.config.minimum_calls)
                    && self.tripped(t.calls, t.failures, t.slow)
                {
                    return self.transition(word, State::Open, now);
                }
                None
            }
            State::HalfOpen => {
                let period = epoch_of(word) & 0xffff;
                let before = self
                    .trials
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                        let t = Trials::unpack(w);
                        if t.period != period {
                            return None;
                        }
                        Some(
                            Trials {
                                out: t.out.saturating_sub(1),
                                ok: t.ok + u64::from(!failed),
                                failed: t.failed + u64::from(failed),
                                slow: t.slow + u64::from(slow),
                                ..t
                            }
                            .pack(),
                        )
                    })
                    .ok()?;
                let before = Trials::unpack(before);
                let done = before.ok + before.failed + 1;
                if done < u64::from(self.config.half_open_max_calls) {
                    return None;
                }
                let failures = before.failed + u64::from(failed);
                let slow = before.slow + u64::from(slow);
                let to = if self.tripped(done, failures, slow) {
                    State::Open
                } else {
                    State::Closed
                };
                self.transition(word, to, now)
            }
            // Outcomes of calls admitted before the breaker opened, or while
            // it is forced open or disabled, do not count.
            State::Open | State::ForcedOpen | State::Disabled => None,
        }
    }

    /// Holds the breaker open until [`CircuitBreaker::reset`].
    pub fn force_open(&self, now: impl Fn() -> u64) -> Option<Transition> {
        self.force(State::ForcedOpen, now)
    }

    /// Opens the breaker for `open_ns` nanoseconds from now, whatever its
    /// state but disabled: another process found the service down, and
    /// this one holds off until the same deadline. When the time is over,
    /// trials decide, as after any open period.
    pub fn open_for(&self, open_ns: u64, now: impl Fn() -> u64) -> Option<Transition> {
        loop {
            let word = self.word.load(Ordering::Acquire);
            if State::from_bits(word) == State::Disabled {
                return None;
            }
            if let Some(t) = self.transition_for(word, State::Open, Some(open_ns), &now) {
                return Some(t);
            }
        }
    }

    /// Lets every call through and records nothing until `reset`.
    pub fn disable(&self, now: impl Fn() -> u64) -> Option<Transition> {
        self.force(State::Disabled, now)
    }

    /// Ends an open period early: an open breaker goes half-open now, so its
    /// next calls are trials (a health check saw the service recover, as
    /// Envoy un-ejects a host on a passing active check). A half-open one
    /// starts a fresh trial period, forgetting trials that failed before the
    /// recovery. Nothing happens in any other state. The backoff history
    /// stays: trials that fail reopen it for longer, trials that pass close
    /// it.
    pub fn half_open(&self, now: impl Fn() -> u64) -> Option<Transition> {
        loop {
            let word = self.word.load(Ordering::Acquire);
            if !matches!(State::from_bits(word), State::Open | State::HalfOpen) {
                return None;
            }
            if let Some(t) = self.transition(word, State::HalfOpen, &now) {
                return Some(t);
            }
        }
    }

    /// Back to closed with an empty window and no backoff history.
    pub fn reset(&self, now: impl Fn() -> u64) -> Option<Transition> {
        let t = self.force(State::Closed, now);
        self.reopened.store(0, Ordering::Release);
        self.reset_window();
        t
    }

    fn force(&self, to: State, now: impl Fn() -> u64) -> Option<Transition> {
        loop {
            let word = self.word.load(Ordering::Acquire);
            if State::from_bits(word) == to {
                return None;
            }
            if let Some(t) = self.transition(word, to, &now) {
                return Some(t);
            }
        }
    }

    pub fn metrics(&self, now_ns: u64) -> Metrics {
        let word = self.word.load(Ordering::Acquire);
        let state = State::from_bits(word);
        let t = match &self.window {
            Window::Count(w) => w.totals(),
            Window::Time(w) => w.totals(now_ns),
        };
        let enough = t.calls >= u64::from(self.config.minimum_calls);
        let rate = |n: u64| enough.then(|| n as f64 / t.calls as f64);
        Metrics {
            state,
            calls: t.calls,
            failures: t.failures,
            slow: t.slow,
            failure_rate: rate(t.failures),
            slow_call_rate: rate(t.slow),
            retry_after_ns: if state == State::Open {
                self.deadline_ns(word).saturating_sub(now_ns)
            } else {
                0
            },
        }
    }
}

#[cfg(test)]
mod tests;
