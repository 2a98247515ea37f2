//! Peak-EWMA latency, as in Finagle's `PeakEwma` and tower's port of it.
//!
//! A sample above the current cost replaces it at once (the peak), so a node
//! that turns slow loses traffic after one slow answer; a sample below it is
//! blended in with weight `1 - exp(-dt/tau)`, so recovery is gradual. Reads
//! decay the cost toward zero with the time since the last sample, so a node
//! that stopped receiving traffic because it was slow is tried again.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of a cost that has never been sampled.
const UNSET: u64 = u64::MAX;

#[derive(Debug)]
pub struct PeakEwma {
    /// Cost in nanoseconds, as `f64` bits; `UNSET` before the first sample.
    cost_bits: AtomicU64,
    /// `clock::now_ns()` of the last sample.
    stamp_ns: AtomicU64,
    /// Decay time constant tau, in nanoseconds.
    decay_ns: f64,
    /// 1 / tau, so picks multiply instead of divide.
    inverse_decay_ns: f64,
}

impl PeakEwma {
    pub fn new(decay_ns: f64) -> Self {
        Self {
            cost_bits: AtomicU64::new(UNSET),
            stamp_ns: AtomicU64::new(0),
            decay_ns,
            inverse_decay_ns: 1.0 / decay_ns,
        }
    }

    /// Records one latency sample (nanoseconds) taken at `now` (nanoseconds).
    ///
    /// Lock-free: a compare-and-swap loop on the cost. Two samples racing may
    /// both be applied in either order, which is within the estimate's noise.
    pub fn observe(&self, rtt_ns: f64, now: u64) {
        let rtt_ns = if rtt_ns.is_finite() {
            rtt_ns.max(0.0)
        } else {
            0.0
        };
        let last = self.stamp_ns.swap(now, Ordering::AcqRel);
        let elapsed = now.saturating_sub(last) as f64;
        let w = (-elapsed / self.decay_ns).exp();
        let _ = self
            .cost_bits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let next = if bits == UNSET {
                    rtt_ns
                } else {
                    let cost = f64::from_bits(bits);
                    if rtt_ns > cost {
                        rtt_ns
                    } else {
                        cost * w + rtt_ns * (1.0 - w)
                    }
                };
                Some(next.to_bits())
            });
    }

    /// The cost decayed to `now`, or `None` before the first sample.
    pub fn cost_at(&self, now: u64) -> Option<f64> {
        let (cost, stamp) = self.raw()?;
        let elapsed = now.saturating_sub(stamp) as f64;
        Some(cost * (-elapsed / self.decay_ns).exp())
    }

    /// The undecayed cost and the time of the last sample.
    #[inline]
    pub fn raw(&self) -> Option<(f64, u64)> {
        let bits = self.cost_bits.load(Ordering::Acquire);
        if bits == UNSET {
            return None;
        }
        Some((f64::from_bits(bits), self.stamp_ns.load(Ordering::Acquire)))
    }

    #[inline]
    pub fn decay_ns(&self) -> f64 {
        self.decay_ns
    }

    #[inline]
    pub fn inverse_decay_ns(&self) -> f64 {
        self.inverse_decay_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: f64 = 10e9;

    #[test]
    fn first_sample_sets_the_cost() {
        let e = PeakEwma::new(TAU);
        assert_eq!(e.cost_at(1), None);
        e.observe(5e6, 1);
        assert_eq!(e.cost_at(1), Some(5e6));
    }

    #[test]
    fn a_slower_sample_is_taken_at_once() {
        let e = PeakEwma::new(TAU);
        e.observe(1e6, 1);
        e.observe(50e6, 2);
        assert_eq!(e.cost_at(2), Some(50e6));
    }

    #[test]
    fn a_faster_sample_is_blended_by_elapsed_time() {
        let e = PeakEwma::new(TAU);
        e.observe(100e6, 1);
        // One tau later a 0 ms sample keeps exp(-1) of the old cost.
        e.observe(0.0, 1 + TAU as u64);
        let cost = e.cost_at(1 + TAU as u64).unwrap();
        assert!((cost - 100e6 * (-1f64).exp()).abs() < 1.0, "{cost}");
    }

    #[test]
    fn reads_decay_toward_zero_with_the_decay_time() {
        let e = PeakEwma::new(TAU);
        e.observe(80e6, 1);
        let half_life = (TAU * std::f64::consts::LN_2) as u64;
        let cost = e.cost_at(1 + half_life).unwrap();
        assert!((cost - 40e6).abs() < 1e3, "{cost}");
        let later = e.cost_at(1 + 10 * TAU as u64).unwrap();
        assert!(later < 80e6 * 1e-4, "{later}");
    }
}
