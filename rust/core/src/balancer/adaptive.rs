//! Adaptive: power of two choices over peak-EWMA latency × (in flight + 1),
//! as Finagle's `P2CPeakEwma` (and tower's port of it).
//!
//! A node that turns slow takes its slow latency at once (the peak), so it
//! loses every comparison after one slow answer; its cost then decays toward
//! zero with the balancer's decay time (10 s by default), so it is tried again
//! and wins its traffic back once it answers fast.
//!
//! A node with no latency sample yet is neither starved nor flooded: while it
//! has nothing in flight its cost is zero, so it is tried at the first
//! chance; while its first request is in flight its cost is a large penalty,
//! so it gets no second request before the first one has answered.
//!
//! Two sampled nodes are compared without reading the clock: both costs decay
//! by the same factor from "now", so only the gap between their last samples
//! matters, `c_a · exp((t_a − t_b)/τ)` against `c_b`. One `exp` per pick.

use super::{two_distinct, Member, NodeState, Snapshot, Strategy};
use crate::clock;
use crate::error::Error;

/// Cost of a node whose first request is still in flight (in ns, about 11 days).
const UNSAMPLED_PENALTY_NS: f64 = 1e15;

#[derive(Debug, Default)]
pub struct Adaptive;

impl Strategy for Adaptive {
    type Table = ();

    fn build<T>(&self, _members: &[Member<T>], _live: &[u32]) {}

    #[inline]
    fn choose<T>(
        &self,
        snap: &Snapshot<T, ()>,
        _key: Option<u64>,
        rng: &mut fastrand::Rng,
    ) -> Result<u32, Error> {
        let n = snap.live.len();
        if n == 1 {
            return Ok(snap.live[0]);
        }
        let (i, j) = two_distinct(rng, n);
        let (a, b) = (snap.live[i], snap.live[j]);
        let (wa, wb) = if snap.uniform {
            (1.0, 1.0)
        } else {
            (snap.weight(a), snap.weight(b))
        };
        let (sa, sb) = (&snap.live_states[i], &snap.live_states[j]);
        // Selected by index, not by a branch: which node is cheaper is a
        // coin toss between equal nodes, and a mispredicted branch cost
        // about as much as the whole comparison.
        Ok([a, b][usize::from(cheaper(sb, wb, sa, wa))])
    }
}

/// Whether node `x` (weight `wx`) costs strictly less than node `y` now.
#[inline]
fn cheaper(x: &NodeState, wx: f64, y: &NodeState, wy: f64) -> bool {
    let px = x.in_flight() as f64 + 1.0;
    let py = y.in_flight() as f64 + 1.0;
    match (x.latency().raw(), y.latency().raw()) {
        (Some((cx, tx)), Some((cy, ty))) => {
            // cx·px/wx against cy·py/wy, cross-multiplied: a division is
            // the slowest step of this chain of dependent arithmetic.
            let lx = cx * px * wy;
            let ly = cy * py * wx;
            // Branch-free: which node sampled last is a coin toss, and a
            // mispredicted branch cost more than the arithmetic. The gap is
            // taken in integers first: one signed conversion instead of two
            // unsigned ones, which x86 has no single instruction for.
            let gap = ty.wrapping_sub(tx) as i64 as f64;
            let d = (gap * x.latency().inverse_decay_ns()).clamp(-700.0, 700.0);
            // Under steady traffic both nodes were sampled within a few ms
            // (|d| < 1e-4 at tau = 10 s), where 1 + d is e^d to 5e-9.
            let factor = if d.abs() < 1e-4 { 1.0 + d } else { fast_exp(d) };
            lx < ly * factor
        }
        _ => {
            let now = clock::now_ns();
            cost_now(x, px, now) / wx < cost_now(y, py, now) / wy
        }
    }
}

/// `e^x` for `x` in `[-700, 700]` to about 2e-7 relative error: 2^n from the
/// exponent bits times a degree-6 polynomial for 2^f, f in [0, 1). Only used
/// to compare two costs, where that accuracy is far below the noise; libm's
/// `exp` cost about 15 ns of a 26 ns pick.
#[inline]
fn fast_exp(x: f64) -> f64 {
    let t = x * std::f64::consts::LOG2_E;
    let n = t.floor();
    let f = t - n;
    // Taylor coefficients of 2^f = e^(f ln 2), Horner form.
    let p = 1.0
        + f * (std::f64::consts::LN_2
            + f * (0.240_226_506_959_100_7
                + f * (0.055_504_108_664_821_58
                    + f * (0.009_618_129_107_628_477
                        + f * (0.001_333_355_814_642_844_3
                            + f * (0.000_154_035_303_933_816_1
                                + f * 0.000_015_252_733_804_059_84))))));
    // |n| <= 1010: the biased exponent n + 1023 stays within 13..=2033.
    let scale = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    p * scale
}

fn cost_now(s: &NodeState, pending_plus_one: f64, now: u64) -> f64 {
    match s.latency().cost_at(now) {
        Some(cost) => cost * pending_plus_one,
        None if s.in_flight() == 0 => 0.0,
        None => UNSAMPLED_PENALTY_NS + s.in_flight() as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Balancer;
    use super::*;
    use std::collections::HashMap;

    /// Runs `rounds` sequential requests where node latency comes from `lat`.
    fn drive(
        b: &Balancer<String, Adaptive>,
        rounds: usize,
        lat: impl Fn(&str) -> f64,
    ) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..rounds {
            let id = pick(b, None);
            b.begin(&id).unwrap();
            b.end(&id, lat(&id), true).unwrap();
            *counts.entry(id).or_default() += 1;
        }
        counts
    }

    #[test]
    fn a_new_node_is_tried_at_once_but_gets_one_request_until_it_answers() {
        let b = Balancer::new(Adaptive, specs(&["a", "b", "c"]))
            .unwrap()
            .seeded(3);
        drive(&b, 60, |_| 0.010);
        b.update(specs(&["a", "b", "c", "fresh"])).unwrap();
        let mut fresh_picks = Vec::new();
        for round in 0..300 {
            let id = pick(&b, None);
            b.begin(&id).unwrap();
            if id == "fresh" {
                fresh_picks.push(round); // held: it never answers in this test
            } else {
                b.end(&id, 0.010, true).unwrap();
            }
        }
        assert_eq!(fresh_picks.len(), 1, "flooded: {fresh_picks:?}");
        // An idle unsampled node wins every draw it is in (half of them).
        assert!(
            fresh_picks[0] < 20,
            "starved until round {}",
            fresh_picks[0]
        );
    }

    #[test]
    fn a_slow_node_loses_traffic_within_a_few_requests() {
        let b = Balancer::new(Adaptive, specs(&["a", "b", "c", "slow"]))
            .unwrap()
            .seeded(3);
        drive(&b, 100, |_| 0.010);
        let counts = drive(&b, 400, |id| if id == "slow" { 0.500 } else { 0.010 });
        assert!(counts.get("slow").copied().unwrap_or(0) <= 3, "{counts:?}");
    }

    #[test]
    fn a_recovered_node_wins_its_traffic_back_after_the_decay_time() {
        let b = Balancer::with_decay(Adaptive, specs(&["a", "b", "c", "slow"]), 0.02)
            .unwrap()
            .seeded(3);
        drive(&b, 100, |id| if id == "slow" { 0.500 } else { 0.010 });
        // Its cost decays by e^-20 in 0.4 s of 20 ms decay time.
        std::thread::sleep(std::time::Duration::from_millis(400));
        let counts = drive(&b, 400, |_| 0.010);
        assert!(counts.get("slow").copied().unwrap_or(0) >= 40, "{counts:?}");
    }

    #[test]
    fn a_node_failing_fast_does_not_attract_traffic() {
        let b = Balancer::new(Adaptive, specs(&["a", "b", "bad"]))
            .unwrap()
            .seeded(3);
        drive(&b, 60, |_| 0.050);
        let mut bad = 0;
        for _ in 0..300 {
            let id = pick(&b, None);
            b.begin(&id).unwrap();
            if id == "bad" {
                bad += 1;
                b.end(&id, 0.001, false).unwrap();
            } else {
                b.end(&id, 0.050, true).unwrap();
            }
        }
        assert!(bad <= 30, "bad node got {bad} of 300");
    }

    #[test]
    fn fast_exp_matches_libm_closely() {
        let mut x = -700.0;
        while x <= 700.0 {
            let (got, want) = (fast_exp(x), x.exp());
            assert!(((got - want) / want).abs() < 1e-6, "x={x}: {got} vs {want}");
            x += 0.0137;
        }
    }

    #[test]
    fn load_multiplies_latency() {
        let b = Balancer::new(Adaptive, specs(&["a", "b"]))
            .unwrap()
            .seeded(3);
        drive(&b, 20, |_| 0.010);
        for _ in 0..3 {
            b.begin("a").unwrap();
        }
        for _ in 0..50 {
            assert_eq!(pick(&b, None), "b");
        }
    }
}
