//! Python values into Rust ones: the one conversion module.
//!
//! These functions check types only (an argument must be a number, an int,
//! a str, a node, exception classes); what values are allowed is the core's
//! to decide, so a number is passed on as it is and the core names the
//! argument if it is out of range.

use std::borrow::Cow;

use langcluster_core::balancer::{NodeSpec, PrefixConfig, Prompt};
use langcluster_core::hash::{hash_bytes, hash_i64};
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyIterator, PyList, PyString, PyTuple, PyType};

use crate::errors::{type_name, Error, Result};

/// A real number: an int or a float, not a bool.
pub fn number(name: &'static str, value: &Bound<'_, PyAny>) -> Result<f64> {
    if value.is_instance_of::<PyBool>()
        || !(value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>())
    {
        return Err(Error::expected(name, "a number", value));
    }
    // An int too large for a float is infinitely large as far as any range
    // check is concerned.
    Ok(value.extract::<f64>().unwrap_or_else(|_| {
        if value.lt(0).unwrap_or(false) {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        }
    }))
}

/// A number or None.
pub fn optional_number(
    name: &'static str,
    value: Option<&Bound<'_, PyAny>>,
) -> Result<Option<f64>> {
    match value {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => number(name, v).map(Some),
    }
}

/// An int, not a bool. One beyond 64 bits is saturated, so the core's range
/// check refuses it.
pub fn integer(name: &'static str, value: &Bound<'_, PyAny>) -> Result<i64> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(Error::expected(name, "an int", value));
    }
    Ok(value.extract::<i64>().unwrap_or_else(|_| {
        if value.lt(0).unwrap_or(false) {
            i64::MIN
        } else {
            i64::MAX
        }
    }))
}

/// An int or None.
pub fn optional_integer(
    name: &'static str,
    value: Option<&Bound<'_, PyAny>>,
) -> Result<Option<i64>> {
    match value {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => integer(name, v).map(Some),
    }
}

/// A str, borrowed.
pub fn text<'a>(name: &'static str, value: &'a Bound<'_, PyAny>) -> Result<&'a str> {
    let text = value
        .cast::<PyString>()
        .map_err(|_| Error::expected(name, "a str", value))?;
    text.to_str().map_err(|_| {
        langcluster_core::Error::invalid(
            name,
            "must be text that UTF-8 can encode (no lone surrogates)",
        )
        .into()
    })
}

/// A str.
pub fn string(name: &'static str, value: &Bound<'_, PyAny>) -> Result<String> {
    text(name, value).map(str::to_owned)
}

/// A bool (True or False, not any truthy value).
pub fn flag(name: &'static str, value: &Bound<'_, PyAny>) -> Result<bool> {
    value
        .cast::<PyBool>()
        .map(|b| b.is_true())
        .map_err(|_| Error::expected(name, "a bool", value))
}

/// An iterator over `value`; one that is not iterable is refused by `name`.
/// An error raised by its `__iter__` is passed on.
pub fn iterate<'py>(
    name: &'static str,
    expected: &str,
    value: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyIterator>> {
    value.try_iter().map_err(|err| {
        if err.is_instance_of::<PyTypeError>(value.py()) {
            Error::expected(name, expected, value)
        } else {
            err.into()
        }
    })
}

/// A callable, or None.
pub fn optional_callable(
    name: &'static str,
    value: Option<&Bound<'_, PyAny>>,
) -> Result<Option<Py<PyAny>>> {
    match value {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) if v.is_callable() => Ok(Some(v.clone().unbind())),
        Some(v) => Err(Error::expected(name, "callable or None", v)),
    }
}

/// A clock: a function of no arguments returning seconds, or None. It is
/// called once here, so that a wrong one fails where it is given.
pub fn clock(name: &'static str, value: Option<&Bound<'_, PyAny>>) -> Result<Option<Py<PyAny>>> {
    match value {
        Some(v) if !v.is_none() => {
            if !v.is_callable() {
                return Err(Error::expected(
                    name,
                    "a function returning seconds, or None",
                    v,
                ));
            }
            read_clock(name, v)?;
            Ok(Some(v.clone().unbind()))
        }
        _ => Ok(None),
    }
}

/// Reads a clock: its seconds as monotonic nanoseconds (negative counts as 0).
pub fn read_clock(name: &'static str, clock: &Bound<'_, PyAny>) -> Result<u64> {
    let reading = clock.call0()?;
    let secs = number(name, &reading).map_err(|_| {
        Error::type_error(
            name,
            format!(
                "must be a function returning seconds, returned {}",
                type_name(&reading)
            ),
        )
    })?;
    Ok(if secs.is_nan() || secs <= 0.0 {
        0
    } else {
        // `as` saturates at u64::MAX for values beyond it.
        (secs * 1e9) as u64
    })
}

/// A tuple of exception classes, from one class or an iterable of them.
pub fn exception_types<'py>(
    name: &'static str,
    value: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyTuple>> {
    let py = value.py();
    let items: Vec<Bound<'py, PyAny>> = if value.is_instance_of::<PyType>() {
        vec![value.clone()]
    } else {
        value
            .try_iter()
            .map_err(|_| Error::expected(name, "exception classes", value))?
            .collect::<PyResult<_>>()?
    };
    let base = py.get_type::<pyo3::exceptions::PyBaseException>();
    for item in &items {
        let ok = item
            .cast::<PyType>()
            .map(|t| t.is_subclass(&base).unwrap_or(false))
            .unwrap_or(false);
        if !ok {
            return Err(Error::type_error(
                name,
                format!("must be exception classes, got {}", item.repr()?),
            ));
        }
    }
    Ok(PyTuple::new(py, items)?)
}

// ------------------------------------------------------------------ nodes

/// The nodes of an iterable: a `langcluster.Node` or any object with `.id`
/// (a str) and optionally `.weight` (a number) and `.status` (a
/// `NodeStatus` or its value). Errors name the element.
pub fn node_specs(nodes: Option<&Bound<'_, PyAny>>) -> Result<Vec<NodeSpec<Py<PyAny>>>> {
    let Some(nodes) = nodes else {
        return Ok(Vec::new());
    };
    let iter = iterate("nodes", "an iterable of nodes", nodes)?;
    let mut specs = Vec::new();
    for (i, node) in iter.enumerate() {
        specs.push(node_spec(i, &node?)?);
    }
    Ok(specs)
}

fn node_spec(i: usize, node: &Bound<'_, PyAny>) -> Result<NodeSpec<Py<PyAny>>> {
    let py = node.py();
    let path = |field: &str| -> Cow<'static, str> { format!("nodes[{i}]{field}").into() };
    let id = node
        .getattr_opt(intern!(py, "id"))?
        .ok_or_else(|| Error::expected(path(""), "a node (an object with an `id`)", node))?;
    let id = id
        .cast::<PyString>()
        .map_err(|_| Error::expected(path(".id"), "a str", &id))?
        .to_str()
        .map_err(|_| {
            langcluster_core::Error::invalid(
                path(".id"),
                "must be text that UTF-8 can encode (no lone surrogates)",
            )
        })?
        .to_owned();
    let weight = match node.getattr_opt(intern!(py, "weight"))? {
        None => 1.0,
        Some(w) if w.is_none() => 1.0,
        Some(w) => {
            number("weight", &w).map_err(|_| Error::expected(path(".weight"), "a number", &w))?
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
fn availability_of(status: &Bound<'_, PyAny>) -> Result<Option<bool>> {
    let Ok(text) = status.cast::<PyString>() else {
        return Ok(None);
    };
    Ok(match text.to_str()? {
        "healthy" => Some(true),
        "unhealthy" | "draining" => Some(false),
        _ => None,
    })
}

// ------------------------------------------------------------ routing keys

/// The stable hash of a routing key: str, bytes or int, hashed with the
/// core's XXH3-64. A str is hashed as its UTF-8 bytes, an int as its decimal
/// text, so `42` and `"42"` route to the same node.
#[inline]
pub fn routing_hash(key: &Bound<'_, PyAny>) -> Result<u64> {
    if key.is_instance_of::<PyString>() {
        return Ok(hash_bytes(text("key", key)?.as_bytes()));
    }
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(hash_bytes(b.as_bytes()));
    }
    if key.is_instance_of::<PyInt>() && !key.is_instance_of::<PyBool>() {
        return Ok(match key.extract::<i64>() {
            Ok(v) => hash_i64(v),
            // Larger than 64 bits: the same rule, through Python's own decimal text.
            Err(_) => hash_bytes(int_text("key", key)?.to_str()?.as_bytes()),
        });
    }
    Err(key_type_error(key))
}

/// Checks a routing key that the balancer does not route by: the same
/// types are accepted everywhere, so switching balancers never changes what
/// is valid.
#[inline]
pub fn check_routing_key(key: &Bound<'_, PyAny>) -> Result<()> {
    if key.is_instance_of::<PyString>()
        || key.is_instance_of::<PyBytes>()
        || (key.is_instance_of::<PyInt>() && !key.is_instance_of::<PyBool>())
    {
        Ok(())
    } else {
        Err(key_type_error(key))
    }
}

/// The chained block hashes of a prompt, appended to `out`: a str (its
/// UTF-8 bytes), bytes, an int (its decimal text, as a routing key), or a
/// list or tuple of token ids (ints from 0 to 2**32-1). Only the blocks the
/// balancer looks at are read, so a huge prompt costs no more than its first
/// `max_prompt_blocks` blocks.
pub fn prompt_hashes(
    config: &PrefixConfig,
    prompt: &Bound<'_, PyAny>,
    out: &mut Vec<u64>,
) -> Result<()> {
    if prompt.is_instance_of::<PyString>() {
        config.hash(Prompt::Bytes(text("prompt", prompt)?.as_bytes()), out);
    } else if let Ok(b) = prompt.cast::<PyBytes>() {
        config.hash(Prompt::Bytes(b.as_bytes()), out);
    } else if prompt.is_instance_of::<PyInt>() && !prompt.is_instance_of::<PyBool>() {
        config.hash(
            Prompt::Bytes(int_text("prompt", prompt)?.to_str()?.as_bytes()),
            out,
        );
    } else if let Some(tokens) = token_sequence(config, prompt, "prompt")? {
        config.hash(Prompt::Tokens(&tokens), out);
    } else {
        return Err(Error::expected(
            "prompt",
            "a str, bytes, int or a list or tuple of token ids",
            prompt,
        ));
    }
    Ok(())
}

/// The token ids of a list or tuple, as many as the balancer reads; `None`
/// for any other type. Errors name `name[i]`.
pub fn token_sequence(
    config: &PrefixConfig,
    value: &Bound<'_, PyAny>,
    name: &str,
) -> Result<Option<Vec<u32>>> {
    if let Ok(list) = value.cast::<PyList>() {
        return token_ids(config, list.iter(), name).map(Some);
    }
    if let Ok(tuple) = value.cast::<PyTuple>() {
        return token_ids(config, tuple.iter(), name).map(Some);
    }
    Ok(None)
}

/// The token ids of a prompt, as many as the balancer reads.
fn token_ids<'py>(
    config: &PrefixConfig,
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    name: &str,
) -> Result<Vec<u32>> {
    let limit = config.max_prompt_tokens();
    let mut tokens = Vec::new();
    for (i, item) in items.take(limit).enumerate() {
        let id = if item.is_instance_of::<PyInt>() && !item.is_instance_of::<PyBool>() {
            item.extract::<u32>().ok()
        } else {
            None
        };
        match id {
            Some(id) => tokens.push(id),
            None if item.is_instance_of::<PyInt>() && !item.is_instance_of::<PyBool>() => {
                return Err(Error::Core(langcluster_core::Error::invalid(
                    format!("{name}[{i}]"),
                    format!("must be a token id from 0 to 2**32-1, got {}", item.str()?),
                )))
            }
            None => {
                return Err(Error::expected(
                    format!("{name}[{i}]"),
                    "an int (a token id)",
                    &item,
                ))
            }
        }
    }
    Ok(tokens)
}

/// The decimal text of an int, refused by `name` when Python will not make
/// it (an int over `sys.get_int_max_str_digits()` digits).
fn int_text<'py>(name: &'static str, value: &Bound<'py, PyAny>) -> Result<Bound<'py, PyString>> {
    value.str().map_err(|err| {
        if err.is_instance_of::<pyo3::exceptions::PyValueError>(value.py()) {
            Error::Core(langcluster_core::Error::invalid(
                name,
                format!("an int routes as its decimal text, which Python refused: {err}"),
            ))
        } else {
            err.into()
        }
    })
}

pub fn key_type_error(key: &Bound<'_, PyAny>) -> Error {
    Error::expected("key", "str, bytes or int", key)
}
