//! `Counters`: named counters bumped with one atomic add, for the stats of
//! the Python components on their hot paths.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::convert;
use crate::errors::Result;

#[pyclass(frozen, module = "langcluster._core")]
pub struct Counters {
    inner: langcluster_core::counters::Counters,
}

#[pymethods]
impl Counters {
    #[new]
    #[pyo3(signature = (*names))]
    fn new(names: &Bound<'_, PyTuple>) -> Result<Self> {
        let mut given = Vec::with_capacity(names.len());
        for item in names.iter() {
            given.push(convert::text("names", &item)?.to_owned());
        }
        Ok(Counters {
            inner: langcluster_core::counters::Counters::new(given)?,
        })
    }

    /// Adds `n` (1 by default, may be negative) to the counter `name`.
    #[pyo3(signature = (name, n = 1))]
    fn add(&self, name: &str, n: i64) -> Result<()> {
        Ok(self.inner.add(name, n)?)
    }

    /// The value of the counter `name`.
    fn get(&self, name: &str) -> Result<i64> {
        Ok(self.inner.get(name)?)
    }

    /// Every counter by name, in the order they were named.
    fn snapshot<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (name, value) in self.inner.snapshot() {
            out.set_item(name, value)?;
        }
        Ok(out)
    }
}
