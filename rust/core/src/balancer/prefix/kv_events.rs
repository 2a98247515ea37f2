//! The KV cache events an inference server publishes, decoded from their
//! wire form: one msgpack batch per message, as vLLM's `KVEventBatch`
//! (SGLang publishes the same).
//!
//! A batch is `[ts, [event, ...], data_parallel_rank?]` (vLLM before the
//! structs dropped `array_like`) or `{"ts": ..., "events": [...], ...}`
//! (since). An event is an array led by its tag, fields in declaration
//! order, or a map with the tag under `"type"`:
//!
//! ```text
//! BlockStored:      block_hashes, parent_block_hash, token_ids, block_size,
//!                   lora_id, medium, lora_name, extra_keys, group_idx, ...
//! BlockRemoved:     block_hashes, medium, group_idx
//! AllBlocksCleared: (nothing)
//! ```
//!
//! A block hash is an int or bytes (vLLM's `ExternalBlockHash`); it is
//! reduced to a 64-bit key. The bytes come from the network: every length
//! is checked against what is left before anything is allocated, nesting
//! is bounded, and a batch that is not whole and well formed is refused
//! before any of it is used.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::error::Error;

/// How deep a value the decoder skips may nest.
const MAX_DEPTH: usize = 32;
/// Seed of the keys of byte-string block hashes.
const BYTES_SEED: u64 = 0x6b76_5f62_6c6f_636b;

/// One event of a batch.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Event {
    Stored(Stored),
    Removed {
        hashes: Vec<u64>,
        /// Whether the blocks are in the device cache this record mirrors.
        usable: bool,
    },
    Cleared,
}

/// Blocks a server stored.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Stored {
    pub hashes: Vec<u64>,
    pub parent: Option<u64>,
    pub tokens: Vec<u32>,
    pub block_size: u64,
    /// In the device cache, of the main KV group, and keyed by tokens
    /// alone (no LoRA adapter, no multimodal or salt keys): blocks a
    /// prompt's tokens can match.
    pub usable: bool,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::invalid("data", reason)
}

/// A msgpack reader over bytes from the network.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

enum Hash {
    Nil,
    Key(u64),
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| bad("truncated msgpack"))?;
        let out = &self.data[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn peek(&self) -> Result<u8, Error> {
        self.data
            .get(self.at)
            .copied()
            .ok_or_else(|| bad("truncated msgpack"))
    }

    fn be(&mut self, n: usize) -> Result<u64, Error> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn left(&self) -> usize {
        self.data.len() - self.at
    }

    /// A length of `n` items of at least `min` bytes each, checked against
    /// what is left.
    fn count(&self, n: u64, min: usize) -> Result<usize, Error> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n.saturating_mul(min) <= self.left())
            .ok_or_else(|| bad("a length longer than the message"))
    }

    /// The length of an array (`map` false) or a map here, or `None`
    /// (nothing read) for another type; checked against what is left.
    fn container_len(&mut self, map: bool) -> Result<Option<usize>, Error> {
        let (fix, wide) = if map { (0x80, 0xde) } else { (0x90, 0xdc) };
        let m = self.peek()?;
        let n = if m & 0xf0 == fix {
            self.at += 1;
            u64::from(m & 0x0f)
        } else if m == wide || m == wide + 1 {
            self.at += 1;
            self.be(if m == wide { 2 } else { 4 })?
        } else {
            return Ok(None);
        };
        self.count(n, if map { 2 } else { 1 }).map(Some)
    }

    fn array_len(&mut self) -> Result<Option<usize>, Error> {
        self.container_len(false)
    }

    fn map_len(&mut self) -> Result<Option<usize>, Error> {
        self.container_len(true)
    }

    fn nil(&mut self) -> Result<bool, Error> {
        if self.peek()? == 0xc0 {
            self.at += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// An integer of any msgpack width, or `None` (nothing read) for
    /// another type.
    fn int(&mut self) -> Result<Option<i128>, Error> {
        let m = self.peek()?;
        let v = match m {
            0x00..=0x7f => {
                self.at += 1;
                i128::from(m)
            }
            0xe0..=0xff => {
                self.at += 1;
                i128::from(m as i8)
            }
            0xcc..=0xcf => {
                self.at += 1;
                i128::from(self.be(1 << (m - 0xcc))?)
            }
            0xd0..=0xd3 => {
                self.at += 1;
                let width = 1usize << (m - 0xd0);
                let raw = self.be(width)?;
                let shift = 64 - 8 * width as u32;
                i128::from(((raw << shift) as i64) >> shift)
            }
            _ => return Ok(None),
        };
        Ok(Some(v))
    }

    /// A string or byte string, or `None` (nothing read) for another type.
    fn bytes(&mut self) -> Result<Option<&'a [u8]>, Error> {
        let m = self.peek()?;
        let n = match m {
            0xa0..=0xbf => {
                self.at += 1;
                u64::from(m & 0x1f)
            }
            0xd9 | 0xc4 => {
                self.at += 1;
                self.be(1)?
            }
            0xda | 0xc5 => {
                self.at += 1;
                self.be(2)?
            }
            0xdb | 0xc6 => {
                self.at += 1;
                self.be(4)?
            }
            _ => return Ok(None),
        };
        let n = self.count(n, 1)?;
        self.take(n).map(Some)
    }

    fn text(&mut self, what: &str) -> Result<&'a [u8], Error> {
        self.bytes()?
            .ok_or_else(|| bad(format!("{what}: must be a string")))
    }

    fn float_or_int(&mut self, what: &str) -> Result<(), Error> {
        match self.peek()? {
            0xca => self.take(5).map(|_| ()),
            0xcb => self.take(9).map(|_| ()),
            _ if self.int()?.is_some() => Ok(()),
            _ => Err(bad(format!("{what}: must be a number"))),
        }
    }

    fn skip(&mut self, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(bad("msgpack nested too deep"));
        }
        if self.nil()? || self.int()?.is_some() || self.bytes()?.is_some() {
            return Ok(());
        }
        if let Some(n) = self.array_len()? {
            for _ in 0..n {
                self.skip(depth + 1)?;
            }
            return Ok(());
        }
        if let Some(n) = self.map_len()? {
            for _ in 0..2 * n {
                self.skip(depth + 1)?;
            }
            return Ok(());
        }
        let m = self.byte()?;
        let fixed = match m {
            0xc2 | 0xc3 => 0,
            0xca => 4,
            0xcb => 8,
            0xd4 => 2,
            0xd5 => 3,
            0xd6 => 5,
            0xd7 => 9,
            0xd8 => 17,
            0xc7..=0xc9 => {
                let n = self.be(1 << (m - 0xc7))? + 1;
                self.count(n, 1)?
            }
            _ => return Err(bad(format!("byte 0x{m:02x} is not msgpack"))),
        };
        self.take(fixed).map(|_| ())
    }

    fn hash(&mut self, what: &str) -> Result<Hash, Error> {
        if self.nil()? {
            return Ok(Hash::Nil);
        }
        if let Some(v) = self.int()? {
            return Ok(Hash::Key(v as u64));
        }
        if let Some(b) = self.bytes()? {
            return Ok(Hash::Key(xxh3_64_with_seed(b, BYTES_SEED)));
        }
        Err(bad(format!("{what}: must be an int or bytes")))
    }

    fn hashes(&mut self, what: &str) -> Result<Vec<u64>, Error> {
        let n = self
            .array_len()?
            .ok_or_else(|| bad(format!("{what}: must be an array")))?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            match self.hash(what)? {
                Hash::Key(k) => out.push(k),
                Hash::Nil => return Err(bad(format!("{what}: a hash is nil"))),
            }
        }
        Ok(out)
    }

    fn tokens(&mut self) -> Result<Vec<u32>, Error> {
        let n = self
            .array_len()?
            .ok_or_else(|| bad("token_ids: must be an array"))?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self
                .int()?
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| bad("token_ids: must be ints from 0 to 2**32-1"))?;
            out.push(id);
        }
        Ok(out)
    }

    /// Whether an optional field is absent: nil.
    fn absent(&mut self, depth: usize) -> Result<bool, Error> {
        if self.nil()? {
            return Ok(true);
        }
        self.skip(depth)?;
        Ok(false)
    }

    /// Whether `medium` names the device cache (or is nil).
    fn device_medium(&mut self) -> Result<bool, Error> {
        if self.nil()? {
            return Ok(true);
        }
        Ok(self.text("medium")?.eq_ignore_ascii_case(b"gpu"))
    }

    /// Whether `group_idx` is the main group (or nil).
    fn main_group(&mut self) -> Result<bool, Error> {
        if self.nil()? {
            return Ok(true);
        }
        let g = self
            .int()?
            .ok_or_else(|| bad("group_idx: must be an int"))?;
        Ok(g == 0)
    }

    /// Whether `extra_keys` is nil or holds nothing but nils.
    fn no_extra_keys(&mut self) -> Result<bool, Error> {
        if self.nil()? {
            return Ok(true);
        }
        let n = self
            .array_len()?
            .ok_or_else(|| bad("extra_keys: must be an array"))?;
        let mut none = true;
        for _ in 0..n {
            none &= self.absent(1)?;
        }
        Ok(none)
    }
}

const STORED_FIELDS: [&[u8]; 9] = [
    b"block_hashes",
    b"parent_block_hash",
    b"token_ids",
    b"block_size",
    b"lora_id",
    b"medium",
    b"lora_name",
    b"extra_keys",
    b"group_idx",
];
const REMOVED_FIELDS: [&[u8]; 3] = [b"block_hashes", b"medium", b"group_idx"];

#[derive(Default)]
struct Fields {
    hashes: Option<Vec<u64>>,
    parent: Option<Option<u64>>,
    tokens: Option<Vec<u32>>,
    block_size: Option<u64>,
    usable: bool,
}

/// Reads field `index` of `names` into `f`; `false` for a field it does
/// not know (left unread).
fn read_field(r: &mut Reader<'_>, name: &[u8], f: &mut Fields) -> Result<bool, Error> {
    match name {
        b"block_hashes" => f.hashes = Some(r.hashes("block_hashes")?),
        b"parent_block_hash" => {
            f.parent = Some(match r.hash("parent_block_hash")? {
                Hash::Nil => None,
                Hash::Key(k) => Some(k),
            })
        }
        b"token_ids" => f.tokens = Some(r.tokens()?),
        b"block_size" => {
            let n = r
                .int()?
                .and_then(|v| u64::try_from(v).ok())
                .filter(|&n| n >= 1)
                .ok_or_else(|| bad("block_size: must be an int of at least 1"))?;
            f.block_size = Some(n);
        }
        b"lora_id" | b"lora_name" => f.usable &= r.absent(1)?,
        b"medium" => f.usable &= r.device_medium()?,
        b"extra_keys" => f.usable &= r.no_extra_keys()?,
        b"group_idx" => f.usable &= r.main_group()?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn finish(tag: &[u8], f: Fields) -> Result<Event, Error> {
    let hashes = f
        .hashes
        .ok_or_else(|| bad("an event has no block_hashes"))?;
    if tag == b"BlockRemoved" {
        return Ok(Event::Removed {
            hashes,
            usable: f.usable,
        });
    }
    let (Some(parent), Some(tokens), Some(block_size)) = (f.parent, f.tokens, f.block_size) else {
        return Err(bad("BlockStored: a field is missing"));
    };
    Ok(Event::Stored(Stored {
        hashes,
        parent,
        tokens,
        block_size,
        usable: f.usable,
    }))
}

fn fields_of(tag: &[u8]) -> Result<&'static [&'static [u8]], Error> {
    match tag {
        b"BlockStored" => Ok(&STORED_FIELDS),
        b"BlockRemoved" => Ok(&REMOVED_FIELDS),
        b"AllBlocksCleared" => Ok(&[]),
        _ => Err(bad(format!(
            "unknown event type {:?}",
            String::from_utf8_lossy(&tag[..tag.len().min(64)])
        ))),
    }
}

fn event(r: &mut Reader<'_>) -> Result<Event, Error> {
    let mut f = Fields {
        usable: true,
        ..Fields::default()
    };
    if let Some(n) = r.array_len()? {
        if n == 0 {
            return Err(bad("an event is an empty array"));
        }
        let tag = r.text("event tag")?;
        let names = fields_of(tag)?;
        for i in 0..n - 1 {
            match names.get(i) {
                Some(name) => {
                    read_field(r, name, &mut f)?;
                }
                None => r.skip(1)?,
            }
        }
        if tag == b"AllBlocksCleared" {
            return Ok(Event::Cleared);
        }
        return finish(tag, f);
    }
    let n = r
        .map_len()?
        .ok_or_else(|| bad("an event must be an array or a map"))?;
    let mut tag: Option<&[u8]> = None;
    for _ in 0..n {
        let key = r.text("an event's field name")?;
        if key == b"type" {
            tag = Some(r.text("type")?);
        } else if !read_field(r, key, &mut f)? {
            r.skip(1)?;
        }
    }
    let tag = tag.ok_or_else(|| bad("an event has no type"))?;
    fields_of(tag)?;
    if tag == b"AllBlocksCleared" {
        return Ok(Event::Cleared);
    }
    finish(tag, f)
}

fn events(r: &mut Reader<'_>) -> Result<Vec<Event>, Error> {
    let n = r
        .array_len()?
        .ok_or_else(|| bad("events: must be an array"))?;
    (0..n).map(|_| event(r)).collect()
}

/// The events of one batch, in order; an error naming `data` for bytes
/// that are not one whole, well-formed batch.
pub(super) fn decode(data: &[u8]) -> Result<Vec<Event>, Error> {
    let mut r = Reader { data, at: 0 };
    let out = if let Some(n) = r.array_len()? {
        if n < 2 {
            return Err(bad("a batch array needs ts and events"));
        }
        r.float_or_int("ts")?;
        let out = events(&mut r)?;
        for _ in 2..n {
            r.skip(1)?;
        }
        out
    } else {
        let n = r
            .map_len()?
            .ok_or_else(|| bad("a batch must be a msgpack array or map"))?;
        let mut out = None;
        for _ in 0..n {
            let key = r.text("a batch's field name")?;
            if key == b"events" {
                out = Some(events(&mut r)?);
            } else {
                r.skip(1)?;
            }
        }
        out.ok_or_else(|| bad("a batch has no events"))?
    };
    if r.left() != 0 {
        return Err(bad("bytes after the batch"));
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A tiny msgpack writer for the tests.
    #[derive(Default)]
    pub(crate) struct W(pub Vec<u8>);

    impl W {
        pub fn array(&mut self, n: usize) -> &mut Self {
            assert!(n < 16);
            self.0.push(0x90 | n as u8);
            self
        }
        pub fn map(&mut self, n: usize) -> &mut Self {
            self.0.push(0x80 | n as u8);
            self
        }
        pub fn str(&mut self, s: &str) -> &mut Self {
            assert!(s.len() < 32);
            self.0.push(0xa0 | s.len() as u8);
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        pub fn uint(&mut self, v: u64) -> &mut Self {
            self.0.push(0xcf);
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn nil(&mut self) -> &mut Self {
            self.0.push(0xc0);
            self
        }
        pub fn float(&mut self, v: f64) -> &mut Self {
            self.0.push(0xcb);
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn bin(&mut self, b: &[u8]) -> &mut Self {
            self.0.push(0xc4);
            self.0.push(b.len() as u8);
            self.0.extend_from_slice(b);
            self
        }
        pub fn uints(&mut self, vs: &[u64]) -> &mut Self {
            self.0.push(0xdc);
            self.0.extend_from_slice(&(vs.len() as u16).to_be_bytes());
            for &v in vs {
                self.uint(v);
            }
            self
        }
    }

    fn stored_array(w: &mut W, hashes: &[u64], parent: Option<u64>, tokens: &[u64]) {
        w.array(7).str("BlockStored").uints(hashes);
        match parent {
            Some(p) => w.uint(p),
            None => w.nil(),
        };
        w.uints(tokens).uint(2).nil().str("GPU");
    }

    #[test]
    fn array_batches_decode_as_older_vllm_sends_them() {
        let mut w = W::default();
        w.array(3).float(1.5).array(3);
        stored_array(&mut w, &[10, 11], None, &[1, 2, 3, 4]);
        w.array(3).str("BlockRemoved").uints(&[10]).nil();
        w.array(1).str("AllBlocksCleared");
        w.uint(0);
        let events = decode(&w.0).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Stored(Stored {
                    hashes: vec![10, 11],
                    parent: None,
                    tokens: vec![1, 2, 3, 4],
                    block_size: 2,
                    usable: true,
                }),
                Event::Removed {
                    hashes: vec![10],
                    usable: true
                },
                Event::Cleared,
            ]
        );
    }

    #[test]
    fn map_batches_decode_as_newer_vllm_sends_them() {
        let mut w = W::default();
        w.map(3).str("ts").float(2.0).str("events").array(2);
        w.map(8)
            .str("type")
            .str("BlockStored")
            .str("block_hashes")
            .array(1)
            .bin(&[7; 32])
            .str("parent_block_hash")
            .bin(&[6; 32])
            .str("token_ids")
            .uints(&[5, 6])
            .str("block_size")
            .uint(2)
            .str("lora_id")
            .nil()
            .str("medium")
            .str("CPU")
            .str("kv_cache_spec_kind")
            .str("full");
        w.map(2)
            .str("type")
            .str("BlockRemoved")
            .str("block_hashes")
            .uints(&[3]);
        w.str("data_parallel_rank").uint(1);
        let events = decode(&w.0).unwrap();
        let Event::Stored(s) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(s.hashes, vec![xxh3_64_with_seed(&[7; 32], BYTES_SEED)]);
        assert!(s.parent.is_some());
        assert!(
            !s.usable,
            "a block offloaded to the CPU is not the device cache"
        );
        assert_eq!(
            events[1],
            Event::Removed {
                hashes: vec![3],
                usable: true
            }
        );
    }

    #[test]
    fn lora_and_extra_keys_make_blocks_unusable() {
        let mut w = W::default();
        w.array(2).float(0.0).array(2);
        w.array(9)
            .str("BlockStored")
            .uints(&[1])
            .nil()
            .uints(&[1, 2])
            .uint(2)
            .uint(3)
            .nil()
            .nil()
            .nil();
        w.array(9)
            .str("BlockStored")
            .uints(&[1])
            .nil()
            .uints(&[1, 2])
            .uint(2)
            .nil()
            .nil()
            .nil()
            .array(1)
            .array(1)
            .str("img");
        for e in decode(&w.0).unwrap() {
            assert!(matches!(e, Event::Stored(Stored { usable: false, .. })));
        }
    }

    #[test]
    fn every_cut_of_a_batch_is_refused() {
        let mut w = W::default();
        w.array(2).float(0.5).array(2);
        stored_array(&mut w, &[1, 2, 3], Some(9), &[1, 2, 3, 4, 5, 6]);
        w.array(2).str("BlockRemoved").uints(&[1, 2]);
        let whole = w.0;
        assert!(decode(&whole).is_ok());
        for cut in 0..whole.len() {
            match decode(&whole[..cut]) {
                Err(Error::InvalidArgument { name, .. }) => assert_eq!(name, "data"),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        let mut longer = whole.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn hostile_lengths_and_nesting_are_refused_without_allocating() {
        // An array claiming 2**32-1 events in a 10-byte message.
        let huge = [0x92, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00];
        assert!(decode(&huge).is_err());
        // Nesting past the bound in a field the decoder skips.
        let mut deep = vec![0x93, 0x00, 0x90];
        deep.extend(std::iter::repeat_n(0x91, 10_000));
        deep.push(0xc0);
        assert!(decode(&deep).is_err());
        // Token ids out of range, an unknown tag, a nil block hash.
        let mut w = W::default();
        w.array(2).float(0.0).array(1);
        stored_array(&mut w, &[1], None, &[1 << 40, 2]);
        assert!(decode(&w.0).is_err());
        let mut w = W::default();
        w.array(2).float(0.0).array(1).array(1).str("Evil");
        assert!(decode(&w.0).is_err());
        let mut w = W::default();
        w.array(2).float(0.0).array(1).array(2).str("BlockRemoved");
        w.array(1).nil();
        assert!(decode(&w.0).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut w = W::default();
        w.array(2).float(0.5).array(2);
        stored_array(&mut w, &[1, 2, 3], Some(9), &[1, 2, 3, 4, 5, 6]);
        w.array(2).str("BlockRemoved").uints(&[1, 2]);
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let mut noise = w.0.clone();
            for _ in 0..rng.usize(1..5) {
                let at = rng.usize(..noise.len());
                noise[at] = rng.u8(..);
            }
            noise.truncate(rng.usize(..=noise.len()));
            let _ = decode(&noise);
        }
        for _ in 0..20_000 {
            let noise: Vec<u8> = (0..rng.usize(..64)).map(|_| rng.u8(..)).collect();
            let _ = decode(&noise);
        }
    }
}
