//! `MemoryCache`: the Python face of the core's sharded cache.
//!
//! Every method follows one pattern: classify and hash the key (which may
//! run CPython's hash, never user code), call the core with a `Removed`
//! buffer, and only once the core has released the shard lock, hand evicted
//! entries to `on_evict` and let the buffer drop the Python objects.

use std::time::Duration;

use langcluster_core::cache::{ttl_from_secs, Cache, Cause, Config, PolicyKind, Removed};
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList};

use crate::cache_keys::{type_name, Key, Probe};
use crate::errors::{log_callback_error, to_py};

type Value = Py<PyAny>;
type Out = Removed<Key, Value>;

/// A bounded in-memory cache of Python objects, sharded, with a choice of
/// eviction policy and per-entry TTL.
#[pyclass(frozen, module = "langcluster._core")]
pub struct MemoryCache {
    inner: Cache<Key, Value>,
    seed: u64,
    on_evict: Option<Py<PyAny>>,
}

/// Reads an optional TTL in seconds; `None` stays `None`.
pub fn ttl_arg(name: &'static str, ttl: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    let Some(ttl) = ttl.filter(|t| !t.is_none()) else {
        return Ok(None);
    };
    if ttl.is_instance_of::<PyBool>()
        || !(ttl.is_instance_of::<PyInt>() || ttl.is_instance_of::<PyFloat>())
    {
        return Err(PyTypeError::new_err(format!(
            "{name}: must be a number of seconds or None, got {}",
            type_name(ttl)
        )));
    }
    ttl_from_secs(name, ttl.extract::<f64>()?)
        .map(Some)
        .map_err(to_py)
}

fn positive_int(name: &str, value: &Bound<'_, PyAny>) -> PyResult<usize> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "{name}: must be an int, got {}",
            type_name(value)
        )));
    }
    match value.extract::<i64>() {
        Ok(v) if v >= 1 => Ok(v as usize),
        _ => Err(PyValueError::new_err(format!(
            "{name}: must be a positive int, got {value}"
        ))),
    }
}

fn key_to_py(py: Python<'_>, key: Key) -> PyResult<Py<PyAny>> {
    Ok(match key {
        Key::Str(s) => s.into_any(),
        Key::Bytes(b) => b.into_any(),
        Key::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        Key::Big(b) => b.into_any(),
        Key::Call(func, args) => crate::cached::call_key_to_py(py, func, args)?,
    })
}

impl MemoryCache {
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Looks a classified key up; the value is shared, not copied.
    #[inline(always)]
    pub fn lookup(&self, py: Python<'_>, hash: u64, probe: &Probe<'_, '_>) -> Option<Value> {
        let mut out = Out::new();
        let hit = self
            .inner
            .get(hash, |k| probe.matches(k), |v| v.clone_ref(py), &mut out);
        self.after(py, out);
        hit
    }

    /// Looks a key up without counting a hit or a miss.
    pub fn peek(&self, py: Python<'_>, hash: u64, probe: &Probe<'_, '_>) -> Option<Value> {
        let mut out = Out::new();
        let hit = self
            .inner
            .peek(hash, |k| probe.matches(k), |v| v.clone_ref(py), &mut out);
        self.after(py, out);
        hit
    }

    #[inline(always)]
    pub fn store(
        &self,
        py: Python<'_>,
        hash: u64,
        probe: &Probe<'_, '_>,
        value: Value,
        ttl: Option<Duration>,
    ) {
        let mut out = Out::new();
        let replaced = self.inner.insert(
            hash,
            || probe.to_key(),
            value,
            ttl,
            |k| probe.matches(k),
            &mut out,
        );
        self.after(py, out);
        // The old value is dropped here, after the shard lock is released.
        drop(replaced);
    }

    pub fn forget(&self, py: Python<'_>, hash: u64, probe: &Probe<'_, '_>) -> Option<Value> {
        let mut out = Out::new();
        let removed = self.inner.remove(hash, |k| probe.matches(k), &mut out);
        self.after(py, out);
        removed.map(|(_, v)| v)
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
            let result =
                key_to_py(py, key).and_then(|key| callback.call1(py, (key, value, cause.name())));
            if let Err(err) = result {
                // A failing listener is the listener's problem: it is logged
                // and the cache operation that triggered it still succeeds.
                log_callback_error(
                    py,
                    "langcluster.cache",
                    "on_evict callback raised".into(),
                    &err,
                );
            }
        }
    }
}

#[pymethods]
impl MemoryCache {
    #[new]
    #[pyo3(signature = (capacity, *, policy="tinylfu", ttl=None, shards=None, on_evict=None))]
    fn new(
        capacity: &Bound<'_, PyAny>,
        policy: &str,
        ttl: Option<&Bound<'_, PyAny>>,
        shards: Option<&Bound<'_, PyAny>>,
        on_evict: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let capacity = positive_int("capacity", capacity)?;
        let policy = PolicyKind::parse(policy).map_err(to_py)?;
        let shards = shards
            .filter(|s| !s.is_none())
            .map(|s| positive_int("shards", s))
            .transpose()?;
        if let Some(callback) = &on_evict {
            Python::attach(|py| {
                if callback.bind(py).is_callable() {
                    Ok(())
                } else {
                    Err(PyTypeError::new_err("on_evict: must be callable or None"))
                }
            })?;
        }
        let inner = Cache::new(Config {
            capacity,
            policy,
            shards,
            ttl: ttl_arg("ttl", ttl)?,
        })
        .map_err(to_py)?;
        Ok(MemoryCache {
            inner,
            seed: fastrand::u64(..),
            on_evict,
        })
    }

    /// The value stored under `key`, or `default`.
    #[pyo3(signature = (key, default=None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let (hash, probe) = Probe::new(key, self.seed)?;
        Ok(match self.lookup(py, hash, &probe) {
            Some(v) => v,
            None => default.unwrap_or_else(|| py.None()),
        })
    }

    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let (hash, probe) = Probe::new(key, self.seed)?;
        self.lookup(py, hash, &probe)
            .ok_or_else(|| PyKeyError::new_err(key.clone().unbind()))
    }

    /// Stores `value` under `key`; `ttl` (seconds) overrides the default TTL.
    #[pyo3(signature = (key, value, ttl=None))]
    fn set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: Py<PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = ttl_arg("ttl", ttl)?;
        let (hash, probe) = Probe::new(key, self.seed)?;
        self.store(py, hash, &probe, value, ttl);
        Ok(())
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: Py<PyAny>,
    ) -> PyResult<()> {
        let (hash, probe) = Probe::new(key, self.seed)?;
        self.store(py, hash, &probe, value, None);
        Ok(())
    }

    /// Removes `key`; returns whether it was present.
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let (hash, probe) = Probe::new(key, self.seed)?;
        Ok(self.forget(py, hash, &probe).is_some())
    }

    fn __delitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.delete(py, key)? {
            Ok(())
        } else {
            Err(PyKeyError::new_err(key.clone().unbind()))
        }
    }

    /// Removes `key` and returns its value; `default` if absent, else KeyError.
    #[pyo3(signature = (key, default=None))]
    fn pop(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let (hash, probe) = Probe::new(key, self.seed)?;
        match (self.forget(py, hash, &probe), default) {
            (Some(v), _) => Ok(v),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let (hash, probe) = Probe::new(key, self.seed)?;
        let mut out = Out::new();
        let found = self.inner.contains(hash, |k| probe.matches(k), &mut out);
        self.after(py, out);
        Ok(found)
    }

    /// The entries found among `keys`, as a dict; misses are left out.
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let found = PyDict::new(py);
        for key in keys.try_iter()? {
            let key = key?;
            let (hash, probe) = Probe::new(&key, self.seed)?;
            if let Some(v) = self.lookup(py, hash, &probe) {
                found.set_item(&key, v)?;
            }
        }
        Ok(found)
    }

    /// Stores every item of `mapping` (a mapping or an iterable of pairs).
    /// Every key is checked before the first is stored.
    #[pyo3(signature = (mapping, ttl=None))]
    fn set_many(
        &self,
        py: Python<'_>,
        mapping: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = ttl_arg("ttl", ttl)?;
        let items = if mapping.hasattr("items")? {
            mapping.call_method0("items")?
        } else {
            mapping.clone()
        };
        let mut pairs = Vec::new();
        for item in items.try_iter()? {
            let (key, value): (Bound<'_, PyAny>, Py<PyAny>) = item?.extract().map_err(|_| {
                PyTypeError::new_err(
                    "mapping: must be a mapping or an iterable of (key, value) pairs",
                )
            })?;
            pairs.push((key, value));
        }
        let mut probes = Vec::with_capacity(pairs.len());
        for (key, _) in &pairs {
            probes.push(Probe::new(key, self.seed)?);
        }
        for ((hash, probe), (_, value)) in probes.iter().zip(pairs.iter()) {
            self.store(py, *hash, probe, value.clone_ref(py), ttl);
        }
        Ok(())
    }

    /// Removes every key of `keys`; returns how many were present.
    fn delete_many(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut removed = 0;
        for key in keys.try_iter()? {
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
    fn purge_expired(&self, py: Python<'_>) -> usize {
        let expired = self.inner.purge_expired();
        let count = expired.len();
        self.notify(py, expired.into_iter());
        count
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// A snapshot of the live keys, in no particular order.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let keys = self.inner.keys(|k| k.clone_ref(py));
        let objects = keys
            .into_iter()
            .map(|k| key_to_py(py, k))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, objects)
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
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
        d.set_item("size", s.size)?;
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
    fn capacity(&self) -> usize {
        self.inner.capacity()
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
