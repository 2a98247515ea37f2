//! The stable key hash used by consistent hashing.
//!
//! XXH3-64 is specified bit for bit and independent of the platform's
//! endianness and word size, so a key maps to the same ring position in every
//! process, on every machine, and under any `PYTHONHASHSEED` (Python's own
//! `hash()` is salted per process and cannot be used for routing).

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Hash of a key given as bytes (a `str` key is hashed as its UTF-8 bytes).
#[inline]
pub fn hash_bytes(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// Hash of an integer key: the hash of its decimal text, so `42` and `"42"`
/// route alike and integers of any size are covered by one rule.
#[inline]
pub fn hash_i64(key: i64) -> u64 {
    let mut buf = [0u8; 20];
    let text = format_i64(key, &mut buf);
    xxh3_64(text)
}

/// Position of virtual node `replica` of node `id` on the ring.
#[inline]
pub fn vnode_position(id: &str, replica: u32) -> u64 {
    xxh3_64_with_seed(id.as_bytes(), u64::from(replica))
}

/// Writes the decimal text of `v` into `buf` without allocating.
fn format_i64(v: i64, buf: &mut [u8; 20]) -> &[u8] {
    let negative = v < 0;
    let mut n = v.unsigned_abs();
    let mut pos = buf.len();
    loop {
        pos -= 1;
        buf[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if negative {
        pos -= 1;
        buf[pos] = b'-';
    }
    &buf[pos..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_keys_hash_as_their_decimal_text() {
        for v in [0i64, 7, -7, 42, i64::MAX, i64::MIN, 1_000_000_007] {
            assert_eq!(hash_i64(v), hash_bytes(v.to_string().as_bytes()), "{v}");
        }
    }

    #[test]
    fn hash_is_the_published_xxh3_value() {
        // Reference values of XXH3-64 with seed 0; a change here would move
        // every key of every deployed ring.
        assert_eq!(hash_bytes(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(hash_bytes(b"a"), 0xe6c6_32b6_1e96_4e1f);
    }
}
