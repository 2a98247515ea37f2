//! What a router routed, for the other routers of the same service: each
//! pick's node and prompt blocks, kept while a journal is on, taken as bytes
//! and merged into another router's record.
//!
//! The bytes, all integers little-endian:
//!
//! ```text
//! header:  b"LCJ" | version (u8) | block_bytes (u32) | block_tokens (u32)
//! entry:   node id length (u16) | node id (UTF-8) | blocks (u16) | block hashes (u64 each)
//! ```
//!
//! The journal is bounded: a pick that would take it past its size is not
//! kept, and is counted as dropped. Merging reads bytes from the network:
//! every length is checked before it is used, and bytes that are not a
//! whole journal of the same block settings are refused.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::Error;

const MAGIC: &[u8; 3] = b"LCJ";
const VERSION: u8 = 1;
pub(super) const HEADER: usize = 12;
/// The longest node id a journal carries, in bytes.
pub(super) const MAX_JOURNAL_ID: usize = 1024;

/// A journal of picks, off until it is given a size.
#[derive(Debug, Default)]
pub(super) struct Journal {
    on: AtomicBool,
    inner: Mutex<Pending>,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    max_bytes: usize,
}

impl Journal {
    /// Keeps up to `max_bytes` of picks between takes; 0 turns it off and
    /// drops what it held.
    pub(super) fn set(&self, max_bytes: usize) {
        let mut pending = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        pending.max_bytes = max_bytes;
        if max_bytes == 0 {
            pending.bytes = Vec::new();
        }
        self.on.store(max_bytes > 0, Ordering::Relaxed);
    }

    #[inline]
    pub(super) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Keeps one pick: `id` was sent the blocks `hashes`.
    pub(super) fn push(&self, id: &str, hashes: &[u64], header: &[u8; HEADER]) {
        if id.len() > MAX_JOURNAL_ID || hashes.is_empty() {
            return;
        }
        let blocks = hashes.len().min(usize::from(u16::MAX));
        let need = 4 + id.len() + 8 * blocks;
        let mut pending = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let used = if pending.bytes.is_empty() {
            HEADER
        } else {
            pending.bytes.len()
        };
        if used + need > pending.max_bytes || pending.bytes.try_reserve(HEADER + need).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let out = &mut pending.bytes;
        if out.is_empty() {
            out.extend_from_slice(header);
        }
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&(blocks as u16).to_le_bytes());
        for hash in &hashes[..blocks] {
            out.extend_from_slice(&hash.to_le_bytes());
        }
    }

    /// The picks kept since the last take (empty if none), and a fresh start.
    pub(super) fn take(&self) -> Vec<u8> {
        let mut pending = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut pending.bytes)
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The header of a journal made with these block settings.
pub(super) fn header(block_bytes: usize, block_tokens: usize) -> [u8; HEADER] {
    let mut out = [0u8; HEADER];
    out[..3].copy_from_slice(MAGIC);
    out[3] = VERSION;
    out[4..8].copy_from_slice(&(block_bytes.min(u32::MAX as usize) as u32).to_le_bytes());
    out[8..12].copy_from_slice(&(block_tokens.min(u32::MAX as usize) as u32).to_le_bytes());
    out
}

/// One pick read back from a journal.
pub(super) struct Entry<'a> {
    pub(super) id: &'a str,
    /// The block hashes, as little-endian bytes (8 each).
    pub(super) hashes: &'a [u8],
}

impl Entry<'_> {
    pub(super) fn hashes(&self, limit: usize, out: &mut Vec<u64>) {
        out.clear();
        out.extend(
            self.hashes
                .chunks_exact(8)
                .take(limit)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
        );
    }
}

fn refused(reason: impl Into<String>) -> Error {
    Error::invalid("data", reason)
}

/// Reads a whole journal made with the same header, or refuses it naming
/// what is wrong. Nothing is returned unless every entry is well formed.
pub(super) fn parse<'a>(data: &'a [u8], expected: &[u8; HEADER]) -> Result<Vec<Entry<'a>>, Error> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    if data.len() < HEADER || &data[..3] != MAGIC {
        return Err(refused("not a journal of picks"));
    }
    if data[3] != VERSION {
        return Err(refused(format!(
            "a journal of version {}, this one reads {VERSION}",
            data[3]
        )));
    }
    if data[..HEADER] != expected[..] {
        return Err(refused(
            "a journal of other block sizes (block_size and token_block_size must match)",
        ));
    }
    let mut entries = Vec::new();
    let mut at = HEADER;
    let u16_at = |at: usize| -> Option<usize> {
        let b = data.get(at..at + 2)?;
        Some(usize::from(u16::from_le_bytes([b[0], b[1]])))
    };
    while at < data.len() {
        let truncated = || refused(format!("truncated at byte {at}"));
        let id_len = u16_at(at).ok_or_else(truncated)?;
        if id_len > MAX_JOURNAL_ID {
            return Err(refused(format!("a node id of {id_len} bytes at byte {at}")));
        }
        let id_bytes = data.get(at + 2..at + 2 + id_len).ok_or_else(truncated)?;
        let id = std::str::from_utf8(id_bytes)
            .map_err(|_| refused(format!("a node id that is not UTF-8 at byte {at}")))?;
        let blocks = u16_at(at + 2 + id_len).ok_or_else(truncated)?;
        let start = at + 4 + id_len;
        let hashes = data.get(start..start + 8 * blocks).ok_or_else(truncated)?;
        entries.push(Entry { id, hashes });
        at = start + 8 * blocks;
    }
    Ok(entries)
}
