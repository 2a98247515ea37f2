//! The one place where core errors become Python exceptions. The library's
//! own exception classes are defined in `langcluster/errors.py` and imported.

use langcluster_core::Error;
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::PyErr;

pyo3::import_exception!(langcluster.errors, NoAvailableNode);

pub fn to_py(err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::NoAvailableNode => NoAvailableNode::new_err(message),
        Error::KeyRequired => PyTypeError::new_err(message),
        Error::UnknownNode { .. } => PyKeyError::new_err(message),
        Error::EmptyId { .. }
        | Error::DuplicateId { .. }
        | Error::InvalidWeight { .. }
        | Error::InvalidArgument { .. } => PyValueError::new_err(message),
    }
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
