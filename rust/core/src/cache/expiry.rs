//! The queue of entries that carry a TTL: a min-heap of (deadline, slot).
//!
//! Heap items are never removed in place: when an entry is deleted, replaced
//! or given a new deadline, its old item stays and is recognised as stale when
//! it surfaces (the slot is empty or holds a different deadline). Two entries
//! that share a deadline and a slot are the same case: expiring whichever
//! holds the slot at that deadline is right. Stale items are bounded: when
//! they outnumber the live ones by two to one the heap is rebuilt from the
//! slots, which costs O(n) once per O(n) writes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::store::Slot;

pub(crate) struct ExpiryQueue {
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    /// Entries currently holding a deadline.
    pub live: usize,
}

impl ExpiryQueue {
    pub fn new() -> Self {
        ExpiryQueue {
            heap: BinaryHeap::new(),
            live: 0,
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn schedule<K, V>(&mut self, slots: &[Slot<K, V>], deadline: u64, index: u32) {
        self.heap.push(Reverse((deadline, index)));
        if self.heap.len() > 2 * self.live + 64 {
            self.rebuild(slots);
        }
    }

    /// The next slot whose deadline is at or before `now`, skipping stale
    /// items.
    pub fn pop_due<K, V>(&mut self, slots: &[Slot<K, V>], now: u64) -> Option<u32> {
        while let Some(&Reverse((deadline, index))) = self.heap.peek() {
            if deadline > now {
                return None;
            }
            self.heap.pop();
            let slot = &slots[index as usize];
            if slot.entry.is_some() && slot.expires == deadline {
                return Some(index);
            }
        }
        None
    }

    fn rebuild<K, V>(&mut self, slots: &[Slot<K, V>]) {
        let items: Vec<_> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.entry.is_some() && s.expires != 0)
            .map(|(i, s)| Reverse((s.expires, i as u32)))
            .collect();
        self.live = items.len();
        self.heap = BinaryHeap::from(items);
    }

    pub fn clear(&mut self) {
        self.heap.clear();
        self.live = 0;
    }

    pub fn heap_bytes(&self) -> usize {
        self.heap.capacity() * std::mem::size_of::<Reverse<(u64, u32)>>()
    }
}
