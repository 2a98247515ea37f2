//! Round robin: one shared atomic counter over the available nodes, so picks
//! from many threads take consecutive turns and none is lost or repeated.

use super::{Cycle, Member, Snapshot, Strategy, Turns};
use crate::error::Error;

#[derive(Debug, Default)]
pub struct RoundRobin {
    turns: Turns,
}

impl Strategy for RoundRobin {
    type Table = Cycle;

    fn build<T>(&self, _members: &[Member<T>], live: &[u32]) -> Cycle {
        Cycle::new(live.len())
    }

    #[inline]
    fn choose<T>(
        &self,
        snap: &Snapshot<T, Cycle>,
        _key: Option<u64>,
        _rng: &mut fastrand::Rng,
    ) -> Result<u32, Error> {
        Ok(snap.live[self.turns.take(snap.table)])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Balancer;
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    #[test]
    fn takes_nodes_in_order() {
        let b = Balancer::new(RoundRobin::default(), specs(&["a", "b", "c"])).unwrap();
        let seq: Vec<String> = (0..6).map(|_| pick(&b, None)).collect();
        assert_eq!(seq, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn threads_picking_at_once_lose_no_turn() {
        let b =
            Arc::new(Balancer::new(RoundRobin::default(), specs(&["a", "b", "c", "d"])).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    let mut counts: HashMap<String, usize> = HashMap::new();
                    for _ in 0..25_000 {
                        *counts.entry(pick(&b, None)).or_default() += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut total: HashMap<String, usize> = HashMap::new();
        for t in threads {
            for (k, v) in t.join().unwrap() {
                *total.entry(k).or_default() += v;
            }
        }
        // 100,000 turns over 4 nodes: exactly 25,000 each.
        assert!(total.values().all(|&v| v == 25_000), "{total:?}");
    }
}
