//! The one place where errors become Python exceptions.
//!
//! Every fallible function of the bindings returns [`Result`], whose error
//! is this crate's [`Error`]: a core error (`?` converts it), a conversion
//! error (an argument of the wrong type), or a Python exception passed on as
//! it is (`?` converts a `PyErr` too). `impl From<Error> for PyErr` is the
//! only mapping to exceptions; the library's own exception classes are
//! defined in `langcluster/errors.py` and imported here.

use std::borrow::Cow;

use langcluster_core::Error as CoreError;
use pyo3::exceptions::{
    PyKeyError, PyMemoryError, PyRecursionError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

pyo3::import_exception!(langcluster.errors, NoAvailableNode);
pyo3::import_exception!(langcluster.errors, CircuitOpenError);

pub enum Error {
    /// A value the core refused, or a balancer's answer (no node available,
    /// no such node).
    Core(CoreError),
    /// An argument of the wrong type; `name` names it (or the path to it).
    Type {
        name: Cow<'static, str>,
        message: String,
    },
    /// A key that is not there: `cache[key]`, `del cache[key]`.
    MissingKey(Py<PyAny>),
    /// A call out of order, such as entering one lease twice.
    Misuse(&'static str),
    /// A value nested deeper than `limit` (a `cached` argument).
    TooDeep { name: &'static str, limit: usize },
    /// A circuit breaker refused a call.
    CircuitOpen {
        name: Option<String>,
        message: String,
        retry_after_s: f64,
    },
    /// An exception raised by Python code (the caller's, or CPython's),
    /// passed on unchanged.
    Python(PyErr),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// `name: must be {expected}, got {type of obj}`.
    pub fn expected(
        name: impl Into<Cow<'static, str>>,
        expected: &str,
        obj: &Bound<'_, PyAny>,
    ) -> Self {
        Error::Type {
            name: name.into(),
            message: format!("must be {expected}, got {}", type_name(obj)),
        }
    }

    /// A type error with a message of its own.
    pub fn type_error(name: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Error::Type {
            name: name.into(),
            message: message.into(),
        }
    }
}

impl From<CoreError> for Error {
    fn from(error: CoreError) -> Self {
        Error::Core(error)
    }
}

impl From<PyErr> for Error {
    fn from(error: PyErr) -> Self {
        Error::Python(error)
    }
}

impl From<Error> for PyErr {
    fn from(error: Error) -> PyErr {
        match error {
            Error::Core(error) => {
                let message = error.to_string();
                match error {
                    CoreError::NoAvailableNode => NoAvailableNode::new_err(message),
                    CoreError::KeyRequired => PyTypeError::new_err(message),
                    CoreError::UnknownNode { .. } => PyKeyError::new_err(message),
                    CoreError::InvalidArgument { .. } | CoreError::DuplicateId { .. } => {
                        PyValueError::new_err(message)
                    }
                    CoreError::OutOfMemory { .. } => PyMemoryError::new_err(message),
                }
            }
            Error::Type { name, message } => PyTypeError::new_err(format!("{name}: {message}")),
            Error::MissingKey(key) => PyKeyError::new_err(key),
            Error::Misuse(message) => PyRuntimeError::new_err(message),
            Error::TooDeep { name, limit } => {
                PyRecursionError::new_err(format!("{name}: nested deeper than {limit} levels"))
            }
            Error::CircuitOpen {
                name,
                message,
                retry_after_s,
            } => Python::attach(|py| {
                let build = || -> PyResult<PyErr> {
                    let kwargs = PyDict::new(py);
                    kwargs.set_item("name", name)?;
                    kwargs.set_item("retry_after_s", retry_after_s)?;
                    let exc = py
                        .get_type::<CircuitOpenError>()
                        .call((message,), Some(&kwargs))?;
                    Ok(PyErr::from_value(exc))
                };
                build().unwrap_or_else(|e| e)
            }),
            Error::Python(error) => error,
        }
    }
}

/// The name of an object's type, for messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Logs an exception raised by a user's callback on the named logger (with
/// its traceback), so that the library call that ran the callback can go
/// on. If even logging fails, the error goes to `sys.unraisablehook`.
pub fn log_callback_error(py: Python<'_>, logger: &str, message: String, err: &PyErr) {
    let logged = (|| -> PyResult<()> {
        let log = py.import("logging")?.call_method1("getLogger", (logger,))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", err.value(py))?;
        log.call_method("error", ("%s", message), Some(&kwargs))?;
        Ok(())
    })();
    if let Err(log_err) = logged {
        log_err.write_unraisable(py, None);
    }
}
