//! `cached(cache)`: the function wrapper whose hit path runs in Rust.
//!
//! A call builds its key from the argument tuple CPython already made (no
//! new tuple when there are no keyword arguments), hashes it element by
//! element and looks it up. Only a miss goes to Python, where
//! `langcluster.cache._Flights` runs single flight: one computation per
//! missing key however many threads or tasks ask for it at once.

use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::cache::{ttl_arg, MemoryCache};
use crate::cache_keys::{type_name, Key, Probe};
use crate::lease::Ready;

/// Function ids with keyword arguments in the key set this bit, so that
/// `f(1, b=2)` and `f(1, ((\"b\", 2),))` never share an entry.
const KWARGS_BIT: u32 = 1 << 31;

/// The qualified names of decorated functions, by id, for `cache.keys()`.
static NAMES: Mutex<Vec<Py<PyString>>> = Mutex::new(Vec::new());

fn register(name: Py<PyString>) -> u32 {
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    names.push(name);
    (names.len() - 1) as u32
}

/// How a `cached` entry shows in `cache.keys()`: `(qualname, args)`, with
/// keyword arguments as a trailing tuple of sorted `(name, value)` pairs.
pub fn call_key_to_py(py: Python<'_>, func: u32, args: Py<PyTuple>) -> PyResult<Py<PyAny>> {
    let name = {
        let names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
        names
            .get((func & !KWARGS_BIT) as usize)
            .map(|n| n.clone_ref(py).into_any())
            .unwrap_or_else(|| py.None())
    };
    Ok(PyTuple::new(py, [name, args.into_any()])?
        .into_any()
        .unbind())
}

/// The wrapper `cached` returns. Calling it returns the cached value, or
/// computes, stores and returns it; for a coroutine function it returns an
/// awaitable.
#[pyclass(frozen, dict, module = "langcluster._core")]
pub struct CachedFunction {
    func: Py<PyAny>,
    cache: Py<MemoryCache>,
    flights: Py<PyAny>,
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
    ) -> PyResult<(u32, Option<Bound<'py, PyTuple>>)> {
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
    ) -> PyResult<(u64, Probe<'a, 'py>)> {
        Probe::call(id, key_args, seed).map_err(|err| match &self.key_fn {
            Some(_) if err.is_instance_of::<PyTypeError>(key_args.py()) => {
                let returned = key_args
                    .get_item(0)
                    .map(|item| type_name(&item))
                    .unwrap_or_default();
                PyTypeError::new_err(format!(
                    "key: the key function returned a {returned}; it must return str, bytes, \
                     int, float, bool, None or a tuple of them"
                ))
            }
            _ => err,
        })
    }
}

#[pymethods]
impl CachedFunction {
    #[new]
    #[pyo3(signature = (func, cache, flights, *, ttl=None, key=None, is_async=false))]
    fn new(
        py: Python<'_>,
        func: Py<PyAny>,
        cache: Py<MemoryCache>,
        flights: Py<PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        key: Option<Py<PyAny>>,
        is_async: bool,
    ) -> PyResult<Self> {
        let ttl = ttl_arg("ttl", ttl)?;
        let name = func
            .bind(py)
            .getattr("__qualname__")
            .and_then(|n| Ok(n.cast_into::<PyString>()?))
            .or_else(|_| func.bind(py).repr())?;
        let key = key.filter(|k| !k.is_none(py));
        Ok(CachedFunction {
            func,
            cache,
            flights,
            key_fn: key,
            ttl,
            id: register(name.unbind()),
            is_async,
        })
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let (id, built) = self.key_args(py, args, kwargs)?;
        let cache = self.cache.get();
        let (hash, probe) = self.probe(id, built.as_ref().unwrap_or(args), cache.seed())?;
        if let Some(value) = cache.lookup(py, hash, &probe) {
            return if self.is_async {
                Ok(Py::new(py, Ready { value })?.into_any())
            } else {
                Ok(value)
            };
        }
        let token = CallKey {
            cache: self.cache.clone_ref(py),
            hash,
            key: probe.to_key(),
            ttl: self.ttl,
        };
        let method = if self.is_async { "arun" } else { "run" };
        self.flights
            .call_method1(py, method, (&self.func, token, args, kwargs))
    }

    /// Drops the cached result of this call, if any; returns whether there
    /// was one.
    #[pyo3(signature = (*args, **kwargs))]
    fn invalidate(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<bool> {
        let (id, built) = self.key_args(py, args, kwargs)?;
        let cache = self.cache.get();
        let (hash, probe) = self.probe(id, built.as_ref().unwrap_or(args), cache.seed())?;
        Ok(cache.forget(py, hash, &probe).is_some())
    }

    #[getter]
    fn cache(&self, py: Python<'_>) -> Py<MemoryCache> {
        self.cache.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("<cached {}>", self.func.bind(py).repr()?))
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
    fn lookup(&self, py: Python<'_>, default: Py<PyAny>) -> Py<PyAny> {
        self.cache
            .get()
            .peek(py, self.hash, &self.key.probe(py))
            .unwrap_or(default)
    }

    /// Stores the computed value under this key.
    fn store(&self, py: Python<'_>, value: Py<PyAny>) {
        self.cache
            .get()
            .store(py, self.hash, &self.key.probe(py), value, self.ttl);
    }
}
