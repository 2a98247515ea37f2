//! A sharded in-memory cache with a pluggable eviction policy, a capacity
//! counted in entries or in weight, and per-entry TTL and time-to-idle.
//!
//! The cache is generic over the key and value types and knows nothing of
//! Python. Callers pass a 64-bit hash and an equality test with every lookup,
//! so keys need neither `Hash` nor `Eq`.
//!
//! Design:
//! - `shards` independent shards, each behind its own lock (a one-flag spin
//!   lock, see `lock.rs`), selected by
//!   bits 24..56 of the hash (the hash table itself uses the low bits and the
//!   top 7). The capacity is split exactly: the shard sizes sum to it.
//! - Every value or key that leaves the cache while a shard is locked (an
//!   eviction, an expiry, a replaced value) is moved into the caller's
//!   [`Removed`] buffer instead of being dropped. The caller drops it, or
//!   hands it to a listener, after the lock is released: dropping a value
//!   can run arbitrary code in the embedding language, and that code may
//!   call back into the cache.
//! - Entries with a TTL or a time-to-idle sit in an expiry queue per shard.
//!   Expired entries are freed by every operation: a lookup that finds one
//!   removes it, every 64th operation on a shard sweeps a few due entries,
//!   and a full shard sweeps before it evicts a live entry.
//!   [`Cache::purge_expired`] frees all of them at once.
//! - Capacity is a weight. Without a weigher every entry weighs 1 and the
//!   capacity is a count; with one, the caller passes each entry's weight
//!   and the shards' budgets are shares of the total. An entry heavier than
//!   its shard's budget is not stored (and counted as a rejection).
//! - A hit does not reorder the policy's lists or count in its frequency
//!   sketch at once. It appends the slot to the shard's read buffer, and
//!   the buffer is replayed into the policy in one pass when it is full and
//!   before anything changes which slots hold entries (an insert, a removal,
//!   an eviction), so every index in it is still valid when replayed. This
//!   is Caffeine's read buffer: the policy's bookkeeping is batched off the
//!   hit path. Caffeine's buffers are lossy, dropping reads when contended,
//!   because its reads take no lock; here a hit holds its shard's lock
//!   anyway, so the buffer never needs to drop one and hit ratios are those
//!   of the unbuffered policy.

mod expiry;
mod fifo;
mod lfu;
mod lock;
mod lru;
mod sketch;
mod store;
mod tinylfu;

use std::time::Duration;

use smallvec::SmallVec;

use crate::clock::now_ns;
use crate::error::Error;
use expiry::ExpiryQueue;
use fifo::Fifo;
use lfu::Lfu;
use lock::SpinMutex as Mutex;
use lru::Lru;
use store::Store;
use tinylfu::TinyLfu;

/// Hits buffered per shard before they are replayed into the policy.
const READ_BUFFER: usize = 16;
/// Entries freed by an expiry sweep per operation, at most.
const SWEEP_BUDGET: usize = 8;
/// Every this many operations a shard looks at its expiry queue.
const SWEEP_EVERY: u32 = 64;
/// Shards have at least this many entries each when the count is chosen
/// automatically, so that the policy sees enough traffic per shard.
const MIN_AUTO_SHARD: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    Lru,
    Fifo,
    Lfu,
    TinyLfu,
}

impl PolicyKind {
    pub fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "lru" => Ok(PolicyKind::Lru),
            "fifo" => Ok(PolicyKind::Fifo),
            "lfu" => Ok(PolicyKind::Lfu),
            "tinylfu" => Ok(PolicyKind::TinyLfu),
            other => Err(Error::invalid(
                "policy",
                format!("must be one of 'tinylfu', 'lru', 'lfu', 'fifo', got '{other}'"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Lru => "lru",
            PolicyKind::Fifo => "fifo",
            PolicyKind::Lfu => "lfu",
            PolicyKind::TinyLfu => "tinylfu",
        }
    }
}

/// Why an entry left the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Evicted by the policy to make room.
    Size,
    /// Its TTL ran out.
    Expired,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::Size => "size",
            Cause::Expired => "expired",
        }
    }
}

/// Keys and values that left the cache during one call, to be dropped by the
/// caller once no lock is held. Two fit without allocating.
pub type Removed<K, V> = SmallVec<[(K, V, Cause); 2]>;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// Writes not stored because the entry outweighed its shard's budget.
    pub rejections: u64,
    pub size: usize,
    /// The sum of the stored entries' weights (the size, without a weigher).
    pub weighted_size: u64,
    pub capacity: u64,
}

/// The largest capacity a cache counted in entries accepts.
pub const MAX_CAPACITY: usize = u32::MAX as usize / 2;
/// The largest capacity a cache counted in weight accepts.
pub const MAX_WEIGHT: u64 = 1 << 62;
/// How many entries a shard's frequency sketch is sized for at first; it
/// grows with the entries stored, so memory follows use, not the bound.
const SKETCH_START: usize = 256;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Entries, or with `weighted` the total weight.
    pub capacity: u64,
    pub policy: PolicyKind,
    /// `None` picks a count from the capacity and the number of CPUs (one
    /// shard for a weighted cache).
    pub shards: Option<usize>,
    /// Applied to entries set without a TTL of their own.
    pub ttl: Option<Duration>,
    /// Applied to entries set without a time-to-idle of their own.
    pub tti: Option<Duration>,
    /// Whether writes carry their own weights.
    pub weighted: bool,
}

impl Config {
    /// A config from a caller's plain values (TTL and time-to-idle in
    /// seconds), checked.
    pub fn from_settings(
        capacity: i64,
        policy: &str,
        shards: Option<i64>,
        ttl_s: Option<f64>,
        tti_s: Option<f64>,
        weighted: bool,
    ) -> Result<Config, Error> {
        let size = |name: &'static str, v: i64| {
            usize::try_from(v)
                .map_err(|_| Error::invalid(name, format!("must be positive, got {v}")))
        };
        Ok(Config {
            capacity: size("capacity", capacity)? as u64,
            policy: PolicyKind::parse(policy)?,
            shards: shards.map(|n| size("shards", n)).transpose()?,
            ttl: ttl_s.map(|t| ttl_from_secs("ttl", t)).transpose()?,
            tti: tti_s.map(|t| ttl_from_secs("tti", t)).transpose()?,
            weighted,
        })
    }
}

/// What one write asks for beyond the key and the value.
#[derive(Clone, Copy, Debug)]
pub struct Write {
    /// `None` applies the cache's default TTL.
    pub ttl: Option<Duration>,
    /// `None` applies the cache's default time-to-idle.
    pub tti: Option<Duration>,
    /// The entry's weight: 1 in a cache without a weigher.
    pub weight: u32,
}

impl Write {
    /// The cache's defaults, weight 1.
    pub const DEFAULT: Write = Write {
        ttl: None,
        tti: None,
        weight: 1,
    };
}

/// Validates a TTL (or a time-to-idle) given in seconds.
pub fn ttl_from_secs(name: &'static str, secs: f64) -> Result<Duration, Error> {
    crate::error::positive_seconds(name, secs)
}

/// The time of one operation in monotonic nanoseconds: read from the
/// process clock at most once and only if the operation needs it
/// ([`Now::LAZY`]), or given by the caller ([`Now::at`], for a clock the
/// caller controls, read before any lock is taken).
#[derive(Clone, Copy, Debug)]
pub struct Now(u64);

impl Now {
    /// Reads the process clock when first needed.
    pub const LAZY: Now = Now(0);

    /// This instant, in nanoseconds on the caller's clock (0 counts as 1).
    pub fn at(ns: u64) -> Now {
        Now(ns.max(1))
    }

    #[inline]
    fn get(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = now_ns();
        }
        self.0
    }
}

enum Policy {
    Lru(Lru),
    Fifo(Fifo),
    Lfu(Box<Lfu>),
    TinyLfu(Box<TinyLfu>),
}

struct Shard<K, V> {
    store: Store<K, V>,
    policy: Policy,
    expiry: ExpiryQueue,
    /// The shard's budget of weight (of entries, without a weigher).
    capacity: u64,
    /// The sum of the stored entries' weights.
    weight: u64,
    weighted: bool,
    hits: u64,
    misses: u64,
    evictions: u64,
    expirations: u64,
    rejections: u64,
    ops: u32,
    /// Hits not yet replayed into the policy, oldest first: a slot and how
    /// many hits in a row it took. `read_len` slots are used; `read_hits`
    /// hits are buffered in all.
    reads: [(u32, u32); READ_BUFFER],
    read_len: usize,
    read_hits: usize,
}

impl<K, V> Shard<K, V> {
    fn new(capacity: u64, kind: PolicyKind, weighted: bool) -> Result<Self, Error> {
        // The sketch starts small and grows with the entries stored (a
        // capacity is often a bound never reached). LFU's aging period is a
        // number, not memory: a shard counted in entries sets it from the
        // capacity; one counted in weight cannot know how many entries it will
        // hold, so it starts small and grows with them.
        let aging_keys = if weighted {
            SKETCH_START.min(capacity as usize)
        } else {
            capacity as usize
        };
        let policy = match kind {
            PolicyKind::Lru => Policy::Lru(Lru::new()),
            PolicyKind::Fifo => Policy::Fifo(Fifo::new()),
            PolicyKind::Lfu => Policy::Lfu(Box::new(Lfu::new(aging_keys))),
            PolicyKind::TinyLfu => Policy::TinyLfu(Box::new(TinyLfu::new(
                capacity,
                SKETCH_START.min(capacity as usize),
            )?)),
        };
        Ok(Shard {
            store: Store::new(),
            policy,
            expiry: ExpiryQueue::new(),
            capacity,
            weight: 0,
            weighted,
            hits: 0,
            misses: 0,
            evictions: 0,
            expirations: 0,
            rejections: 0,
            ops: 0,
            reads: [(0, 0); READ_BUFFER],
            read_len: 0,
            read_hits: 0,
        })
    }

    /// A hit: buffered for the policy, replayed once `READ_BUFFER` hits
    /// are waiting. Hits in a row on one slot share a buffer entry: the
    /// policy takes them as one visit that counts `n` times (a frequency
    /// counter adds `n` at once; a list moves the slot to its front once,
    /// which is where `n` moves would leave it).
    #[inline(always)]
    fn record_hit(&mut self, index: u32) {
        if matches!(self.policy, Policy::Fifo(_)) {
            return;
        }
        let last = self.read_len.wrapping_sub(1) % READ_BUFFER;
        if self.read_len != 0 && self.reads[last].0 == index {
            self.reads[last].1 += 1;
        } else {
            self.reads[self.read_len % READ_BUFFER] = (index, 1);
            self.read_len += 1;
        }
        self.read_hits += 1;
        if self.read_hits >= READ_BUFFER {
            self.replay();
        }
    }

    /// Replays the buffered hits into the policy. Called before any change
    /// to which slots hold entries, so that every buffered index is live.
    #[inline]
    fn settle(&mut self) {
        if self.read_len != 0 {
            self.replay();
        }
    }

    fn replay(&mut self) {
        let reads = self.reads;
        let len = std::mem::take(&mut self.read_len).min(READ_BUFFER);
        self.read_hits = 0;
        for &(index, times) in &reads[..len] {
            self.touch(index, times, true);
        }
    }

    /// `times` hits in a row, or an update of an existing key (`hit ==
    /// false`, `times == 1`).
    #[inline(always)]
    fn touch(&mut self, index: u32, times: u32, hit: bool) {
        let slots = &mut self.store.slots;
        match &mut self.policy {
            Policy::Lru(p) => p.on_access(slots, index),
            Policy::Fifo(_) => {}
            Policy::Lfu(p) => p.on_access(slots, index, times),
            Policy::TinyLfu(p) => p.on_access(slots, index, times, hit),
        }
    }

    #[inline(always)]
    fn read<R>(&self, index: u32, read: impl FnOnce(&V) -> R) -> Option<R> {
        self.store.slots[index as usize]
            .entry
            .as_ref()
            .map(|(_, v)| read(v))
    }

    #[inline]
    fn on_miss(&mut self) {
        self.misses += 1;
        if let Policy::TinyLfu(p) = &mut self.policy {
            p.on_miss(&mut self.store.slots);
        }
    }

    fn link(&mut self, index: u32) {
        self.settle();
        self.fit_policy();
        let slots = &mut self.store.slots;
        match &mut self.policy {
            Policy::Lru(p) => p.on_insert(slots, index),
            Policy::Fifo(p) => p.on_insert(slots, index),
            Policy::Lfu(p) => p.on_insert(slots, index),
            Policy::TinyLfu(p) => p.on_insert(slots, index),
        }
    }

    /// Sizes the policy's sketch (or, counted in weight, LFU's aging) for the
    /// entries the shard holds now. A sketch that cannot grow (no memory)
    /// keeps its size.
    #[inline]
    fn fit_policy(&mut self) {
        let keys = self.store.len();
        match &mut self.policy {
            Policy::TinyLfu(p) => {
                if p.ensure_capacity(keys).is_err() {
                    // Admission stays on the smaller sketch: less accurate,
                    // never wrong about what is stored.
                }
            }
            Policy::Lfu(p) if self.weighted => p.ensure_capacity(keys),
            Policy::Lfu(_) | Policy::Lru(_) | Policy::Fifo(_) => {}
        }
    }

    fn victim(&mut self, incoming: u64) -> Option<u32> {
        match &mut self.policy {
            Policy::Lru(p) => p.victim(),
            Policy::Fifo(p) => p.victim(),
            Policy::Lfu(p) => p.victim(),
            Policy::TinyLfu(p) => p.victim(&self.store.slots, incoming),
        }
    }

    /// Gives a stored entry a new weight, in the shard's total and its list's.
    fn reweigh(&mut self, index: u32, weight: u32) {
        let slots = &mut self.store.slots;
        let old = std::mem::replace(&mut slots[index as usize].weight, weight);
        if old == weight {
            return;
        }
        let list = match &mut self.policy {
            Policy::Lru(p) | Policy::Fifo(p) => p.list_of(),
            Policy::Lfu(p) => p.list_of(slots, index),
            Policy::TinyLfu(p) => p.list_of(slots, index),
        };
        list.weight = list.weight - u64::from(old) + u64::from(weight);
        self.weight = self.weight - u64::from(old) + u64::from(weight);
    }

    /// Takes a slot off the policy's lists (the entry stays stored).
    fn unlink(&mut self, index: u32) {
        let slots = &mut self.store.slots;
        match &mut self.policy {
            Policy::Lru(p) => p.on_remove(slots, index),
            Policy::Fifo(p) => p.on_remove(slots, index),
            Policy::Lfu(p) => p.on_remove(slots, index),
            Policy::TinyLfu(p) => p.on_remove(slots, index),
        }
    }

    fn take(&mut self, index: u32) -> (K, V) {
        self.settle();
        self.weight -= u64::from(self.store.slots[index as usize].weight);
        self.unlink(index);
        let slots = &mut self.store.slots;
        if slots[index as usize].deadline() != 0 {
            self.expiry.live -= 1;
        }
        self.store.remove(index)
    }

    fn expire(&mut self, index: u32, out: &mut Removed<K, V>) {
        let (key, value) = self.take(index);
        self.expirations += 1;
        out.push((key, value, Cause::Expired));
    }

    fn sweep(&mut self, now: u64, budget: usize, out: &mut Removed<K, V>) {
        for _ in 0..budget {
            let Some(index) = self.expiry.pop_due(&self.store.slots, now) else {
                break;
            };
            self.expire(index, out);
        }
    }

    #[inline]
    fn tick(&mut self, now: &mut Now, out: &mut Removed<K, V>) {
        self.ops = self.ops.wrapping_add(1);
        if self.ops % SWEEP_EVERY == 0 && !self.expiry.is_empty() {
            self.sweep(now.get(), SWEEP_BUDGET, out);
        }
    }

    /// The live slot holding the key; an expired one is freed on the way.
    #[inline(always)]
    fn lookup(
        &mut self,
        hash: u64,
        eq: impl FnMut(&K) -> bool,
        now: &mut Now,
        out: &mut Removed<K, V>,
    ) -> Option<u32> {
        let index = self.store.find(hash, eq)?;
        let deadline = self.store.slots[index as usize].deadline();
        if deadline != 0 && deadline <= now.get() {
            self.expire(index, out);
            return None;
        }
        Some(index)
    }

    /// A read of a live entry: pushes its idle deadline back, if it has one.
    #[inline(always)]
    fn refresh_idle(&mut self, index: u32, now: &mut Now) {
        let slot = &mut self.store.slots[index as usize];
        if slot.idle != 0 {
            slot.idle_at = now.get().saturating_add(slot.idle);
        }
    }

    /// Sets an entry's TTL and time-to-idle (nanoseconds, 0 for none) from
    /// the instant `at` of a write.
    ///
    /// The queue holds, for every entry with a deadline, an item at or
    /// before that deadline (a later item would let the entry outlive it).
    /// So a deadline that moves later needs no new item: the old one
    /// surfaces first and moves the entry on. Only a new or earlier
    /// deadline is scheduled.
    fn set_deadlines(&mut self, index: u32, at: u64, ttl: u64, idle: u64) {
        let slot = &mut self.store.slots[index as usize];
        let before = slot.deadline();
        slot.expires = if ttl == 0 { 0 } else { at.saturating_add(ttl) };
        slot.idle = idle;
        slot.idle_at = if idle == 0 {
            0
        } else {
            at.saturating_add(idle)
        };
        let after = slot.deadline();
        match (before != 0, after != 0) {
            (false, true) => self.expiry.live += 1,
            (true, false) => self.expiry.live -= 1,
            _ => {}
        }
        if after != 0 && (before == 0 || after < before) {
            self.expiry.schedule(&self.store.slots, after, index);
        }
    }

    /// Evicts until an entry of weight `incoming` fits. `keep` is an entry
    /// just written that grew: if the policy picks it, it steps aside while
    /// others go and comes back as a new entry (it fits on its own).
    fn make_room(
        &mut self,
        incoming: u64,
        keep: Option<u32>,
        now: &mut Now,
        out: &mut Removed<K, V>,
    ) {
        self.settle();
        if !self.expiry.is_empty() {
            // Dead entries go before live ones.
            self.sweep(now.get(), SWEEP_BUDGET, out);
        }
        let mut aside = None;
        while self.weight + incoming > self.capacity {
            let Some(index) = self.victim(incoming) else {
                break;
            };
            if Some(index) == keep && aside.is_none() {
                self.unlink(index);
                aside = Some(index);
                continue;
            }
            let (key, value) = self.take(index);
            self.evictions += 1;
            out.push((key, value, Cause::Size));
        }
        if let Some(index) = aside {
            self.link(index);
        }
    }

    fn clear(&mut self) -> Vec<(K, V)> {
        self.read_len = 0;
        self.read_hits = 0;
        self.weight = 0;
        match &mut self.policy {
            Policy::Lru(p) => p.clear(),
            Policy::Fifo(p) => p.clear(),
            Policy::Lfu(p) => p.clear(),
            Policy::TinyLfu(p) => p.clear(),
        }
        self.expiry.clear();
        self.store.drain().collect()
    }

    fn heap_bytes(&self) -> usize {
        let policy = match &self.policy {
            Policy::TinyLfu(p) => p.heap_bytes(),
            _ => 0,
        };
        self.store.heap_bytes() + self.expiry.heap_bytes() + policy
    }
}

#[cfg(test)]
impl<K, V> Shard<K, V> {
    fn policy_sizes(&mut self) -> (usize, usize, usize, usize) {
        self.settle();
        match &self.policy {
            Policy::TinyLfu(p) => p.sizes(),
            _ => (0, 0, 0, 0),
        }
    }

    fn policy_weights(&mut self) -> (u64, u64, u64) {
        self.settle();
        match &self.policy {
            Policy::TinyLfu(p) => p.weights(),
            _ => (0, 0, 0),
        }
    }
}

/// A cache line of its own for each shard's lock.
#[repr(align(128))]
struct Padded<T>(T);

type Shards<K, V> = Box<[Padded<Mutex<Shard<K, V>>>]>;

pub struct Cache<K, V> {
    shards: Shards<K, V>,
    capacity: u64,
    policy: PolicyKind,
    weighted: bool,
    ttl_ns: u64,
    tti_ns: u64,
}

/// The shard count chosen when none is given: enough for the CPUs to work in
/// parallel (free-threaded Python), few enough that each shard keeps
/// `MIN_AUTO_SHARD` entries.
pub fn auto_shards(capacity: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let by_cpu = (cpus * 4).next_power_of_two();
    let by_size = (capacity / MIN_AUTO_SHARD).max(1);
    let by_size = 1 << (usize::BITS - 1 - by_size.leading_zeros());
    by_cpu.min(by_size).min(64)
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

impl<K, V> Cache<K, V> {
    pub fn new(config: Config) -> Result<Self, Error> {
        let capacity = config.capacity;
        let max = if config.weighted {
            MAX_WEIGHT
        } else {
            MAX_CAPACITY as u64
        };
        if capacity == 0 || capacity > max {
            return Err(Error::invalid(
                "capacity",
                format!("must be between 1 and {max}, got {capacity}"),
            ));
        }
        let shards = match config.shards {
            Some(n) => n,
            None if config.weighted => 1,
            None => auto_shards(capacity as usize),
        };
        if shards == 0 || shards as u64 > capacity || shards > 1024 {
            return Err(Error::invalid(
                "shards",
                format!(
                    "must be between 1 and min(capacity, 1024) = {}, got {shards}",
                    capacity.min(1024)
                ),
            ));
        }
        let count = shards as u64;
        let shards: Box<[_]> = (0..count)
            .map(|i| {
                let size = capacity / count + u64::from(i < capacity % count);
                Shard::new(size, config.policy, config.weighted)
                    .map(|shard| Padded(Mutex::new(shard)))
            })
            .collect::<Result<_, Error>>()?;
        Ok(Cache {
            shards,
            capacity,
            policy: config.policy,
            weighted: config.weighted,
            ttl_ns: config.ttl.map_or(0, duration_ns),
            tti_ns: config.tti.map_or(0, duration_ns),
        })
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Mutex<Shard<K, V>> {
        let bits = (hash >> 24) as u32 as u64;
        let index = (bits * self.shards.len() as u64) >> 32;
        &self.shards[index as usize].0
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn is_weighted(&self) -> bool {
        self.weighted
    }

    /// The largest weight an entry can have and still be stored: the
    /// smallest shard's budget.
    pub fn max_weight(&self) -> u64 {
        self.capacity / self.shards.len() as u64
    }

    pub fn policy(&self) -> PolicyKind {
        self.policy
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn default_ttl(&self) -> Option<Duration> {
        (self.ttl_ns != 0).then(|| Duration::from_nanos(self.ttl_ns))
    }

    pub fn default_tti(&self) -> Option<Duration> {
        (self.tti_ns != 0).then(|| Duration::from_nanos(self.tti_ns))
    }

    /// Looks the key up and, on a hit, returns `read(value)`; counts a hit or
    /// a miss.
    #[inline(always)]
    pub fn get<R>(
        &self,
        mut now: Now,
        hash: u64,
        eq: impl FnMut(&K) -> bool,
        read: impl FnOnce(&V) -> R,
        out: &mut Removed<K, V>,
    ) -> Option<R> {
        let mut shard = self.shard(hash).lock();
        shard.tick(&mut now, out);
        match shard.lookup(hash, eq, &mut now, out) {
            Some(index) => {
                shard.hits += 1;
                shard.refresh_idle(index, &mut now);
                shard.record_hit(index);
                shard.read(index, read)
            }
            None => {
                shard.on_miss();
                None
            }
        }
    }

    /// Like [`Cache::get`], but counts nothing and leaves the policy's order
    /// alone: for a second look at a key just counted as a miss.
    pub fn peek<R>(
        &self,
        mut now: Now,
        hash: u64,
        eq: impl FnMut(&K) -> bool,
        read: impl FnOnce(&V) -> R,
        out: &mut Removed<K, V>,
    ) -> Option<R> {
        let mut shard = self.shard(hash).lock();
        let index = shard.lookup(hash, eq, &mut now, out)?;
        shard.read(index, read)
    }

    /// Whether a live entry holds the key; counts nothing, moves nothing.
    pub fn contains(
        &self,
        mut now: Now,
        hash: u64,
        eq: impl FnMut(&K) -> bool,
        out: &mut Removed<K, V>,
    ) -> bool {
        let mut shard = self.shard(hash).lock();
        shard.lookup(hash, eq, &mut now, out).is_some()
    }

    /// Stores the value under the key and returns a value for the caller to
    /// drop once the lock is released: the one it replaces, or the new one
    /// if it was rejected. `make_key` runs only if the key is new (a
    /// replacement keeps the stored key). `write` gives the entry's weight
    /// and overrides the cache's default TTL and time-to-idle.
    ///
    /// An entry heavier than its shard's budget is not stored and counts as
    /// a rejection; if the key held a value, that value is evicted (it
    /// would be stale) and goes to `out`.
    #[inline]
    // The closures are the key's hashing and equality, passed per call so the
    // cache needs no trait bound on keys: grouping them would only hide them.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        mut now: Now,
        hash: u64,
        make_key: impl FnOnce() -> K,
        value: V,
        write: Write,
        eq: impl FnMut(&K) -> bool,
        out: &mut Removed<K, V>,
    ) -> Option<V> {
        let ttl = write.ttl.map_or(self.ttl_ns, duration_ns);
        let idle = write.tti.map_or(self.tti_ns, duration_ns);
        let at = if ttl == 0 && idle == 0 { 0 } else { now.get() };
        let weight = if self.weighted { write.weight } else { 1 };
        let mut shard = self.shard(hash).lock();
        shard.tick(&mut now, out);
        let fits = u64::from(weight) <= shard.capacity;
        if let Some(index) = shard.lookup(hash, eq, &mut now, out) {
            if !fits {
                shard.rejections += 1;
                shard.evictions += 1;
                let (key, old) = shard.take(index);
                out.push((key, old, Cause::Size));
                return Some(value);
            }
            shard.set_deadlines(index, at, ttl, idle);
            shard.settle();
            shard.reweigh(index, weight);
            shard.touch(index, 1, false);
            let old = shard.store.slots[index as usize]
                .entry
                .as_mut()
                .map(|(_, slot_value)| std::mem::replace(slot_value, value));
            if shard.weight > shard.capacity {
                // The entry grew: others make room for it.
                shard.make_room(0, Some(index), &mut now, out);
            }
            return old;
        }
        if !fits {
            shard.rejections += 1;
            return Some(value);
        }
        if shard.weight + u64::from(weight) > shard.capacity {
            shard.make_room(u64::from(weight), None, &mut now, out);
        }
        let index = shard.store.insert(hash, make_key(), value, weight);
        shard.weight += u64::from(weight);
        shard.set_deadlines(index, at, ttl, idle);
        shard.link(index);
        None
    }

    /// Removes the key and returns its entry; an expired entry counts as
    /// absent (and goes to `out`).
    pub fn remove(
        &self,
        mut now: Now,
        hash: u64,
        eq: impl FnMut(&K) -> bool,
        out: &mut Removed<K, V>,
    ) -> Option<(K, V)> {
        let mut shard = self.shard(hash).lock();
        let index = shard.lookup(hash, eq, &mut now, out)?;
        Some(shard.take(index))
    }

    /// Empties the cache and returns every entry, for the caller to drop
    /// outside the locks. Statistics are kept.
    pub fn clear(&self) -> Vec<(K, V)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let drained = shard.0.lock().clear();
            all.extend(drained);
        }
        all
    }

    /// `f` of every stored value (expired ones too) in each shard whose lock
    /// is free at once; a shard that is locked is skipped, not waited for.
    /// For a garbage collector's traversal, which must not block; the first
    /// error stops it.
    pub fn try_visit_values<E>(&self, mut f: impl FnMut(&V) -> Result<(), E>) -> Result<(), E> {
        for shard in self.shards.iter() {
            let Some(shard) = shard.0.try_lock() else {
                continue;
            };
            for (_, slot) in shard.store.occupied() {
                if let Some((_, value)) = &slot.entry {
                    f(value)?;
                }
            }
        }
        Ok(())
    }

    /// Frees every expired entry now and returns them.
    pub fn purge_expired(&self, mut now: Now) -> Vec<(K, V, Cause)> {
        let now = now.get();
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let mut out = Removed::new();
            shard.0.lock().sweep(now, usize::MAX, &mut out);
            all.extend(out);
        }
        all
    }

    /// Entries stored, counting expired ones not yet freed.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().store.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `f` of every live key, shard by shard.
    pub fn keys<R>(&self, mut now: Now, mut f: impl FnMut(&K) -> R) -> Vec<R> {
        let now = now.get();
        let mut keys = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.0.lock();
            for (_, slot) in shard.store.occupied() {
                let deadline = slot.deadline();
                if deadline == 0 || deadline > now {
                    if let Some((k, _)) = &slot.entry {
                        keys.push(f(k));
                    }
                }
            }
        }
        keys
    }

    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            capacity: self.capacity,
            ..Stats::default()
        };
        for shard in self.shards.iter() {
            let shard = shard.0.lock();
            stats.hits += shard.hits;
            stats.misses += shard.misses;
            stats.evictions += shard.evictions;
            stats.expirations += shard.expirations;
            stats.rejections += shard.rejections;
            stats.size += shard.store.len();
            stats.weighted_size += shard.weight;
        }
        stats
    }

    pub fn reset_stats(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock();
            shard.hits = 0;
            shard.misses = 0;
            shard.evictions = 0;
            shard.expirations = 0;
            shard.rejections = 0;
        }
    }

    /// Bytes of heap held by the cache's own structures (not keys or values).
    pub fn heap_bytes(&self) -> usize {
        let shards: usize = self.shards.iter().map(|s| s.0.lock().heap_bytes()).sum();
        shards + self.shards.len() * std::mem::size_of::<Padded<Mutex<Shard<K, V>>>>()
    }
}

#[cfg(test)]
mod tests;
