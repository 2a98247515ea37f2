//! `MemoryCache`: the Python face of the core's sharded cache.
//!
//! Every method follows one pattern: classify and hash the key (which may
//! run CPython's hash, never user code), call the core with a `Removed`
//! buffer, and only once the core has released the shard lock, hand evicted
//! entries to `on_evict` and let the buffer drop the Python objects.

pub mod cached;
pub mod keys;

use std::time::Duration;

use langcluster_core::cache::{ttl_from_secs, Cache, Cause, Config, Now, Removed, Write};
use langcluster_core::error::Error as CoreError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::PyTraverseError;

use crate::convert::{clock, integer, iterate, optional_integer, optional_number, read_clock};
use crate::errors::{log_callback_error, Error, Result};
use keys::{Key, Probe};

type Value = Py<PyAny>;
type Out = Removed<Key, Value>;

/// A bounded in-memory cache of Python objects, sharded, with a choice of
/// eviction policy, a capacity in entries or in weight, and per-entry TTL
/// and time-to-idle.
#[pyclass(frozen, module = "langcluster._core")]
pub struct MemoryCache {
    inner: Cache<Key, Value>,
    seed: u64,
    on_evict: Option<Py<PyAny>>,
    /// `(key, value) -> int >= 0`: with it, the capacity is a total weight.
    weigher: Option<Py<PyAny>>,
    /// A clock of the caller's (for tests), read before any shard is locked.
    clock: Option<Py<PyAny>>,
}

/// The policy argument: a str (which names are valid is the core's to judge).
pub struct PolicyName(std::borrow::Cow<'static, str>);

impl PolicyName {
    const DEFAULT: PolicyName = PolicyName(std::borrow::Cow::Borrowed("tinylfu"));
}

impl<'py> FromPyObject<'_, 'py> for PolicyName {
    type Error = PyErr;

    fn extract(value: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        Ok(PolicyName(crate::convert::string("policy", &value)?.into()))
    }
}

/// The default of `pop`: one the caller gave (None is a value), or none.
pub enum Fallback {
    Missing,
    Given(Py<PyAny>),
}

impl<'py> FromPyObject<'_, 'py> for Fallback {
    type Error = PyErr;

    fn extract(value: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        Ok(Fallback::Given(value.to_owned().unbind()))
    }
}

/// An optional TTL (or time-to-idle) in seconds, checked by the core.
pub fn ttl_arg(name: &'static str, ttl: Option<&Bound<'_, PyAny>>) -> Result<Option<Duration>> {
    Ok(optional_number(name, ttl)?
        .map(|secs| ttl_from_secs(name, secs))
        .transpose()?)
}

/// The core's write settings from a call's `ttl` and `tti` (`None` leaves
/// the cache's default), at weight 1 until the entry is weighed.
pub fn write_arg(ttl: Option<&Bound<'_, PyAny>>, tti: Option<&Bound<'_, PyAny>>) -> Result<Write> {
    Ok(Write {
        ttl: ttl_arg("ttl", ttl)?,
        tti: ttl_arg("tti", tti)?,
        ..Write::DEFAULT
    })
}

/// What a weigher returned, as a weight: an int from 0 to `u32::MAX`.
fn weight_of(returned: &Bound<'_, PyAny>) -> Result<u32> {
    let weight = integer("weigher", returned)?;
    u32::try_from(weight).map_err(|_| {
        CoreError::invalid(
            "weigher",
            format!("must return an int from 0 to {}, got {weight}", u32::MAX),
        )
        .into()
    })
}

impl MemoryCache {
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The time of one operation: the process clock when needed, or the
    /// caller's clock, read now, before any shard is locked (it is Python
    /// code, which must never run under a shard lock).
    #[inline(always)]
    fn now(&self, py: Python<'_>) -> Result<Now> {
        match &self.clock {
            None => Ok(Now::LAZY),
            Some(clock) => Ok(Now::at(read_clock("clock", clock.bind(py))?)),
        }
    }

    /// Looks a classified key up; the value is shared, not copied.
    #[inline(always)]
    pub fn lookup(
        &self,
        py: Python<'_>,
        hash: u64,
        probe: &Probe<'_, '_>,
    ) -> Result<Option<Value>> {
        self.with_shard(py, |now, out| {
            self.inner
                .get(now, hash, |k| probe.matches(k), |v| v.clone_ref(py), out)
        })
    }

    /// Runs one core operation with its time and a buffer for what leaves
    /// the cache, then settles the buffer once the shard is unlocked.
    #[inline(always)]
    fn with_shard<R>(&self, py: Python<'_>, op: impl FnOnce(Now, &mut Out) -> R) -> Result<R> {
        let now = self.now(py)?;
        let mut out = Out::new();
        let result = op(now, &mut out);
        self.after(py, out);
        Ok(result)
    }

    /// Looks a key up without counting a hit or a miss.
    pub fn peek(&self, py: Python<'_>, hash: u64, probe: &Probe<'_, '_>) -> Result<Option<Value>> {
        self.with_shard(py, |now, out| {
            self.inner
                .peek(now, hash, |k| probe.matches(k), |v| v.clone_ref(py), out)
        })
    }

    /// The weight of an entry about to be written: 1 without a weigher,
    /// else what the weigher returns for `(key, value)`. It runs here, with
    /// no shard locked; if it raises, the write stores nothing. `key` is
    /// the caller's key object, or `None` to build one from the probe.
    pub fn weigh(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        probe: &Probe<'_, '_>,
        value: &Value,
    ) -> Result<u32> {
        let Some(weigher) = &self.weigher else {
            return Ok(1);
        };
        let returned = match key {
            Some(key) => weigher.call1(py, (key, value))?,
            None => weigher.call1(py, (probe.to_key().into_py(py)?, value))?,
        };
        weight_of(returned.bind(py))
    }

    /// Stores a value whose weight is known (see `weigh`).
    #[inline(always)]
    pub fn store_weighed(
        &self,
        py: Python<'_>,
        hash: u64,
        probe: &Probe<'_, '_>,
        value: Value,
        write: Write,
        weight: u32,
    ) -> Result<()> {
        let write = Write { weight, ..write };
        let replaced = self.with_shard(py, |now, out| {
            let key = || probe.to_key();
            self.inner
                .insert(now, hash, key, value, write, |k| probe.matches(k), out)
        })?;
        // The old (or rejected) value is dropped here, after the shard lock
        // is released.
        drop(replaced);
        Ok(())
    }

    /// Weighs a value and stores it.
    #[inline(always)]
    pub fn store(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        hash: u64,
        probe: &Probe<'_, '_>,
        value: Value,
        write: Write,
    ) -> Result<()> {
        let weight = self.weigh(py, key, probe, &value)?;
        self.store_weighed(py, hash, probe, value, write, weight)
    }

    pub fn forget(
        &self,
        py: Python<'_>,
        hash: u64,
        probe: &Probe<'_, '_>,
    ) -> Result<Option<Value>> {
        let removed = self.with_shard(py, |now, out| {
            self.inner.remove(now, hash, |k| probe.matches(k), out)
        })?;
        Ok(removed.map(|(_, v)| v))
    }

    /// Runs after the shard lock is released: reports evictions and expiries
    /// to `on_evict`, then drops everything that left the cache.
    #[inline(always)]
    fn after(&self, py: Python<'_>, out: Out) {
        if out.is_empty() {
            // Nothing to drop: an empty inline buffer owns no memory.
            std::mem::forget(out);
            return;
        }
        self.notify(py, out.into_iter());
    }

    fn notify(&self, py: Python<'_>, removed: impl Iterator<Item = (Key, Value, Cause)>) {
        let Some(callback) = &self.on_evict else {
            return;
        };
        for (key, value, cause) in removed {
            let result = key
                .into_py(py)
                .and_then(|key| callback.call1(py, (key, value, cause.name())));
            if let Err(err) = result {
                // A failing listener is the listener's problem: it is logged
                // and the cache operation that triggered it still succeeds.
                log_callback_error(
                    py,
                    "langcluster.cache.memory",
                    "on_evict callback raised".into(),
                    &err,
                );
            }
        }
    }
}

#[pymethods]
impl MemoryCache {
    // Values (and `on_evict`) may refer back to the cache or to its owner:
    // the collector must see them. A shard locked at that moment is skipped,
    // which only keeps its values alive until a later collection.
    fn __traverse__(&self, visit: PyVisit<'_>) -> std::result::Result<(), PyTraverseError> {
        visit.call(&self.on_evict)?;
        visit.call(&self.weigher)?;
        visit.call(&self.clock)?;
        self.inner.try_visit_values(|value| visit.call(value))
    }

    fn __clear__(&self) {
        drop(self.inner.clear());
    }

    #[new]
    #[pyo3(signature = (capacity, *, policy=PolicyName::DEFAULT, ttl=None, tti=None, weigher=None, shards=None, on_evict=None, clock=None))]
    #[pyo3(
        text_signature = "(capacity, *, policy='tinylfu', ttl=None, tti=None, weigher=None, shards=None, on_evict=None, clock=None)"
    )]
    // Each argument is a constructor keyword of its own.
    #[allow(clippy::too_many_arguments)]
    fn new(
        capacity: &Bound<'_, PyAny>,
        policy: PolicyName,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
        weigher: Option<&Bound<'_, PyAny>>,
        shards: Option<&Bound<'_, PyAny>>,
        on_evict: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> Result<Self> {
        let weigher = crate::convert::optional_callable("weigher", weigher)?;
        let config = Config::from_settings(
            integer("capacity", capacity)?,
            &policy.0,
            optional_integer("shards", shards)?,
            optional_number("ttl", ttl)?,
            optional_number("tti", tti)?,
            weigher.is_some(),
        )?;
        Ok(MemoryCache {
            inner: Cache::new(config)?,
            seed: fastrand::u64(..),
            on_evict: crate::convert::optional_callable("on_evict", on_evict)?,
            weigher,
            clock: self::clock("clock", clock)?,
        })
    }

    /// The value stored under `key`, or `default`.
    #[pyo3(signature = (key, default=None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<&Bound<'_, PyAny>>,
    ) -> Result<Py<PyAny>> {
        let (hash, probe) = Probe::new(key, self.seed)?;
        Ok(match self.lookup(py, hash, &probe)? {
            Some(v) => v,
            None => default.map_or_else(|| py.None(), |d| d.clone().unbind()),
        })
    }

    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> Result<Py<PyAny>> {
        let (hash, probe) = Probe::new(key, self.seed)?;
        self.lookup(py, hash, &probe)?
            .ok_or_else(|| Error::MissingKey(key.clone().unbind()))
    }

    /// Stores `value` under `key`; `ttl` and `tti` (seconds) override the
    /// cache's defaults for this entry.
    #[pyo3(signature = (key, value, ttl=None, tti=None))]
    fn set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: Py<PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
    ) -> Result<()> {
        let write = write_arg(ttl, tti)?;
        let (hash, probe) = Probe::new(key, self.seed)?;
        self.store(py, Some(key), hash, &probe, value, write)
    }

    fn __setitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>, value: Py<PyAny>) -> Result<()> {
        let (hash, probe) = Probe::new(key, self.seed)?;
        self.store(py, Some(key), hash, &probe, value, Write::DEFAULT)
    }

    /// Removes `key`; returns whether it was present.
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> Result<bool> {
        let (hash, probe) = Probe::new(key, self.seed)?;
        Ok(self.forget(py, hash, &probe)?.is_some())
    }

    fn __delitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> Result<()> {
        if self.delete(py, key)? {
            Ok(())
        } else {
            Err(Error::MissingKey(key.clone().unbind()))
        }
    }

    /// Removes `key` and returns its value; `default` if absent (when one
    /// is given, None included), else KeyError, as `dict.pop`.
    #[pyo3(signature = (key, default = Fallback::Missing))]
    #[pyo3(text_signature = "($self, key, default=...)")]
    fn pop(&self, py: Python<'_>, key: &Bound<'_, PyAny>, default: Fallback) -> Result<Py<PyAny>> {
        let (hash, probe) = Probe::new(key, self.seed)?;
        match (self.forget(py, hash, &probe)?, default) {
            (Some(v), _) => Ok(v),
            (None, Fallback::Given(d)) => Ok(d),
            (None, Fallback::Missing) => Err(Error::MissingKey(key.clone().unbind())),
        }
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> Result<bool> {
        let (hash, probe) = Probe::new(key, self.seed)?;
        self.with_shard(py, |now, out| {
            self.inner.contains(now, hash, |k| probe.matches(k), out)
        })
    }

    /// The entries found among `keys`, as a dict; misses are left out.
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyDict>> {
        let found = PyDict::new(py);
        for key in iterate("keys", "an iterable of keys", keys)? {
            let key = key?;
            let (hash, probe) = Probe::new(&key, self.seed)?;
            if let Some(v) = self.lookup(py, hash, &probe)? {
                found.set_item(&key, v)?;
            }
        }
        Ok(found)
    }

    /// Stores every item of `mapping` (a mapping or an iterable of pairs).
    /// Every key is checked, and every value weighed, before the first is
    /// stored.
    #[pyo3(signature = (mapping, ttl=None, tti=None))]
    fn set_many(
        &self,
        py: Python<'_>,
        mapping: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
    ) -> Result<()> {
        let write = write_arg(ttl, tti)?;
        let items = if mapping.hasattr("items")? {
            mapping.call_method0("items")?
        } else {
            mapping.clone()
        };
        let mut pairs = Vec::new();
        let expected = "a mapping or an iterable of (key, value) pairs";
        for item in iterate("mapping", expected, &items)? {
            let item = item?;
            let (key, value): (Bound<'_, PyAny>, Py<PyAny>) = item
                .extract()
                .map_err(|_| Error::expected("mapping", expected, &item))?;
            pairs.push((key, value));
        }
        let mut probes = Vec::with_capacity(pairs.len());
        for (key, value) in &pairs {
            let (hash, probe) = Probe::new(key, self.seed)?;
            let weight = self.weigh(py, Some(key), &probe, value)?;
            probes.push((hash, probe, weight));
        }
        for ((hash, probe, weight), (_, value)) in probes.iter().zip(pairs.iter()) {
            self.store_weighed(py, *hash, probe, value.clone_ref(py), write, *weight)?;
        }
        Ok(())
    }

    /// Removes every key of `keys`; returns how many were present.
    fn delete_many(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> Result<usize> {
        let mut removed = 0;
        for key in iterate("keys", "an iterable of keys", keys)? {
            removed += usize::from(self.delete(py, &key?)?);
        }
        Ok(removed)
    }

    /// Removes every entry (without calling `on_evict`). Statistics are kept.
    fn clear(&self) {
        // The entries are dropped here, after every shard lock is released.
        drop(self.inner.clear());
    }

    /// Frees every expired entry now; returns how many. Other operations free
    /// expired entries as they go, so this is only needed to reclaim memory
    /// from a cache that sits idle.
    fn purge_expired(&self, py: Python<'_>) -> Result<usize> {
        let expired = self.inner.purge_expired(self.now(py)?);
        let count = expired.len();
        self.notify(py, expired.into_iter());
        Ok(count)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// A snapshot of the live keys, in no particular order.
    fn keys<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyList>> {
        let keys = self.inner.keys(self.now(py)?, |k| k.clone_ref(py));
        let objects = keys
            .into_iter()
            .map(|k| k.into_py(py))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, objects)?)
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        Ok(self.keys(py)?.as_any().try_iter()?.into_any())
    }

    /// Counters since creation or the last `reset_stats()`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        let lookups = s.hits + s.misses;
        d.set_item("hits", s.hits)?;
        d.set_item("misses", s.misses)?;
        d.set_item("evictions", s.evictions)?;
        d.set_item("expirations", s.expirations)?;
        d.set_item("rejections", s.rejections)?;
        d.set_item("size", s.size)?;
        d.set_item("weighted_size", s.weighted_size)?;
        d.set_item("capacity", s.capacity)?;
        d.set_item(
            "hit_ratio",
            if lookups == 0 {
                0.0
            } else {
                s.hits as f64 / lookups as f64
            },
        )?;
        Ok(d)
    }

    fn reset_stats(&self) {
        self.inner.reset_stats();
    }

    /// Bytes of memory held by the cache's own structures: its tables,
    /// lists, sketch and expiry queue, not the key and value objects.
    fn memory_usage(&self) -> usize {
        self.inner.heap_bytes()
    }

    #[getter]
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }

    /// The weigher, or None for a cache whose capacity counts entries.
    #[getter]
    fn weigher(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.weigher.as_ref().map(|w| w.clone_ref(py))
    }

    /// The heaviest entry that can be stored: the capacity, or its share per
    /// shard when there are several.
    #[getter]
    fn max_weight(&self) -> u64 {
        self.inner.max_weight()
    }

    #[getter]
    fn policy(&self) -> &'static str {
        self.inner.policy().name()
    }

    #[getter]
    fn ttl(&self) -> Option<f64> {
        self.inner.default_ttl().map(|d| d.as_secs_f64())
    }

    #[getter]
    fn tti(&self) -> Option<f64> {
        self.inner.default_tti().map(|d| d.as_secs_f64())
    }

    #[getter]
    fn shards(&self) -> usize {
        self.inner.shard_count()
    }

    fn __repr__(&self) -> String {
        format!(
            "MemoryCache(capacity={}, policy='{}', size={})",
            self.inner.capacity(),
            self.inner.policy().name(),
            self.inner.len()
        )
    }
}
