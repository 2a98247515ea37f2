//! Cache keys: what `MemoryCache` and `cached` accept, how they are hashed
//! and compared.
//!
//! Hashing. A str or bytes key is hashed by CPython's own hash (SipHash-1-3
//! with a per-process random key), which the str and bytes objects cache in
//! themselves: after the first use of a key object its hash costs one call,
//! and keys an attacker chooses cannot be steered into one shard or bucket.
//! An int that fits in 64 bits is hashed in Rust from its value. Every hash
//! is then mixed with a per-cache random seed (a 128-bit multiply, folded),
//! which spreads CPython's identity-like int hashes over the table and the
//! shards. These hashes are per process by design: the cache is in memory,
//! and the balancers' stable cross-process hash (XXH3) is not needed here.
//!
//! Comparison runs with a shard lock held, so it must not run Python code:
//! keys are stored as exact `str`, `bytes` and `int` objects (a subclass
//! such as a str enum is copied to its base type first), and equality is
//! identity or the built-in comparison of those exact types.

use std::borrow::Cow;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyString, PyTuple};

use crate::convert::key_type_error;
use crate::errors::{type_name, Error, Result};

/// Function ids with keyword arguments in the key set this bit, so that
/// `f(1, b=2)` and `f(1, (("b", 2),))` never share an entry.
pub const KWARGS_BIT: u32 = 1 << 31;

/// The qualified names of decorated functions, by id, for `cache.keys()`.
static NAMES: Mutex<Vec<Py<PyString>>> = Mutex::new(Vec::new());

/// Gives a decorated function its id.
pub fn register_function(name: Py<PyString>) -> u32 {
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    names.push(name);
    (names.len() - 1) as u32
}

const MULT: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;
const TAG_BYTES: u64 = 0x6279_7465_7300_0000;
const TAG_BIG: u64 = 0x6269_6769_6e74_0000;
const TAG_FLOAT: u64 = 0x666c_6f61_7400_0000;
const TAG_NONE: u64 = 0x6e6f_6e65_0000_0000;
const TAG_TRUE: u64 = 0x7472_7565_0000_0000;
const TAG_FALSE: u64 = 0x6661_6c73_6500_0000;
const TAG_TUPLE: u64 = 0x7475_706c_6500_0000;
/// How deep tuples may nest in a `cached` call's arguments. Hashing and
/// comparing recurse; this keeps them far from the end of the stack
/// (`functools.lru_cache` hashes through CPython's own recursion limit).
const MAX_KEY_DEPTH: usize = 100;

#[inline]
pub fn mix(hash: u64, seed: u64) -> u64 {
    let m = u128::from(hash ^ seed).wrapping_mul(MULT);
    (m as u64) ^ ((m >> 64) as u64)
}

/// A key as stored in the cache.
pub enum Key {
    Str(Py<PyString>),
    Bytes(Py<PyBytes>),
    Int(i64),
    /// An int beyond 64 bits.
    Big(Py<PyInt>),
    /// A call of a `cached` function: the function's id and its arguments,
    /// a tuple of str, bytes, int, float, bool, None and such tuples.
    Call(u32, Py<PyTuple>),
}

impl Key {
    /// A probe for this stored key, to compare it with another.
    pub fn probe<'py>(&self, py: Python<'py>) -> Probe<'py, 'py> {
        match self {
            Key::Str(s) => Probe::Str(Cow::Owned(s.bind(py).clone())),
            Key::Bytes(b) => Probe::Bytes(Cow::Owned(b.bind(py).clone())),
            Key::Int(i) => Probe::Int(*i),
            Key::Big(b) => Probe::Big(b.bind(py).clone()),
            Key::Call(f, t) => Probe::Call(*f, Cow::Owned(t.bind(py).clone())),
        }
    }

    /// The key as the caller sees it: the str, bytes or int object, or for
    /// a `cached` call `(qualname, args)`, with keyword arguments as a
    /// trailing tuple of sorted `(name, value)` pairs.
    pub fn into_py(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match self {
            Key::Str(s) => s.into_any(),
            Key::Bytes(b) => b.into_any(),
            Key::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
            Key::Big(b) => b.into_any(),
            Key::Call(func, args) => {
                let name = {
                    let names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
                    names
                        .get((func & !KWARGS_BIT) as usize)
                        .map(|n| n.clone_ref(py).into_any())
                        .unwrap_or_else(|| py.None())
                };
                PyTuple::new(py, [name, args.into_any()])?
                    .into_any()
                    .unbind()
            }
        })
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Key {
        match self {
            Key::Str(s) => Key::Str(s.clone_ref(py)),
            Key::Bytes(b) => Key::Bytes(b.clone_ref(py)),
            Key::Int(i) => Key::Int(*i),
            Key::Big(b) => Key::Big(b.clone_ref(py)),
            Key::Call(f, t) => Key::Call(*f, t.clone_ref(py)),
        }
    }
}

/// A key being looked up: borrowed from the caller when it is already of an
/// exact type, a normalised copy otherwise.
pub enum Probe<'a, 'py> {
    Str(Cow<'a, Bound<'py, PyString>>),
    Bytes(Cow<'a, Bound<'py, PyBytes>>),
    Int(i64),
    Big(Bound<'py, PyInt>),
    Call(u32, Cow<'a, Bound<'py, PyTuple>>),
}

impl<'py> Probe<'_, 'py> {
    /// Classifies and hashes `key` (a `MemoryCache` key: str, bytes or int).
    /// Always inlined: returned through memory, the probe costs a
    /// store-forwarding stall on every lookup.
    #[inline(always)]
    pub fn new<'a>(key: &'a Bound<'py, PyAny>, seed: u64) -> Result<(u64, Probe<'a, 'py>)> {
        if let Ok(s) = key.cast_exact::<PyString>() {
            return Ok((mix(s.hash()? as u64, seed), Probe::Str(Cow::Borrowed(s))));
        }
        if let Ok(i) = key.cast_exact::<PyInt>() {
            return Ok(match i.extract::<i64>() {
                Ok(v) => (mix(v as u64, seed), Probe::Int(v)),
                Err(_) => (big_hash(i, seed)?, Probe::Big(i.clone())),
            });
        }
        if let Ok(b) = key.cast_exact::<PyBytes>() {
            return Ok((
                mix(b.hash()? as u64 ^ TAG_BYTES, seed),
                Probe::Bytes(Cow::Borrowed(b)),
            ));
        }
        Self::normalised(key, seed)
    }

    /// Subclasses of str, bytes and int, copied to their base type.
    #[cold]
    fn normalised<'a>(key: &'a Bound<'py, PyAny>, seed: u64) -> Result<(u64, Probe<'a, 'py>)> {
        let py = key.py();
        if let Ok(s) = key.cast::<PyString>() {
            let exact = PyString::new(py, s.to_str()?);
            return Ok((
                mix(exact.hash()? as u64, seed),
                Probe::Str(Cow::Owned(exact)),
            ));
        }
        if let Ok(b) = key.cast::<PyBytes>() {
            let exact = PyBytes::new(py, b.as_bytes());
            return Ok((
                mix(exact.hash()? as u64 ^ TAG_BYTES, seed),
                Probe::Bytes(Cow::Owned(exact)),
            ));
        }
        if key.is_instance_of::<PyInt>() && !key.is_instance_of::<PyBool>() {
            if let Ok(v) = key.extract::<i64>() {
                return Ok((mix(v as u64, seed), Probe::Int(v)));
            }
            let exact = py
                .get_type::<PyInt>()
                .call1((key,))?
                .cast_into::<PyInt>()
                .map_err(PyErr::from)?;
            return Ok((big_hash(&exact, seed)?, Probe::Big(exact)));
        }
        Err(key_type_error(key))
    }

    /// Whether the stored key equals this one. Runs no Python code.
    #[inline(always)]
    pub fn matches(&self, stored: &Key) -> bool {
        match (self, stored) {
            (Probe::Str(p), Key::Str(s)) => same_or_equal(s.bind(p.py()).as_any(), p.as_any()),
            (Probe::Int(p), Key::Int(s)) => p == s,
            (Probe::Bytes(p), Key::Bytes(s)) => {
                p.as_ptr() == s.as_ptr() || p.as_bytes() == s.bind(p.py()).as_bytes()
            }
            (Probe::Big(p), Key::Big(s)) => same_or_equal(s.bind(p.py()).as_any(), p.as_any()),
            (Probe::Call(pf, p), Key::Call(sf, s)) => {
                pf == sf && tuples_equal(p, s.bind(p.py())).unwrap_or(false)
            }
            _ => false,
        }
    }

    /// The key to store, sharing the probe's objects.
    pub fn to_key(&self) -> Key {
        match self {
            Probe::Str(s) => Key::Str(s.as_ref().clone().unbind()),
            Probe::Bytes(b) => Key::Bytes(b.as_ref().clone().unbind()),
            Probe::Int(i) => Key::Int(*i),
            Probe::Big(b) => Key::Big(b.clone().unbind()),
            Probe::Call(f, t) => Key::Call(*f, t.as_ref().clone().unbind()),
        }
    }

    /// A `cached` call key: the function id and the argument tuple.
    pub fn call<'a>(
        func: u32,
        args: &'a Bound<'py, PyTuple>,
        seed: u64,
    ) -> Result<(u64, Probe<'a, 'py>)> {
        let (hash, normalised) = hash_args(args, seed, 0)?;
        let probe = match normalised {
            None => Cow::Borrowed(args),
            Some(copy) => Cow::Owned(copy),
        };
        Ok((mix(hash ^ u64::from(func), seed), Probe::Call(func, probe)))
    }
}

fn big_hash(i: &Bound<'_, PyInt>, seed: u64) -> PyResult<u64> {
    Ok(mix(i.hash()? as u64 ^ TAG_BIG, seed))
}

#[inline]
fn same_or_equal(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> bool {
    // Both are exact str (or exact int) objects: the built-in comparison
    // runs no Python code and cannot fail.
    a.as_ptr() == b.as_ptr() || a.eq(b).unwrap_or(false)
}

/// Hashes a call's argument tuple, element by element. Returns a copy of the
/// tuple when an element had to be normalised (a subclass of a supported
/// type), `None` when the tuple can be stored as it is.
fn hash_args<'py>(
    args: &Bound<'py, PyTuple>,
    seed: u64,
    depth: usize,
) -> Result<(u64, Option<Bound<'py, PyTuple>>)> {
    if depth > MAX_KEY_DEPTH {
        return Err(Error::TooDeep {
            name: "cached",
            limit: MAX_KEY_DEPTH,
        });
    }
    let mut hash = TAG_TUPLE ^ args.len() as u64;
    let mut copy: Option<Vec<Bound<'py, PyAny>>> = None;
    for (position, item) in args.iter().enumerate() {
        let (h, replaced) = hash_arg(&item, seed, position, depth)?;
        hash = mix(hash.rotate_left(5) ^ h, seed);
        if let Some(new) = replaced {
            copy.get_or_insert_with(|| args.iter().take(position).collect())
                .push(new);
        } else if let Some(items) = copy.as_mut() {
            items.push(item);
        }
    }
    let copy = copy
        .map(|items| PyTuple::new(args.py(), items))
        .transpose()?;
    Ok((hash, copy))
}

fn hash_arg<'py>(
    item: &Bound<'py, PyAny>,
    seed: u64,
    position: usize,
    depth: usize,
) -> Result<(u64, Option<Bound<'py, PyAny>>)> {
    let py = item.py();
    if item.is_exact_instance_of::<PyString>() || item.is_exact_instance_of::<PyBytes>() {
        let tag = if item.is_exact_instance_of::<PyBytes>() {
            TAG_BYTES
        } else {
            0
        };
        return Ok((item.hash()? as u64 ^ tag, None));
    }
    if let Ok(i) = item.cast_exact::<PyInt>() {
        return Ok(match i.extract::<i64>() {
            Ok(v) => (v as u64, None),
            Err(_) => (i.hash()? as u64 ^ TAG_BIG, None),
        });
    }
    if item.is_none() {
        return Ok((TAG_NONE, None));
    }
    if let Ok(b) = item.cast_exact::<PyBool>() {
        return Ok((if b.is_true() { TAG_TRUE } else { TAG_FALSE }, None));
    }
    if let Ok(f) = item.cast_exact::<PyFloat>() {
        let v = f.value();
        let bits = if v == 0.0 { 0 } else { v.to_bits() };
        return Ok((bits ^ TAG_FLOAT, None));
    }
    if let Ok(t) = item.cast_exact::<PyTuple>() {
        let (h, copy) = hash_args(t, seed, depth + 1)?;
        return Ok((h, copy.map(Bound::into_any)));
    }
    // A subclass of a supported type: hash and store its base-type copy.
    let base: Option<Bound<'py, PyAny>> = if let Ok(s) = item.cast::<PyString>() {
        Some(PyString::new(py, s.to_str()?).into_any())
    } else if let Ok(b) = item.cast::<PyBytes>() {
        Some(PyBytes::new(py, b.as_bytes()).into_any())
    } else if item.is_instance_of::<PyInt>() && !item.is_instance_of::<PyBool>() {
        Some(py.get_type::<PyInt>().call1((item,))?)
    } else if let Ok(f) = item.cast::<PyFloat>() {
        Some(PyFloat::new(py, f.value()).into_any())
    } else if let Ok(t) = item.cast::<PyTuple>() {
        Some(PyTuple::new(py, t.iter())?.into_any())
    } else {
        None
    };
    match base {
        Some(exact) => {
            let (h, inner) = hash_arg(&exact, seed, position, depth)?;
            Ok((h, Some(inner.unwrap_or(exact))))
        }
        None => Err(Error::type_error(
            "cached",
            format!(
                "argument {position} is a {}; arguments must be str, bytes, int, float, \
                 bool, None or tuples of them (pass key_fn=... for other types)",
                type_name(item)
            ),
        )),
    }
}

/// Element-wise equality of two normalised argument tuples. Every element is
/// of an exact built-in type, so no Python code runs.
fn tuples_equal(a: &Bound<'_, PyTuple>, b: &Bound<'_, PyTuple>) -> PyResult<bool> {
    if a.as_ptr() == b.as_ptr() {
        return Ok(true);
    }
    if a.len() != b.len() {
        return Ok(false);
    }
    for (x, y) in a.iter().zip(b.iter()) {
        if x.as_ptr() == y.as_ptr() {
            continue;
        }
        if !x.get_type().is(y.get_type()) {
            return Ok(false);
        }
        let equal = if let (Ok(x), Ok(y)) = (x.cast_exact::<PyTuple>(), y.cast_exact::<PyTuple>()) {
            tuples_equal(x, y)?
        } else if let (Ok(x), Ok(y)) = (x.cast_exact::<PyFloat>(), y.cast_exact::<PyFloat>()) {
            let (x, y) = (x.value(), y.value());
            x == y || x.to_bits() == y.to_bits()
        } else {
            x.eq(&y)?
        };
        if !equal {
            return Ok(false);
        }
    }
    Ok(true)
}
