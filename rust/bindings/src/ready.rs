//! An awaitable that is already done: `await` returns its value at once.
//! Lets `async with balancer.acquire()` and a cached coroutine function's
//! hit answer without making a coroutine per call.

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;

#[pyclass(frozen, module = "langcluster._core")]
pub struct Ready {
    value: Py<PyAny>,
}

impl Ready {
    pub fn new(value: Py<PyAny>) -> Self {
        Ready { value }
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        // Wrapped in a 1-tuple so a tuple value is not unpacked as arguments.
        Err(PyStopIteration::new_err((self.value.clone_ref(py),)))
    }
}
