//! A process-wide monotonic clock in nanoseconds, as a plain `u64` so it can
//! live in atomics.

use std::sync::OnceLock;
use std::time::Instant;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds since the first call in this process; never goes backwards.
/// Starts at 1 so that 0 can mean "never".
#[inline]
pub fn now_ns() -> u64 {
    let base = origin();
    base.elapsed().as_nanos() as u64 + 1
}
