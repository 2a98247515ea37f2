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
    /// An allocation of `bytes` for `what` failed: memory is short.
    OutOfMemory { what: &'static str, bytes: usize },
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
            Error::OutOfMemory { what, bytes } => {
                write!(f, "{what}: could not allocate {bytes} bytes")
            }
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
            format!("must be a positive number of seconds, got {secs:?}"),
        ));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| Error::invalid(name, e.to_string()))
}

/// The longest latency a caller may report: a day. Anything longer is a
/// clock or unit mistake, and would swamp a latency average.
pub const MAX_LATENCY_S: f64 = 86_400.0;

/// A measured latency: a number of seconds from 0 to [`MAX_LATENCY_S`].
pub fn latency_seconds(name: &'static str, secs: f64) -> Result<std::time::Duration, Error> {
    if !(secs.is_finite() && (0.0..=MAX_LATENCY_S).contains(&secs)) {
        return Err(Error::invalid(
            name,
            format!("must be a number of seconds from 0 to {MAX_LATENCY_S}, got {secs:?}"),
        ));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| Error::invalid(name, e.to_string()))
}

/// A vector of `len` default values, or `Error::OutOfMemory` naming `what`
/// when the memory is not there (instead of aborting the process).
pub fn try_vec<T: Clone + Default>(what: &'static str, len: usize) -> Result<Vec<T>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
        what,
        bytes: len.saturating_mul(std::mem::size_of::<T>()),
    })?;
    v.resize(len, T::default());
    Ok(v)
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
