//! The sliding windows a breaker judges by: the last N calls, or the calls
//! of the last N seconds. Both are lock-free: a record is a few atomic
//! operations, and the totals are kept alongside so a check reads three
//! numbers (count window) or sums N buckets (time window).
//!
//! Totals may be off by a call or two for an instant while records race a
//! reset (a transition to closed empties the window); they are signed and
//! read clamped at zero, so a race never shows a negative or huge count.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};

const RECORDED: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

fn outcome(failed: bool, slow: bool) -> u8 {
    RECORDED | if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 }
}

fn clamp(v: i64) -> u64 {
    v.max(0) as u64
}

/// The last `size` calls, in a ring of outcome bytes.
pub struct CountWindow {
    ring: Box<[AtomicU8]>,
    next: AtomicU64,
    calls: AtomicI64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl CountWindow {
    pub fn new(size: usize) -> Self {
        CountWindow {
            ring: (0..size).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicU64::new(0),
            calls: AtomicI64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    pub fn record(&self, failed: bool, slow: bool) -> Totals {
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.ring.len() as u64;
        let new = outcome(failed, slow);
        let old = self.ring[at as usize].swap(new, Ordering::AcqRel);
        let delta = |mask: u8| i64::from(new & mask != 0) - i64::from(old & mask != 0);
        let calls = self.calls.fetch_add(delta(RECORDED), Ordering::AcqRel) + delta(RECORDED);
        let failures = self.failures.fetch_add(delta(FAILED), Ordering::AcqRel) + delta(FAILED);
        let slow = self.slow.fetch_add(delta(SLOW), Ordering::AcqRel) + delta(SLOW);
        Totals {
            calls: clamp(calls),
            failures: clamp(failures),
            slow: clamp(slow),
        }
    }

    pub fn totals(&self) -> Totals {
        Totals {
            calls: clamp(self.calls.load(Ordering::Acquire)),
            failures: clamp(self.failures.load(Ordering::Acquire)),
            slow: clamp(self.slow.load(Ordering::Acquire)),
        }
    }

    pub fn reset(&self) {
        for slot in self.ring.iter() {
            let old = slot.swap(0, Ordering::AcqRel);
            if old & RECORDED != 0 {
                self.calls.fetch_sub(1, Ordering::AcqRel);
                self.failures
                    .fetch_sub(i64::from(old & FAILED != 0), Ordering::AcqRel);
                self.slow
                    .fetch_sub(i64::from(old & SLOW != 0), Ordering::AcqRel);
            }
        }
    }
}

struct Bucket {
    /// The second (since the clock's origin) this bucket counts.
    second: AtomicU64,
    calls: AtomicI64,
    failures: AtomicI64,
    slow: AtomicI64,
}

/// The calls of the last `size` whole seconds, one bucket per second.
pub struct TimeWindow {
    buckets: Box<[Bucket]>,
}

impl TimeWindow {
    pub fn new(size: usize) -> Self {
        TimeWindow {
            buckets: (0..size)
                .map(|_| Bucket {
                    second: AtomicU64::new(u64::MAX),
                    calls: AtomicI64::new(0),
                    failures: AtomicI64::new(0),
                    slow: AtomicI64::new(0),
                })
                .collect(),
        }
    }

    pub fn record(&self, now_ns: u64, failed: bool, slow: bool) -> Totals {
        let second = now_ns / 1_000_000_000;
        let bucket = &self.buckets[(second % self.buckets.len() as u64) as usize];
        let seen = bucket.second.load(Ordering::Acquire);
        if seen != second
            && bucket
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This thread moved the bucket to a new second: empty it. A
            // record racing this reset may be lost, never double-counted.
            bucket.calls.store(0, Ordering::Release);
            bucket.failures.store(0, Ordering::Release);
            bucket.slow.store(0, Ordering::Release);
        }
        bucket.calls.fetch_add(1, Ordering::AcqRel);
        bucket
            .failures
            .fetch_add(i64::from(failed), Ordering::AcqRel);
        bucket.slow.fetch_add(i64::from(slow), Ordering::AcqRel);
        self.totals(now_ns)
    }

    pub fn totals(&self, now_ns: u64) -> Totals {
        let second = now_ns / 1_000_000_000;
        let oldest = second.saturating_sub(self.buckets.len() as u64 - 1);
        let mut t = Totals::default();
        for b in self.buckets.iter() {
            let s = b.second.load(Ordering::Acquire);
            if s != u64::MAX && s >= oldest && s <= second {
                t.calls += clamp(b.calls.load(Ordering::Acquire));
                t.failures += clamp(b.failures.load(Ordering::Acquire));
                t.slow += clamp(b.slow.load(Ordering::Acquire));
            }
        }
        t
    }

    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.second.store(u64::MAX, Ordering::Release);
            b.calls.store(0, Ordering::Release);
            b.failures.store(0, Ordering::Release);
            b.slow.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_keeps_the_last_n() {
        let w = CountWindow::new(4);
        for failed in [true, true, false, false] {
            w.record(failed, false);
        }
        assert_eq!(
            w.totals(),
            Totals {
                calls: 4,
                failures: 2,
                slow: 0
            }
        );
        // Two successes push the two failures out.
        w.record(false, true);
        let t = w.record(false, false);
        assert_eq!(
            t,
            Totals {
                calls: 4,
                failures: 0,
                slow: 1
            }
        );
        w.reset();
        assert_eq!(w.totals(), Totals::default());
    }

    #[test]
    fn time_window_forgets_old_seconds() {
        let w = TimeWindow::new(3);
        let s = 1_000_000_000;
        w.record(10 * s, true, false);
        w.record(11 * s, false, false);
        assert_eq!(w.totals(12 * s).calls, 2);
        assert_eq!(w.totals(13 * s).calls, 1, "second 10 left the window");
        // Second 13 reuses second 10's bucket and starts from zero.
        let t = w.record(13 * s, false, true);
        assert_eq!(
            t,
            Totals {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
    }

    #[test]
    fn concurrent_records_keep_exact_totals() {
        let w = std::sync::Arc::new(CountWindow::new(1000));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = std::sync::Arc::clone(&w);
                std::thread::spawn(move || {
                    for i in 0..250 {
                        w.record((i + t) % 2 == 0, false);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            w.totals(),
            Totals {
                calls: 1000,
                failures: 500,
                slow: 0
            }
        );
    }
}
