//! `CircuitBreaker`: the core's lock-free breaker, with the guarded call in
//! Rust so that `call(fn)` costs one FFI crossing for the permit, the call
//! and the outcome.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use langcluster_core::breaker::{
    Admission, BreakerConfig, BreakerSettings, CircuitBreaker as Core, State, Transition,
};
use langcluster_core::clock::now_ns;
use pyo3::exceptions::PyException;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::PyTraverseError;

use crate::convert::{
    clock, exception_types, integer, number, optional_number, read_clock, string,
};
use crate::errors::{log_callback_error, Error, Result};
use crate::gcref::GcRef;
use langcluster_core::error::latency_seconds;

/// Every setting of a breaker, as `CircuitBreaker` takes them.
const SETTINGS: [&str; 12] = [
    "failure_rate_threshold",
    "slow_call_rate_threshold",
    "slow_call_duration_s",
    "window",
    "window_size",
    "minimum_calls",
    "open_timeout_s",
    "half_open_max_calls",
    "max_open_timeout_s",
    "record",
    "ignore",
    "clock",
];

/// A breaker's settings read from keyword arguments: the core's settings
/// (checked by the core) and the Python-only ones.
struct Settings {
    core: BreakerSettings,
    record: Py<PyTuple>,
    ignore: Py<PyTuple>,
    clock: Option<Py<PyAny>>,
}

impl Settings {
    fn parse(
        py: Python<'_>,
        given: Option<&Bound<'_, PyDict>>,
    ) -> Result<(Settings, BreakerConfig)> {
        let mut s = Settings {
            core: BreakerSettings::default(),
            record: PyTuple::new(py, [py.get_type::<PyException>()])?.unbind(),
            ignore: PyTuple::empty(py).unbind(),
            clock: None,
        };
        for (name, value) in given.into_iter().flatten() {
            let name = name.str()?;
            let value = &value;
            let c = &mut s.core;
            match name.to_str()? {
                "failure_rate_threshold" => c.failure_rate_threshold = number(SETTINGS[0], value)?,
                "slow_call_rate_threshold" => {
                    c.slow_call_rate_threshold = number(SETTINGS[1], value)?
                }
                "slow_call_duration_s" => {
                    c.slow_call_duration_s = optional_number(SETTINGS[2], Some(value))?
                }
                "window" => c.window = string(SETTINGS[3], value)?,
                "window_size" => c.window_size = integer(SETTINGS[4], value)?,
                "minimum_calls" => c.minimum_calls = integer(SETTINGS[5], value)?,
                "open_timeout_s" => c.open_timeout_s = number(SETTINGS[6], value)?,
                "half_open_max_calls" => c.half_open_max_calls = integer(SETTINGS[7], value)?,
                "max_open_timeout_s" => {
                    c.max_open_timeout_s = optional_number(SETTINGS[8], Some(value))?
                }
                "record" => s.record = exception_types(SETTINGS[9], value)?.unbind(),
                "ignore" => s.ignore = exception_types(SETTINGS[10], value)?.unbind(),
                "clock" => s.clock = clock(SETTINGS[11], Some(value))?,
                other => {
                    return Err(Error::type_error(
                        other.to_owned(),
                        format!(
                            "not a setting of CircuitBreaker (its settings: {})",
                            SETTINGS.join(", ")
                        ),
                    ))
                }
            }
        }
        let config = s.core.config()?;
        Ok((s, config))
    }

    /// Every setting, defaults included, by name.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.core;
        let d = PyDict::new(py);
        d.set_item(SETTINGS[0], c.failure_rate_threshold)?;
        d.set_item(SETTINGS[1], c.slow_call_rate_threshold)?;
        d.set_item(SETTINGS[2], c.slow_call_duration_s)?;
        d.set_item(SETTINGS[3], &c.window)?;
        d.set_item(SETTINGS[4], c.window_size)?;
        d.set_item(SETTINGS[5], c.minimum_calls)?;
        d.set_item(SETTINGS[6], c.open_timeout_s)?;
        d.set_item(SETTINGS[7], c.half_open_max_calls)?;
        d.set_item(SETTINGS[8], c.max_open_timeout_s)?;
        d.set_item(SETTINGS[9], self.record.bind(py))?;
        d.set_item(SETTINGS[10], self.ignore.bind(py))?;
        d.set_item(SETTINGS[11], &self.clock)?;
        Ok(d)
    }
}

/// The settings of a breaker, checked and completed with the defaults; what
/// `langcluster.BreakerConfig` holds.
#[pyfunction]
#[pyo3(signature = (**settings))]
pub fn breaker_settings<'py>(
    py: Python<'py>,
    settings: Option<&Bound<'py, PyDict>>,
) -> Result<Bound<'py, PyDict>> {
    let (parsed, _) = Settings::parse(py, settings)?;
    Ok(parsed.to_dict(py)?)
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
    /// was checked to return a number when the breaker was made; should it
    /// fail later, the process clock stands in).
    fn now(&self, py: Python<'_>) -> u64 {
        match &self.clock {
            None => now_ns(),
            Some(clock) => read_clock("clock", clock.bind(py)).unwrap_or_else(|_| now_ns()),
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

    fn refused(&self, retry_after_ns: u64) -> Error {
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
        Error::CircuitOpen {
            name: self.name.clone(),
            message,
            retry_after_s,
        }
    }

    /// The permit, or `CircuitOpenError`.
    fn take_permit(&self, py: Python<'_>) -> Result<()> {
        let (admission, transition) = self.inner.try_acquire(|| self.now(py));
        self.announce(py, transition);
        match admission {
            Admission::Allowed { .. } => Ok(()),
            Admission::Refused { retry_after_ns } => Err(self.refused(retry_after_ns)),
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
    fn report_outcome(&self, py: Python<'_>, error: Option<&PyErr>, latency: Option<Duration>) {
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
    ) -> Result<Py<PyAny>> {
        self.take_permit(py)?;
        let started = self.timed().then(Instant::now);
        let result = func.call(args, kwargs);
        let latency = started.map(|s| s.elapsed());
        match result {
            Ok(value) => {
                self.report_outcome(py, None, latency);
                Ok(value.unbind())
            }
            Err(err) => {
                self.report_outcome(py, Some(&err), latency);
                Err(err.into())
            }
        }
    }
}

fn latency(value: Option<&Bound<'_, PyAny>>) -> Result<Option<Duration>> {
    Ok(optional_number("latency_s", value)?
        .map(|s| latency_seconds("latency_s", s))
        .transpose()?)
}

#[pymethods]
impl CircuitBreaker {
    /// `CircuitBreaker(name=None, **settings)`: the settings are those of
    /// `BreakerConfig`, listed with their defaults in `_core.pyi`.
    #[new]
    #[pyo3(signature = (name=None, **settings))]
    fn new(
        py: Python<'_>,
        name: Option<&Bound<'_, PyAny>>,
        settings: Option<&Bound<'_, PyDict>>,
    ) -> Result<Self> {
        let name = match name {
            Some(n) if !n.is_none() => Some(string("name", n)?),
            _ => None,
        };
        let (parsed, config) = Settings::parse(py, settings)?;
        Ok(CircuitBreaker {
            inner: Core::new(config)?,
            name,
            record: parsed.record,
            ignore: parsed.ignore,
            clock: parsed.clock,
            listeners: Mutex::new(Vec::new()),
        })
    }

    /// Whether a call may go ahead now. True takes a permit: report the
    /// call with `record_success`, `record_failure` or `release`.
    fn allow(&self, py: Python<'_>) -> bool {
        let (admission, transition) = self.inner.try_acquire(|| self.now(py));
        self.announce(py, transition);
        matches!(admission, Admission::Allowed { .. })
    }

    #[pyo3(signature = (latency_s=None))]
    fn record_success(&self, py: Python<'_>, latency_s: Option<&Bound<'_, PyAny>>) -> Result<()> {
        let latency = latency(latency_s)?;
        let transition = self.inner.on_success(|| self.now(py), latency);
        self.announce(py, transition);
        Ok(())
    }

    #[pyo3(signature = (latency_s=None))]
    fn record_failure(&self, py: Python<'_>, latency_s: Option<&Bound<'_, PyAny>>) -> Result<()> {
        let latency = latency(latency_s)?;
        let transition = self.inner.on_failure(|| self.now(py), latency);
        self.announce(py, transition);
        Ok(())
    }

    /// Gives back a permit taken by `allow()` or `admit()` without counting
    /// an outcome.
    fn release(&self) {
        self.inner.release();
    }

    /// Takes a permit or raises `CircuitOpenError`; report the call with
    /// `report` (or `release`).
    fn admit(&self, py: Python<'_>) -> Result<()> {
        self.take_permit(py)
    }

    /// Reports the outcome of a call admitted by `admit`: no `error` is a
    /// success; an exception counts as the breaker's `record` and `ignore`
    /// say (a `BaseException` such as a cancellation counts as nothing).
    #[pyo3(signature = (error=None, latency_s=None))]
    fn report(
        &self,
        py: Python<'_>,
        error: Option<&Bound<'_, PyAny>>,
        latency_s: Option<&Bound<'_, PyAny>>,
    ) -> Result<()> {
        let latency = latency(latency_s)?;
        let err = error
            .filter(|e| !e.is_none())
            .map(|e| PyErr::from_value(e.clone()));
        self.report_outcome(py, err.as_ref(), latency);
        Ok(())
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
    ) -> Result<Py<PyAny>> {
        self.guarded_call(py, func, args, kwargs)
    }

    /// Wraps a plain function so that every call goes through `call`
    /// (the `@breaker` decorator for sync functions).
    fn _guard(slf: Py<Self>, func: Py<PyAny>) -> Guarded {
        Guarded {
            breaker: GcRef::new(slf),
            func: GcRef::new(func),
        }
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

    fn force_open(&self, py: Python<'_>) {
        let t = self.inner.force_open(|| self.now(py));
        self.announce(py, t);
    }

    /// Opens the breaker for `seconds` from now (not when disabled): the
    /// service was found down elsewhere. Trials decide when it is over.
    fn open_for(&self, py: Python<'_>, seconds: &Bound<'_, PyAny>) -> Result<()> {
        let secs = number("seconds", seconds)?;
        let open = langcluster_core::error::latency_seconds("seconds", secs)?;
        let t = self.inner.open_for(open.as_nanos() as u64, || self.now(py));
        self.announce(py, t);
        Ok(())
    }

    fn disable(&self, py: Python<'_>) {
        let t = self.inner.disable(|| self.now(py));
        self.announce(py, t);
    }

    /// Ends an open period now, or starts a half-open one afresh: the next
    /// calls are trials (a health check saw the service recover). Does
    /// nothing in any other state.
    fn half_open(&self, py: Python<'_>) {
        let t = self.inner.half_open(|| self.now(py));
        self.announce(py, t);
    }

    fn reset(&self, py: Python<'_>) {
        let t = self.inner.reset(|| self.now(py));
        self.announce(py, t);
    }

    /// Registers `callback(old_state, new_state)`; returns it, so this works
    /// as a decorator.
    fn on_state_change<'py>(&self, callback: Bound<'py, PyAny>) -> Result<Bound<'py, PyAny>> {
        if !callback.is_callable() {
            return Err(Error::expected("callback", "callable", &callback));
        }
        self.listeners().push(callback.clone().unbind());
        Ok(callback)
    }

    // The listeners are often bound methods of an object that holds this
    // breaker (a failover manager): the garbage collector must see them.
    fn __traverse__(&self, visit: PyVisit<'_>) -> std::result::Result<(), PyTraverseError> {
        visit.call(&self.record)?;
        visit.call(&self.ignore)?;
        visit.call(&self.clock)?;
        // Never held across Python code; if taken, the listeners are left
        // unvisited, which keeps them alive for this collection (safe).
        if let Ok(listeners) = self.listeners.try_lock() {
            for listener in listeners.iter() {
                visit.call(listener)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let dropped = std::mem::take(&mut *self.listeners());
        drop(dropped);
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
    // `GcRef`s: the collector may visit the object before they are written.
    breaker: GcRef<CircuitBreaker>,
    func: GcRef<PyAny>,
}

#[pymethods]
impl Guarded {
    fn __traverse__(&self, visit: PyVisit<'_>) -> std::result::Result<(), PyTraverseError> {
        self.breaker.visit(&visit)?;
        self.func.visit(&visit)
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> Result<Py<PyAny>> {
        self.breaker
            .get()?
            .get()
            .guarded_call(py, self.func.get()?.bind(py), args, kwargs)
    }

    #[getter]
    fn breaker(&self, py: Python<'_>) -> Result<Py<CircuitBreaker>> {
        Ok(self.breaker.get()?.clone_ref(py))
    }

    fn __repr__(&self, py: Python<'_>) -> Result<String> {
        Ok(format!("<guarded {}>", self.func.get()?.bind(py).repr()?))
    }
}
