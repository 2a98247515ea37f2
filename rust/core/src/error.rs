//! The one error type of the core. The bindings map each variant to a Python
//! exception in a single place.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A node's id is the empty string; `index` is its position in the input.
    EmptyId { index: usize },
    /// Two nodes in one node set share an id.
    DuplicateId { id: String },
    /// A weight that is not a positive finite number.
    InvalidWeight { id: String, weight: f64 },
    /// An argument outside its domain; `name` is the argument's name.
    InvalidArgument { name: &'static str, reason: String },
    /// No node with this id is in the current node set.
    UnknownNode { id: String },
    /// Every node is unavailable, or there are none.
    NoAvailableNode,
    /// The balancer routes by key (consistent hashing) and none was given.
    KeyRequired,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::EmptyId { index } => write!(f, "nodes[{index}].id: must be a non-empty string"),
            Error::DuplicateId { id } => write!(f, "nodes: duplicate node id '{id}'"),
            Error::InvalidWeight { id, weight } => write!(
                f,
                "nodes: weight of node '{id}' must be a positive finite number, got {weight}"
            ),
            Error::InvalidArgument { name, reason } => write!(f, "{name}: {reason}"),
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
