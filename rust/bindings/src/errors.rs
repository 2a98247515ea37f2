//! The one place where core errors become Python exceptions. The library's
//! own exception classes are defined in `langcluster/errors.py` and imported.

use langcluster_core::Error;
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
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
