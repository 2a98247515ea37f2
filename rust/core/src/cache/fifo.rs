//! First in, first out: entries leave in the order they arrived. It is the
//! LRU list without the move on access: the shard never calls `on_access`
//! for this policy, so a hit takes no write to the list, and replacing a
//! value keeps the entry's place.

pub(crate) type Fifo = super::lru::Lru;
