//! Reading node objects: a `langcluster.Node` or any object with `.id`
//! (a non-empty str) and optionally `.weight` (a positive number) and
//! `.status` (a `NodeStatus` or its string value).

use langcluster_core::balancer::NodeSpec;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString};

/// Converts an iterable of nodes, naming the offending element on error.
pub fn node_specs(nodes: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<NodeSpec<Py<PyAny>>>> {
    let Some(nodes) = nodes else {
        return Ok(Vec::new());
    };
    let iter = nodes.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "nodes: must be an iterable of nodes, got {}",
            type_name(nodes)
        ))
    })?;
    let mut specs = Vec::new();
    for (i, node) in iter.enumerate() {
        specs.push(node_spec(i, &node?)?);
    }
    Ok(specs)
}

fn node_spec(i: usize, node: &Bound<'_, PyAny>) -> PyResult<NodeSpec<Py<PyAny>>> {
    let py = node.py();
    let id = node.getattr_opt(intern!(py, "id"))?.ok_or_else(|| {
        PyTypeError::new_err(format!(
            "nodes[{i}]: a node needs an `id` attribute (a langcluster.Node or any object with .id), got {}",
            type_name(node)
        ))
    })?;
    let id: String = id
        .cast::<PyString>()
        .map_err(|_| {
            PyTypeError::new_err(format!(
                "nodes[{i}].id: must be a str, got {}",
                type_name(&id)
            ))
        })?
        .to_str()?
        .to_owned();
    if id.is_empty() {
        return Err(PyValueError::new_err(format!(
            "nodes[{i}].id: must be a non-empty string"
        )));
    }
    let weight = match node.getattr_opt(intern!(py, "weight"))? {
        None => 1.0,
        Some(w) if w.is_none() => 1.0,
        Some(w) => {
            if w.is_instance_of::<PyBool>() {
                return Err(PyTypeError::new_err(format!(
                    "nodes[{i}].weight: must be a number, got bool"
                )));
            }
            let value: f64 = w.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "nodes[{i}].weight: must be a number, got {}",
                    type_name(&w)
                ))
            })?;
            if !(value.is_finite() && value > 0.0) {
                return Err(PyValueError::new_err(format!(
                    "nodes[{i}].weight: must be a positive finite number, got {value}"
                )));
            }
            value
        }
    };
    let available = match node.getattr_opt(intern!(py, "status"))? {
        Some(status) => availability_of(&status)?,
        None => None,
    };
    Ok(NodeSpec {
        id,
        weight,
        available,
        handle: node.clone().unbind(),
    })
}

/// `healthy` makes a node available, `unhealthy` and `draining` take it out,
/// `unknown` (not checked yet) leaves it as it is (a new node starts available).
fn availability_of(status: &Bound<'_, PyAny>) -> PyResult<Option<bool>> {
    let Ok(text) = status.cast::<PyString>() else {
        return Ok(None);
    };
    Ok(match text.to_str()? {
        "healthy" => Some(true),
        "unhealthy" | "draining" => Some(false),
        _ => None,
    })
}

pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}
