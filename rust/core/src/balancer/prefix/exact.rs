//! Exact mode: the record kept by the servers' own KV events.
//!
//! A server names its blocks by its own hashes (vLLM's are salted per
//! process, or sha256 of its own encoding), which a router cannot compute
//! from a prompt. A `BlockStored` event carries each block's token ids and
//! its parent's hash, so the router hashes the tokens its own way (the
//! chained hashes of [`super::blocks`], which is what a pick computes from
//! the same tokens) and keeps, per node, a map from the server's hash to
//! its own: `BlockRemoved` then finds the pair to forget, and a later
//! `BlockStored` finds the hash its chain continues from. A block whose
//! parent the map does not know cannot be placed in a prompt and is
//! skipped (counted as orphaned). `AllBlocksCleared` forgets the node.
//!
//! The maps hold at most `max` entries in all (the record's own budget); a
//! server that stores more than that without removing any leaves the rest
//! unmapped (counted).

use std::collections::HashMap;
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// What KV events did to the record, in all or in one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Batches applied, and batches refused whole (malformed bytes).
    pub batches: u64,
    pub refused: u64,
    /// Blocks recorded as stored, and forgotten as removed.
    pub stored: u64,
    pub removed: u64,
    /// `AllBlocksCleared` events.
    pub cleared: u64,
    /// Blocks of events that do not describe the device cache a prompt's
    /// tokens can match (another medium or KV group, a LoRA adapter,
    /// multimodal keys), or of another block size, or with the wrong
    /// number of tokens.
    pub ignored: u64,
    /// Stored blocks whose parent the router does not know, and removed
    /// blocks it never knew.
    pub orphaned: u64,
    pub unknown_removed: u64,
    /// Stored blocks left unmapped because the maps were full.
    pub unmapped: u64,
}

impl EventCounts {
    fn fields(&self) -> [u64; 9] {
        [
            self.batches,
            self.refused,
            self.stored,
            self.removed,
            self.cleared,
            self.ignored,
            self.orphaned,
            self.unknown_removed,
            self.unmapped,
        ]
    }
}

/// A server block as the router knows it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mapped {
    /// The router's hash of the block (its chained prefix).
    pub ours: u64,
    /// The router's hash of the chain's first block: the record's shard.
    pub root: u64,
    /// The block's position in its prompt, from 1.
    pub depth: u32,
}

pub(super) type EngineMap = HashMap<u64, Mapped>;

/// The maps of every node that sends events, and the counts.
#[derive(Debug)]
pub(super) struct Engines {
    nodes: Mutex<HashMap<Box<str>, EngineMap>>,
    entries: AtomicUsize,
    max: usize,
    totals: [AtomicU64; 9],
}

/// The maps, locked.
pub(super) struct Maps<'a> {
    engines: &'a Engines,
    nodes: MutexGuard<'a, HashMap<Box<str>, EngineMap>>,
}

impl Engines {
    pub(super) fn new(max: usize) -> Self {
        Self {
            nodes: Mutex::new(HashMap::new()),
            entries: AtomicUsize::new(0),
            max,
            totals: Default::default(),
        }
    }

    pub(super) fn lock(&self) -> Maps<'_> {
        Maps {
            engines: self,
            // Nothing under this lock panics halfway through a change.
            nodes: self.nodes.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Forgets node `id`'s map.
    pub(super) fn drop_node(&self, id: &str) {
        self.lock().clear(id);
    }

    pub(super) fn add(&self, delta: &EventCounts) {
        for (total, n) in self.totals.iter().zip(delta.fields()) {
            total.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(super) fn counts(&self) -> EventCounts {
        let t: Vec<u64> = self
            .totals
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        EventCounts {
            batches: t[0],
            refused: t[1],
            stored: t[2],
            removed: t[3],
            cleared: t[4],
            ignored: t[5],
            orphaned: t[6],
            unknown_removed: t[7],
            unmapped: t[8],
        }
    }

    /// Memory of the maps, roughly: their entries and the tables' slack.
    pub(super) fn bytes(&self) -> usize {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .values()
            .map(|m| m.capacity() * (size_of::<(u64, Mapped)>() + 1))
            .sum()
    }
}

impl Maps<'_> {
    pub(super) fn get(&self, id: &str, hash: u64) -> Option<Mapped> {
        self.nodes.get(id)?.get(&hash).copied()
    }

    /// Maps a server hash; `false` when the maps are full (nothing kept).
    pub(super) fn insert(&mut self, id: &str, hash: u64, block: Mapped) -> bool {
        let engines = self.engines;
        let map = self.nodes.entry(id.into()).or_default();
        if let Some(known) = map.get_mut(&hash) {
            *known = block;
            return true;
        }
        if engines.entries.load(Ordering::Relaxed) >= engines.max || map.try_reserve(1).is_err() {
            return false;
        }
        map.insert(hash, block);
        engines.entries.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub(super) fn remove(&mut self, id: &str, hash: u64) -> Option<Mapped> {
        let gone = self.nodes.get_mut(id)?.remove(&hash)?;
        self.engines.entries.fetch_sub(1, Ordering::Relaxed);
        Some(gone)
    }

    pub(super) fn clear(&mut self, id: &str) {
        if let Some(map) = self.nodes.remove(id) {
            self.engines.entries.fetch_sub(map.len(), Ordering::Relaxed);
        }
    }
}
