//! The one error type of the core. Every check of a value a caller passes
//! lives in the core and reports here, naming the argument; the bindings
//! turn each variant into a Python exception in one place.

use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// An argument outside its domain. `name` is the argument's name, or a
    /// path to it (`nodes[3].weight`).
    InvalidArgument {
        name: Cow<'static, str>,
        reason: String,
    },
    /// Two nodes in one node set share an id.
    DuplicateId { id: String },
    /// No node with this id is in the current node set.
    UnknownNode { id: String },
    /// Every node is unavailable, or there are none.
    NoAvailableNode,
    /// The balancer routes by key (consistent hashing) and none was given.
    KeyRequired,
}

impl Error {
    /// An `InvalidArgument` for the argument `name`.
    pub fn invalid(name: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// The same error about an argument found inside `outer` (so `weight`
    /// becomes `nodes[3].weight`).
    pub fn within(self, outer: impl fmt::Display) -> Self {
        match self {
            Error::InvalidArgument { name, reason } => Error::InvalidArgument {
                name: format!("{outer}.{name}").into(),
                reason,
            },
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument { name, reason } => write!(f, "{name}: {reason}"),
            Error::DuplicateId { id } => write!(f, "nodes: duplicate node id '{id}'"),
            Error::UnknownNode { id } => write!(f, "node_id: no node with id '{id}'"),
            Error::NoAvailableNode => write!(f, "no available node"),
            Error::KeyRequired => write!(
                f,
                "key: this balancer routes by key; pass a str, bytes or int key"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// A positive, finite number of seconds as a `Duration`; `name` names the
/// argument in the error.
pub fn positive_seconds(name: &'static str, secs: f64) -> Result<std::time::Duration, Error> {
    if !(secs.is_finite() && secs > 0.0) {
        return Err(Error::invalid(
            name,
            format!("must be a positive number of seconds, got {secs}"),
        ));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| Error::invalid(name, e.to_string()))
}

/// A finite number of seconds >= 0 as a `Duration` (a measured latency).
pub fn non_negative_seconds(name: &'static str, secs: f64) -> Result<std::time::Duration, Error> {
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(Error::invalid(
            name,
            format!("must be a finite number of seconds >= 0, got {secs}"),
        ));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| Error::invalid(name, e.to_string()))
}

/// A count from 1 to `max`.
pub fn count_in(name: &'static str, value: i64, max: u32) -> Result<u32, Error> {
    if value >= 1 && value <= i64::from(max) {
        Ok(value as u32)
    } else {
        Err(Error::invalid(
            name,
            format!("must be between 1 and {max}, got {value}"),
        ))
    }
}
