//! Smooth weighted round robin on a precomputed schedule.
//!
//! At every node-set change the whole cycle is computed once with nginx's
//! smooth weighted algorithm (every node gains its weight, the richest is
//! picked and pays the total), which interleaves: weights 5, 1, 1 give
//! `a a b a c a a`, never `a a a a a b c`. The cycle is an immutable `Vec`
//! published with the snapshot, and a pick is one atomic increment and one
//! index, as with gRPC's static stride scheduler: no lock, no allocation,
//! O(1) whatever the weights.
//!
//! The cycle's length is the sum of the weights divided by their gcd.
//! Fractional weights are scaled to integers (by the smallest power of ten that makes them whole,
//! else to 4 significant digits of the ratio to the largest weight), and when `length × nodes` would exceed
//! 2^24 steps the weights are scaled down proportionally, so a rebuild costs
//! at most a few milliseconds.

use super::{Cycle, Member, Snapshot, Strategy, Turns};
use crate::error::Error;

const BUILD_BUDGET: u64 = 1 << 24;
const FRACTION_SCALE: f64 = 10_000.0;

#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    turns: Turns,
}

/// One cycle of the schedule, as member indices.
#[derive(Debug)]
pub struct Schedule {
    slots: Vec<u32>,
    cycle: Cycle,
}

impl Strategy for WeightedRoundRobin {
    type Table = Schedule;

    fn build<T>(&self, members: &[Member<T>], live: &[u32]) -> Schedule {
        let weights: Vec<f64> = live.iter().map(|&i| members[i as usize].weight).collect();
        let slots: Vec<u32> = smooth_schedule(&weights)
            .into_iter()
            .map(|slot| live[slot as usize])
            .collect();
        Schedule {
            cycle: Cycle::new(slots.len()),
            slots,
        }
    }

    #[inline]
    fn choose<T>(
        &self,
        snap: &Snapshot<T, Schedule>,
        _key: Option<u64>,
        _rng: &mut fastrand::Rng,
    ) -> Result<u32, Error> {
        Ok(snap.table.slots[self.turns.take(snap.table.cycle)])
    }
}

/// One full cycle of smooth weighted round robin over `weights`, as positions
/// into `weights`. Empty for no weights.
pub fn smooth_schedule(weights: &[f64]) -> Vec<u32> {
    let q = integer_weights(weights);
    let total: i64 = q.iter().sum();
    let mut current = vec![0i64; q.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..q.len() {
            current[i] += q[i];
            // Strictly greater: ties go to the earlier node.
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

/// Positive integer weights with the same ratios (up to the scaling described
/// in the module doc), reduced by their gcd.
fn integer_weights(weights: &[f64]) -> Vec<i64> {
    if weights.is_empty() {
        return Vec::new();
    }
    let mut q: Vec<u64> = match decimal_scale(weights) {
        Some(scale) => weights.iter().map(|w| (w * scale).round() as u64).collect(),
        None => {
            let max = weights.iter().cloned().fold(f64::MIN, f64::max);
            weights
                .iter()
                .map(|w| ((w / max) * FRACTION_SCALE).round().max(1.0) as u64)
                .collect()
        }
    };
    reduce_by_gcd(&mut q);
    let n = q.len() as u64;
    let total: u64 = q.iter().sum();
    if total.saturating_mul(n) > BUILD_BUDGET {
        let target = (BUILD_BUDGET / n).max(n) as f64;
        let scale = target / total as f64;
        for w in &mut q {
            *w = ((*w as f64 * scale).floor() as u64).max(1);
        }
        reduce_by_gcd(&mut q);
    }
    q.into_iter().map(|w| w as i64).collect()
}

/// The smallest power of ten (up to 10^4) that makes every weight a whole
/// number of at most a million, so 0.25 : 0.75 schedules as 1 : 3.
fn decimal_scale(weights: &[f64]) -> Option<f64> {
    (0..=4).map(|e| 10f64.powi(e)).find(|scale| {
        weights.iter().all(|w| {
            let x = w * scale;
            (x - x.round()).abs() < 1e-9 * x.max(1.0) && x.round() >= 1.0 && x <= 1e6
        })
    })
}

fn reduce_by_gcd(q: &mut [u64]) {
    let g = q.iter().fold(0u64, |a, &b| gcd(a, b));
    if g > 1 {
        for w in q.iter_mut() {
            *w /= g;
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Balancer;
    use super::*;

    fn names(weights: &[(&str, f64)], n: usize) -> String {
        let b = Balancer::new(WeightedRoundRobin::default(), weighted(weights)).unwrap();
        (0..n).map(|_| pick(&b, None)).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn weights_5_1_1_interleave_smoothly() {
        assert_eq!(
            names(&[("a", 5.0), ("b", 1.0), ("c", 1.0)], 14),
            "a a b a c a a a a b a c a a"
        );
    }

    #[test]
    fn every_cycle_gives_each_node_its_weight() {
        let weights = [("a", 3.0), ("b", 7.0), ("c", 2.0), ("d", 11.0)];
        let seq = names(&weights, 23 * 4);
        for (id, w) in weights {
            assert_eq!(seq.split(' ').filter(|s| *s == id).count(), 4 * w as usize);
        }
    }

    #[test]
    fn no_node_waits_longer_than_its_share_allows() {
        // Smoothness: a node of weight w out of total W is picked at least
        // once in every window of ceil(W / w) + 1 picks.
        let weights = [("a", 9.0), ("b", 3.0), ("c", 1.0)];
        let seq: Vec<String> = names(&weights, 13 * 6)
            .split(' ')
            .map(String::from)
            .collect();
        for (id, w) in weights {
            let window = (13.0 / w).ceil() as usize + 1;
            for start in 0..seq.len() - window {
                assert!(
                    seq[start..start + window].iter().any(|s| s == id),
                    "{id} missing from window at {start}"
                );
            }
        }
    }

    #[test]
    fn fractional_weights_keep_their_ratio() {
        assert_eq!(smooth_schedule(&[0.5, 1.5]), vec![1, 0, 1, 1]);
        assert_eq!(integer_weights(&[0.25, 0.75]), vec![1, 3]);
    }

    #[test]
    fn huge_weight_sums_are_scaled_to_the_build_budget() {
        let weights = vec![999_983.0, 1.0, 500_000.0];
        let q = integer_weights(&weights);
        let total: i64 = q.iter().sum();
        assert!((total as u64) * 3 <= BUILD_BUDGET);
        assert!(q.iter().all(|&w| w >= 1));
        assert!((q[0] as f64 / q[2] as f64 - 2.0).abs() < 0.01);
    }

    #[test]
    fn unavailable_nodes_leave_the_schedule() {
        let b = Balancer::new(
            WeightedRoundRobin::default(),
            weighted(&[("a", 2.0), ("b", 1.0), ("c", 1.0)]),
        )
        .unwrap();
        b.set_available("a", false).unwrap();
        let seq: Vec<String> = (0..4).map(|_| pick(&b, None)).collect();
        assert_eq!(seq.iter().filter(|s| *s == "b").count(), 2);
        assert!(!seq.iter().any(|s| s == "a"));
    }
}
