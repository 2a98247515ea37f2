//! The queue of entries that carry a deadline (a TTL, a time-to-idle or
//! both): a min-heap of (time, slot).
//!
//! Heap items are never removed or moved in place. An item that surfaces is
//! checked against its slot as it is now: an empty slot, or one with no
//! deadline, makes it stale; a deadline that has passed expires the entry
//! (whichever entry holds the slot: it is dead either way); a deadline still
//! ahead (a read pushed the idle deadline back, or a write set a new one)
//! puts the slot back in the heap at that time. So a read of an entry with a
//! time-to-idle only stores the new idle deadline; the heap learns of it
//! when the old item surfaces. Stale items are bounded: when they outnumber
//! the live ones by two to one the heap is rebuilt from the slots, which
//! costs O(n) once per O(n) writes.

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
    /// items and rescheduling slots whose deadline moved later.
    pub fn pop_due<K, V>(&mut self, slots: &[Slot<K, V>], now: u64) -> Option<u32> {
        while let Some(&Reverse((at, index))) = self.heap.peek() {
            if at > now {
                return None;
            }
            self.heap.pop();
            let slot = &slots[index as usize];
            if slot.entry.is_none() {
                continue;
            }
            match slot.deadline() {
                0 => {}
                due if due <= now => return Some(index),
                later => self.heap.push(Reverse((later, index))),
            }
        }
        None
    }

    fn rebuild<K, V>(&mut self, slots: &[Slot<K, V>]) {
        let items: Vec<_> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.entry.is_some() && s.deadline() != 0)
            .map(|(i, s)| Reverse((s.deadline(), i as u32)))
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
