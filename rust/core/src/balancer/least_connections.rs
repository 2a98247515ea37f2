//! Least connections: the available node with the fewest requests in flight
//! (per unit of weight when weights differ).
//!
//! Ties are broken uniformly at random (reservoir sampling over the tied
//! nodes), so when several nodes are equally idle none is favoured by its
//! position: a first-in-list tie-break starves later nodes under light load.

use super::{load_per_weight, Member, Snapshot, Strategy};
use crate::error::Error;

#[derive(Debug, Default)]
pub struct LeastConnections;

impl Strategy for LeastConnections {
    type Table = ();

    fn build<T>(&self, _members: &[Member<T>], _live: &[u32]) {}

    #[inline]
    fn choose<T>(
        &self,
        snap: &Snapshot<T, ()>,
        _key: Option<u64>,
        rng: &mut fastrand::Rng,
    ) -> Result<u32, Error> {
        let mut best = snap.live[0];
        let mut best_load = load_per_weight(snap, best);
        let mut ties = 1usize;
        for &m in &snap.live[1..] {
            let load = load_per_weight(snap, m);
            if load < best_load {
                best = m;
                best_load = load;
                ties = 1;
            } else if load == best_load {
                ties += 1;
                if rng.usize(..ties) == 0 {
                    best = m;
                }
            }
        }
        Ok(best)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Balancer;
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn picks_the_node_with_fewest_in_flight() {
        let b = Balancer::new(LeastConnections, specs(&["a", "b", "c"])).unwrap();
        b.begin("a").unwrap();
        b.begin("c").unwrap();
        b.begin("c").unwrap();
        assert_eq!(pick(&b, None), "b");
        b.begin("b").unwrap();
        b.begin("b").unwrap();
        assert_eq!(pick(&b, None), "a");
    }

    #[test]
    fn ties_are_shared_evenly_so_later_nodes_do_not_starve() {
        let ids = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let b = Balancer::new(LeastConnections, specs(&ids)).unwrap();
        // Two busy nodes at the front; the six idle ones tie.
        b.begin("a").unwrap();
        b.begin("b").unwrap();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..60_000 {
            *counts.entry(pick(&b, None)).or_default() += 1;
        }
        assert!(!counts.contains_key("a") && !counts.contains_key("b"));
        for id in &ids[2..] {
            let c = counts[*id];
            assert!((9_000..11_000).contains(&c), "{id}: {c}");
        }
    }

    #[test]
    fn weights_scale_the_capacity() {
        let b = Balancer::new(LeastConnections, weighted(&[("big", 4.0), ("small", 1.0)])).unwrap();
        // Fill by always acquiring the pick: big should take 4 of every 5.
        for _ in 0..50 {
            let id = pick(&b, None);
            b.begin(&id).unwrap();
        }
        let stats = b.stats();
        assert_eq!(stats[0].in_flight, 40);
        assert_eq!(stats[1].in_flight, 10);
    }
}
