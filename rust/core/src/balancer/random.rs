//! Random: a uniformly random available node, or weighted by a binary search
//! over cumulative weights when weights differ. The generator is a
//! per-thread wyrand (fastrand), so threads do not contend.

use super::{Member, Snapshot, Strategy};
use crate::error::Error;

#[derive(Debug, Default)]
pub struct Random;

impl Strategy for Random {
    /// Cumulative weights of the live nodes; empty when they are uniform.
    type Table = Vec<f64>;

    fn build<T>(&self, members: &[Member<T>], live: &[u32]) -> Vec<f64> {
        let uniform = live
            .windows(2)
            .all(|w| members[w[0] as usize].weight == members[w[1] as usize].weight);
        if uniform {
            return Vec::new();
        }
        let mut sum = 0.0;
        live.iter()
            .map(|&i| {
                sum += members[i as usize].weight;
                sum
            })
            .collect()
    }

    #[inline]
    fn choose<T>(
        &self,
        snap: &Snapshot<T, Vec<f64>>,
        _key: Option<u64>,
        rng: &mut fastrand::Rng,
    ) -> Result<u32, Error> {
        let n = snap.live.len();
        if snap.table.is_empty() {
            return Ok(snap.live[rng.usize(..n)]);
        }
        let target = rng.f64() * snap.table[n - 1];
        let slot = snap.table.partition_point(|&c| c <= target).min(n - 1);
        Ok(snap.live[slot])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Balancer;
    use super::*;
    use std::collections::HashMap;

    fn shares(b: &Balancer<String, Random>, n: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..n {
            *counts.entry(pick(b, None)).or_default() += 1;
        }
        counts
    }

    #[test]
    fn uniform_weights_spread_evenly() {
        let b = Balancer::new(Random, specs(&["a", "b", "c", "d"]))
            .unwrap()
            .seeded(3);
        for (id, c) in shares(&b, 80_000) {
            assert!((18_500..21_500).contains(&c), "{id}: {c}");
        }
    }

    #[test]
    fn weights_set_the_shares() {
        let b = Balancer::new(Random, weighted(&[("a", 1.0), ("b", 3.0)]))
            .unwrap()
            .seeded(3);
        let counts = shares(&b, 80_000);
        assert!((18_500..21_500).contains(&counts["a"]), "{counts:?}");
        assert!((58_500..61_500).contains(&counts["b"]), "{counts:?}");
    }
}
