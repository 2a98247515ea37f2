//! Least frequently used, with aging.
//!
//! Each entry carries a use count from 1 to `MAX_FREQ`; entries of equal
//! count sit in one list per count, most recent first, and a bitmask says
//! which lists are non-empty, so the victim (the least recently used entry of
//! the lowest count) is found in O(1). Plain LFU never forgets: yesterday's
//! favourites keep their counts and today's keys are evicted first. So every
//! `AGING_PERIOD` × capacity hits, every count is halved (O(n), amortised to
//! O(1) per hit), and a shift in popularity is followed within a few periods.
//! (For a cache bounded by weight the capacity here is the number of entries
//! it has held at most, which is all the policy can know of its size.)

use super::store::{List, Slot, NIL};

pub(crate) const MAX_FREQ: u8 = 63;
const AGING_PERIOD: u64 = 10;

pub(crate) struct Lfu {
    /// `buckets[f]` holds the entries used `f` times; index 0 is unused.
    buckets: [List; MAX_FREQ as usize + 1],
    nonempty: u64,
    hits: u64,
    period: u64,
}

impl Lfu {
    pub fn new(capacity: usize) -> Self {
        Lfu {
            buckets: [List::new(); MAX_FREQ as usize + 1],
            nonempty: 0,
            hits: 0,
            period: (capacity as u64).max(1) * AGING_PERIOD,
        }
    }

    #[inline]
    fn push<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32, freq: u8) {
        slots[index as usize].freq = freq;
        self.buckets[freq as usize].push_front(slots, index, 0);
        self.nonempty |= 1 << freq;
    }

    #[inline]
    fn unlink<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32) -> u8 {
        let freq = slots[index as usize].freq;
        let bucket = &mut self.buckets[freq as usize];
        bucket.unlink(slots, index);
        if bucket.len == 0 {
            self.nonempty &= !(1 << freq);
        }
        freq
    }

    /// `times` uses in a row.
    #[inline]
    pub fn on_access<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32, times: u32) {
        let freq = self.unlink(slots, index);
        let add = u8::try_from(times).unwrap_or(MAX_FREQ);
        self.push(slots, index, freq.saturating_add(add).min(MAX_FREQ));
        self.hits += u64::from(times);
        if self.hits >= self.period {
            self.age(slots);
        }
    }

    #[inline]
    pub fn on_insert<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32) {
        self.push(slots, index, 1);
    }

    /// Ages every `AGING_PERIOD` × `keys` hits if that is longer.
    pub fn ensure_capacity(&mut self, keys: usize) {
        self.period = self.period.max(keys as u64 * AGING_PERIOD);
    }

    /// The list holding a slot, for a caller that changes its weight.
    pub fn list_of<K, V>(&mut self, slots: &[Slot<K, V>], index: u32) -> &mut List {
        &mut self.buckets[slots[index as usize].freq as usize]
    }

    #[inline]
    pub fn on_remove<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32) {
        self.unlink(slots, index);
    }

    /// The least recently used entry among those used least often.
    #[inline]
    pub fn victim(&self) -> Option<u32> {
        if self.nonempty == 0 {
            return None;
        }
        self.buckets[self.nonempty.trailing_zeros() as usize].back()
    }

    /// Halves every count. Lists are walked from the lowest count up and each
    /// from its tail, so within a new count the entries that had the higher
    /// count, and then the more recent ones, end up nearer the front.
    fn age<K, V>(&mut self, slots: &mut [Slot<K, V>]) {
        self.hits = 0;
        let old = std::mem::replace(&mut self.buckets, [List::new(); MAX_FREQ as usize + 1]);
        self.nonempty = 0;
        for freq in 1..=MAX_FREQ {
            // Walk the old list from its tail, reading each link before the
            // slot is relinked into its new list: no allocation.
            let mut at = old[freq as usize].tail;
            while at != NIL {
                let prev = slots[at as usize].prev;
                self.push(slots, at, (freq / 2).max(1));
                at = prev;
            }
        }
    }

    pub fn clear(&mut self) {
        self.buckets = [List::new(); MAX_FREQ as usize + 1];
        self.nonempty = 0;
        self.hits = 0;
    }
}
