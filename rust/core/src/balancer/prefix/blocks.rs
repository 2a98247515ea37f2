//! Chained block hashes of a prompt.
//!
//! A prompt is cut into fixed blocks (bytes of text, or token ids); the hash
//! of block `i` is XXH3 of its bytes seeded with the hash of block `i - 1`,
//! so it stands for the whole prefix up to and including block `i`. Two
//! prompts share block hash `i` only if they share their first `i + 1`
//! blocks, and a match on the index is always a true prefix. Only whole
//! blocks are hashed (an inference server caches whole blocks), and at most
//! `max_blocks` of them, so the work per prompt is bounded whatever its size.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the first block, so the empty prefix has no hash of its own.
const ROOT: u64 = 0x6c61_6e67_636c_7573;

/// Appends the chained hashes of `data`'s whole `block`-byte blocks to `out`
/// (at most `max_blocks` of them).
pub fn hash_bytes(data: &[u8], block: usize, max_blocks: usize, out: &mut Vec<u64>) {
    let mut seed = ROOT;
    for chunk in data.chunks_exact(block.max(1)).take(max_blocks) {
        seed = xxh3_64_with_seed(chunk, seed);
        out.push(seed);
    }
}

/// The hash of a block of token ids that follows the block hashing to
/// `parent` (`None`: the prompt's first block), as [`hash_tokens`] chains
/// them.
pub fn chain_tokens(parent: Option<u64>, tokens: &[u32]) -> u64 {
    let mut buf = [0u8; super::MAX_TOKEN_BLOCK * 4];
    let n = tokens.len().min(super::MAX_TOKEN_BLOCK);
    for (i, t) in tokens[..n].iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&t.to_le_bytes());
    }
    xxh3_64_with_seed(&buf[..n * 4], parent.unwrap_or(ROOT))
}

/// Appends the chained hashes of whole `block`-token blocks of `tokens` to
/// `out` (at most `max_blocks`). Each block is hashed as the little-endian
/// bytes of its 32-bit ids, so a token prompt and the same ids packed into
/// bytes (4 per token, `block * 4` bytes per block) hash alike.
pub fn hash_tokens(
    tokens: impl IntoIterator<Item = u32>,
    block: usize,
    max_blocks: usize,
    out: &mut Vec<u64>,
) {
    const MAX_BLOCK: usize = super::MAX_TOKEN_BLOCK;
    let block = block.clamp(1, MAX_BLOCK);
    let mut buf = [0u8; MAX_BLOCK * 4];
    let mut filled = 0;
    let mut seed = ROOT;
    if max_blocks == 0 {
        return;
    }
    for token in tokens {
        buf[filled * 4..filled * 4 + 4].copy_from_slice(&token.to_le_bytes());
        filled += 1;
        if filled == block {
            seed = xxh3_64_with_seed(&buf[..block * 4], seed);
            out.push(seed);
            filled = 0;
            if out.len() >= max_blocks {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_hash_stands_for_its_whole_prefix() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        hash_bytes(b"aaaabbbbcccc", 4, 100, &mut a);
        hash_bytes(b"xxxxbbbbcccc", 4, 100, &mut b);
        assert_eq!(a.len(), 3);
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
        let mut c = Vec::new();
        hash_bytes(b"aaaabbbbdddd", 4, 100, &mut c);
        assert_eq!(a[..2], c[..2]);
        assert_ne!(a[2], c[2]);
    }

    #[test]
    fn only_whole_blocks_up_to_the_limit_are_hashed() {
        let mut out = Vec::new();
        hash_bytes(b"abcdefg", 4, 100, &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        hash_bytes(&[7u8; 4000], 4, 10, &mut out);
        assert_eq!(out.len(), 10);
        out.clear();
        hash_tokens(0..1000u32, 16, 3, &mut out);
        assert_eq!(out.len(), 3);
        out.clear();
        hash_tokens(0..10u32, 16, 3, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_chained_block_hashes_as_in_its_prompt() {
        let tokens: Vec<u32> = (0..48).collect();
        let mut whole = Vec::new();
        hash_tokens(tokens.iter().copied(), 16, 100, &mut whole);
        let first = chain_tokens(None, &tokens[..16]);
        let second = chain_tokens(Some(first), &tokens[16..32]);
        assert_eq!(whole[..2], [first, second]);
    }

    #[test]
    fn tokens_hash_as_their_packed_bytes() {
        let tokens: Vec<u32> = (0..64).map(|i| i * 7919).collect();
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        hash_tokens(tokens.iter().copied(), 16, 100, &mut a);
        hash_bytes(&bytes, 64, 100, &mut b);
        assert_eq!(a, b);
        assert_eq!(a.len(), 4);
    }
}
