//! `cached(cache)`: the function wrapper whose hit path runs in Rust.
//!
//! A call builds its key from the argument tuple CPython already made (no
//! new tuple when there are no keyword arguments), hashes it element by
//! element and looks it up. Only a miss goes to Python, where
//! `langcluster.cache._Flights` runs single flight: one computation per
//! missing key however many threads or tasks ask for it at once.

use std::time::Duration;

use langcluster_core::cache::Write;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::PyTraverseError;

use super::keys::{register_function, Key, Probe, KWARGS_BIT};
use super::{ttl_arg, MemoryCache};
use crate::convert::optional_callable;
use crate::errors::{type_name, Error, Result};
use crate::gcref::GcRef;
use crate::ready::Ready;

/// The wrapper `cached` returns. Calling it returns the cached value, or
/// computes, stores and returns it; for a coroutine function it returns an
/// awaitable.
#[pyclass(frozen, dict, module = "langcluster._core")]
pub struct CachedFunction {
    // The references are `GcRef`s: the collector may visit the object
    // before they are written (see `gcref`).
    func: GcRef<PyAny>,
    cache: GcRef<MemoryCache>,
    flights: GcRef<PyAny>,
    key_fn: Option<Py<PyAny>>,
    ttl: Option<Duration>,
    id: u32,
    is_async: bool,
}

/// One missing key, handed to the single-flight code in Python: hashable,
/// comparable, and able to read and fill its entry.
#[pyclass(frozen, module = "langcluster._core")]
pub struct CallKey {
    cache: Py<MemoryCache>,
    hash: u64,
    key: Key,
    ttl: Option<Duration>,
}

impl CachedFunction {
    /// The key tuple of a call: the arguments as they are, or with keyword
    /// arguments sorted by name and appended, or `key_fn`'s result.
    fn key_args<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> Result<(u32, Option<Bound<'py, PyTuple>>)> {
        if let Some(key_fn) = &self.key_fn {
            let custom = key_fn.bind(py).call(args, kwargs)?;
            return Ok((self.id, Some(PyTuple::new(py, [custom])?)));
        }
        match kwargs.filter(|k| !k.is_empty()) {
            None => Ok((self.id, None)),
            Some(kwargs) => {
                let items = kwargs.items();
                items.sort()?;
                let pairs = PyTuple::new(py, items)?;
                let mut all: Vec<Bound<'py, PyAny>> = args.iter().collect();
                all.push(pairs.into_any());
                Ok((self.id | KWARGS_BIT, Some(PyTuple::new(py, all)?)))
            }
        }
    }
}

impl CachedFunction {
    /// Hashes a call's key tuple. A key function's result that is not a
    /// valid key is reported as the key function's fault.
    fn probe<'a, 'py>(
        &self,
        id: u32,
        key_args: &'a Bound<'py, PyTuple>,
        seed: u64,
    ) -> Result<(u64, Probe<'a, 'py>)> {
        Probe::call(id, key_args, seed).map_err(|err| match (&self.key_fn, err) {
            (Some(_), Error::Type { .. }) => {
                let returned = key_args
                    .get_item(0)
                    .map(|item| type_name(&item))
                    .unwrap_or_default();
                Error::type_error(
                    "key_fn",
                    format!(
                        "the key function returned a {returned}; it must return str, bytes, \
                         int, float, bool, None or a tuple of them"
                    ),
                )
            }
            (_, err) => err,
        })
    }
}

/// Wraps `func` for `langcluster.cached`; `flights` is the single-flight
/// runner that computes a missing key (`langcluster.cache.memory`).
#[pyfunction]
#[pyo3(signature = (func, cache, flights, *, ttl=None, key_fn=None, is_async=false))]
pub fn wrap_cached(
    py: Python<'_>,
    func: Py<PyAny>,
    cache: Py<MemoryCache>,
    flights: Py<PyAny>,
    ttl: Option<&Bound<'_, PyAny>>,
    key_fn: Option<&Bound<'_, PyAny>>,
    is_async: bool,
) -> Result<CachedFunction> {
    let ttl = ttl_arg("ttl", ttl)?;
    let name = func
        .bind(py)
        .getattr("__qualname__")
        .and_then(|n| Ok(n.cast_into::<PyString>()?))
        .or_else(|_| func.bind(py).repr())?;
    Ok(CachedFunction {
        func: GcRef::new(func),
        cache: GcRef::new(cache),
        flights: GcRef::new(flights),
        key_fn: optional_callable("key_fn", key_fn)?,
        ttl,
        id: register_function(name.unbind()),
        is_async,
    })
}

#[pymethods]
impl CachedFunction {
    // A wrapper of a bound method, kept on the instance, is a cycle: the
    // collector must see the wrapper's references (its __dict__ is visited
    // and cleared by PyO3).
    fn __traverse__(&self, visit: PyVisit<'_>) -> std::result::Result<(), PyTraverseError> {
        self.func.visit(&visit)?;
        self.cache.visit(&visit)?;
        self.flights.visit(&visit)?;
        visit.call(&self.key_fn)
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> Result<Py<PyAny>> {
        let (id, built) = self.key_args(py, args, kwargs)?;
        let cache = self.cache.get()?.get();
        let (hash, probe) = self.probe(id, built.as_ref().unwrap_or(args), cache.seed())?;
        if let Some(value) = cache.lookup(py, hash, &probe)? {
            return if self.is_async {
                Ok(Py::new(py, Ready::new(value))?.into_any())
            } else {
                Ok(value)
            };
        }
        let token = CallKey {
            cache: self.cache.get()?.clone_ref(py),
            hash,
            key: probe.to_key(),
            ttl: self.ttl,
        };
        let method = if self.is_async { "arun" } else { "run" };
        Ok(self
            .flights
            .get()?
            .call_method1(py, method, (self.func.get()?, token, args, kwargs))?)
    }

    /// Drops the cached result of this call, if any; returns whether there
    /// was one.
    #[pyo3(signature = (*args, **kwargs))]
    fn invalidate(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> Result<bool> {
        let (id, built) = self.key_args(py, args, kwargs)?;
        let cache = self.cache.get()?.get();
        let (hash, probe) = self.probe(id, built.as_ref().unwrap_or(args), cache.seed())?;
        Ok(cache.forget(py, hash, &probe)?.is_some())
    }

    #[getter]
    fn cache(&self, py: Python<'_>) -> Result<Py<MemoryCache>> {
        Ok(self.cache.get()?.clone_ref(py))
    }

    fn __repr__(&self, py: Python<'_>) -> Result<String> {
        Ok(format!("<cached {}>", self.func.get()?.bind(py).repr()?))
    }
}

#[pymethods]
impl CallKey {
    fn __hash__(&self) -> isize {
        self.hash as isize
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<CallKey>() {
            Ok(other) => {
                let other = other.get();
                other.hash == self.hash && self.key.probe(py).matches(&other.key)
            }
            Err(_) => false,
        }
    }

    /// The cached value, or `default` if the entry is missing.
    fn lookup(&self, py: Python<'_>, default: Py<PyAny>) -> Result<Py<PyAny>> {
        Ok(self
            .cache
            .get()
            .peek(py, self.hash, &self.key.probe(py))?
            .unwrap_or(default))
    }

    /// Stores the computed value under this key.
    fn store(&self, py: Python<'_>, value: Py<PyAny>) -> Result<()> {
        let write = Write {
            ttl: self.ttl,
            ..Write::DEFAULT
        };
        self.cache
            .get()
            .store(py, None, self.hash, &self.key.probe(py), value, write)
    }
}
