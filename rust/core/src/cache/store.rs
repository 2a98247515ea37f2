//! Entry storage shared by every policy: a slab of slots addressed by `u32`
//! index, a hash table of indices, and intrusive doubly linked lists threaded
//! through the slots. A policy only moves indices between its lists; it never
//! owns keys or values.

use hashbrown::HashTable;

/// The "no slot" index: ends of lists and the end of the free list.
pub(crate) const NIL: u32 = u32::MAX;

pub(crate) struct Slot<K, V> {
    /// `None` while the slot is on the free list.
    pub entry: Option<(K, V)>,
    pub hash: u64,
    /// Monotonic nanoseconds after which the entry is dead (its TTL); 0
    /// means never.
    pub expires: u64,
    /// Time-to-idle in nanoseconds; 0 means none.
    pub idle: u64,
    /// When the entry dies unless it is read or written first: its last use
    /// plus `idle` (0 without a time-to-idle).
    pub idle_at: u64,
    pub prev: u32,
    pub next: u32,
    /// The entry's share of the capacity: 1 unless the cache has a weigher.
    pub weight: u32,
    /// Which of the policy's lists holds the slot.
    pub queue: u8,
    /// Policy-specific small counter (LFU frequency).
    pub freq: u8,
}

impl<K, V> Slot<K, V> {
    /// When the entry dies: the earlier of its TTL and its idle deadline,
    /// 0 if it has neither.
    #[inline(always)]
    pub fn deadline(&self) -> u64 {
        match (self.expires, self.idle_at) {
            (0, idle) => idle,
            (ttl, 0) => ttl,
            (ttl, idle) => ttl.min(idle),
        }
    }
}

pub(crate) struct Store<K, V> {
    pub slots: Vec<Slot<K, V>>,
    table: HashTable<u32>,
    free: u32,
    len: usize,
}

impl<K, V> Store<K, V> {
    pub fn new() -> Self {
        Store {
            slots: Vec::new(),
            table: HashTable::new(),
            free: NIL,
            len: 0,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The slot holding a key equal to the probe, if any.
    #[inline(always)]
    pub fn find(&self, hash: u64, mut eq: impl FnMut(&K) -> bool) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(hash, |&i| {
                let slot = &slots[i as usize];
                slot.hash == hash && matches!(&slot.entry, Some((k, _)) if eq(k))
            })
            .copied()
    }

    /// Stores a key known to be absent and returns its slot. The slot is not
    /// on any list yet and has no deadline.
    pub fn insert(&mut self, hash: u64, key: K, value: V, weight: u32) -> u32 {
        let slot = Slot {
            entry: Some((key, value)),
            hash,
            expires: 0,
            idle: 0,
            idle_at: 0,
            prev: NIL,
            next: NIL,
            weight,
            queue: 0,
            freq: 0,
        };
        let index = if self.free == NIL {
            self.slots.push(slot);
            (self.slots.len() - 1) as u32
        } else {
            let index = self.free;
            let reused = &mut self.slots[index as usize];
            self.free = reused.next;
            *reused = slot;
            index
        };
        let slots = &self.slots;
        self.table
            .insert_unique(hash, index, |&i| slots[i as usize].hash);
        self.len += 1;
        index
    }

    /// Takes the entry out of the table and frees its slot. The caller has
    /// already unlinked it from its policy list.
    pub fn remove(&mut self, index: u32) -> (K, V) {
        let slot = &mut self.slots[index as usize];
        let hash = slot.hash;
        if let Ok(found) = self.table.find_entry(hash, |&i| i == index) {
            found.remove();
        }
        let entry = slot.entry.take();
        slot.expires = 0;
        slot.idle = 0;
        slot.idle_at = 0;
        slot.next = self.free;
        slot.prev = NIL;
        self.free = index;
        self.len -= 1;
        // Every index reachable from the table or a list is occupied; the
        // bindings never see an empty slot.
        entry.expect("a linked slot holds an entry")
    }

    /// Moves every entry out, leaving an empty store that keeps its memory.
    pub fn drain(&mut self) -> impl Iterator<Item = (K, V)> + '_ {
        self.table.clear();
        self.free = NIL;
        self.len = 0;
        self.slots.drain(..).filter_map(|slot| slot.entry)
    }

    /// Occupied slots, in slot order.
    pub fn occupied(&self) -> impl Iterator<Item = (u32, &Slot<K, V>)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.entry.is_some())
            .map(|(i, s)| (i as u32, s))
    }

    /// Bytes of memory held per slot and per table bucket, for reporting.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot<K, V>>()
            + self.table.capacity() * (std::mem::size_of::<u32>() + 1)
    }
}

/// An intrusive doubly linked list of slots: `head` is the most recently
/// used end, `tail` the end a policy evicts from. It keeps the sum of its
/// entries' weights as well as their count.
#[derive(Clone, Copy, Debug)]
pub(crate) struct List {
    pub head: u32,
    pub tail: u32,
    pub len: usize,
    pub weight: u64,
}

impl List {
    pub const fn new() -> Self {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
            weight: 0,
        }
    }

    #[inline]
    pub fn back(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }

    #[inline]
    pub fn push_front<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32, queue: u8) {
        let old_head = self.head;
        {
            let slot = &mut slots[index as usize];
            slot.prev = NIL;
            slot.next = old_head;
            slot.queue = queue;
            self.weight += u64::from(slot.weight);
        }
        if old_head == NIL {
            self.tail = index;
        } else {
            slots[old_head as usize].prev = index;
        }
        self.head = index;
        self.len += 1;
    }

    #[inline]
    pub fn unlink<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32) {
        let (prev, next) = {
            let slot = &slots[index as usize];
            self.weight -= u64::from(slot.weight);
            (slot.prev, slot.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            slots[next as usize].prev = prev;
        }
        self.len -= 1;
    }

    #[inline]
    pub fn move_to_front<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32) {
        if self.head != index {
            let queue = slots[index as usize].queue;
            self.unlink(slots, index);
            self.push_front(slots, index, queue);
        }
    }

    /// Unlinks the tail and returns it.
    #[inline]
    pub fn pop_back<K, V>(&mut self, slots: &mut [Slot<K, V>]) -> Option<u32> {
        let tail = self.back()?;
        self.unlink(slots, tail);
        Some(tail)
    }

    /// Indices from head to tail.
    #[cfg(test)]
    pub fn iter<'a, K, V>(&self, slots: &'a [Slot<K, V>]) -> impl Iterator<Item = u32> + 'a {
        let mut at = self.head;
        std::iter::from_fn(move || {
            if at == NIL {
                return None;
            }
            let here = at;
            at = slots[here as usize].next;
            Some(here)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_lists_keep_order() {
        let mut store: Store<u32, u32> = Store::new();
        let mut list = List::new();
        for k in 0..4u32 {
            let i = store.insert(u64::from(k) * 7919, k, k * 10, 1);
            list.push_front(&mut store.slots, i, 0);
        }
        assert_eq!(
            list.iter(&store.slots).collect::<Vec<_>>(),
            vec![3, 2, 1, 0]
        );
        list.move_to_front(&mut store.slots, 0);
        assert_eq!(
            list.iter(&store.slots).collect::<Vec<_>>(),
            vec![0, 3, 2, 1]
        );
        let tail = list.pop_back(&mut store.slots).unwrap();
        assert_eq!(store.remove(tail), (1, 10));
        assert_eq!(store.find(7919, |k| *k == 1), None);
        let reused = store.insert(99, 9, 90, 1);
        assert_eq!(reused, 1, "the freed slot is reused");
        assert_eq!(store.find(99, |k| *k == 9), Some(1));
        assert_eq!(store.len(), 4);
    }
}
