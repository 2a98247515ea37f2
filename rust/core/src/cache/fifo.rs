//! First in, first out: entries leave in the order they arrived; a hit
//! changes nothing (and so takes no write to the list). Replacing a value
//! keeps the entry's place.

use super::store::{List, Slot};

pub(crate) struct Fifo {
    list: List,
}

impl Fifo {
    pub fn new() -> Self {
        Fifo { list: List::new() }
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

    pub fn clear(&mut self) {
        self.list = List::new();
    }
}
