//! Least recently used: one list; a hit moves the entry to the front and the
//! back is evicted.

use super::store::{List, Slot};

pub(crate) struct Lru {
    list: List,
}

impl Lru {
    pub fn new() -> Self {
        Lru { list: List::new() }
    }

    #[inline]
    pub fn on_access<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32) {
        self.list.move_to_front(slots, index);
    }

    #[inline]
    pub fn on_insert<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32) {
        self.list.push_front(slots, index, 0);
    }

    #[inline]
    pub fn on_remove<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32) {
        self.list.unlink(slots, index);
    }

    #[inline]
    pub fn victim(&self) -> Option<u32> {
        self.list.back()
    }

    /// The list holding a slot, for a caller that changes its weight.
    pub fn list_of(&mut self) -> &mut List {
        &mut self.list
    }

    pub fn clear(&mut self) {
        self.list = List::new();
    }
}
