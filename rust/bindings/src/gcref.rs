//! `GcRef`: a reference held by a collectable pyclass that has an instance
//! dict.
//!
//! Making such an object, PyO3 has CPython allocate it (zeroed, and already
//! tracked by the cyclic collector), then has the base type make its dict,
//! and only then writes the Rust contents. Making the dict allocates, which
//! may run a collection, which calls `__traverse__` on the zeroed contents:
//! a plain `Py<T>` there is a null pointer handed to the collector (a crash
//! seen on CPython 3.11). A `GcRef` is an `Option<Py<T>>`: `Py<T>` is a
//! transparent `NonNull`, so the all-zero bit pattern is `None`, which the
//! visit skips. Once the object is made, every `GcRef` in it is `Some`.

use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::{Error, Result};

#[repr(transparent)]
pub struct GcRef<T>(Option<Py<T>>);

impl<T> GcRef<T> {
    pub fn new(obj: Py<T>) -> Self {
        GcRef(Some(obj))
    }

    /// The reference; an error only for an object still being made, which
    /// no Python code can reach.
    pub fn get(&self) -> Result<&Py<T>> {
        self.0
            .as_ref()
            .ok_or(Error::Misuse("the object is not made yet"))
    }

    pub fn visit(&self, visit: &PyVisit<'_>) -> std::result::Result<(), PyTraverseError> {
        visit.call(&self.0)
    }
}
