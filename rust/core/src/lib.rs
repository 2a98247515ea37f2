//! langcluster-core: the pure-Rust algorithms behind `langcluster._core`.
//!
//! Nothing here knows about Python. The bindings crate wraps these types and
//! only converts arguments and errors, so every algorithm can be tested and
//! benchmarked with plain `cargo test` / `cargo bench`.

pub mod balancer;
pub mod breaker;
pub mod cache;
pub mod clock;
pub mod counters;
pub mod error;
pub mod hash;
pub mod metrics;
pub mod prompt;

pub use error::Error;
