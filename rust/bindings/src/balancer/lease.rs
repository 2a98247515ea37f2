//! `Balancer.acquire()`: a context manager, sync and async, that holds one
//! request in flight on the node it picked and reports the outcome on exit.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use langcluster_core::balancer::NodeState;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyType};

use crate::errors::{Error, Result};
use crate::ready::Ready;

/// What a pick routes by: the hash of a key, or a prompt's block hashes.
pub enum Route {
    Key(Option<u64>),
    Blocks(Vec<u64>),
}

/// What a lease needs of a balancer: a pick that also hands over the
/// node's live counters.
pub trait PickState: Send + Sync {
    fn pick_state(
        &self,
        py: Python<'_>,
        route: &Route,
    ) -> std::result::Result<(Py<PyAny>, Arc<NodeState>), langcluster_core::Error>;
}

struct Held {
    state: Arc<NodeState>,
    started: Instant,
}

/// Returned by `acquire()`. Entering picks a node and returns it; leaving
/// ends the request: success without an exception, failure with an
/// `Exception`, and neither (the count is released, no outcome recorded) for
/// a `BaseException` such as `asyncio.CancelledError` or `KeyboardInterrupt`.
#[pyclass(frozen, module = "langcluster._core")]
pub struct Lease {
    balancer: Arc<dyn PickState>,
    route: Route,
    /// Only this lease's own enter/exit touch it; never held across Python code.
    held: Mutex<Option<Held>>,
}

impl Lease {
    pub fn new(balancer: Arc<dyn PickState>, route: Route) -> Self {
        Self {
            balancer,
            route,
            held: Mutex::new(None),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        // No code that can panic runs under this lock, so a poisoned lock
        // still holds consistent data.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Lease {
    fn __enter__(&self, py: Python<'_>) -> Result<Py<PyAny>> {
        if self.held().is_some() {
            return Err(Error::Misuse(
                "acquire: this lease is already entered; call acquire() once per request",
            ));
        }
        let (node, state) = self.balancer.pick_state(py, &self.route)?;
        state.begin();
        *self.held() = Some(Held {
            state,
            started: Instant::now(),
        });
        Ok(node)
    }

    #[pyo3(signature = (exc_type=None, _exc_value=None, _traceback=None))]
    fn __exit__(
        &self,
        exc_type: Option<&Bound<'_, PyType>>,
        _exc_value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> Result<bool> {
        let Some(held) = self.held().take() else {
            return Ok(false);
        };
        let latency_s = held.started.elapsed().as_secs_f64();
        match exc_type {
            None => held.state.end(latency_s, true),
            Some(t) if t.is_subclass_of::<PyException>()? => held.state.end(latency_s, false),
            Some(_) => {
                held.state.release();
            }
        }
        Ok(false)
    }

    fn __aenter__(&self, py: Python<'_>) -> Result<Ready> {
        Ok(Ready::new(self.__enter__(py)?))
    }

    #[pyo3(signature = (exc_type=None, exc_value=None, traceback=None))]
    fn __aexit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyType>>,
        exc_value: Option<&Bound<'_, PyAny>>,
        traceback: Option<&Bound<'_, PyAny>>,
    ) -> Result<Ready> {
        let suppress = self.__exit__(exc_type, exc_value, traceback)?;
        Ok(Ready::new(
            PyBool::new(py, suppress).to_owned().into_any().unbind(),
        ))
    }
}
