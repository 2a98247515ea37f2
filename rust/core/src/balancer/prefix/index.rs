//! The record of which node was sent which prompt blocks.
//!
//! One entry per (block hash, node) pair, on one LRU list per shard; a table
//! maps each block hash to the chain of its pairs (one per node holding it).
//! A prompt's blocks all live in the shard chosen by its first block (the
//! chained hashes of prompts with different first blocks never meet), so a
//! pick locks one shard and picks for unrelated prompts run in parallel.
//!
//! The budget is global: `max` pairs across all shards, counted in one
//! atomic. A shard that needs room evicts the oldest pair of the cluster: each
//! shard publishes the tick of its least recently used pair, and the shard
//! with the oldest gives one up (taken with `try_lock`, so no pick ever waits
//! on a second shard; if it is busy, the picking shard evicts its own). Every
//! operation is O(1) per block, plus a walk of the block's chain, which is at
//! most one pair per node.

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
    /// Neighbours on the LRU list (towards the most and the least recent).
    newer: u32,
    older: u32,
    /// The next pair of the same block hash.
    chain: u32,
}

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
    /// Pairs per node slot.
    per_node: Vec<u64>,
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

    fn unlink(&mut self, p: u32) {
        let Pair { newer, older, .. } = self.pairs[p as usize];
        match newer {
            NIL => self.newest = older,
            n => self.pairs[n as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.pairs[o as usize].newer = newer,
        }
    }

    fn push_newest(&mut self, p: u32) {
        let old = self.newest;
        {
            let pair = &mut self.pairs[p as usize];
            pair.newer = NIL;
            pair.older = old;
        }
        match old {
            NIL => self.oldest = p,
            o => self.pairs[o as usize].newer = p,
        }
        self.newest = p;
    }

    fn touch(&mut self, p: u32, tick: u64) {
        self.pairs[p as usize].tick = tick;
        if self.newest != p {
            self.unlink(p);
            self.push_newest(p);
        }
    }

    /// Adds a pair; `false` (nothing added) if memory for it is short.
    fn insert(&mut self, hash: u64, node: u32, tick: u64, max: usize) -> bool {
        let slot = node as usize;
        if self.per_node.len() <= slot && self.per_node.try_reserve(slot + 1).is_err() {
            return false;
        }
        if self.per_node.len() <= slot {
            self.per_node.resize(slot + 1, 0);
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
        self.per_node[slot] += 1;
        self.len += 1;
        true
    }

    /// Takes pair `p` out of its chain, the LRU list and the counts.
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
        self.per_node[node as usize] -= 1;
        self.pairs[p as usize].older = self.free;
        self.free = p;
        self.len -= 1;
    }

    /// Evicts the least recently used pair and returns its node slot;
    /// `None` if the shard is empty.
    fn evict_oldest(&mut self) -> Option<u32> {
        if self.oldest == NIL {
            return None;
        }
        let node = self.pairs[self.oldest as usize].node;
        self.remove(self.oldest);
        if self.len * 4 < self.pairs.capacity() && self.pairs.capacity() > COMPACT_ABOVE {
            self.compact();
        }
        Some(node)
    }

    /// Rebuilds the shard at its present size, so memory freed by evictions
    /// elsewhere in the cluster is given back.
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
        let mut p = self.oldest;
        while p != NIL {
            let next = self.pairs[p as usize].newer;
            if self.pairs[p as usize].node == slot {
                self.remove(p);
                gone += 1;
            }
            p = next;
        }
        gone
    }

    fn oldest_tick(&self) -> u64 {
        match self.oldest {
            NIL => u64::MAX,
            p => self.pairs[p as usize].tick,
        }
    }

    fn bytes(&self) -> usize {
        self.pairs.capacity() * size_of::<Pair>()
            + self.table.capacity() * (size_of::<(u64, u32)>() + 1)
            + self.per_node.capacity() * size_of::<u64>()
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

    /// Locks the shard that holds the blocks of a prompt whose first block
    /// hashes to `first`.
    pub(super) fn lock(&self, first: u64) -> Locked<'_> {
        let at = (((first >> 32) * self.cells.len() as u64) >> 32) as usize;
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

    pub(super) fn stats(&self) -> IndexStats {
        let mut out = IndexStats {
            max_blocks: self.max as u64,
            evictions: self.evictions.load(Ordering::Relaxed),
            ..IndexStats::default()
        };
        for cell in self.cells.iter() {
            let shard = cell.shard.lock().unwrap_or_else(|e| e.into_inner());
            if out.per_slot.len() < shard.per_node.len() {
                out.per_slot.resize(shard.per_node.len(), 0);
            }
            for (total, n) in out.per_slot.iter_mut().zip(&shard.per_node) {
                *total += n;
            }
            out.blocks += shard.len as u64;
            out.bytes += shard.bytes() as u64;
        }
        out
    }

    /// Pairs held per node slot (`slots` of them), counted exactly.
    pub(super) fn sizes(&self, slots: usize) -> Box<[AtomicI64]> {
        let sizes: Box<[AtomicI64]> = (0..slots).map(|_| AtomicI64::new(0)).collect();
        for cell in self.cells.iter() {
            let shard = cell.shard.lock().unwrap_or_else(|e| e.into_inner());
            for (size, &n) in sizes.iter().zip(&shard.per_node) {
                size.fetch_add(n as i64, Ordering::Relaxed);
            }
        }
        sizes
    }

    /// Drops the pairs of node `slot` from every shard.
    pub(super) fn purge(&self, slot: u32) {
        for cell in self.cells.iter() {
            let mut shard = cell.shard.lock().unwrap_or_else(|e| e.into_inner());
            let gone = shard.purge(slot);
            cell.oldest.store(shard.oldest_tick(), Ordering::Relaxed);
            self.total.fetch_sub(gone, Ordering::Relaxed);
        }
    }
}

impl Locked<'_> {
    /// Records that node `slot` now holds every block of `hashes`. The last
    /// block is recorded first, so a prompt's first blocks are the most
    /// recent and are evicted last: what stays is always a prefix.
    ///
    /// `sizes` (per node slot) follows the pairs added and evicted: the
    /// placement of new prefixes reads it without locking any shard.
    pub(super) fn record(&mut self, hashes: &[u64], slot: u32, sizes: &[AtomicI64]) {
        let tick = self.index.clock.fetch_add(1, Ordering::Relaxed);
        for &hash in hashes.iter().rev() {
            let p = self.shard.find(hash, slot);
            if p != NIL {
                self.shard.touch(p, tick);
            } else if !self.reserve(sizes) {
                break;
            } else if self.shard.insert(hash, slot, tick, self.index.max) {
                count(sizes, slot, 1);
            } else {
                self.index.total.fetch_sub(1, Ordering::Relaxed);
                break;
            }
        }
        self.publish();
    }

    fn publish(&self) {
        self.index.cells[self.at]
            .oldest
            .store(self.shard.oldest_tick(), Ordering::Relaxed);
    }

    /// Takes one unit of the budget, evicting the cluster's oldest pair if
    /// it is spent. `false` when nothing could be evicted (this shard is
    /// empty and the shard holding the oldest pair was busy).
    fn reserve(&mut self, sizes: &[AtomicI64]) -> bool {
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
            match self.evict_one() {
                Some(node) => count(sizes, node, -1),
                None => return false,
            }
        }
    }

    fn evict_one(&mut self) -> Option<u32> {
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
                if let Ok(mut other) = index.cells[at].shard.try_lock() {
                    if let Some(node) = other.evict_oldest() {
                        index.cells[at]
                            .oldest
                            .store(other.oldest_tick(), Ordering::Relaxed);
                        index.total.fetch_sub(1, Ordering::Relaxed);
                        index.evictions.fetch_add(1, Ordering::Relaxed);
                        return Some(node);
                    }
                }
            }
        }
        let node = self.shard.evict_oldest()?;
        index.total.fetch_sub(1, Ordering::Relaxed);
        index.evictions.fetch_add(1, Ordering::Relaxed);
        self.publish();
        Some(node)
    }
}

/// Adds `by` to the size of node `slot`, if the table has it (a slot of a
/// node added since the table was built is counted from the next build).
fn count(sizes: &[AtomicI64], slot: u32, by: i64) {
    if let Some(size) = sizes.get(slot as usize) {
        size.fetch_add(by, Ordering::Relaxed);
    }
}
