//! `CircuitBreaker`: the core's lock-free breaker, with the guarded call in
//! Rust so that `call(fn)` costs one FFI crossing for the permit, the call
//! and the outcome.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use langcluster_core::breaker::{
    Admission, BreakerConfig, CircuitBreaker as Core, State, Transition, WindowKind,
};
use langcluster_core::clock::now_ns;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyTuple, PyType};

use crate::cache_keys::type_name;
use crate::errors::{log_callback_error, to_py};

pyo3::import_exception!(langcluster.errors, CircuitOpenError);

fn seconds(name: &'static str, value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    if value.is_instance_of::<PyBool>()
        || !(value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>())
    {
        return Err(PyTypeError::new_err(format!(
            "{name}: must be a number of seconds, got {}",
            type_name(value)
        )));
    }
    let secs: f64 = value.extract()?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(PyValueError::new_err(format!(
            "{name}: must be a positive number of seconds, got {secs}"
        )));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

fn optional_seconds(
    name: &'static str,
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Duration>> {
    value
        .filter(|v| !v.is_none())
        .map(|v| seconds(name, v))
        .transpose()
}

fn count(name: &'static str, value: &Bound<'_, PyAny>) -> PyResult<u32> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "{name}: must be an int, got {}",
            type_name(value)
        )));
    }
    match value.extract::<i64>() {
        Ok(v) if v >= 1 && v <= i64::from(u32::MAX) => Ok(v as u32),
        _ => Err(PyValueError::new_err(format!(
            "{name}: must be a positive int, got {value}"
        ))),
    }
}

/// A tuple of exception classes, from one class or an iterable of them.
fn exception_types<'py>(
    name: &'static str,
    value: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    let py = value.py();
    let items: Vec<Bound<'py, PyAny>> = if value.is_instance_of::<PyType>() {
        vec![value.clone()]
    } else {
        value
            .try_iter()
            .map_err(|_| PyTypeError::new_err(format!("{name}: must be exception classes")))?
            .collect::<PyResult<_>>()?
    };
    let base = py.get_type::<pyo3::exceptions::PyBaseException>();
    for item in &items {
        let ok = item
            .cast::<PyType>()
            .map(|t| t.is_subclass(&base).unwrap_or(false))
            .unwrap_or(false);
        if !ok {
            return Err(PyTypeError::new_err(format!(
                "{name}: must be exception classes, got {}",
                item.repr()?
            )));
        }
    }
    PyTuple::new(py, items)
}

/// How an outcome is counted.
enum Outcome {
    Success,
    Failure,
    /// Neither: an ignored exception, or a cancellation.
    Neither,
}

/// A circuit breaker: closed, open or half-open by the failure and slow-call
/// rates of a sliding window; see the class docstring in `_core.pyi`.
#[pyclass(frozen, subclass, module = "langcluster._core")]
pub struct CircuitBreaker {
    inner: Core,
    name: Option<String>,
    record: Py<PyTuple>,
    ignore: Py<PyTuple>,
    clock: Option<Py<PyAny>>,
    listeners: Mutex<Vec<Py<PyAny>>>,
}

impl CircuitBreaker {
    /// Monotonic nanoseconds, from the injected clock if there is one (it
    /// was checked to return a number when the breaker was made).
    fn now(&self, py: Python<'_>) -> u64 {
        match &self.clock {
            None => now_ns(),
            Some(clock) => clock
                .call0(py)
                .and_then(|v| v.extract::<f64>(py))
                .map(|secs| (secs.max(0.0) * 1e9) as u64)
                .unwrap_or_else(|_| now_ns()),
        }
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, Vec<Py<PyAny>>> {
        // Only pushes and clones happen under this lock; it is never
        // poisoned by a panic in between, and its data is valid even if so.
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells every listener, outside any lock; a listener that raises is
    /// logged and the call goes on.
    fn announce(&self, py: Python<'_>, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        let listeners: Vec<Py<PyAny>> = self.listeners().iter().map(|l| l.clone_ref(py)).collect();
        for listener in listeners {
            if let Err(err) = listener.call1(py, (t.from.name(), t.to.name())) {
                log_callback_error(
                    py,
                    "langcluster.breaker",
                    format!("state-change listener of breaker '{}' raised", self.label()),
                    &err,
                );
            }
        }
    }

    fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| "<unnamed>".into())
    }

    fn refused(&self, py: Python<'_>, retry_after_ns: u64) -> PyErr {
        let retry_after_s = retry_after_ns as f64 / 1e9;
        let message = match self.inner.state() {
            State::ForcedOpen => format!("circuit breaker {} is forced open", self.label()),
            State::HalfOpen => format!(
                "circuit breaker {} is half-open and its trial calls are all out",
                self.label()
            ),
            _ => format!(
                "circuit breaker {} is open; retry in {retry_after_s:.3} s",
                self.label()
            ),
        };
        let build = || -> PyResult<PyErr> {
            let kwargs = PyDict::new(py);
            kwargs.set_item("name", &self.name)?;
            kwargs.set_item("retry_after_s", retry_after_s)?;
            let exc = py
                .get_type::<CircuitOpenError>()
                .call((message,), Some(&kwargs))?;
            Ok(PyErr::from_value(exc))
        };
        build().unwrap_or_else(|e| e)
    }

    /// The permit, or `CircuitOpenError`.
    pub fn admit(&self, py: Python<'_>) -> PyResult<()> {
        let (admission, transition) = self.inner.try_acquire(|| self.now(py));
        self.announce(py, transition);
        match admission {
            Admission::Allowed { .. } => Ok(()),
            Admission::Refused { retry_after_ns } => Err(self.refused(py, retry_after_ns)),
        }
    }

    fn classify(&self, py: Python<'_>, err: &PyErr) -> Outcome {
        if err.matches(py, self.ignore.bind(py)).unwrap_or(false) {
            Outcome::Neither
        } else if err.matches(py, self.record.bind(py)).unwrap_or(false) {
            Outcome::Failure
        } else if err.is_instance_of::<PyException>(py) {
            // An exception the breaker is not told to record is the
            // service answering: a success, as in Resilience4j.
            Outcome::Success
        } else {
            Outcome::Neither
        }
    }

    /// Reports an admitted call's outcome.
    pub fn report(&self, py: Python<'_>, error: Option<&PyErr>, latency: Option<Duration>) {
        let outcome = match error {
            None => Outcome::Success,
            Some(err) => self.classify(py, err),
        };
        let transition = match outcome {
            Outcome::Success => self.inner.on_success(|| self.now(py), latency),
            Outcome::Failure => self.inner.on_failure(|| self.now(py), latency),
            Outcome::Neither => {
                self.inner.release();
                None
            }
        };
        self.announce(py, transition);
    }

    fn timed(&self) -> bool {
        self.inner.config().slow_call_duration.is_some()
    }

    /// The permit, the call and the outcome, in one crossing.
    fn guarded_call(
        &self,
        py: Python<'_>,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.admit(py)?;
        let started = self.timed().then(Instant::now);
        let result = func.call(args, kwargs);
        let latency = started.map(|s| s.elapsed());
        match result {
            Ok(value) => {
                self.report(py, None, latency);
                Ok(value.unbind())
            }
            Err(err) => {
                self.report(py, Some(&err), latency);
                Err(err)
            }
        }
    }

    fn latency_s(value: Option<f64>) -> PyResult<Option<Duration>> {
        match value {
            None => Ok(None),
            Some(s) if s.is_finite() && s >= 0.0 => Ok(Some(Duration::from_secs_f64(s))),
            Some(s) => Err(PyValueError::new_err(format!(
                "latency_s: must be a finite number >= 0, got {s}"
            ))),
        }
    }
}

#[pymethods]
impl CircuitBreaker {
    #[new]
    #[pyo3(signature = (
        name=None, *, failure_rate_threshold=0.5, slow_call_rate_threshold=1.0,
        slow_call_duration_s=None, window="count", window_size=None, minimum_calls=None,
        open_timeout_s=None, half_open_max_calls=None, max_open_timeout_s=None,
        record=None, ignore=None, clock=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: Option<String>,
        failure_rate_threshold: f64,
        slow_call_rate_threshold: f64,
        slow_call_duration_s: Option<&Bound<'_, PyAny>>,
        window: &str,
        window_size: Option<&Bound<'_, PyAny>>,
        minimum_calls: Option<&Bound<'_, PyAny>>,
        open_timeout_s: Option<&Bound<'_, PyAny>>,
        half_open_max_calls: Option<&Bound<'_, PyAny>>,
        max_open_timeout_s: Option<&Bound<'_, PyAny>>,
        record: Option<&Bound<'_, PyAny>>,
        ignore: Option<&Bound<'_, PyAny>>,
        clock: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let defaults = BreakerConfig::default();
        let window = match window {
            "count" => WindowKind::Count,
            "time" => WindowKind::Time,
            other => {
                return Err(PyValueError::new_err(format!(
                    "window: must be 'count' or 'time', got '{other}'"
                )))
            }
        };
        let config = BreakerConfig {
            failure_rate_threshold,
            slow_call_rate_threshold,
            slow_call_duration: optional_seconds("slow_call_duration_s", slow_call_duration_s)?,
            window,
            window_size: window_size
                .map(|v| count("window_size", v))
                .transpose()?
                .unwrap_or(defaults.window_size),
            minimum_calls: minimum_calls
                .map(|v| count("minimum_calls", v))
                .transpose()?
                .unwrap_or(defaults.minimum_calls),
            open_timeout: optional_seconds("open_timeout_s", open_timeout_s)?
                .unwrap_or(defaults.open_timeout),
            half_open_max_calls: half_open_max_calls
                .map(|v| count("half_open_max_calls", v))
                .transpose()?
                .unwrap_or(defaults.half_open_max_calls),
            max_open_timeout: optional_seconds("max_open_timeout_s", max_open_timeout_s)?,
        };
        let record = match record {
            Some(r) => exception_types("record", r)?,
            None => PyTuple::new(py, [py.get_type::<PyException>()])?,
        };
        let ignore = match ignore {
            Some(i) => exception_types("ignore", i)?,
            None => PyTuple::empty(py),
        };
        if let Some(clock) = &clock {
            let reading = clock.bind(py).call0().map_err(|_| {
                PyTypeError::new_err("clock: must be a function of no arguments returning seconds")
            })?;
            if reading.extract::<f64>().is_err() {
                return Err(PyTypeError::new_err(format!(
                    "clock: must return a number of seconds, returned {}",
                    type_name(&reading)
                )));
            }
        }
        Ok(CircuitBreaker {
            inner: Core::new(config).map_err(to_py)?,
            name,
            record: record.unbind(),
            ignore: ignore.unbind(),
            clock,
            listeners: Mutex::new(Vec::new()),
        })
    }

    /// Whether a call may go ahead now. True takes a permit: report the
    /// call with `record_success`, `record_failure` or `release`.
    fn allow(&self, py: Python<'_>) -> PyResult<bool> {
        let (admission, transition) = self.inner.try_acquire(|| self.now(py));
        self.announce(py, transition);
        Ok(matches!(admission, Admission::Allowed { .. }))
    }

    #[pyo3(signature = (latency_s=None))]
    fn record_success(&self, py: Python<'_>, latency_s: Option<f64>) -> PyResult<()> {
        let latency = Self::latency_s(latency_s)?;
        let transition = self.inner.on_success(|| self.now(py), latency);
        self.announce(py, transition);
        Ok(())
    }

    #[pyo3(signature = (latency_s=None))]
    fn record_failure(&self, py: Python<'_>, latency_s: Option<f64>) -> PyResult<()> {
        let latency = Self::latency_s(latency_s)?;
        let transition = self.inner.on_failure(|| self.now(py), latency);
        self.announce(py, transition);
        Ok(())
    }

    /// Gives back a permit taken by `allow()` without counting an outcome.
    fn release(&self) {
        self.inner.release();
    }

    /// Calls `fn(*args, **kwargs)` through the breaker: raises
    /// `CircuitOpenError` if refused, else returns its result or raises its
    /// exception, counting the outcome.
    #[pyo3(signature = (func, *args, **kwargs))]
    fn call(
        &self,
        py: Python<'_>,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.guarded_call(py, func, args, kwargs)
    }

    /// Wraps a plain function so that every call goes through `call`
    /// (the `@breaker` decorator for sync functions).
    fn _guard(slf: Py<Self>, func: Py<PyAny>) -> Guarded {
        Guarded { breaker: slf, func }
    }

    /// Reports the outcome of a call admitted by `_admit` (used by the
    /// Python context managers and the async path).
    #[pyo3(signature = (error=None, latency_s=None))]
    fn _report(
        &self,
        py: Python<'_>,
        error: Option<&Bound<'_, PyAny>>,
        latency_s: Option<f64>,
    ) -> PyResult<()> {
        let latency = Self::latency_s(latency_s)?;
        let err = error
            .filter(|e| !e.is_none())
            .map(|e| PyErr::from_value(e.clone()));
        self.report(py, err.as_ref(), latency);
        Ok(())
    }

    /// Takes a permit or raises `CircuitOpenError`.
    fn _admit(&self, py: Python<'_>) -> PyResult<()> {
        self.admit(py)
    }

    /// Whether slow calls are judged (so callers should time their calls).
    #[getter]
    fn _timed(&self) -> bool {
        self.timed()
    }

    #[getter]
    fn state(&self) -> &'static str {
        self.inner.state().name()
    }

    #[getter]
    fn name(&self) -> Option<String> {
        self.name.clone()
    }

    /// The window's counts and rates (rates are None below `minimum_calls`),
    /// the state and the seconds until half-open.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = self.inner.metrics(self.now(py));
        let d = PyDict::new(py);
        d.set_item("state", m.state.name())?;
        d.set_item("calls", m.calls)?;
        d.set_item("failures", m.failures)?;
        d.set_item("slow_calls", m.slow)?;
        d.set_item("failure_rate", m.failure_rate)?;
        d.set_item("slow_call_rate", m.slow_call_rate)?;
        d.set_item("retry_after_s", m.retry_after_ns as f64 / 1e9)?;
        Ok(d)
    }

    fn force_open(&self, py: Python<'_>) -> PyResult<()> {
        let t = self.inner.force_open(|| self.now(py));
        self.announce(py, t);
        Ok(())
    }

    fn disable(&self, py: Python<'_>) -> PyResult<()> {
        let t = self.inner.disable(|| self.now(py));
        self.announce(py, t);
        Ok(())
    }

    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        let t = self.inner.reset(|| self.now(py));
        self.announce(py, t);
        Ok(())
    }

    /// Registers `callback(old_state, new_state)`; returns it, so this works
    /// as a decorator.
    fn on_state_change<'py>(&self, callback: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if !callback.is_callable() {
            return Err(PyTypeError::new_err("callback: must be callable"));
        }
        self.listeners().push(callback.clone().unbind());
        Ok(callback)
    }

    fn __repr__(&self) -> String {
        match &self.name {
            Some(name) => format!(
                "CircuitBreaker(name={name:?}, state='{}')",
                self.inner.state().name()
            ),
            None => format!("CircuitBreaker(state='{}')", self.inner.state().name()),
        }
    }
}

/// A function wrapped by `@breaker`: calling it calls the function through
/// the breaker.
#[pyclass(frozen, dict, module = "langcluster._core")]
pub struct Guarded {
    breaker: Py<CircuitBreaker>,
    func: Py<PyAny>,
}

#[pymethods]
impl Guarded {
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.breaker
            .get()
            .guarded_call(py, self.func.bind(py), args, kwargs)
    }

    #[getter]
    fn breaker(&self, py: Python<'_>) -> Py<CircuitBreaker> {
        self.breaker.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("<guarded {}>", self.func.bind(py).repr()?))
    }
}
