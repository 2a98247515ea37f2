//! The frequency sketch of W-TinyLFU: a count-min sketch of 4-bit counters
//! behind a doorkeeper Bloom filter, halved periodically so it tracks recent
//! popularity rather than all of history.
//!
//! - Counters are packed 16 to a `u64`; the table has a power-of-two number
//!   of words, at least the capacity, so about 16 counters per entry.
//! - Each key touches one counter in each of 4 words (depth 4); within a word
//!   depth `i` uses counter `4 i + (hash & 3)`, so the four counters of a key
//!   never share a nibble even when two of its words coincide.
//! - The doorkeeper absorbs the first sighting of a key: one-hit wonders, most
//!   keys of a long-tailed workload, never reach the counters, which keeps
//!   them accurate for keys that recur. A key's estimate is the smallest of
//!   its counters plus one if the doorkeeper has seen it.
//! - After `10 × capacity` recorded accesses every counter is halved and the
//!   doorkeeper cleared (the "reset" of the TinyLFU paper).

const SEEDS: [u64; 4] = [
    0xc3a5_c85c_97cb_3127,
    0xb492_b66f_be98_f273,
    0x9ae1_6a3b_2f90_404f,
    0xcbf2_9ce4_8422_2325,
];
const ODD_MULT: u64 = 0x9e37_79b9_7f4a_7c15;
const RESET_MASK: u64 = 0x7777_7777_7777_7777;
pub(crate) const SAMPLE_FACTOR: u64 = 10;

pub(crate) struct Sketch {
    table: Vec<u64>,
    mask: usize,
    door: Vec<u64>,
    door_mask: u64,
    additions: u64,
    sample: u64,
}

impl Sketch {
    pub fn new(capacity: usize) -> Self {
        let width = capacity.max(8).next_power_of_two();
        let door_bits = (capacity.max(8) * 8).next_power_of_two();
        Sketch {
            table: vec![0; width],
            mask: width - 1,
            door: vec![0; door_bits / 64],
            door_mask: door_bits as u64 - 1,
            additions: 0,
            sample: capacity.max(1) as u64 * SAMPLE_FACTOR,
        }
    }

    #[inline]
    fn slot(&self, hash: u64, depth: usize) -> (usize, u32) {
        let h = (hash ^ SEEDS[depth]).wrapping_mul(ODD_MULT);
        let h = h ^ (h >> 32);
        let word = h as usize & self.mask;
        let counter = (depth as u32) * 4 + (hash & 3) as u32;
        (word, counter * 4)
    }

    #[inline]
    fn door_bits(&self, hash: u64) -> [u64; 2] {
        let spread = hash.wrapping_mul(ODD_MULT);
        [hash & self.door_mask, (spread >> 17) & self.door_mask]
    }

    #[inline]
    fn door_contains(&self, hash: u64) -> bool {
        self.door_bits(hash)
            .iter()
            .all(|&bit| self.door[(bit >> 6) as usize] & (1 << (bit & 63)) != 0)
    }

    /// Records one access to the key with this hash.
    pub fn increment(&mut self, hash: u64) {
        if self.door_contains(hash) {
            for depth in 0..4 {
                let (word, shift) = self.slot(hash, depth);
                if (self.table[word] >> shift) & 0xf < 15 {
                    self.table[word] += 1 << shift;
                }
            }
        } else {
            for bit in self.door_bits(hash) {
                self.door[(bit >> 6) as usize] |= 1 << (bit & 63);
            }
        }
        self.additions += 1;
        if self.additions >= self.sample {
            self.reset();
        }
    }

    /// The estimated number of recent accesses, from 0 to 16.
    pub fn frequency(&self, hash: u64) -> u32 {
        let mut min = 15;
        for depth in 0..4 {
            let (word, shift) = self.slot(hash, depth);
            min = min.min(((self.table[word] >> shift) & 0xf) as u32);
        }
        min + u32::from(self.door_contains(hash))
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
        let mut s = Sketch::new(1024);
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
        let mut s = Sketch::new(4096);
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
        let mut s = Sketch::new(16);
        for _ in 0..159 {
            s.increment(mix(7));
        }
        assert_eq!(s.frequency(mix(7)), 16);
        // The 160th access completes the sample: counters halve, the doorkeeper clears.
        s.increment(mix(7));
        assert_eq!(s.frequency(mix(7)), 7);
    }
}
