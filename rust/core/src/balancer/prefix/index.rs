//! The record of which node holds which prompt blocks.
//!
//! One entry per (block hash, node) pair. A table maps each block hash to
//! the chain of its pairs (one per node holding it). A prompt's blocks all
//! live in the shard chosen by its first block (the chained hashes of
//! prompts with different first blocks never meet), so a pick locks one
//! shard and picks for unrelated prompts run in parallel.
//!
//! Each pair sits on two least-recently-used lists of its shard: the
//! shard's own, and its node's. Two budgets bound the record:
//! - each node's capacity (the blocks its server can hold): a node over it
//!   gives up its own least recently used pair, so the record forgets what
//!   the server has evicted instead of believing it holds everything it
//!   was ever sent. The node's oldest pair may be in another shard: each
//!   shard publishes, per node, the tick of its oldest pair (in the
//!   [`Tally`]), and the shard with the oldest gives it up (taken with
//!   `try_lock`, so no pick waits on a second shard; if it is busy, the
//!   picking shard gives up its own oldest pair of that node).
//! - `max` pairs in all, the memory bound, counted in one atomic: the
//!   oldest pair of the whole record goes, found the same way.
//!
//! Every operation is O(1) per block, plus a walk of the block's chain,
//! which is at most one pair per node.

use std::mem::size_of;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use hashbrown::HashTable;

const NIL: u32 = u32::MAX;

/// A shard is compacted when it holds under a quarter of what it has room
/// for, and has room for more than this many pairs.
const COMPACT_ABOVE: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Pair {
    hash: u64,
    /// When the pair was last recorded (the index's pick counter).
    tick: u64,
    node: u32,
    /// Neighbours on the shard's LRU list (towards the most and the least
    /// recent), and on its node's.
    newer: u32,
    older: u32,
    node_newer: u32,
    node_older: u32,
    /// The next pair of the same block hash.
    chain: u32,
}

/// One node's pairs in a shard, least recently used last.
#[derive(Debug, Clone, Copy)]
struct List {
    newest: u32,
    oldest: u32,
    len: u64,
}

const EMPTY: List = List {
    newest: NIL,
    oldest: NIL,
    len: 0,
};

#[derive(Debug, Default)]
pub(super) struct Shard {
    /// Block hash → first pair of its chain.
    table: HashTable<(u64, u32)>,
    pairs: Vec<Pair>,
    /// Freed pairs, linked through `older`.
    free: u32,
    newest: u32,
    oldest: u32,
    len: usize,
    /// Each node slot's list.
    nodes: Vec<List>,
}

impl Shard {
    fn new() -> Self {
        Self {
            free: NIL,
            newest: NIL,
            oldest: NIL,
            ..Self::default()
        }
    }

    #[inline]
    fn chain_of(&self, hash: u64) -> u32 {
        self.table.find(hash, |e| e.0 == hash).map_or(NIL, |e| e.1)
    }

    /// For each block in order, advances the depth of every node that holds
    /// it and held all blocks before it (`depth[pos] == i`). Stops at the
    /// first block no such node holds. `pos_of[slot]` is the node's position
    /// in `depth`, or `NIL` for a node that is not a candidate.
    pub(super) fn match_depths(&self, hashes: &[u64], pos_of: &[u32], depth: &mut [u32]) {
        for (i, &hash) in hashes.iter().enumerate() {
            let mut p = self.chain_of(hash);
            let mut advanced = false;
            while p != NIL {
                let pair = &self.pairs[p as usize];
                if let Some(&pos) = pos_of.get(pair.node as usize) {
                    if pos != NIL && depth[pos as usize] == i as u32 {
                        depth[pos as usize] = i as u32 + 1;
                        advanced = true;
                    }
                }
                p = pair.chain;
            }
            if !advanced {
                return;
            }
        }
    }

    fn find(&self, hash: u64, node: u32) -> u32 {
        let mut p = self.chain_of(hash);
        while p != NIL && self.pairs[p as usize].node != node {
            p = self.pairs[p as usize].chain;
        }
        p
    }

    fn list(&self, node: u32) -> List {
        self.nodes.get(node as usize).copied().unwrap_or(EMPTY)
    }

    fn unlink(&mut self, p: u32) {
        let Pair {
            newer,
            older,
            node,
            node_newer,
            node_older,
            ..
        } = self.pairs[p as usize];
        match newer {
            NIL => self.newest = older,
            n => self.pairs[n as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.pairs[o as usize].newer = newer,
        }
        match node_newer {
            NIL => self.nodes[node as usize].newest = node_older,
            n => self.pairs[n as usize].node_older = node_older,
        }
        match node_older {
            NIL => self.nodes[node as usize].oldest = node_newer,
            o => self.pairs[o as usize].node_newer = node_newer,
        }
    }

    fn push_newest(&mut self, p: u32) {
        let (old, node) = (self.newest, self.pairs[p as usize].node);
        let node_old = self.nodes[node as usize].newest;
        {
            let pair = &mut self.pairs[p as usize];
            pair.newer = NIL;
            pair.older = old;
            pair.node_newer = NIL;
            pair.node_older = node_old;
        }
        match old {
            NIL => self.oldest = p,
            o => self.pairs[o as usize].newer = p,
        }
        self.newest = p;
        let list = &mut self.nodes[node as usize];
        match node_old {
            NIL => list.oldest = p,
            o => self.pairs[o as usize].node_newer = p,
        }
        self.nodes[node as usize].newest = p;
    }

    fn touch(&mut self, p: u32, tick: u64) {
        self.pairs[p as usize].tick = tick;
        let node = self.pairs[p as usize].node as usize;
        if self.newest != p || self.nodes[node].newest != p {
            self.unlink(p);
            self.push_newest(p);
        }
    }

    /// Adds a pair; `false` (nothing added) if memory for it is short.
    fn insert(&mut self, hash: u64, node: u32, tick: u64, max: usize) -> bool {
        let slot = node as usize;
        if self.nodes.len() <= slot && self.nodes.try_reserve(slot + 1).is_err() {
            return false;
        }
        if self.nodes.len() <= slot {
            self.nodes.resize(slot + 1, EMPTY);
        }
        if self.free == NIL && self.pairs.len() == self.pairs.capacity() {
            let room = max.saturating_sub(self.pairs.len()).max(1);
            let more = self.pairs.capacity().max(64).min(room);
            if self.pairs.try_reserve_exact(more).is_err()
                || self.table.try_reserve(1, |e| e.0).is_err()
            {
                return false;
            }
        } else if self.table.try_reserve(1, |e| e.0).is_err() {
            return false;
        }
        let chain = self.chain_of(hash);
        let pair = Pair {
            hash,
            tick,
            node,
            newer: NIL,
            older: NIL,
            node_newer: NIL,
            node_older: NIL,
            chain,
        };
        let p = if self.free != NIL {
            let p = self.free;
            self.free = self.pairs[p as usize].older;
            self.pairs[p as usize] = pair;
            p
        } else {
            self.pairs.push(pair);
            (self.pairs.len() - 1) as u32
        };
        if chain == NIL {
            self.table.insert_unique(hash, (hash, p), |e| e.0);
        } else if let Some(e) = self.table.find_mut(hash, |e| e.0 == hash) {
            e.1 = p;
        }
        self.push_newest(p);
        self.nodes[slot].len += 1;
        self.len += 1;
        true
    }

    /// Takes pair `p` out of its chain, its lists and the counts.
    fn remove(&mut self, p: u32) {
        let Pair {
            hash, node, chain, ..
        } = self.pairs[p as usize];
        let head = self.chain_of(hash);
        if head == p {
            if chain == NIL {
                if let Ok(e) = self.table.find_entry(hash, |e| e.0 == hash) {
                    e.remove();
                }
            } else if let Some(e) = self.table.find_mut(hash, |e| e.0 == hash) {
                e.1 = chain;
            }
        } else {
            let mut q = head;
            while q != NIL && self.pairs[q as usize].chain != p {
                q = self.pairs[q as usize].chain;
            }
            if q != NIL {
                self.pairs[q as usize].chain = chain;
            }
        }
        self.unlink(p);
        self.nodes[node as usize].len -= 1;
        self.pairs[p as usize].older = self.free;
        self.free = p;
        self.len -= 1;
    }

    /// Removes pair `p`, compacting the shard when it has shrunk far below
    /// its room. Returns the pair's node slot.
    fn drop_pair(&mut self, p: u32) -> u32 {
        let node = self.pairs[p as usize].node;
        self.remove(p);
        if self.len * 4 < self.pairs.capacity() && self.pairs.capacity() > COMPACT_ABOVE {
            self.compact();
        }
        node
    }

    /// Evicts the least recently used pair and returns its node slot;
    /// `None` if the shard is empty.
    fn evict_oldest(&mut self) -> Option<u32> {
        (self.oldest != NIL).then(|| self.drop_pair(self.oldest))
    }

    /// Evicts node `slot`'s least recently used pair; `false` if it has none
    /// here.
    fn evict_node_oldest(&mut self, slot: u32) -> bool {
        let oldest = self.list(slot).oldest;
        if oldest == NIL {
            return false;
        }
        self.drop_pair(oldest);
        true
    }

    /// Removes the pair of `hash` held by node `slot`; `false` if there is
    /// none.
    pub(super) fn forget_block(&mut self, hash: u64, slot: u32) -> bool {
        let p = self.find(hash, slot);
        if p == NIL {
            return false;
        }
        self.drop_pair(p);
        true
    }

    /// Rebuilds the shard at its present size, so memory freed by evictions
    /// elsewhere in the cluster is given back. Inserting in the shard's
    /// order keeps every node's order too (a touch moves a pair to the
    /// front of both lists at once).
    fn compact(&mut self) {
        let mut fresh = Shard::new();
        if fresh.pairs.try_reserve_exact(self.len * 2).is_err() {
            return;
        }
        let mut p = self.oldest;
        while p != NIL {
            let pair = self.pairs[p as usize];
            if !fresh.insert(pair.hash, pair.node, pair.tick, usize::MAX) {
                return;
            }
            p = pair.newer;
        }
        *self = fresh;
    }

    /// Drops every pair of node `slot`. Returns how many went.
    pub(super) fn purge(&mut self, slot: u32) -> usize {
        let mut gone = 0;
        while self.evict_node_oldest(slot) {
            gone += 1;
        }
        gone
    }

    fn oldest_tick(&self) -> u64 {
        match self.oldest {
            NIL => u64::MAX,
            p => self.pairs[p as usize].tick,
        }
    }

    fn node_oldest_tick(&self, slot: u32) -> u64 {
        match self.list(slot).oldest {
            NIL => u64::MAX,
            p => self.pairs[p as usize].tick,
        }
    }

    fn bytes(&self) -> usize {
        self.pairs.capacity() * size_of::<Pair>()
            + self.table.capacity() * (size_of::<(u64, u32)>() + 1)
            + self.nodes.capacity() * size_of::<List>()
    }
}

struct Cell {
    shard: Mutex<Shard>,
    /// The tick of the shard's least recently used pair (`u64::MAX` if empty).
    oldest: AtomicU64,
}

/// A shard, locked, with the index it belongs to.
pub(super) struct Locked<'a> {
    index: &'a Index,
    at: usize,
    pub(super) shard: MutexGuard<'a, Shard>,
}

/// Counts of the index as a whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexStats {
    /// Pairs held, per node slot.
    pub per_slot: Vec<u64>,
    pub blocks: u64,
    pub max_blocks: u64,
    pub evictions: u64,
    /// Memory held by the index's tables, in bytes.
    pub bytes: u64,
}

/// Per node slot, what picks read and keep up without locking a shard:
/// pairs held (exact when built, then kept up by the picks that use it),
/// the node's capacity (0: none), and for each shard the tick of the
/// node's oldest pair there.
#[derive(Debug, Default)]
pub struct Tally {
    sizes: Box<[AtomicI64]>,
    caps: Box<[AtomicU64]>,
    oldest: Box<[AtomicU64]>,
    shards: usize,
}

impl Tally {
    /// Pairs recorded for node `slot`.
    pub(super) fn size(&self, slot: u32) -> i64 {
        self.sizes
            .get(slot as usize)
            .map_or(0, |s| s.load(Ordering::Relaxed))
            .max(0)
    }

    /// Node `slot`'s capacity in pairs (0: none).
    pub(super) fn cap(&self, slot: u32) -> u64 {
        self.caps
            .get(slot as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub(super) fn set_cap(&self, slot: u32, cap: u64) {
        if let Some(c) = self.caps.get(slot as usize) {
            c.store(cap, Ordering::Relaxed);
        }
    }

    /// Adds `by` to the size of node `slot`, if the tally has it (a slot of
    /// a node added since it was built is counted from the next build).
    fn count(&self, slot: u32, by: i64) {
        if let Some(size) = self.sizes.get(slot as usize) {
            size.fetch_add(by, Ordering::Relaxed);
        }
    }

    fn reset(&self, slot: u32) {
        if let Some(size) = self.sizes.get(slot as usize) {
            size.store(0, Ordering::Relaxed);
        }
    }

    fn oldest_at(&self, slot: u32, at: usize) -> Option<&AtomicU64> {
        self.oldest.get(slot as usize * self.shards + at)
    }

    /// The shard holding node `slot`'s oldest pair, by the published ticks.
    fn oldest_shard(&self, slot: u32) -> Option<usize> {
        let base = slot as usize * self.shards;
        let ticks = self.oldest.get(base..base + self.shards)?;
        let (at, tick) = ticks
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, t)| t)?;
        (tick != u64::MAX).then_some(at)
    }
}

pub(super) struct Index {
    cells: Box<[Cell]>,
    total: AtomicUsize,
    max: usize,
    clock: AtomicU64,
    evictions: AtomicU64,
}

impl Index {
    pub(super) fn new(shards: usize, max: usize) -> Self {
        let cells = (0..shards.max(1))
            .map(|_| Cell {
                shard: Mutex::new(Shard::new()),
                oldest: AtomicU64::new(u64::MAX),
            })
            .collect();
        Self {
            cells,
            total: AtomicUsize::new(0),
            max,
            clock: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn cell_of(&self, first: u64) -> usize {
        (((first >> 32) * self.cells.len() as u64) >> 32) as usize
    }

    fn lock_at(&self, at: usize) -> Locked<'_> {
        Locked {
            index: self,
            at,
            // Nothing under this lock can panic halfway through a change (no
            // index is unchecked and no allocation aborts: both are
            // fallible), so a poisoned shard still holds consistent data.
            shard: self.cells[at]
                .shard
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Locks the shard that holds the blocks of a prompt whose first block
    /// hashes to `first`.
    pub(super) fn lock(&self, first: u64) -> Locked<'_> {
        self.lock_at(self.cell_of(first))
    }

    pub(super) fn stats(&self) -> IndexStats {
        let mut out = IndexStats {
            max_blocks: self.max as u64,
            evictions: self.evictions.load(Ordering::Relaxed),
            ..IndexStats::default()
        };
        for cell in self.cells.iter() {
            let shard = cell.shard.lock().unwrap_or_else(|e| e.into_inner());
            if out.per_slot.len() < shard.nodes.len() {
                out.per_slot.resize(shard.nodes.len(), 0);
            }
            for (total, list) in out.per_slot.iter_mut().zip(&shard.nodes) {
                *total += list.len;
            }
            out.blocks += shard.len as u64;
            out.bytes += shard.bytes() as u64;
        }
        out
    }

    /// A tally of `caps.len()` node slots, with their sizes and oldest
    /// ticks read from every shard.
    pub(super) fn tally(&self, caps: &[u64]) -> Tally {
        let shards = self.cells.len();
        let slots = caps.len();
        let tally = Tally {
            sizes: (0..slots).map(|_| AtomicI64::new(0)).collect(),
            caps: caps.iter().map(|&c| AtomicU64::new(c)).collect(),
            oldest: (0..slots * shards)
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
            shards,
        };
        for (at, cell) in self.cells.iter().enumerate() {
            let shard = cell.shard.lock().unwrap_or_else(|e| e.into_inner());
            for slot in 0..slots.min(shard.nodes.len()) {
                tally.count(slot as u32, shard.nodes[slot].len as i64);
                if let Some(t) = tally.oldest_at(slot as u32, at) {
                    t.store(shard.node_oldest_tick(slot as u32), Ordering::Relaxed);
                }
            }
        }
        tally
    }

    /// Drops the pairs of node `slot` from every shard.
    pub(super) fn purge(&self, slot: u32, tally: Option<&Tally>) {
        for at in 0..self.cells.len() {
            let mut locked = self.lock_at(at);
            let gone = locked.shard.purge(slot);
            self.total.fetch_sub(gone, Ordering::Relaxed);
            locked.publish(slot, tally);
        }
        if let Some(tally) = tally {
            tally.reset(slot);
        }
    }
}

impl Locked<'_> {
    /// Records that node `slot` now holds every block of `hashes`. The last
    /// block is recorded first, so a prompt's first blocks are the most
    /// recent and are evicted last: what stays is always a prefix.
    ///
    /// `tally` follows the pairs added and evicted: the placement of new
    /// prefixes reads it without locking any shard. When `capped`, a node
    /// at its capacity gives up its oldest pair for each one added (what a
    /// server reports holding is recorded uncapped: it evicts on its own).
    pub(super) fn record(&mut self, hashes: &[u64], slot: u32, tally: &Tally, capped: bool) {
        let tick = self.index.clock.fetch_add(1, Ordering::Relaxed);
        for &hash in hashes.iter().rev() {
            let p = self.shard.find(hash, slot);
            if p != NIL {
                self.shard.touch(p, tick);
                continue;
            }
            let cap = tally.cap(slot);
            // Down to one under the capacity: a record whose capacity was
            // lowered shrinks to it. Each eviction takes a real pair, so
            // the loop ends.
            while capped && cap > 0 && tally.size(slot) as u64 >= cap {
                if !self.evict_node(slot, tally) {
                    break;
                }
            }
            if !self.reserve(tally) {
                break;
            }
            if self.shard.insert(hash, slot, tick, self.index.max) {
                tally.count(slot, 1);
            } else {
                self.index.total.fetch_sub(1, Ordering::Relaxed);
                break;
            }
        }
        self.publish(slot, Some(tally));
    }

    /// Forgets that node `slot` holds `hash`; `false` if it was not recorded.
    pub(super) fn forget(&mut self, hash: u64, slot: u32, tally: &Tally) -> bool {
        if !self.shard.forget_block(hash, slot) {
            return false;
        }
        self.index.total.fetch_sub(1, Ordering::Relaxed);
        tally.count(slot, -1);
        self.publish(slot, Some(tally));
        true
    }

    /// Publishes this shard's oldest tick, and node `slot`'s here.
    fn publish(&self, slot: u32, tally: Option<&Tally>) {
        self.index.cells[self.at]
            .oldest
            .store(self.shard.oldest_tick(), Ordering::Relaxed);
        if let Some(t) = tally.and_then(|t| t.oldest_at(slot, self.at)) {
            t.store(self.shard.node_oldest_tick(slot), Ordering::Relaxed);
        }
    }

    /// Takes one unit of the budget, evicting the record's oldest pair if
    /// it is spent. `false` when nothing could be evicted (this shard is
    /// empty and the shard holding the oldest pair was busy).
    fn reserve(&mut self, tally: &Tally) -> bool {
        let index = self.index;
        loop {
            let used = index.total.load(Ordering::Relaxed);
            if used < index.max {
                if index
                    .total
                    .compare_exchange_weak(used, used + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            if !self.evict_one(tally) {
                return false;
            }
        }
    }

    /// Counts one pair of node `node` evicted from the shard at `at`.
    fn evicted(&self, node: u32, tally: &Tally) {
        self.index.total.fetch_sub(1, Ordering::Relaxed);
        self.index.evictions.fetch_add(1, Ordering::Relaxed);
        tally.count(node, -1);
    }

    fn evict_one(&mut self, tally: &Tally) -> bool {
        let index = self.index;
        let own = self.shard.oldest_tick();
        let victim = index
            .cells
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != self.at)
            .map(|(i, c)| (c.oldest.load(Ordering::Relaxed), i))
            .min();
        if let Some((tick, at)) = victim {
            if tick < own {
                if let Ok(shard) = index.cells[at].shard.try_lock() {
                    let mut other = Locked { index, at, shard };
                    if let Some(node) = other.shard.evict_oldest() {
                        other.evicted(node, tally);
                        other.publish(node, Some(tally));
                        return true;
                    }
                }
            }
        }
        let Some(node) = self.shard.evict_oldest() else {
            return false;
        };
        self.evicted(node, tally);
        self.publish(node, Some(tally));
        true
    }

    /// Evicts node `slot`'s oldest pair, wherever it is; `false` if none
    /// could be (the node has none, or its oldest is in a busy shard and
    /// this one has none of it).
    fn evict_node(&mut self, slot: u32, tally: &Tally) -> bool {
        let index = self.index;
        if let Some(at) = tally.oldest_shard(slot).filter(|&at| at != self.at) {
            if let Ok(shard) = index.cells[at].shard.try_lock() {
                let mut other = Locked { index, at, shard };
                if other.shard.evict_node_oldest(slot) {
                    other.evicted(slot, tally);
                    other.publish(slot, Some(tally));
                    return true;
                }
                other.publish(slot, Some(tally));
            }
        }
        if !self.shard.evict_node_oldest(slot) {
            return false;
        }
        self.evicted(slot, tally);
        self.publish(slot, Some(tally));
        true
    }
}
