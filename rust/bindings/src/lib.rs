//! `langcluster._core`: the PyO3 module. Only the module declaration lives
//! here; each wrapper lives in its own file and only converts.

mod balancer;
mod breaker;
mod cache;
mod cache_keys;
mod cached;
mod errors;
mod keys;
mod lease;
mod nodes;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
mod _core {
    #[pymodule_export]
    use crate::balancer::{
        Adaptive, Balancer, ConsistentHash, LeastConnections, PowerOfTwoChoices, Random,
        RoundRobin, WeightedRoundRobin,
    };
    #[pymodule_export]
    use crate::breaker::{CircuitBreaker, Guarded};
    #[pymodule_export]
    use crate::cache::MemoryCache;
    #[pymodule_export]
    use crate::cached::{CachedFunction, CallKey};
    #[pymodule_export]
    use crate::lease::{Lease, Ready};

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
