//! W-TinyLFU, after Caffeine (Einziger, Friedman and Manes, "TinyLFU: A
//! Highly Efficient Cache Admission Policy", 2017, and Caffeine's design
//! notes).
//!
//! - New entries enter a small LRU *window* (1% of the capacity at first).
//!   Every size here is a weight: with a weigher the window, the protected
//!   segment and the steps of the hill climber are measured in the unit the
//!   weigher returns, as Caffeine does; without one every entry weighs 1.
//! - An entry pushed out of the window is a *candidate* for the main space, a
//!   segmented LRU: *probation* (recently admitted) and *protected* (80% of
//!   the main space: entries hit again while on probation).
//! - When the cache is full the candidate and probation's LRU entry (the
//!   *victim*) are compared by the frequency sketch and the less frequent one
//!   is evicted. A candidate no more frequent than the victim is rejected; if
//!   it is warm (estimate ≥ 6) it is still admitted once in 128 at random, so
//!   an attacker cannot pin the victim by flooding colliding keys.
//! - Hill climbing resizes the window: every sample of the sketch (`10 ×`
//!   the entries it is sized for) requests the hit
//!   rate of the sample is compared with the previous one; if it improved the
//!   window keeps moving the same way, otherwise the direction flips. The step
//!   starts at 6.25% of the capacity, decays by 2% each sample, and restarts
//!   when the hit rate jumps by 5 points or more (a new workload). A recency-
//!   heavy workload grows the window towards LRU; a frequency-heavy one
//!   shrinks it towards LFU.

use super::sketch::Sketch;
use super::store::{List, Slot};
use crate::error::Error;

const WINDOW: u8 = 0;
const PROBATION: u8 = 1;
const PROTECTED: u8 = 2;

const INITIAL_WINDOW_PERCENT: f64 = 0.01;
const PROTECTED_PERCENT: f64 = 0.80;
const STEP_PERCENT: f64 = 0.0625;
const STEP_DECAY: f64 = 0.98;
const RESTART_THRESHOLD: f64 = 0.05;
const HASHDOS_THRESHOLD: u32 = 6;

pub(crate) struct TinyLfu {
    sketch: Sketch,
    window: List,
    probation: List,
    protected: List,
    capacity: u64,
    max_window: u64,
    max_protected: u64,
    hits: u64,
    misses: u64,
    previous_hit_rate: f64,
    step: f64,
    rng: fastrand::Rng,
}

impl TinyLfu {
    /// A policy for `capacity` units of weight, its sketch sized for
    /// `keys` entries at first.
    pub fn new(capacity: u64, keys: usize) -> Result<Self, Error> {
        let capacity = capacity.max(1);
        let max_window = ((capacity as f64 * INITIAL_WINDOW_PERCENT) as u64).max(1);
        let main = capacity - max_window.min(capacity);
        Ok(TinyLfu {
            sketch: Sketch::new(keys)?,
            window: List::new(),
            probation: List::new(),
            protected: List::new(),
            capacity,
            max_window,
            max_protected: (main as f64 * PROTECTED_PERCENT) as u64,
            hits: 0,
            misses: 0,
            previous_hit_rate: 0.0,
            step: -STEP_PERCENT * capacity as f64,
            rng: fastrand::Rng::with_seed(0x5eed ^ capacity),
        })
    }

    /// Sizes the sketch for `keys` entries if it is sized for fewer, with
    /// room to grow up to the capacity.
    #[inline]
    pub fn ensure_capacity(&mut self, keys: usize) -> Result<(), Error> {
        let most = usize::try_from(self.capacity).unwrap_or(usize::MAX);
        self.sketch.ensure_capacity(keys, most)
    }

    fn list(&mut self, queue: u8) -> &mut List {
        match queue {
            WINDOW => &mut self.window,
            PROBATION => &mut self.probation,
            _ => &mut self.protected,
        }
    }

    #[inline]
    pub fn on_access<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32, times: u32, hit: bool) {
        self.sketch.increment_by(slots[index as usize].hash, times);
        match slots[index as usize].queue {
            WINDOW => self.window.move_to_front(slots, index),
            PROBATION => {
                self.probation.unlink(slots, index);
                self.protected.push_front(slots, index, PROTECTED);
                self.demote_protected(slots);
            }
            _ => self.protected.move_to_front(slots, index),
        }
        if hit {
            self.hits += u64::from(times);
            self.maybe_climb(slots);
        }
    }

    #[inline]
    pub fn on_miss<K, V>(&mut self, slots: &mut [Slot<K, V>]) {
        self.misses += 1;
        self.maybe_climb(slots);
    }

    pub fn on_insert<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32) {
        self.sketch.increment(slots[index as usize].hash);
        self.window.push_front(slots, index, WINDOW);
        // Overflow of the window moves to probation (an entry heavier than
        // the whole window goes straight through); if the cache was full,
        // `victim` has already decided that the candidates stay.
        while self.window.weight > self.max_window {
            let Some(candidate) = self.window.pop_back(slots) else {
                break;
            };
            self.probation.push_front(slots, candidate, PROBATION);
        }
    }

    #[inline]
    pub fn on_remove<K, V>(&mut self, slots: &mut [Slot<K, V>], index: u32) {
        let queue = slots[index as usize].queue;
        self.list(queue).unlink(slots, index);
    }

    /// The entry to evict so that one of weight `incoming` fits. Called with
    /// the cache full, before the new entry is inserted, as many times as it
    /// takes.
    pub fn victim<K, V>(&mut self, slots: &[Slot<K, V>], incoming: u64) -> Option<u32> {
        // The new entry will push the window's LRU entry out: it competes with
        // probation's LRU entry for a place in the main space.
        if self.window.weight + incoming > self.max_window {
            if let Some(candidate) = self.window.back() {
                let Some(victim) = self.probation.back().or(self.protected.back()) else {
                    return Some(candidate);
                };
                return Some(if self.admit(slots, candidate, victim) {
                    victim
                } else {
                    candidate
                });
            }
        }
        self.probation
            .back()
            .or(self.protected.back())
            .or(self.window.back())
    }

    fn admit<K, V>(&mut self, slots: &[Slot<K, V>], candidate: u32, victim: u32) -> bool {
        let candidate_freq = self.sketch.frequency(slots[candidate as usize].hash);
        let victim_freq = self.sketch.frequency(slots[victim as usize].hash);
        if candidate_freq > victim_freq {
            true
        } else if candidate_freq >= HASHDOS_THRESHOLD {
            self.rng.u32(..128) == 0
        } else {
            false
        }
    }

    fn demote_protected<K, V>(&mut self, slots: &mut [Slot<K, V>]) {
        while self.protected.weight > self.max_protected {
            let Some(demoted) = self.protected.pop_back(slots) else {
                break;
            };
            self.probation.push_front(slots, demoted, PROBATION);
        }
    }

    #[inline]
    fn maybe_climb<K, V>(&mut self, slots: &mut [Slot<K, V>]) {
        if self.hits + self.misses >= self.sketch.sample() {
            self.climb(slots);
        }
    }

    fn climb<K, V>(&mut self, slots: &mut [Slot<K, V>]) {
        let requests = (self.hits + self.misses) as f64;
        let hit_rate = self.hits as f64 / requests;
        let change = hit_rate - self.previous_hit_rate;
        let amount = if change >= 0.0 { self.step } else { -self.step };
        self.step = if change.abs() >= RESTART_THRESHOLD {
            STEP_PERCENT * self.capacity as f64 * amount.signum()
        } else {
            STEP_DECAY * amount
        };
        self.previous_hit_rate = hit_rate;
        self.hits = 0;
        self.misses = 0;
        let amount = amount.round() as i64;
        if amount > 0 {
            self.grow_window(slots, amount.unsigned_abs());
        } else if amount < 0 {
            self.shrink_window(slots, amount.unsigned_abs());
        }
    }

    /// Moves capacity from the protected segment to the window and refills
    /// the window from the main space's LRU ends.
    fn grow_window<K, V>(&mut self, slots: &mut [Slot<K, V>], amount: u64) {
        let quota = amount.min(self.max_protected);
        self.max_protected -= quota;
        self.max_window += quota;
        self.demote_protected(slots);
        let target = self.window.weight + quota;
        while self.window.weight < target {
            let moved = match self.probation.pop_back(slots) {
                Some(index) => index,
                None => match self.protected.pop_back(slots) {
                    Some(index) => index,
                    None => break,
                },
            };
            self.window.push_front(slots, moved, WINDOW);
        }
    }

    /// Gives window capacity back to the protected segment; the window's LRU
    /// entries move to probation.
    fn shrink_window<K, V>(&mut self, slots: &mut [Slot<K, V>], amount: u64) {
        let quota = amount.min(self.max_window.saturating_sub(1));
        self.max_window -= quota;
        self.max_protected += quota;
        while self.window.weight > self.max_window {
            let Some(moved) = self.window.pop_back(slots) else {
                break;
            };
            self.probation.push_front(slots, moved, PROBATION);
        }
    }

    pub fn clear(&mut self) {
        self.window = List::new();
        self.probation = List::new();
        self.protected = List::new();
        self.sketch.clear();
        self.hits = 0;
        self.misses = 0;
    }

    pub fn heap_bytes(&self) -> usize {
        self.sketch.heap_bytes()
    }

    /// The list holding a slot, for a caller that changes its weight.
    pub fn list_of<K, V>(&mut self, slots: &[Slot<K, V>], index: u32) -> &mut List {
        self.list(slots[index as usize].queue)
    }

    #[cfg(test)]
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        (
            self.window.len,
            self.probation.len,
            self.protected.len,
            self.max_window as usize,
        )
    }

    #[cfg(test)]
    pub fn weights(&self) -> (u64, u64, u64) {
        (
            self.window.weight,
            self.probation.weight,
            self.protected.weight,
        )
    }
}
