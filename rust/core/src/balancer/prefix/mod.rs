//! Prefix-aware routing for LLM servers: send a prompt where its prefix is
//! already in a server's KV cache, unless that server is overloaded.
//!
//! The balancer keeps its own record of which prompt blocks it sent to which
//! node (see [`index`]), bounded by one global budget with LRU eviction. A
//! pick hashes the prompt into chained blocks ([`blocks`]), finds how many
//! leading blocks each live node holds, and chooses:
//! - among the nodes that are not overloaded (load at most
//!   `max(balance_rel × mean, mean + balance_abs)`), the one holding the most
//!   leading blocks (a match under `min_match` of the prompt counts as none);
//! - among equals, the least loaded; among those, one at random;
//! - a prompt none of them holds goes to the one with the fewest recorded
//!   blocks (per unit of weight), then the least loaded: new prefixes are
//!   spread evenly over the caches, and a node that joins is filled first.
//!
//! The node with the deepest match is passed over only when it is
//! overloaded; the request then goes to the best of the rest, which records
//! the prefix too, so a hot prefix gets a second (third...) home as load
//! demands. A miss goes to the least loaded node. Load is in-flight requests
//! per unit of weight, optionally scaled by each node's latency EWMA
//! relative to the mean.

mod blocks;
mod index;
mod journal;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use super::{load_per_weight, Balancer, Member, NodeSpec, Snapshot, Strategy};
use crate::clock;
use crate::error::Error;
use index::{Index, IndexStats};
use journal::Journal;

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
    /// Total (block, node) records kept, across all nodes.
    pub max_blocks: usize,
    /// Blocks of one prompt looked at; the rest of a longer prompt is ignored.
    pub max_prompt_blocks: usize,
    /// Shards of the record (prompts are spread by their first block).
    pub shards: usize,
    /// A node is overloaded above `balance_rel` × the mean load ...
    pub balance_rel: f64,
    /// ... and above the mean load + `balance_abs`.
    pub balance_abs: f64,
    /// A match of less than this fraction of the prompt counts as none.
    pub min_match: f64,
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
            max_prompt_blocks: 1024,
            shards: 16,
            balance_rel: 1.5,
            balance_abs: 8.0,
            min_match: 0.5,
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
        in_range("max_prompt_blocks", self.max_prompt_blocks, 1, 1 << 16)?;
        in_range("shards", self.shards, 1, 1024)?;
        number_in("balance_rel", self.balance_rel, 1.0, 1e6)?;
        number_in("balance_abs", self.balance_abs, 0.0, 1e9)?;
        number_in("min_match", self.min_match, 0.0, 1.0)?;
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

/// Node ids to dense slots in the record, reused after a node leaves.
#[derive(Debug, Default)]
struct SlotAlloc {
    by_id: HashMap<Box<str>, u32>,
    free: Vec<u32>,
}

/// The per-snapshot table: each member's slot, and each slot's position
/// among the live members (`NIL` if unavailable or gone).
#[derive(Debug, Default)]
pub struct SlotTable {
    slot: Vec<u32>,
    pos_of: Vec<u32>,
    /// Pairs recorded per slot: exact when the table is built, then kept up
    /// by the picks that use this table.
    sizes: Box<[AtomicI64]>,
}

/// The strategy half of [`PrefixAware`]: keeps node slots in step with the
/// node set, and picks the least loaded node for a request with no prompt.
pub struct Slots {
    index: Arc<Index>,
    alloc: Mutex<SlotAlloc>,
}

impl Strategy for Slots {
    type Table = SlotTable;

    fn build<T>(&self, members: &[Member<T>], live: &[u32]) -> SlotTable {
        let mut alloc = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
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
            if let Some(slot) = alloc.by_id.remove(&id) {
                self.index.purge(slot);
                alloc.free.push(slot);
            }
        }
        let mut slot = Vec::with_capacity(members.len());
        for m in members {
            let next = alloc.by_id.len() as u32;
            let s = match alloc.by_id.get(m.state.id()) {
                Some(&s) => s,
                None => {
                    let s = alloc.free.pop().unwrap_or(next);
                    alloc.by_id.insert(m.state.id().into(), s);
                    s
                }
            };
            slot.push(s);
        }
        let top = slot.iter().copied().max().map_or(0, |s| s as usize + 1);
        let mut pos_of = vec![NIL; top];
        for (pos, &m) in live.iter().enumerate() {
            pos_of[slot[m as usize] as usize] = pos as u32;
        }
        let sizes = self.index.sizes(top);
        SlotTable {
            slot,
            pos_of,
            sizes,
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

/// The choice for a prompt, given each live position's load, leading
/// blocks held, and record size per unit of weight: among the nodes not
/// overloaded, the deepest match (a match under `min_depth` counts as none),
/// then the least loaded. A prompt no such node holds goes to the one with
/// the smallest record, then the least loaded, so new prefixes are spread
/// evenly over the caches (and a node that joins is filled first).
fn best(
    loads: &[f64],
    depth: &[u32],
    size: impl Fn(usize) -> f64,
    min_depth: u32,
    limit: f64,
    allowed: &impl Fn(usize) -> bool,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let held = |pos: usize| {
        if depth[pos] >= min_depth {
            depth[pos]
        } else {
            0
        }
    };
    let pos = least(
        loads,
        limit,
        allowed,
        |p| (std::cmp::Reverse(held(p)), loads[p]),
        rng,
    )?;
    if held(pos) > 0 {
        return Some(pos);
    }
    least(loads, limit, allowed, |p| (size(p), loads[p]), rng)
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
    /// Picks not kept because the journal was full (see
    /// [`PrefixAware::set_journal`]).
    pub journal_dropped: u64,
    /// Picks of other routers merged into the record, and those skipped
    /// because their node is not in this balancer's node set.
    pub merged: u64,
    pub merge_skipped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    prompts: AtomicU64,
    prompt_blocks: AtomicU64,
    matched_blocks: AtomicU64,
    spills: AtomicU64,
    merged: AtomicU64,
    merge_skipped: AtomicU64,
}

/// A prefix-aware balancer over handles of type `T`.
pub struct PrefixAware<T: Send + Sync> {
    /// Shared, so a caller can hold the node-set half on its own (the
    /// bindings' base class does).
    balancer: Arc<Balancer<T, Slots>>,
    index: Arc<Index>,
    config: PrefixConfig,
    counters: Counters,
    journal: Journal,
    journal_header: [u8; journal::HEADER],
}

impl<T: Send + Sync> PrefixAware<T> {
    pub fn new(config: PrefixConfig, nodes: Vec<NodeSpec<T>>, decay_s: f64) -> Result<Self, Error> {
        config.check()?;
        let index = Arc::new(Index::new(config.shards, config.max_blocks));
        let slots = Slots {
            index: Arc::clone(&index),
            alloc: Mutex::new(SlotAlloc::default()),
        };
        let balancer = Balancer::with_decay(slots, nodes, decay_s)?;
        let balancer = match config.seed {
            Some(seed) => balancer.seeded(seed),
            None => balancer,
        };
        Ok(Self {
            balancer: Arc::new(balancer),
            index,
            journal_header: journal::header(config.block_bytes, config.block_tokens),
            config,
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
        if hashes.is_empty() && exclude.is_empty() {
            return self.balancer.pick_with(None, f);
        }
        self.balancer
            .pick_by(|snap, rng| self.choose(snap, hashes, exclude, rng), f)
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
        rng: &mut fastrand::Rng,
    ) -> Result<u32, Error> {
        let live = &snap.live;
        let excluded: SmallVec<[u32; 4]> = exclude
            .iter()
            .filter_map(|id| snap.index.get(*id).map(|&i| i as u32))
            .collect();
        let allowed = |pos: usize| !excluded.contains(&live[pos]);
        let loads = self.loads(snap);
        let mean = loads.iter().sum::<f64>() / loads.len() as f64;
        if hashes.is_empty() {
            let pos = least(&loads, f64::INFINITY, &allowed, |p| loads[p], rng);
            return pos.map(|p| live[p]).ok_or(Error::NoAvailableNode);
        }
        let mut depth: Depths = live.iter().map(|_| 0).collect();
        let mut locked = self.index.lock(hashes[0]);
        locked
            .shard
            .match_depths(hashes, &snap.table.pos_of, &mut depth);
        let limit = (mean * self.config.balance_rel).max(mean + self.config.balance_abs);
        let min_depth = ((self.config.min_match * hashes.len() as f64).ceil() as u32).max(1);
        let table = &snap.table;
        // Read only for a prompt no eligible node holds (the miss path).
        let size = |pos: usize| {
            let m = live[pos];
            let slot = table.slot[m as usize] as usize;
            let size = table
                .sizes
                .get(slot)
                .map_or(0, |s| s.load(Ordering::Relaxed));
            size.max(0) as f64 / snap.weight(m)
        };
        let pos = best(&loads, &depth, size, min_depth, limit, &allowed, rng)
            .ok_or(Error::NoAvailableNode)?;
        let deepest = (0..live.len())
            .filter(|&p| allowed(p))
            .map(|p| depth[p])
            .max()
            .unwrap_or(0);
        let c = &self.counters;
        if deepest >= min_depth && depth[pos] < deepest {
            c.spills.fetch_add(1, Ordering::Relaxed);
        }
        c.prompts.fetch_add(1, Ordering::Relaxed);
        c.prompt_blocks
            .fetch_add(hashes.len() as u64, Ordering::Relaxed);
        c.matched_blocks
            .fetch_add(u64::from(depth[pos]), Ordering::Relaxed);
        let member = live[pos];
        locked.record(hashes, table.slot[member as usize], &table.sizes);
        drop(locked);
        if self.journal.is_on() {
            let id = snap.state(member).id();
            self.journal.push(id, hashes, &self.journal_header);
        }
        Ok(member)
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
                        .record(&hashes, slot, &snap.table.sizes);
                    merged += 1;
                }
            }
        });
        let c = &self.counters;
        c.merged.fetch_add(merged as u64, Ordering::Relaxed);
        c.merge_skipped.fetch_add(skipped, Ordering::Relaxed);
        Ok(merged)
    }

    fn loads(&self, snap: &Snapshot<T, SlotTable>) -> Loads {
        let mut loads: Loads = snap
            .live
            .iter()
            .map(|&m| load_per_weight(snap, m))
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
            bytes,
            evictions,
            prompts: c.prompts.load(Ordering::Relaxed),
            prompt_blocks: c.prompt_blocks.load(Ordering::Relaxed),
            matched_blocks: c.matched_blocks.load(Ordering::Relaxed),
            spills: c.spills.load(Ordering::Relaxed),
            journal_dropped: self.journal.dropped(),
            merged: c.merged.load(Ordering::Relaxed),
            merge_skipped: c.merge_skipped.load(Ordering::Relaxed),
        }
    }
}
