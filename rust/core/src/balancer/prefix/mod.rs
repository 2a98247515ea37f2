//! Prefix-aware routing for LLM servers: send a prompt where its prefix is
//! already in a server's KV cache, unless that server is overloaded.
//!
//! The balancer keeps a record of which prompt blocks each node holds (see
//! [`index`]): what it sent there (approximate), corrected by the servers'
//! own KV events when they publish them (exact, see [`exact`]). Each node's
//! record is an LRU list bounded by the node's capacity, so it forgets what
//! the server evicts. A pick hashes the prompt into chained blocks
//! ([`blocks`]), finds how many leading blocks each live node holds, and
//! chooses:
//! - among the nodes that are not overloaded (load at most
//!   `max(balance_rel × mean, mean + balance_abs)`, and requests in flight
//!   at most `max(balance_rel × least, least + 2 × balance_abs)` where
//!   `least` is the least busy node's), the one holding the most
//!   leading blocks (a match under `min_match` of the prompt counts as none);
//!   among equals, the least loaded; among those, one at random;
//! - a prompt none of them holds goes to the cheapest of them (or of
//!   `choices` drawn at random), ties broken at random, where the cost is
//!   the load plus how full the node's record is: new prefixes spread
//!   evenly (no node takes more than its share when loads are equal,
//!   however full the records are: every record at its capacity is equally
//!   full), and a node that joins is filled first.
//!
//! The node with the deepest match is passed over only when it is
//! overloaded; the request then goes to the best of the rest, which records
//! the prefix too, so a hot prefix gets a second (third...) home as load
//! demands.
//!
//! A node's load is its requests in flight per unit of weight, plus the
//! prefill work the router sent it (the uncached blocks of each prompt, as
//! a fraction of a mean prompt, times `prefill_weight`), decaying with time
//! constant `prefill_decay_s` as the server works through it; optionally
//! scaled by each node's latency EWMA relative to the mean.

mod blocks;
mod exact;
mod index;
mod journal;
mod kv_events;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use super::{load_per_weight, Balancer, Member, NodeSpec, Snapshot, Strategy};
use crate::clock;
use crate::error::Error;
pub use exact::EventCounts;
use exact::{Engines, Mapped, Maps};
use index::{Index, IndexStats, Tally};
use journal::Journal;
use kv_events::{Event, Stored};

/// The largest block of token ids.
pub const MAX_TOKEN_BLOCK: usize = 1024;
const NIL: u32 = u32::MAX;

/// A prompt as a pick takes it.
#[derive(Debug, Clone, Copy)]
pub enum Prompt<'a> {
    /// Text (UTF-8) or raw bytes, cut into `block_bytes` blocks.
    Bytes(&'a [u8]),
    /// Token ids, cut into `block_tokens` blocks.
    Tokens(&'a [u32]),
}

/// Settings of a [`PrefixAware`] balancer; [`PrefixConfig::check`] names any
/// that is out of range.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixConfig {
    /// Bytes per block of a text prompt (about 16 tokens at 4 bytes each).
    pub block_bytes: usize,
    /// Token ids per block of a token prompt (vLLM's and SGLang's page).
    pub block_tokens: usize,
    /// Total (block, node) records kept, across all nodes: the memory bound.
    pub max_blocks: usize,
    /// Blocks one node's record holds at most, unless set per node (see
    /// [`PrefixAware::set_node_blocks`]): its server's cache. 0 gives each
    /// node an equal share of `max_blocks`.
    pub node_blocks: usize,
    /// Blocks of one prompt looked at; the rest of a longer prompt is ignored.
    pub max_prompt_blocks: usize,
    /// Shards of the record (prompts are spread by their first block).
    pub shards: usize,
    /// A node is overloaded above `balance_rel` × the mean load (and with
    /// `balance_rel` × the least busy node's requests in flight) ...
    pub balance_rel: f64,
    /// ... and above the mean load + `balance_abs` (the least busy node's
    /// requests in flight + 2 × `balance_abs`).
    pub balance_abs: f64,
    /// A match of less than this fraction of the prompt counts as none.
    pub min_match: f64,
    /// Weight in a node's load of the prefill work sent to it, in mean
    /// prompts (0: requests in flight only).
    pub prefill_weight: f64,
    /// Time constant in which that work is taken as done.
    pub prefill_decay_s: f64,
    /// Nodes drawn at random for a prompt nobody holds, the cheapest of
    /// which wins; 0: every eligible node (the cheapest, ties at random).
    pub choices: usize,
    /// Scale each node's load by its latency EWMA relative to the mean.
    pub use_latency: bool,
    /// Draw random choices from this seed (see [`Balancer::seeded`]).
    pub seed: Option<u64>,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        Self {
            block_bytes: 64,
            block_tokens: 16,
            max_blocks: 1 << 18,
            node_blocks: 0,
            max_prompt_blocks: 1024,
            shards: 16,
            balance_rel: 1.5,
            balance_abs: 8.0,
            min_match: 0.1,
            prefill_weight: 4.0,
            prefill_decay_s: 1.0,
            choices: 0,
            use_latency: false,
            seed: None,
        }
    }
}

fn in_range(name: &'static str, v: usize, lo: usize, hi: usize) -> Result<(), Error> {
    if v < lo || v > hi {
        return Err(Error::invalid(
            name,
            format!("must be an integer from {lo} to {hi}, got {v}"),
        ));
    }
    Ok(())
}

fn number_in(name: &'static str, v: f64, lo: f64, hi: f64) -> Result<(), Error> {
    if !(v >= lo && v <= hi) {
        return Err(Error::invalid(
            name,
            format!("must be a number from {lo} to {hi}, got {v:?}"),
        ));
    }
    Ok(())
}

impl PrefixConfig {
    /// The largest record: pair indices are 32-bit.
    pub const MAX_BLOCKS: usize = 1 << 31;

    pub fn check(&self) -> Result<(), Error> {
        in_range("block_size", self.block_bytes, 1, 1 << 20)?;
        in_range("token_block_size", self.block_tokens, 1, MAX_TOKEN_BLOCK)?;
        in_range("max_blocks", self.max_blocks, 1, Self::MAX_BLOCKS)?;
        in_range("node_blocks", self.node_blocks, 0, Self::MAX_BLOCKS)?;
        in_range("max_prompt_blocks", self.max_prompt_blocks, 1, 1 << 16)?;
        in_range("shards", self.shards, 1, 1024)?;
        in_range("choices", self.choices, 0, 1024)?;
        number_in("balance_rel", self.balance_rel, 1.0, 1e6)?;
        number_in("balance_abs", self.balance_abs, 0.0, 1e9)?;
        number_in("min_match", self.min_match, 0.0, 1.0)?;
        number_in("prefill_weight", self.prefill_weight, 0.0, 1e6)?;
        number_in("prefill_decay_s", self.prefill_decay_s, 1e-3, 86_400.0)?;
        Ok(())
    }

    /// Appends the chained block hashes of `prompt` to `out`.
    pub fn hash(&self, prompt: Prompt<'_>, out: &mut Vec<u64>) {
        match prompt {
            Prompt::Bytes(b) => {
                blocks::hash_bytes(b, self.block_bytes, self.max_prompt_blocks, out)
            }
            Prompt::Tokens(t) => blocks::hash_tokens(
                t.iter().copied(),
                self.block_tokens,
                self.max_prompt_blocks,
                out,
            ),
        }
    }

    /// Token ids read from a prompt at most: more are never looked at.
    pub fn max_prompt_tokens(&self) -> usize {
        self.block_tokens * self.max_prompt_blocks
    }
}

/// An `f64` in an atomic, for estimates that tolerate a lost update.
#[derive(Debug)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn new(v: f64) -> Self {
        Self(AtomicU64::new(v.to_bits()))
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
}

/// What a prefix-aware router knows of one node's queue and cache, kept
/// across node-set changes while the node stays.
#[derive(Debug)]
pub struct NodeQueue {
    /// Prefill work sent (uncached blocks), as of `stamp_ns`.
    pending: AtomicF64,
    stamp_ns: AtomicU64,
    /// Time to first token as the caller reported it (EWMA, seconds; NaN
    /// before the first report).
    ttft_s: AtomicF64,
    /// The node's own capacity in blocks (0: the balancer's default).
    cap: AtomicU64,
    /// Whether its server's KV events reach the record: then the server's
    /// evictions are what the record forgets, and picks do not evict for it
    /// (they would drop blocks the server still holds, by the router's
    /// guess of its LRU order, and no event would ever restore them).
    exact: AtomicBool,
}

impl NodeQueue {
    fn new() -> Self {
        Self {
            pending: AtomicF64::new(0.0),
            stamp_ns: AtomicU64::new(0),
            ttft_s: AtomicF64::new(f64::NAN),
            cap: AtomicU64::new(0),
            exact: AtomicBool::new(false),
        }
    }

    /// The prefill work still counted at `now`.
    fn pending_at(&self, now: u64, decay_ns: f64) -> f64 {
        let stamp = self.stamp_ns.load(Ordering::Relaxed);
        let pending = self.pending.get();
        if pending <= 0.0 {
            return 0.0;
        }
        pending * (-(now.saturating_sub(stamp) as f64) / decay_ns).exp()
    }

    fn add(&self, blocks: f64, now: u64, decay_ns: f64) {
        let value = self.pending_at(now, decay_ns) + blocks;
        self.pending.set(value);
        self.stamp_ns.store(now, Ordering::Relaxed);
    }

    fn clear(&self) {
        self.pending.set(0.0);
    }

    fn observe_ttft(&self, ttft_s: f64) {
        let old = self.ttft_s.get();
        let next = if old.is_nan() {
            ttft_s
        } else {
            old + TTFT_WEIGHT * (ttft_s - old)
        };
        self.ttft_s.set(next);
    }
}

/// Weight of each reported time to first token in a node's average.
const TTFT_WEIGHT: f64 = 0.2;
/// Weight of each prompt in the mean prompt length.
const MEAN_WEIGHT: f64 = 0.01;

/// Node ids to dense slots in the record, reused after a node leaves.
#[derive(Debug, Default)]
struct SlotAlloc {
    by_id: HashMap<Box<str>, (u32, Arc<NodeQueue>)>,
    free: Vec<u32>,
}

/// The per-snapshot table: each member's slot and queue, each slot's
/// position among the live members (`NIL` if unavailable or gone), and the
/// record's tally of each slot.
#[derive(Debug, Default)]
pub struct SlotTable {
    slot: Vec<u32>,
    queue: Vec<Arc<NodeQueue>>,
    pos_of: Vec<u32>,
    tally: Tally,
}

/// The strategy half of [`PrefixAware`]: keeps node slots in step with the
/// node set, and picks the least loaded node for a request with no prompt.
pub struct Slots {
    index: Arc<Index>,
    alloc: Mutex<SlotAlloc>,
    engines: Arc<Engines>,
    /// Default capacity per node (0: a share of `max_blocks`).
    node_blocks: usize,
    max_blocks: usize,
}

impl Slots {
    fn alloc(&self) -> std::sync::MutexGuard<'_, SlotAlloc> {
        // Nothing under this lock panics halfway through a change.
        self.alloc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The capacity of a node with no capacity of its own, in a set of `n`.
    fn default_cap(&self, n: usize) -> u64 {
        match self.node_blocks {
            0 => (self.max_blocks / n.max(1)).max(1) as u64,
            b => b as u64,
        }
    }
}

impl Strategy for Slots {
    type Table = SlotTable;

    fn build<T>(&self, members: &[Member<T>], live: &[u32]) -> SlotTable {
        let mut alloc = self.alloc();
        let present: std::collections::HashSet<&str> =
            members.iter().map(|m| m.state.id()).collect();
        let gone: Vec<Box<str>> = alloc
            .by_id
            .keys()
            .filter(|id| !present.contains(&***id))
            .cloned()
            .collect();
        // A slot freed here can go to a node added in the same update. A
        // pick still holding the old snapshot may then record blocks under
        // it for the removed node: a false hint for the new one, which its
        // first misses correct. Nothing else can go wrong with it.
        for id in gone {
            if let Some((slot, _)) = alloc.by_id.remove(&id) {
                self.index.purge(slot, None);
                self.engines.drop_node(&id);
                alloc.free.push(slot);
            }
        }
        let mut slot = Vec::with_capacity(members.len());
        let mut queue = Vec::with_capacity(members.len());
        for m in members {
            let next = alloc.by_id.len() as u32;
            let (s, q) = match alloc.by_id.get(m.state.id()) {
                Some((s, q)) => (*s, Arc::clone(q)),
                None => {
                    let s = alloc.free.pop().unwrap_or(next);
                    let q = Arc::new(NodeQueue::new());
                    alloc.by_id.insert(m.state.id().into(), (s, Arc::clone(&q)));
                    (s, q)
                }
            };
            slot.push(s);
            queue.push(q);
        }
        let top = slot.iter().copied().max().map_or(0, |s| s as usize + 1);
        let mut pos_of = vec![NIL; top];
        for (pos, &m) in live.iter().enumerate() {
            pos_of[slot[m as usize] as usize] = pos as u32;
        }
        let default = self.default_cap(members.len());
        let mut caps = vec![0u64; top];
        for (&s, q) in slot.iter().zip(&queue) {
            caps[s as usize] = match q.cap.load(Ordering::Relaxed) {
                0 => default,
                own => own,
            };
        }
        let tally = self.index.tally(&caps);
        SlotTable {
            slot,
            queue,
            pos_of,
            tally,
        }
    }

    fn choose<T>(
        &self,
        snap: &Snapshot<T, SlotTable>,
        _key: Option<u64>,
        rng: &mut fastrand::Rng,
    ) -> Result<u32, Error> {
        let loads: Loads = snap
            .live
            .iter()
            .map(|&m| load_per_weight(snap, m))
            .collect();
        let pos = least(&loads, f64::INFINITY, &|_| true, |p| loads[p], rng);
        Ok(snap.live[pos.unwrap_or(0)])
    }
}

type Loads = SmallVec<[f64; 16]>;
type Depths = SmallVec<[u32; 16]>;

/// The position with the least `key` among the `allowed` ones whose load
/// is at most `limit` (all allowed ones if none is), ties broken at random;
/// `None` if none is allowed.
/// How many `balance_abs` a node's requests in flight may be above the
/// least busy node's before it is passed over, whatever it holds.
const STARVING_ABS: f64 = 2.0;

fn least<K: PartialOrd>(
    loads: &[f64],
    limit: f64,
    allowed: &impl Fn(usize) -> bool,
    key: impl Fn(usize) -> K,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let eligible = |pos: usize| allowed(pos) && loads[pos] <= limit;
    let any = (0..loads.len()).any(eligible);
    let mut chosen: Option<(usize, K)> = None;
    let mut ties = 0usize;
    for pos in (0..loads.len()).filter(|&p| if any { eligible(p) } else { allowed(p) }) {
        let k = key(pos);
        match &chosen {
            Some((_, best)) if k > *best => {}
            Some((_, best)) if k == *best => {
                ties += 1;
                if rng.usize(..ties) == 0 {
                    chosen = Some((pos, k));
                }
            }
            _ => {
                chosen = Some((pos, k));
                ties = 1;
            }
        }
    }
    chosen.map(|(pos, _)| pos)
}

/// The cheapest of `choices` positions drawn at random (without
/// replacement) among the `allowed` ones whose load is at most `limit` (all
/// allowed ones if none is), ties broken at random; `None` if none is
/// allowed. With 0 choices, or as many as candidates, the cheapest of all.
fn cheapest_of_sample(
    loads: &[f64],
    limit: f64,
    allowed: &impl Fn(usize) -> bool,
    cost: impl Fn(usize) -> f64,
    choices: usize,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let mut pool: SmallVec<[usize; 16]> = (0..loads.len())
        .filter(|&p| allowed(p) && loads[p] <= limit)
        .collect();
    if choices == 0 || choices >= pool.len() {
        return least(loads, limit, allowed, cost, rng);
    }
    // A partial Fisher-Yates shuffle: the first `choices` are a uniform sample.
    for i in 0..choices {
        let j = rng.usize(i..pool.len());
        pool.swap(i, j);
    }
    let drawn = &pool[..choices];
    least(loads, f64::INFINITY, &|p| drawn.contains(&p), cost, rng)
}

/// What a [`PrefixAware`] balancer's record holds, and how it matched.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixStats {
    /// Blocks recorded per node, in node-set order.
    pub blocks_per_node: Vec<(String, u64)>,
    pub blocks: u64,
    pub max_blocks: u64,
    /// Memory held by the record, in bytes.
    pub bytes: u64,
    pub evictions: u64,
    /// Picks that had a prompt of at least one block.
    pub prompts: u64,
    /// Blocks of those prompts, and how many of them the chosen node held.
    pub prompt_blocks: u64,
    pub matched_blocks: u64,
    /// Picks that passed over the deepest match because it was overloaded.
    pub spills: u64,
    /// Picks for prompts no eligible node held.
    pub placements: u64,
    /// Picks not kept because the journal was full (see
    /// [`PrefixAware::set_journal`]).
    pub journal_dropped: u64,
    /// Picks of other routers merged into the record, and those skipped
    /// because their node is not in this balancer's node set.
    pub merged: u64,
    pub merge_skipped: u64,
    /// What the servers' KV events did to the record.
    pub events: EventCounts,
}

/// One node's queue as the router estimates it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub id: String,
    /// Prefill work sent and not yet taken as done, in blocks.
    pub prefill_blocks: f64,
    /// Time to first token as reported (EWMA), if any was.
    pub ttft_s: Option<f64>,
    /// Blocks the node's record holds at most.
    pub capacity: u64,
}

#[derive(Debug, Default)]
struct Counters {
    prompts: AtomicU64,
    prompt_blocks: AtomicU64,
    matched_blocks: AtomicU64,
    spills: AtomicU64,
    placements: AtomicU64,
    merged: AtomicU64,
    merge_skipped: AtomicU64,
}

/// A prefix-aware balancer over handles of type `T`.
pub struct PrefixAware<T: Send + Sync> {
    /// Shared, so a caller can hold the node-set half on its own (the
    /// bindings' base class does).
    balancer: Arc<Balancer<T, Slots>>,
    index: Arc<Index>,
    engines: Arc<Engines>,
    config: PrefixConfig,
    decay_ns: f64,
    /// The mean prompt length in blocks (EWMA), the unit of prefill work.
    mean_blocks: AtomicF64,
    counters: Counters,
    journal: Journal,
    journal_header: [u8; journal::HEADER],
}

impl<T: Send + Sync> PrefixAware<T> {
    pub fn new(config: PrefixConfig, nodes: Vec<NodeSpec<T>>, decay_s: f64) -> Result<Self, Error> {
        config.check()?;
        let index = Arc::new(Index::new(config.shards, config.max_blocks));
        let engines = Arc::new(Engines::new(config.max_blocks));
        let slots = Slots {
            index: Arc::clone(&index),
            alloc: Mutex::new(SlotAlloc::default()),
            engines: Arc::clone(&engines),
            node_blocks: config.node_blocks,
            max_blocks: config.max_blocks,
        };
        let balancer = Balancer::with_decay(slots, nodes, decay_s)?;
        let balancer = match config.seed {
            Some(seed) => balancer.seeded(seed),
            None => balancer,
        };
        Ok(Self {
            balancer: Arc::new(balancer),
            index,
            engines,
            journal_header: journal::header(config.block_bytes, config.block_tokens),
            decay_ns: config.prefill_decay_s * 1e9,
            config,
            mean_blocks: AtomicF64::new(0.0),
            counters: Counters::default(),
            journal: Journal::default(),
        })
    }

    /// The node set, counters, begin/end, update: everything but the
    /// prompt pick (a pick through it takes the least loaded node).
    pub fn balancer(&self) -> &Arc<Balancer<T, Slots>> {
        &self.balancer
    }

    pub fn config(&self) -> &PrefixConfig {
        &self.config
    }

    /// Picks for a prompt given by its block hashes (see
    /// [`PrefixConfig::hash`]) and records that the chosen node now holds
    /// them. Hands the member to `f` while the snapshot is held.
    pub fn pick_hashed<R>(
        &self,
        hashes: &[u64],
        f: impl FnOnce(&Member<T>) -> R,
    ) -> Result<R, Error> {
        self.pick_excluding(hashes, &[], f)
    }

    /// As [`PrefixAware::pick_hashed`], never choosing a node whose id is
    /// in `exclude` (the nodes a retry has tried); `NoAvailableNode` when
    /// every available node is excluded.
    pub fn pick_excluding<R>(
        &self,
        hashes: &[u64],
        exclude: &[&str],
        f: impl FnOnce(&Member<T>) -> R,
    ) -> Result<R, Error> {
        self.pick_at(hashes, exclude, clock::now_ns(), f)
    }

    /// As [`PrefixAware::pick_excluding`], at time `now` (nanoseconds of
    /// the caller's clock, which must never go backwards).
    pub fn pick_at<R>(
        &self,
        hashes: &[u64],
        exclude: &[&str],
        now: u64,
        f: impl FnOnce(&Member<T>) -> R,
    ) -> Result<R, Error> {
        if hashes.is_empty() && exclude.is_empty() {
            return self.balancer.pick_with(None, f);
        }
        self.balancer
            .pick_by(|snap, rng| self.choose(snap, hashes, exclude, now, rng), f)
    }

    /// Hashes `prompt` and picks for it.
    pub fn pick_with<R>(
        &self,
        prompt: Prompt<'_>,
        f: impl FnOnce(&Member<T>) -> R,
    ) -> Result<R, Error> {
        let mut hashes = Vec::new();
        self.config.hash(prompt, &mut hashes);
        self.pick_hashed(&hashes, f)
    }

    fn choose(
        &self,
        snap: &Snapshot<T, SlotTable>,
        hashes: &[u64],
        exclude: &[&str],
        now: u64,
        rng: &mut fastrand::Rng,
    ) -> Result<u32, Error> {
        let live = &snap.live;
        let excluded: SmallVec<[u32; 4]> = exclude
            .iter()
            .filter_map(|id| snap.index.get(*id).map(|&i| i as u32))
            .collect();
        let allowed = |pos: usize| !excluded.contains(&live[pos]);
        if hashes.is_empty() {
            let loads = self.loads(snap, now);
            let pos = least(&loads, f64::INFINITY, &allowed, |p| loads[p], rng);
            return pos.map(|p| live[p]).ok_or(Error::NoAvailableNode);
        }
        self.mean_blocks(hashes.len());
        let loads = self.loads(snap, now);
        let mean = loads.iter().sum::<f64>() / loads.len() as f64;
        // A node is overloaded against the mean of all loads. That alone can
        // starve a node forever: when every prompt shares a prefix (a system
        // prompt) that all nodes hold but one (restarted, new, or missed at
        // warm-up), equally loaded holders never reach 1.5 x the mean of
        // n > 3 nodes. So a node whose requests in flight are also
        // 2 x `balance_abs` (and `balance_rel` x) above the least busy
        // node's is passed over too: the idle node takes one prompt, holds
        // the prefix, and is a holder like the others. Requests in flight
        // only, not the prefill work: a holder that has just taken a new
        // prompt is not queued behind an idle node for it. Twice the margin
        // because a hot prefix's holder answers from its cache, faster than
        // its count suggests: at 1 x, the shared-prefix workload's TTFT p99
        // went from 0.023 to 0.114 s.
        let queued: Loads = live.iter().map(|&m| load_per_weight(snap, m)).collect();
        let floor = (0..live.len())
            .filter(|&p| allowed(p))
            .map(|p| queued[p])
            .fold(f64::INFINITY, f64::min);
        let starving =
            (floor * self.config.balance_rel).max(floor + STARVING_ABS * self.config.balance_abs);
        let permitted = allowed;
        let allowed = |pos: usize| permitted(pos) && queued[pos] <= starving;
        let mut depth: Depths = live.iter().map(|_| 0).collect();
        let mut locked = self.index.lock(hashes[0]);
        locked
            .shard
            .match_depths(hashes, &snap.table.pos_of, &mut depth);
        let limit = (mean * self.config.balance_rel).max(mean + self.config.balance_abs);
        let min_depth = ((self.config.min_match * hashes.len() as f64).ceil() as u32).max(1);
        let table = &snap.table;
        let held = |pos: usize| {
            if depth[pos] >= min_depth {
                depth[pos]
            } else {
                0
            }
        };
        let c = &self.counters;
        let deepest = least(
            &loads,
            limit,
            &allowed,
            |p| (std::cmp::Reverse(held(p)), loads[p]),
            rng,
        )
        .ok_or(Error::NoAvailableNode)?;
        let pos = if held(deepest) > 0 {
            deepest
        } else {
            // Nobody eligible holds it: the cheapest, by load and by how
            // full each record is. A full record counts as full whether it
            // just lost its oldest blocks or not, so no node is favoured
            // for having just evicted (the herd of a smallest-record rule).
            c.placements.fetch_add(1, Ordering::Relaxed);
            let fullness = |pos: usize| {
                let s = table.slot[live[pos] as usize];
                let cap = table.tally.cap(s).max(1) as f64;
                table.tally.size(s) as f64 / cap
            };
            cheapest_of_sample(
                &loads,
                limit,
                &allowed,
                |p| loads[p] + fullness(p),
                self.config.choices,
                rng,
            )
            .unwrap_or(deepest)
        };
        let top = (0..live.len())
            .filter(|&p| permitted(p))
            .map(|p| depth[p])
            .max()
            .unwrap_or(0);
        if top >= min_depth && depth[pos] < top {
            c.spills.fetch_add(1, Ordering::Relaxed);
        }
        c.prompts.fetch_add(1, Ordering::Relaxed);
        c.prompt_blocks
            .fetch_add(hashes.len() as u64, Ordering::Relaxed);
        c.matched_blocks
            .fetch_add(u64::from(depth[pos]), Ordering::Relaxed);
        let member = live[pos];
        let queue = &table.queue[member as usize];
        let capped = !queue.exact.load(Ordering::Relaxed);
        locked.record(hashes, table.slot[member as usize], &table.tally, capped);
        drop(locked);
        let uncached = (hashes.len() as u32).saturating_sub(depth[pos]);
        queue.add(f64::from(uncached), now, self.decay_ns);
        if self.journal.is_on() {
            let id = snap.state(member).id();
            self.journal.push(id, hashes, &self.journal_header);
        }
        Ok(member)
    }

    /// Folds a prompt of `blocks` into the mean prompt length.
    fn mean_blocks(&self, blocks: usize) {
        let old = self.mean_blocks.get();
        let next = if old <= 0.0 {
            blocks as f64
        } else {
            old + MEAN_WEIGHT * (blocks as f64 - old)
        };
        self.mean_blocks.set(next);
    }

    /// Keeps a journal of the picks for prompts (node id and block hashes),
    /// up to `max_bytes` between takes, for the other routers of the
    /// service to merge; 0 turns it off.
    pub fn set_journal(&self, max_bytes: usize) {
        self.journal.set(max_bytes);
    }

    /// The picks kept since the last take, as bytes for
    /// [`PrefixAware::merge_journal`]; empty when there are none.
    pub fn take_journal(&self) -> Vec<u8> {
        self.journal.take()
    }

    /// Records in this balancer's record what another router's journal
    /// says it routed, as if this one had routed it (the record's LRU order
    /// follows). Picks of nodes not in the node set are skipped. Refuses,
    /// naming `data`, bytes that are not a whole journal made with the same
    /// block sizes, before recording anything. Returns the picks merged.
    pub fn merge_journal(&self, data: &[u8]) -> Result<usize, Error> {
        let entries = journal::parse(data, &self.journal_header)?;
        let mut hashes = Vec::new();
        let (mut merged, mut skipped) = (0usize, 0u64);
        self.balancer.with_snapshot(|snap| {
            for entry in &entries {
                let slot = snap
                    .index
                    .get(entry.id)
                    .and_then(|&member| snap.table.slot.get(member));
                let Some(&slot) = slot else {
                    skipped += 1;
                    continue;
                };
                entry.hashes(self.config.max_prompt_blocks, &mut hashes);
                if let Some(&first) = hashes.first() {
                    self.index
                        .lock(first)
                        .record(&hashes, slot, &snap.table.tally, true);
                    merged += 1;
                }
            }
        });
        let c = &self.counters;
        c.merged.fetch_add(merged as u64, Ordering::Relaxed);
        c.merge_skipped.fetch_add(skipped, Ordering::Relaxed);
        Ok(merged)
    }

    /// Applies one batch of node `id`'s KV events (msgpack, as vLLM
    /// publishes them; see [`kv_events`]) to the record, so it holds what
    /// the server holds. Bytes that are not one whole, well-formed batch
    /// are refused, naming `data`, before anything is applied (and counted
    /// in `events.refused`); `UnknownNode` when `id` is not in the node set.
    /// Returns what the batch did.
    pub fn apply_kv_events(&self, id: &str, data: &[u8]) -> Result<EventCounts, Error> {
        let events = kv_events::decode(data).inspect_err(|_| {
            self.engines.add(&EventCounts {
                refused: 1,
                ..EventCounts::default()
            })
        })?;
        let delta = self.balancer.with_snapshot(|snap| {
            let &member = snap
                .index
                .get(id)
                .ok_or_else(|| Error::UnknownNode { id: id.to_owned() })?;
            let (slot, tally) = (snap.table.slot[member], &snap.table.tally);
            snap.table.queue[member]
                .exact
                .store(true, Ordering::Relaxed);
            let mut delta = EventCounts {
                batches: 1,
                ..EventCounts::default()
            };
            let mut maps = self.engines.lock();
            for event in events {
                match event {
                    Event::Stored(stored) => {
                        self.store(&mut maps, id, slot, tally, stored, &mut delta)
                    }
                    Event::Removed { hashes, usable } if usable => {
                        for hash in hashes {
                            match maps.remove(id, hash) {
                                Some(block) => {
                                    self.index.lock(block.root).forget(block.ours, slot, tally);
                                    delta.removed += 1;
                                }
                                None => delta.unknown_removed += 1,
                            }
                        }
                    }
                    Event::Removed { hashes, .. } => delta.ignored += hashes.len() as u64,
                    Event::Cleared => {
                        maps.clear(id);
                        self.index.purge(slot, Some(tally));
                        delta.cleared += 1;
                    }
                }
            }
            Ok::<_, Error>(delta)
        })?;
        self.engines.add(&delta);
        Ok(delta)
    }

    /// Records the blocks of one `BlockStored` event for node `slot`.
    fn store(
        &self,
        maps: &mut Maps<'_>,
        id: &str,
        slot: u32,
        tally: &Tally,
        stored: Stored,
        delta: &mut EventCounts,
    ) {
        let n = stored.hashes.len();
        let size = self.config.block_tokens;
        let fits = usize::try_from(stored.block_size).is_ok_and(|b| b == size)
            && stored.tokens.len() == n * size;
        if !stored.usable || !fits {
            delta.ignored += n as u64;
            return;
        }
        let parent = match stored.parent {
            None => None,
            Some(hash) => match maps.get(id, hash) {
                Some(block) => Some(block),
                None => {
                    delta.orphaned += n as u64;
                    return;
                }
            },
        };
        let mut ours = Vec::with_capacity(n);
        let mut chain = parent.map(|p| p.ours);
        for block in stored.tokens.chunks_exact(size) {
            let hash = blocks::chain_tokens(chain, block);
            ours.push(hash);
            chain = Some(hash);
        }
        let Some(&first) = ours.first() else {
            return;
        };
        let root = parent.map_or(first, |p| p.root);
        let depth0 = parent.map_or(0, |p| p.depth);
        for (i, (&theirs, &hash)) in stored.hashes.iter().zip(&ours).enumerate() {
            let block = Mapped {
                ours: hash,
                root,
                depth: depth0.saturating_add(i as u32 + 1),
            };
            if !maps.insert(id, theirs, block) {
                delta.unmapped += 1;
            }
        }
        // Blocks past the ones a pick looks at are mapped (their children
        // chain from them) but never matched: not recorded.
        let room = self
            .config
            .max_prompt_blocks
            .saturating_sub(depth0 as usize);
        let recorded = &ours[..ours.len().min(room)];
        if !recorded.is_empty() {
            self.index.lock(root).record(recorded, slot, tally, false);
        }
        delta.stored += recorded.len() as u64;
    }

    /// Each live node's load at `now`: requests in flight per unit of
    /// weight, plus the prefill work sent to it in mean prompts times
    /// `prefill_weight`; scaled by latency when configured.
    fn loads(&self, snap: &Snapshot<T, SlotTable>, now: u64) -> Loads {
        let weight = self.config.prefill_weight;
        let unit = self.mean_blocks.get().max(1.0);
        let mut loads: Loads = snap
            .live
            .iter()
            .map(|&m| {
                let mut load = load_per_weight(snap, m);
                if weight > 0.0 {
                    let queue = &snap.table.queue[m as usize];
                    let work = weight * queue.pending_at(now, self.decay_ns) / unit;
                    load += if snap.uniform {
                        work
                    } else {
                        work / snap.weight(m)
                    };
                }
                load
            })
            .collect();
        if self.config.use_latency {
            let now = clock::now_ns();
            let costs: SmallVec<[Option<f64>; 16]> = snap
                .live
                .iter()
                .map(|&m| snap.state(m).latency().cost_at(now).filter(|c| *c > 0.0))
                .collect();
            let known: SmallVec<[f64; 16]> = costs.iter().flatten().copied().collect();
            if !known.is_empty() {
                let mean = known.iter().sum::<f64>() / known.len() as f64;
                for (load, cost) in loads.iter_mut().zip(&costs) {
                    if let Some(cost) = cost {
                        *load = (*load + 1.0) * cost / mean - 1.0;
                    }
                }
            }
        }
        loads
    }

    /// Runs `f` on node `id`'s slot, queue and the current table; `None`
    /// when the node is not in the node set.
    fn with_node<R>(
        &self,
        id: &str,
        f: impl FnOnce(u32, &NodeQueue, &SlotTable) -> R,
    ) -> Option<R> {
        self.balancer.with_snapshot(|snap| {
            let &member = snap.index.get(id)?;
            let table = &snap.table;
            Some(f(table.slot[member], &table.queue[member], table))
        })
    }

    /// Records a time to first token reported for a request that ended on
    /// node `id`; `false` when the node is not in the node set.
    pub fn observe_ttft(&self, id: &str, ttft_s: f64) -> Result<bool, Error> {
        crate::error::latency_seconds("ttft_s", ttft_s)?;
        Ok(self
            .with_node(id, |_, queue, _| queue.observe_ttft(ttft_s))
            .is_some())
    }

    /// Forgets everything the record holds for node `id` (its server
    /// restarted cold, or said it cleared its cache) and the prefill work
    /// counted there. `UnknownNode` when it is not in the node set.
    pub fn forget(&self, id: &str) -> Result<(), Error> {
        let slot = self
            .with_node(id, |slot, queue, _| {
                queue.clear();
                slot
            })
            .ok_or_else(|| Error::UnknownNode { id: id.to_owned() })?;
        self.engines.drop_node(id);
        self.balancer.with_snapshot(|snap| {
            self.index.purge(slot, Some(&snap.table.tally));
        });
        Ok(())
    }

    /// Sets how many blocks node `id`'s record holds at most (its server's
    /// cache, in this balancer's blocks); 0 returns it to the default. A
    /// record over its new capacity shrinks as new blocks come in.
    pub fn set_node_blocks(&self, id: &str, blocks: usize) -> Result<(), Error> {
        in_range("blocks", blocks, 0, PrefixConfig::MAX_BLOCKS)?;
        let default = self
            .balancer
            .with_snapshot(|snap| self.balancer.strategy().default_cap(snap.members().len()));
        self.with_node(id, |slot, queue, table| {
            queue.cap.store(blocks as u64, Ordering::Relaxed);
            let cap = if blocks == 0 { default } else { blocks as u64 };
            table.tally.set_cap(slot, cap);
        })
        .ok_or_else(|| Error::UnknownNode { id: id.to_owned() })
    }

    /// How many leading blocks of the prompt `hashes` the record holds for
    /// each node, in node-set order; nothing is recorded.
    pub fn depths(&self, hashes: &[u64]) -> Vec<(String, u32)> {
        self.balancer.with_snapshot(|snap| {
            let members = snap.members();
            let all: Vec<u32> = (0..members.len() as u32).collect();
            let table = &snap.table;
            let mut pos_of = vec![NIL; table.pos_of.len()];
            for &m in &all {
                pos_of[table.slot[m as usize] as usize] = m;
            }
            let mut depth: Vec<u32> = vec![0; members.len()];
            if let Some(&first) = hashes.first() {
                self.index
                    .lock(first)
                    .shard
                    .match_depths(hashes, &pos_of, &mut depth);
            }
            members
                .iter()
                .zip(depth)
                .map(|(m, d)| (m.state.id().to_owned(), d))
                .collect()
        })
    }

    /// Each node's queue and capacity as the router sees them at `now`,
    /// in node-set order.
    pub fn queue_stats(&self, now: u64) -> Vec<QueueStats> {
        self.balancer.with_snapshot(|snap| {
            let table = &snap.table;
            snap.members()
                .iter()
                .enumerate()
                .map(|(m, member)| {
                    let queue = &table.queue[m];
                    let ttft = queue.ttft_s.get();
                    QueueStats {
                        id: member.state.id().to_owned(),
                        prefill_blocks: queue.pending_at(now, self.decay_ns),
                        ttft_s: (!ttft.is_nan()).then_some(ttft),
                        capacity: table.tally.cap(table.slot[m]),
                    }
                })
                .collect()
        })
    }

    /// The record's counts, with blocks per node in node-set order.
    pub fn prefix_stats(&self) -> PrefixStats {
        let IndexStats {
            per_slot,
            blocks,
            max_blocks,
            evictions,
            bytes,
        } = self.index.stats();
        let blocks_per_node = self.balancer.with_snapshot(|snap| {
            snap.members()
                .iter()
                .zip(&snap.table.slot)
                .map(|(m, &s)| {
                    (
                        m.state.id().to_owned(),
                        per_slot.get(s as usize).copied().unwrap_or(0),
                    )
                })
                .collect()
        });
        let c = &self.counters;
        PrefixStats {
            blocks_per_node,
            blocks,
            max_blocks,
            bytes: bytes + self.engines.bytes() as u64,
            evictions,
            prompts: c.prompts.load(Ordering::Relaxed),
            prompt_blocks: c.prompt_blocks.load(Ordering::Relaxed),
            matched_blocks: c.matched_blocks.load(Ordering::Relaxed),
            spills: c.spills.load(Ordering::Relaxed),
            placements: c.placements.load(Ordering::Relaxed),
            journal_dropped: self.journal.dropped(),
            merged: c.merged.load(Ordering::Relaxed),
            merge_skipped: c.merge_skipped.load(Ordering::Relaxed),
            events: self.engines.counts(),
        }
    }
}
