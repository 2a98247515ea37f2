//! Request keys for consistent hashing: str, bytes or int, hashed with the
//! core's stable hash (XXH3-64). A str is hashed as its UTF-8 bytes, an int
//! as its decimal text, so `42` and `"42"` route to the same node.

use langcluster_core::hash::{hash_bytes, hash_i64};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyInt, PyString};

/// The stable hash of `key`, or a TypeError naming the `key` argument.
#[inline]
pub fn hash_key(key: &Bound<'_, PyAny>) -> PyResult<u64> {
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(hash_bytes(s.to_str()?.as_bytes()));
    }
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(hash_bytes(b.as_bytes()));
    }
    if key.is_instance_of::<PyInt>() && !key.is_instance_of::<PyBool>() {
        return Ok(match key.extract::<i64>() {
            Ok(v) => hash_i64(v),
            // Larger than 64 bits: the same rule, through Python's own decimal text.
            Err(_) => hash_bytes(key.str()?.to_str()?.as_bytes()),
        });
    }
    Err(type_error(key))
}

/// Checks a key that the balancer does not route by: the same types are
/// accepted everywhere, so switching balancers never changes what is valid.
#[inline]
pub fn check_key(key: &Bound<'_, PyAny>) -> PyResult<()> {
    if key.is_instance_of::<PyString>()
        || key.is_instance_of::<PyBytes>()
        || (key.is_instance_of::<PyInt>() && !key.is_instance_of::<PyBool>())
    {
        Ok(())
    } else {
        Err(type_error(key))
    }
}

fn type_error(key: &Bound<'_, PyAny>) -> PyErr {
    let type_name = key
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    PyTypeError::new_err(format!("key: must be str, bytes or int, got {type_name}"))
}
