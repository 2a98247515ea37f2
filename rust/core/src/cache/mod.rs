//! A sharded in-memory cache with a pluggable eviction policy and per-entry
//! TTL.
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
//! - Entries with a TTL sit in an expiry queue per shard. Expired entries are
//!   freed by every operation: a lookup that finds one removes it, every
//!   64th operation on a shard sweeps a few due entries, and a full shard
//!   sweeps before it evicts a live entry. [`Cache::purge_expired`] frees
//!   all of them at once.

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
    pub size: usize,
    pub capacity: usize,
}

/// The largest capacity a cache accepts.
pub const MAX_CAPACITY: usize = u32::MAX as usize / 2;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub capacity: usize,
    pub policy: PolicyKind,
    /// `None` picks a count from the capacity and the number of CPUs.
    pub shards: Option<usize>,
    /// Applied to entries set without a TTL of their own.
    pub ttl: Option<Duration>,
}

impl Config {
    /// A config from a caller's plain values (a TTL in seconds), checked.
    pub fn from_settings(
        capacity: i64,
        policy: &str,
        shards: Option<i64>,
        ttl_s: Option<f64>,
    ) -> Result<Config, Error> {
        let size = |name: &'static str, v: i64| {
            usize::try_from(v)
                .map_err(|_| Error::invalid(name, format!("must be positive, got {v}")))
        };
        Ok(Config {
            capacity: size("capacity", capacity)?,
            policy: PolicyKind::parse(policy)?,
            shards: shards.map(|n| size("shards", n)).transpose()?,
            ttl: ttl_s.map(|t| ttl_from_secs("ttl", t)).transpose()?,
        })
    }
}

/// Validates a TTL given in seconds.
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
    capacity: usize,
    hits: u64,
    misses: u64,
    evictions: u64,
    expirations: u64,
    ops: u32,
}

impl<K, V> Shard<K, V> {
    fn new(capacity: usize, kind: PolicyKind) -> Result<Self, Error> {
        let policy = match kind {
            PolicyKind::Lru => Policy::Lru(Lru::new()),
            PolicyKind::Fifo => Policy::Fifo(Fifo::new()),
            PolicyKind::Lfu => Policy::Lfu(Box::new(Lfu::new(capacity))),
            PolicyKind::TinyLfu => Policy::TinyLfu(Box::new(TinyLfu::new(capacity)?)),
        };
        Ok(Shard {
            store: Store::new(),
            policy,
            expiry: ExpiryQueue::new(),
            capacity,
            hits: 0,
            misses: 0,
            evictions: 0,
            expirations: 0,
            ops: 0,
        })
    }

    /// A hit, or an update of an existing key (`hit == false`).
    #[inline(always)]
    fn touch(&mut self, index: u32, hit: bool) {
        let slots = &mut self.store.slots;
        match &mut self.policy {
            Policy::Lru(p) => p.on_access(slots, index),
            Policy::Fifo(_) => {}
            Policy::Lfu(p) => p.on_access(slots, index),
            Policy::TinyLfu(p) => p.on_access(slots, index, hit),
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
        let slots = &mut self.store.slots;
        match &mut self.policy {
            Policy::Lru(p) => p.on_insert(slots, index),
            Policy::Fifo(p) => p.on_insert(slots, index),
            Policy::Lfu(p) => p.on_insert(slots, index),
            Policy::TinyLfu(p) => p.on_insert(slots, index),
        }
    }

    fn victim(&mut self) -> Option<u32> {
        match &mut self.policy {
            Policy::Lru(p) => p.victim(),
            Policy::Fifo(p) => p.victim(),
            Policy::Lfu(p) => p.victim(),
            Policy::TinyLfu(p) => p.victim(&self.store.slots),
        }
    }

    fn take(&mut self, index: u32) -> (K, V) {
        let slots = &mut self.store.slots;
        match &mut self.policy {
            Policy::Lru(p) => p.on_remove(slots, index),
            Policy::Fifo(p) => p.on_remove(slots, index),
            Policy::Lfu(p) => p.on_remove(slots, index),
            Policy::TinyLfu(p) => p.on_remove(slots, index),
        }
        if slots[index as usize].expires != 0 {
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
        let expires = self.store.slots[index as usize].expires;
        if expires != 0 && expires <= now.get() {
            self.expire(index, out);
            return None;
        }
        Some(index)
    }

    fn set_deadline(&mut self, index: u32, deadline: u64) {
        let slot = &mut self.store.slots[index as usize];
        let old = std::mem::replace(&mut slot.expires, deadline);
        match (old != 0, deadline != 0) {
            (false, true) => self.expiry.live += 1,
            (true, false) => self.expiry.live -= 1,
            _ => {}
        }
        if deadline != 0 && deadline != old {
            self.expiry.schedule(&self.store.slots, deadline, index);
        }
    }

    fn make_room(&mut self, now: &mut Now, out: &mut Removed<K, V>) {
        if !self.expiry.is_empty() {
            // Dead entries go before live ones.
            self.sweep(now.get(), SWEEP_BUDGET, out);
        }
        while self.store.len() >= self.capacity {
            let Some(index) = self.victim() else { break };
            let (key, value) = self.take(index);
            self.evictions += 1;
            out.push((key, value, Cause::Size));
        }
    }

    fn clear(&mut self) -> Vec<(K, V)> {
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
    fn policy_sizes(&self) -> (usize, usize, usize, usize) {
        match &self.policy {
            Policy::TinyLfu(p) => p.sizes(),
            _ => (0, 0, 0, 0),
        }
    }
}

/// A cache line of its own for each shard's lock.
#[repr(align(128))]
struct Padded<T>(T);

type Shards<K, V> = Box<[Padded<Mutex<Shard<K, V>>>]>;

pub struct Cache<K, V> {
    shards: Shards<K, V>,
    capacity: usize,
    policy: PolicyKind,
    ttl_ns: u64,
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
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(Error::invalid(
                "capacity",
                format!("must be between 1 and {MAX_CAPACITY}, got {capacity}"),
            ));
        }
        let shards = config.shards.unwrap_or_else(|| auto_shards(capacity));
        if shards == 0 || shards > capacity || shards > 1024 {
            return Err(Error::invalid(
                "shards",
                format!(
                    "must be between 1 and min(capacity, 1024) = {}, got {shards}",
                    capacity.min(1024)
                ),
            ));
        }
        let shards: Box<[_]> = (0..shards)
            .map(|i| {
                let size = capacity / shards + usize::from(i < capacity % shards);
                Shard::new(size, config.policy).map(|shard| Padded(Mutex::new(shard)))
            })
            .collect::<Result<_, Error>>()?;
        Ok(Cache {
            shards,
            capacity,
            policy: config.policy,
            ttl_ns: config.ttl.map_or(0, duration_ns),
        })
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Mutex<Shard<K, V>> {
        let bits = (hash >> 24) as u32 as u64;
        let index = (bits * self.shards.len() as u64) >> 32;
        &self.shards[index as usize].0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
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
                shard.touch(index, true);
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

    /// Stores the value under the key and returns the value it replaces, for
    /// the caller to drop once the lock is released. `make_key` runs only if
    /// the key is new (a replacement keeps the stored key). `ttl` overrides
    /// the cache's default TTL for this entry.
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
        ttl: Option<Duration>,
        eq: impl FnMut(&K) -> bool,
        out: &mut Removed<K, V>,
    ) -> Option<V> {
        let ttl_ns = ttl.map_or(self.ttl_ns, duration_ns);
        let deadline = if ttl_ns == 0 {
            0
        } else {
            now.get().saturating_add(ttl_ns)
        };
        let mut shard = self.shard(hash).lock();
        shard.tick(&mut now, out);
        if let Some(index) = shard.lookup(hash, eq, &mut now, out) {
            shard.set_deadline(index, deadline);
            shard.touch(index, false);
            return shard.store.slots[index as usize]
                .entry
                .as_mut()
                .map(|(_, slot_value)| std::mem::replace(slot_value, value));
        }
        if shard.store.len() >= shard.capacity {
            shard.make_room(&mut now, out);
        }
        let index = shard.store.insert(hash, make_key(), value, 0);
        shard.set_deadline(index, deadline);
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
                if slot.expires == 0 || slot.expires > now {
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
            stats.size += shard.store.len();
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
