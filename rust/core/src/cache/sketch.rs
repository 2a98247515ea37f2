//! The frequency sketch of W-TinyLFU: a count-min sketch of 4-bit counters
//! behind a doorkeeper Bloom filter, halved periodically so it tracks recent
//! popularity rather than all of history.
//!
//! - Counters are packed 16 to a `u64`, and the table is cut into 64-byte
//!   blocks of 8 words, one cache line each. All four counters of a key
//!   (depth 4) live in one block: a lookup or an increment touches one cache
//!   line, not four (the layout of Caffeine's block sketch). Depth `i` uses
//!   word `2 i` or `2 i + 1` of the block, so no two depths share a counter.
//! - The table has a power-of-two number of words, at least the capacity:
//!   about 16 counters per entry.
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

pub(crate) struct Sketch {
    table: Vec<u64>,
    block_mask: usize,
    door: Vec<u64>,
    door_mask: usize,
    additions: u64,
    sample: u64,
}

impl Sketch {
    pub fn new(capacity: usize) -> Result<Self, Error> {
        let words = capacity.max(8).next_power_of_two();
        let door_words = (capacity.max(8) * 8 / 64).next_power_of_two();
        Ok(Sketch {
            table: try_vec("capacity", words)?,
            block_mask: words / 8 - 1,
            door: try_vec("capacity", door_words)?,
            door_mask: door_words - 1,
            additions: 0,
            sample: capacity.max(1) as u64 * SAMPLE_FACTOR,
        })
    }

    /// The four (word, bit shift) positions of a key's counters.
    #[inline]
    fn slots(&self, hash: u64) -> [(usize, u32); 4] {
        let block_hash = hash.wrapping_mul(BLOCK_MULT);
        let block = ((block_hash >> 32) as usize & self.block_mask) << 3;
        let counter_hash = hash.wrapping_mul(COUNTER_MULT);
        std::array::from_fn(|depth| {
            let h = (counter_hash >> (depth << 3)) as u32;
            let word = block + ((depth << 1) | (h & 1) as usize);
            let nibble = (h >> 1) & 15;
            (word, nibble << 2)
        })
    }

    /// The doorkeeper's word and its two bits for a key.
    #[inline]
    fn door_bits(&self, hash: u64) -> (usize, u64) {
        let h = hash.wrapping_mul(DOOR_MULT);
        let word = (h >> 40) as usize & self.door_mask;
        let bits = (1u64 << (h & 63)) | (1u64 << ((h >> 6) & 63));
        (word, bits)
    }

    /// Records one access to the key with this hash.
    #[inline]
    pub fn increment(&mut self, hash: u64) {
        let (door_word, bits) = self.door_bits(hash);
        let door = self.door[door_word];
        if door & bits == bits {
            for (word, shift) in self.slots(hash) {
                // Branch-free saturating increment of one 4-bit counter.
                let w = self.table[word];
                let below_max = u64::from((w >> shift) & 0xf != 0xf);
                self.table[word] = w + (below_max << shift);
            }
        } else {
            self.door[door_word] = door | bits;
        }
        self.additions += 1;
        if self.additions >= self.sample {
            self.reset();
        }
    }

    /// The estimated number of recent accesses, from 0 to 16.
    pub fn frequency(&self, hash: u64) -> u32 {
        let min = self
            .slots(hash)
            .iter()
            .map(|&(word, shift)| ((self.table[word] >> shift) & 0xf) as u32)
            .min()
            .unwrap_or(0);
        let (word, bits) = self.door_bits(hash);
        min + u32::from(self.door[word] & bits == bits)
    }

    fn reset(&mut self) {
        for word in &mut self.table {
            *word = (*word >> 1) & RESET_MASK;
        }
        self.door.fill(0);
        self.additions /= 2;
    }

    pub fn clear(&mut self) {
        self.table.fill(0);
        self.door.fill(0);
        self.additions = 0;
    }

    pub fn heap_bytes(&self) -> usize {
        (self.table.capacity() + self.door.capacity()) * 8
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
}
