//! The frequency sketch of W-TinyLFU: a count-min sketch of 4-bit counters
//! behind a doorkeeper Bloom filter, halved periodically so it tracks recent
//! popularity rather than all of history.
//!
//! - Counters are packed 16 to a `u64`, and the table is cut into 64-byte
//!   blocks of 8 words, one cache line each. All four counters of a key
//!   (depth 4) live in one block: a lookup or an increment touches one cache
//!   line, not four (the layout of Caffeine's block sketch). Depth `i` uses
//!   word `2 i` or `2 i + 1` of the block, so no two depths share a counter.
//! - The table has a power-of-two number of words, at least the entries it
//!   is sized for: about 16 counters per entry. It is sized for the entries
//!   held, not for the cache's bound, and grows as the cache fills.
//! - The doorkeeper absorbs the first sighting of a key: one-hit wonders, most
//!   keys of a long-tailed workload, never reach the counters, which keeps
//!   them accurate for keys that recur. It is a blocked Bloom filter (two bits
//!   in one word), 8 bits per entry. A key's estimate is the smallest of its
//!   counters plus one if the doorkeeper has seen it.
//! - After `10 x capacity` recorded accesses every counter is halved and the
//!   doorkeeper cleared (the "reset" of the TinyLFU paper).

use crate::error::{try_vec, Error};

const BLOCK_MULT: u64 = 0x9e37_79b9_7f4a_7c15;
const COUNTER_MULT: u64 = 0xc2b2_ae3d_27d4_eb4f;
const DOOR_MULT: u64 = 0x1656_67b1_9e37_79f9;
const RESET_MASK: u64 = 0x7777_7777_7777_7777;
pub(crate) const SAMPLE_FACTOR: u64 = 10;

/// One cache line of counters: 8 words of 16 four-bit counters.
type Block = [u64; 8];

pub(crate) struct Sketch {
    table: Vec<Block>,
    block_mask: usize,
    door: Vec<u64>,
    door_mask: usize,
    additions: u64,
    sample: u64,
    /// The number of keys the table is sized for.
    sized_for: usize,
}

impl Sketch {
    pub fn new(capacity: usize) -> Result<Self, Error> {
        let capacity = capacity.max(8);
        let words = capacity.next_power_of_two();
        let door_words = (capacity * 8 / 64).next_power_of_two();
        Ok(Sketch {
            table: try_vec("capacity", words / 8)?,
            block_mask: words / 8 - 1,
            door: try_vec("capacity", door_words)?,
            door_mask: door_words - 1,
            additions: 0,
            sample: capacity as u64 * SAMPLE_FACTOR,
            sized_for: capacity,
        })
    }

    /// Once more than the keys the table is sized for are stored, resizes it
    /// for twice as many, but not past `most` (the entries the cache can
    /// hold): the sketch follows the entries held, not the cache's bound.
    /// The counts start over, as in Caffeine: a count-min sketch cannot be
    /// rehashed. A cache filling to its bound resizes about log2(bound / 256)
    /// times, the last time at half full, before its first eviction.
    #[inline]
    pub fn ensure_capacity(&mut self, keys: usize, most: usize) -> Result<(), Error> {
        if keys > self.sized_for {
            let twice = keys.saturating_mul(2);
            // Past `most` (entries of weight zero in a cache counted in
            // weight) it keeps doubling, so growth stays amortised.
            let target = if self.sized_for < most {
                twice.min(most).max(keys)
            } else {
                twice
            };
            self.grow(target)?;
        }
        Ok(())
    }

    #[cold]
    fn grow(&mut self, keys: usize) -> Result<(), Error> {
        *self = Sketch::new(keys)?;
        Ok(())
    }

    /// Accesses per sample: the counters halve after this many.
    #[inline]
    pub fn sample(&self) -> u64 {
        self.sample
    }

    /// The block of a key and the four (word, bit shift) positions of its
    /// counters within the block.
    #[inline(always)]
    fn slots(&self, hash: u64) -> (usize, [(usize, u32); 4]) {
        let block_hash = hash.wrapping_mul(BLOCK_MULT);
        let block = (block_hash >> 32) as usize & self.block_mask;
        let h = hash.wrapping_mul(COUNTER_MULT);
        let at = |depth: usize| {
            let bits = (h >> (depth << 3)) as u32;
            ((depth << 1) | (bits & 1) as usize, ((bits >> 1) & 15) << 2)
        };
        (block, [at(0), at(1), at(2), at(3)])
    }

    /// The doorkeeper's word and its two bits for a key.
    #[inline(always)]
    fn door_bits(&self, hash: u64) -> (usize, u64) {
        let h = hash.wrapping_mul(DOOR_MULT);
        let word = (h >> 40) as usize & self.door_mask;
        let bits = (1u64 << (h & 63)) | (1u64 << ((h >> 6) & 63));
        (word, bits)
    }

    /// Records one access to the key with this hash.
    #[inline]
    pub fn increment(&mut self, hash: u64) {
        self.increment_by(hash, 1);
    }

    /// Records `times` accesses to the key with this hash: the same counts
    /// as `times` calls of `increment`, as the counters saturate at 15
    /// (only the moment of a reset can differ, by less than `times`).
    #[inline]
    pub fn increment_by(&mut self, hash: u64, times: u32) {
        if times == 0 {
            return;
        }
        let (door_word, bits) = self.door_bits(hash);
        let door = &mut self.door[door_word];
        let mut add = u64::from(times);
        if *door & bits != bits {
            // The doorkeeper takes the first sighting.
            *door |= bits;
            add -= 1;
        }
        let add = add.min(15);
        if add != 0 {
            let (block, counters) = self.slots(hash);
            let block = &mut self.table[block];
            for (word, shift) in counters {
                // Saturating add to one 4-bit counter; `word` is below 8 by
                // construction (masked to 3 bits).
                let w = &mut block[word & 7];
                let count = (*w >> shift) & 0xf;
                *w += (add.min(15 - count)) << shift;
            }
        }
        self.additions += u64::from(times);
        if self.additions >= self.sample {
            self.reset();
        }
    }

    /// The estimated number of recent accesses, from 0 to 16.
    pub fn frequency(&self, hash: u64) -> u32 {
        let (block, counters) = self.slots(hash);
        let block = &self.table[block];
        let min = counters
            .iter()
            .map(|&(word, shift)| ((block[word & 7] >> shift) & 0xf) as u32)
            .min()
            .unwrap_or(0);
        let (word, bits) = self.door_bits(hash);
        min + u32::from(self.door[word] & bits == bits)
    }

    #[cold]
    fn reset(&mut self) {
        for word in self.table.iter_mut().flatten() {
            *word = (*word >> 1) & RESET_MASK;
        }
        self.door.fill(0);
        self.additions /= 2;
    }

    pub fn clear(&mut self) {
        self.table.fill([0; 8]);
        self.door.fill(0);
        self.additions = 0;
    }

    pub fn heap_bytes(&self) -> usize {
        self.table.capacity() * std::mem::size_of::<Block>() + self.door.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(k: u64) -> u64 {
        crate::hash::hash_i64(k as i64)
    }

    #[test]
    fn counts_recent_accesses_and_saturates() {
        let mut s = Sketch::new(1024).unwrap();
        assert_eq!(s.frequency(mix(1)), 0);
        s.increment(mix(1));
        assert_eq!(
            s.frequency(mix(1)),
            1,
            "the doorkeeper holds the first sighting"
        );
        for _ in 0..5 {
            s.increment(mix(1));
        }
        assert_eq!(s.frequency(mix(1)), 6);
        for _ in 0..100 {
            s.increment(mix(2));
        }
        assert_eq!(
            s.frequency(mix(2)),
            16,
            "15 in the counters plus the doorkeeper"
        );
    }

    #[test]
    fn estimates_never_undercount_before_a_reset() {
        let mut s = Sketch::new(4096).unwrap();
        for k in 0..2000u64 {
            for _ in 0..(k % 7) {
                s.increment(mix(k));
            }
        }
        for k in 0..2000u64 {
            assert!(s.frequency(mix(k)) as u64 >= (k % 7), "key {k}");
        }
    }

    #[test]
    fn halves_after_the_sample_period() {
        let mut s = Sketch::new(16).unwrap();
        for _ in 0..159 {
            s.increment(mix(7));
        }
        assert_eq!(s.frequency(mix(7)), 16);
        // The 160th access completes the sample: counters halve, the doorkeeper clears.
        s.increment(mix(7));
        assert_eq!(s.frequency(mix(7)), 7);
    }

    #[test]
    fn grows_with_the_keys_held_up_to_the_bound() {
        let mut s = Sketch::new(256).unwrap();
        let small = s.heap_bytes();
        s.ensure_capacity(256, 1 << 20).unwrap();
        assert_eq!(s.heap_bytes(), small, "not past its size yet");
        s.ensure_capacity(257, 1 << 20).unwrap();
        assert_eq!(s.sized_for, 514);
        s.ensure_capacity(600_000, 1 << 20).unwrap();
        assert_eq!(s.sized_for, 1 << 20, "never past the bound");
        let full = s.heap_bytes();
        s.ensure_capacity(1 << 20, 1 << 20).unwrap();
        assert_eq!(s.heap_bytes(), full);
        // Past the bound (weightless entries) it doubles, not creeps.
        s.ensure_capacity((1 << 20) + 1, 1 << 20).unwrap();
        assert_eq!(s.sized_for, (1 << 21) + 2);
    }

    #[test]
    fn a_run_of_accesses_counts_as_that_many() {
        for times in [1u32, 2, 3, 7, 15, 16, 40] {
            let mut one_by_one = Sketch::new(1024).unwrap();
            let mut at_once = Sketch::new(1024).unwrap();
            for k in 0..50u64 {
                for _ in 0..times {
                    one_by_one.increment(mix(k));
                }
                at_once.increment_by(mix(k), times);
            }
            for k in 0..60u64 {
                assert_eq!(
                    one_by_one.frequency(mix(k)),
                    at_once.frequency(mix(k)),
                    "{times}"
                );
            }
        }
    }
}
