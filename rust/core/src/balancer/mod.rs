//! Client-side load balancers.
//!
//! Every balancer is a [`Balancer`] over one [`Strategy`] (one file per
//! algorithm). The node set lives in an immutable [`Snapshot`] swapped whole
//! through `arc-swap`: `update` / `set_available` build a new snapshot off to
//! the side and publish it in one atomic store. A pick never locks and never
//! allocates: each thread keeps its own reference to the snapshot it last
//! used and only checks, with one acquire load, that it is still current.
//! (A plain `ArcSwap::load` costs a sequentially consistent store per read,
//! which measured about 10 ns, half of a native pick.) The price: a thread
//! that stops picking keeps the last snapshot it saw alive until its next
//! pick or until the balancer is dropped. Counters live in
//! [`NodeState`]s that are carried into the next snapshot for nodes that stay.

mod adaptive;
mod consistent_hash;
mod ewma;
mod least_connections;
mod node;
mod power_of_two;
mod prefix;
mod random;
mod round_robin;
mod weighted_round_robin;

pub use adaptive::Adaptive;
pub use consistent_hash::{ConsistentHash, Ring, DEFAULT_VNODES};
pub use ewma::PeakEwma;
pub use least_connections::LeastConnections;
pub use node::{NodeState, NodeStats};
pub use power_of_two::PowerOfTwoChoices;
pub use prefix::{EventCounts, PrefixAware, PrefixConfig, PrefixStats, Prompt, QueueStats};
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::{smooth_schedule, Schedule, WeightedRoundRobin};

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};

use std::cell::RefCell;

use arc_swap::cache::Cache;
use arc_swap::ArcSwap;
use thread_local::ThreadLocal;

use crate::clock;
use crate::error::Error;

/// Decay time of the latency estimate unless a balancer sets its own (Finagle's).
pub const DEFAULT_DECAY_S: f64 = 10.0;

/// One node as handed to [`Balancer::new`] or [`Balancer::update`].
#[derive(Debug, Clone)]
pub struct NodeSpec<T> {
    pub id: String,
    pub weight: f64,
    /// `Some` sets the node's availability; `None` keeps it for a node that
    /// stays and makes a new node available.
    pub available: Option<bool>,
    pub handle: T,
}

impl<T> NodeSpec<T> {
    pub fn new(id: impl Into<String>, weight: f64, handle: T) -> Self {
        Self {
            id: id.into(),
            weight,
            available: None,
            handle,
        }
    }
}

/// A node inside a snapshot: the caller's handle, its weight, its counters.
#[derive(Debug)]
pub struct Member<T> {
    pub handle: T,
    pub weight: f64,
    pub state: Arc<NodeState>,
}

/// An immutable node set with the strategy's precomputed table.
#[derive(Debug)]
pub struct Snapshot<T, Table> {
    /// A slice behind the `Arc`, not a `Vec`: one dependent load less to
    /// reach the picked member on every pick.
    members: Arc<[Member<T>]>,
    index: Arc<HashMap<Box<str>, usize>>,
    /// Indices into `members` of the available nodes, in input order.
    pub live: Vec<u32>,
    /// The counters of the live nodes, in the order of `live`: one load
    /// away, where `members[live[i]].state` is three (the hot loop of the
    /// two-choice balancers is a chain of dependent loads).
    pub live_states: Vec<Arc<NodeState>>,
    /// True when every live node has the same weight.
    pub uniform: bool,
    pub table: Table,
}

impl<T, Table> Snapshot<T, Table> {
    #[inline]
    pub fn members(&self) -> &[Member<T>] {
        &self.members
    }

    #[inline]
    pub fn state(&self, member: u32) -> &NodeState {
        &self.members[member as usize].state
    }

    #[inline]
    pub fn weight(&self, member: u32) -> f64 {
        self.members[member as usize].weight
    }
}

/// One balancing algorithm: what it precomputes per node set, and how it picks.
pub trait Strategy: Send + Sync {
    /// Precomputed per node set (a schedule, a ring); rebuilt on every change.
    type Table: Send + Sync;

    /// Whether picks route by the request key (and need one).
    const ROUTES_BY_KEY: bool = false;

    /// Builds the table for the live members.
    fn build<T>(&self, members: &[Member<T>], live: &[u32]) -> Self::Table;

    /// Picks a member index among `snap.live`; `live` is never empty here.
    /// `rng` is the calling thread's own generator.
    fn choose<T>(
        &self,
        snap: &Snapshot<T, Self::Table>,
        key: Option<u64>,
        rng: &mut fastrand::Rng,
    ) -> Result<u32, Error>;
}

type SnapshotCache<T, Table> = Cache<Arc<ArcSwap<Snapshot<T, Table>>>, Arc<Snapshot<T, Table>>>;

/// What each thread keeps per balancer: its view of the snapshot and its own
/// random generator (one thread-local lookup per pick, which matters inside
/// a shared library where each lookup is a call).
struct Local<T, Table> {
    snapshot: SnapshotCache<T, Table>,
    rng: fastrand::Rng,
}

/// A load balancer: a strategy over a node set that can be swapped at any time.
pub struct Balancer<T: Send + Sync, S: Strategy> {
    strategy: S,
    current: Arc<ArcSwap<Snapshot<T, S::Table>>>,
    /// Each thread's cached view of `current` (see the module doc).
    local: ThreadLocal<RefCell<Local<T, S::Table>>>,
    /// Serialises writers only; readers never touch it.
    writer: Mutex<()>,
    total_in_flight: Arc<AtomicI64>,
    decay_ns: f64,
    /// Seeds each thread's generator when set (thread `n` gets the `n`-th
    /// seed of a sequence from it), so a simulation replays exactly.
    seed: Option<u64>,
    threads_seen: AtomicU64,
}

impl<T: Send + Sync, S: Strategy> Balancer<T, S> {
    /// A balancer over `nodes` with the default latency decay time.
    pub fn new(strategy: S, nodes: Vec<NodeSpec<T>>) -> Result<Self, Error> {
        Self::with_decay(strategy, nodes, DEFAULT_DECAY_S)
    }

    /// A balancer whose latency estimates decay with time constant `decay_s`.
    pub fn with_decay(strategy: S, nodes: Vec<NodeSpec<T>>, decay_s: f64) -> Result<Self, Error> {
        if !(decay_s > 0.0 && decay_s <= MAX_DECAY_S) {
            return Err(Error::invalid(
                "decay_s",
                format!("must be a number of seconds above 0 and at most {MAX_DECAY_S}, got {decay_s:?}"),
            ));
        }
        let total = Arc::new(AtomicI64::new(0));
        let decay_ns = decay_s * 1e9;
        let empty = Snapshot {
            members: Arc::from(Vec::new()),
            index: Arc::new(HashMap::new()),
            live: Vec::new(),
            live_states: Vec::new(),
            uniform: true,
            table: strategy.build::<T>(&[], &[]),
        };
        let balancer = Self {
            strategy,
            current: Arc::new(ArcSwap::from_pointee(empty)),
            local: ThreadLocal::new(),
            writer: Mutex::new(()),
            total_in_flight: total,
            decay_ns,
            seed: None,
            threads_seen: AtomicU64::new(0),
        };
        balancer.update(nodes)?;
        Ok(balancer)
    }

    /// The same balancer with its random choices (ties, samples) drawn from
    /// `seed`: one thread picking sees the same choices on every run.
    pub fn seeded(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    fn new_rng(&self) -> fastrand::Rng {
        match self.seed {
            None => fastrand::Rng::new(),
            Some(seed) => {
                let n = self
                    .threads_seen
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                fastrand::Rng::with_seed(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            }
        }
    }

    pub fn strategy(&self) -> &S {
        &self.strategy
    }

    /// Replaces the node set in one atomic step. Nodes whose id stays keep
    /// their counters (in flight, picks, latency). On error nothing changes.
    pub fn update(&self, nodes: Vec<NodeSpec<T>>) -> Result<(), Error> {
        let mut index = HashMap::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            check_node(&node.id, node.weight).map_err(|e| e.within(format_args!("nodes[{i}]")))?;
            if index.insert(node.id.as_str().into(), i).is_some() {
                return Err(Error::DuplicateId {
                    id: node.id.clone(),
                });
            }
        }
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let members: Vec<Member<T>> = nodes
            .into_iter()
            .map(|spec| {
                let state = match old.index.get(spec.id.as_str()) {
                    Some(&i) => Arc::clone(&old.members[i].state),
                    None => Arc::new(NodeState::new(
                        &spec.id,
                        true,
                        self.decay_ns,
                        Arc::clone(&self.total_in_flight),
                    )),
                };
                if let Some(available) = spec.available {
                    state.set_available(available);
                }
                Member {
                    handle: spec.handle,
                    weight: spec.weight,
                    state,
                }
            })
            .collect();
        self.publish(Arc::from(members), Arc::new(index));
        Ok(())
    }

    /// Marks a node available or not. Returns whether anything changed.
    pub fn set_available(&self, id: &str, available: bool) -> Result<bool, Error> {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let snap = self.current.load_full();
        let &i = snap
            .index
            .get(id)
            .ok_or_else(|| Error::UnknownNode { id: id.to_owned() })?;
        if !snap.members[i].state.set_available(available) {
            return Ok(false);
        }
        self.publish(Arc::clone(&snap.members), Arc::clone(&snap.index));
        Ok(true)
    }

    /// Builds and stores a snapshot; the caller holds the writer lock.
    fn publish(&self, members: Arc<[Member<T>]>, index: Arc<HashMap<Box<str>, usize>>) {
        let live: Vec<u32> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.state.is_available())
            .map(|(i, _)| i as u32)
            .collect();
        let uniform = live
            .windows(2)
            .all(|w| members[w[0] as usize].weight == members[w[1] as usize].weight);
        let table = self.strategy.build(&members, &live);
        let live_states = live
            .iter()
            .map(|&i| Arc::clone(&members[i as usize].state))
            .collect();
        self.current.store(Arc::new(Snapshot {
            members,
            index,
            live,
            live_states,
            uniform,
            table,
        }));
    }

    /// Picks a node and hands it to `f` while the snapshot is held. No lock,
    /// no allocation. `key` is the stable hash of the request key, if any.
    #[inline]
    pub fn pick_with<R>(
        &self,
        key: Option<u64>,
        f: impl FnOnce(&Member<T>) -> R,
    ) -> Result<R, Error> {
        let strategy = &self.strategy;
        self.pick_by(|snap, rng| strategy.choose(snap, key, rng), f)
    }

    /// Picks with `choose` (given the current snapshot, which has at least
    /// one live node, and the thread's generator) and hands the member it
    /// returns to `f` while the snapshot is held.
    #[inline]
    pub fn pick_by<R>(
        &self,
        choose: impl FnOnce(&Snapshot<T, S::Table>, &mut fastrand::Rng) -> Result<u32, Error>,
        f: impl FnOnce(&Member<T>) -> R,
    ) -> Result<R, Error> {
        let cell = self.local.get_or(|| {
            RefCell::new(Local {
                snapshot: Cache::new(Arc::clone(&self.current)),
                rng: self.new_rng(),
            })
        });
        match cell.try_borrow_mut() {
            Ok(mut local) => {
                let Local { snapshot, rng } = &mut *local;
                Self::pick_from(snapshot.load(), rng, choose, f)
            }
            // Re-entered on this thread (a destructor run while swapping the
            // cached snapshot picked again): read the shared one directly.
            Err(_) => Self::pick_from(&self.current.load(), &mut self.new_rng(), choose, f),
        }
    }

    #[inline]
    fn pick_from<R>(
        snap: &Snapshot<T, S::Table>,
        rng: &mut fastrand::Rng,
        choose: impl FnOnce(&Snapshot<T, S::Table>, &mut fastrand::Rng) -> Result<u32, Error>,
        f: impl FnOnce(&Member<T>) -> R,
    ) -> Result<R, Error> {
        if snap.live.is_empty() {
            return Err(Error::NoAvailableNode);
        }
        let i = choose(snap, rng)?;
        let member = &snap.members[i as usize];
        member.state.count_pick();
        Ok(f(member))
    }

    /// The counters of node `id` in the current set, if it is there.
    pub fn state_of(&self, id: &str) -> Option<Arc<NodeState>> {
        let snap = self.current.load();
        snap.index
            .get(id)
            .map(|&i| Arc::clone(&snap.members[i].state))
    }

    /// Counts a request in flight on node `id`.
    pub fn begin(&self, id: &str) -> Result<(), Error> {
        let state = self
            .state_of(id)
            .ok_or_else(|| Error::UnknownNode { id: id.to_owned() })?;
        state.begin();
        Ok(())
    }

    /// Ends a request on node `id`. A node removed meanwhile is ignored:
    /// returns `false` and changes nothing.
    pub fn end(&self, id: &str, latency_s: f64, ok: bool) -> Result<bool, Error> {
        check_latency(latency_s)?;
        match self.state_of(id) {
            Some(state) => {
                state.end(latency_s, ok);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Ends a request on node `id` without an outcome (it was cancelled):
    /// only the in-flight count drops. A node removed meanwhile is ignored.
    pub fn release(&self, id: &str) -> bool {
        match self.state_of(id) {
            Some(state) => {
                state.release();
                true
            }
            None => false,
        }
    }

    /// Reads the current snapshot.
    pub fn with_snapshot<R>(&self, f: impl FnOnce(&Snapshot<T, S::Table>) -> R) -> R {
        f(&self.current.load())
    }

    /// Reads the node set under the current snapshot.
    pub fn with_members<R>(&self, f: impl FnOnce(&[Member<T>]) -> R) -> R {
        f(&self.current.load().members)
    }

    /// Number of nodes, available or not.
    pub fn len(&self) -> usize {
        self.current.load().members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of available nodes.
    pub fn available_len(&self) -> usize {
        self.current.load().live.len()
    }

    /// Requests in flight across all nodes, including nodes removed since.
    pub fn total_in_flight(&self) -> i64 {
        self.total_in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counters of every node, in node-set order.
    pub fn stats(&self) -> Vec<NodeStats> {
        let now = clock::now_ns();
        self.current
            .load()
            .members
            .iter()
            .map(|m| m.state.stats(m.weight, now))
            .collect()
    }
}

/// The longest latency decay time: a day (a latency average that forgets
/// more slowly than that stops following the servers).
pub const MAX_DECAY_S: f64 = 86_400.0;

/// The largest node weight. Weights are relative, so this leaves ratios of
/// a million to one, and keeps sums of weights and ring sizes finite.
pub const MAX_WEIGHT: f64 = 1e6;

/// Checks a node's id (not empty) and weight (positive, at most
/// [`MAX_WEIGHT`]): the one place these are checked, for balancers and for
/// `Node` objects.
pub fn check_node(id: &str, weight: f64) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::invalid("id", "must be a non-empty string"));
    }
    if !(weight > 0.0 && weight <= MAX_WEIGHT) {
        return Err(Error::invalid(
            "weight",
            format!("must be a number above 0 and at most {MAX_WEIGHT:e}, got {weight:?}"),
        ));
    }
    Ok(())
}

/// Checks a reported latency (see [`crate::error::latency_seconds`]).
pub fn check_latency(latency_s: f64) -> Result<(), Error> {
    crate::error::latency_seconds("latency_s", latency_s).map(|_| ())
}

/// Load of a node for least-loaded choices: in-flight requests per unit of weight.
#[inline]
pub(crate) fn load_per_weight<T, Tb>(snap: &Snapshot<T, Tb>, member: u32) -> f64 {
    let in_flight = snap.state(member).in_flight() as f64;
    if snap.uniform {
        in_flight
    } else {
        (in_flight + 1.0) / snap.weight(member)
    }
}

/// A shared turn counter reduced modulo a divisor fixed per snapshot, with
/// Lemire's multiply-based remainder instead of a division (a 64-bit divide
/// cost about 3 ns of a round-robin pick). The 32-bit counter wraps every
/// 2^32 turns; when the cycle length does not divide 2^32 that wrap shifts
/// the rotation once, so one node may get its turn early once in four
/// billion picks.
#[derive(Debug, Default)]
pub struct Turns {
    next: std::sync::atomic::AtomicU32,
}

/// The divisor and its precomputed multiplier for [`Turns::take`].
#[derive(Debug, Clone, Copy)]
pub struct Cycle {
    len: u32,
    multiplier: u64,
}

impl Cycle {
    pub(crate) fn new(len: usize) -> Self {
        let len = len.clamp(1, u32::MAX as usize) as u32;
        Self {
            len,
            multiplier: (u64::MAX / u64::from(len)).wrapping_add(1),
        }
    }
}

impl Turns {
    /// The next turn, in `0..cycle.len`.
    #[inline]
    pub(crate) fn take(&self, cycle: Cycle) -> usize {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let low = cycle.multiplier.wrapping_mul(u64::from(turn));
        ((u128::from(low) * u128::from(cycle.len)) >> 64) as usize
    }
}

/// Two distinct uniformly random positions in `0..n` (`2 <= n <= 2^32`),
/// from one 64-bit draw: each half scaled by a multiply-shift (bias under
/// n / 2^32, far below any load difference), and the second shifted past the
/// first without a branch (`b >= a` is a coin toss a predictor gets wrong
/// half the time).
#[inline]
pub(crate) fn two_distinct(rng: &mut fastrand::Rng, n: usize) -> (usize, usize) {
    let r = rng.u64(..);
    let a = (((r & 0xffff_ffff) * n as u64) >> 32) as usize;
    let b = (((r >> 32) * (n as u64 - 1)) >> 32) as usize;
    (a, b + usize::from(b >= a))
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn specs(ids: &[&str]) -> Vec<NodeSpec<String>> {
        ids.iter()
            .map(|id| NodeSpec::new(*id, 1.0, id.to_string()))
            .collect()
    }

    pub fn weighted(pairs: &[(&str, f64)]) -> Vec<NodeSpec<String>> {
        pairs
            .iter()
            .map(|(id, w)| NodeSpec::new(*id, *w, id.to_string()))
            .collect()
    }

    pub fn pick<S: Strategy>(b: &Balancer<String, S>, key: Option<u64>) -> String {
        b.pick_with(key, |m| m.handle.clone()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn bad_node_sets_are_refused_and_leave_the_old_set() {
        let b = Balancer::new(RoundRobin::default(), specs(&["a", "b"])).unwrap();
        assert_eq!(
            b.update(specs(&["a", "a"])),
            Err(Error::DuplicateId { id: "a".into() })
        );
        assert_eq!(
            b.update(specs(&["a", ""])),
            Err(Error::invalid("nodes[1].id", "must be a non-empty string"))
        );
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                b.update(weighted(&[("a", w)])),
                Err(Error::InvalidArgument { name, .. }) if name == "nodes[0].weight"
            ));
        }
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn counters_survive_update_for_nodes_that_stay() {
        let b = Balancer::new(RoundRobin::default(), specs(&["a", "b"])).unwrap();
        b.begin("a").unwrap();
        b.begin("a").unwrap();
        b.update(specs(&["c", "a"])).unwrap();
        let stats = b.stats();
        assert_eq!(stats[1].id, "a");
        assert_eq!(stats[1].in_flight, 2);
        assert_eq!(stats[0].in_flight, 0);
        assert_eq!(b.total_in_flight(), 2);
    }

    #[test]
    fn end_for_a_removed_node_is_ignored() {
        let b = Balancer::new(RoundRobin::default(), specs(&["a", "b"])).unwrap();
        b.begin("b").unwrap();
        b.update(specs(&["a"])).unwrap();
        assert_eq!(b.end("b", 0.01, true), Ok(false));
        assert_eq!(b.begin("b"), Err(Error::UnknownNode { id: "b".into() }));
    }

    #[test]
    fn in_flight_never_goes_negative() {
        let b = Balancer::new(RoundRobin::default(), specs(&["a"])).unwrap();
        b.end("a", 0.0, true).unwrap();
        b.end("a", 0.0, true).unwrap();
        assert_eq!(b.stats()[0].in_flight, 0);
        assert_eq!(b.total_in_flight(), 0);
        b.begin("a").unwrap();
        assert_eq!(b.stats()[0].in_flight, 1);
    }

    #[test]
    fn bad_latency_is_refused() {
        let b = Balancer::new(RoundRobin::default(), specs(&["a"])).unwrap();
        for l in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                b.end("a", l, true),
                Err(Error::InvalidArgument { name, .. }) if name == "latency_s"
            ));
        }
    }

    #[test]
    fn unavailable_nodes_are_never_picked_and_come_back() {
        let b = Balancer::new(RoundRobin::default(), specs(&["a", "b", "c"])).unwrap();
        assert_eq!(b.set_available("b", false), Ok(true));
        assert_eq!(b.set_available("b", false), Ok(false));
        for _ in 0..30 {
            assert_ne!(pick(&b, None), "b");
        }
        b.set_available("a", false).unwrap();
        b.set_available("c", false).unwrap();
        assert_eq!(b.pick_with(None, |_| ()), Err(Error::NoAvailableNode));
        b.set_available("b", true).unwrap();
        assert_eq!(pick(&b, None), "b");
        assert!(matches!(
            b.set_available("zz", true),
            Err(Error::UnknownNode { .. })
        ));
    }

    #[test]
    fn an_empty_node_set_has_no_available_node() {
        let b = Balancer::<String, _>::new(RoundRobin::default(), vec![]).unwrap();
        assert_eq!(b.pick_with(None, |_| ()), Err(Error::NoAvailableNode));
    }

    #[test]
    fn availability_given_with_the_node_set_applies() {
        let mut nodes = specs(&["a", "b"]);
        nodes[0].available = Some(false);
        let b = Balancer::new(RoundRobin::default(), nodes).unwrap();
        for _ in 0..10 {
            assert_eq!(pick(&b, None), "b");
        }
    }

    #[test]
    fn turns_are_exact_remainders() {
        for len in [1usize, 2, 3, 7, 8, 100, 65_537] {
            let turns = Turns::default();
            let cycle = Cycle::new(len);
            for t in 0..1_000usize {
                assert_eq!(turns.take(cycle), t % len, "len {len}");
            }
        }
        let turns = Turns::default();
        turns
            .next
            .store(u32::MAX - 2, std::sync::atomic::Ordering::Relaxed);
        let cycle = Cycle::new(10);
        for t in (u32::MAX - 2)..=u32::MAX {
            assert_eq!(turns.take(cycle), (t % 10) as usize);
        }
    }

    #[test]
    fn two_distinct_draws_are_distinct_and_every_pair_is_drawn_evenly() {
        let mut rng = fastrand::Rng::with_seed(3);
        for n in [2usize, 3, 7] {
            let mut counts = vec![0u32; n * n];
            let draws = 20_000 * n * (n - 1);
            for _ in 0..draws {
                let (a, b) = two_distinct(&mut rng, n);
                assert!(a != b && a < n && b < n);
                counts[a * n + b] += 1;
            }
            let expected = (draws / (n * (n - 1))) as f64;
            for a in 0..n {
                for b in (0..n).filter(|&b| b != a) {
                    let got = f64::from(counts[a * n + b]);
                    assert!(
                        (got / expected - 1.0).abs() < 0.05,
                        "n {n}: ({a}, {b}) {got}"
                    );
                }
            }
        }
    }

    #[test]
    fn decay_time_must_be_positive() {
        assert!(matches!(
            Balancer::with_decay(RoundRobin::default(), specs(&["a"]), 0.0),
            Err(Error::InvalidArgument { name, .. }) if name == "decay_s"
        ));
    }
}
