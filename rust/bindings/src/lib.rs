//! `langcluster._core`: the PyO3 module. Only the module declaration lives
//! here. The wrappers convert arguments (`convert`), call the core, and map
//! errors (`errors`); every check of a value is the core's.

mod balancer;
mod breaker;
mod cache;
mod convert;
mod counters;
mod errors;
mod gcref;
mod metrics;
mod ready;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
mod _core {
    #[pymodule_export]
    use super::{check_node, read_prompt_fast};
    #[pymodule_export]
    use crate::balancer::{
        Adaptive, Balancer, ConsistentHash, Lease, LeastConnections, PowerOfTwoChoices,
        PrefixAware, Random, RoundRobin, WeightedRoundRobin,
    };
    #[pymodule_export]
    use crate::breaker::{breaker_settings, CircuitBreaker, Guarded};
    #[pymodule_export]
    use crate::cache::cached::{wrap_cached, CachedFunction, CallKey};
    #[pymodule_export]
    use crate::cache::MemoryCache;
    #[pymodule_export]
    use crate::counters::Counters;
    #[pymodule_export]
    use crate::metrics::{CallTimer, Histogram};
    #[pymodule_export]
    use crate::ready::Ready;

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}

/// Checks a node's id and weight as every balancer does: `langcluster.Node`
/// calls this, so a node is refused by the same rule wherever it is made.
#[pyfunction]
fn check_node(id: &Bound<'_, PyAny>, weight: &Bound<'_, PyAny>) -> errors::Result<()> {
    let id = convert::text("id", id)?;
    let weight = convert::number("weight", weight)?;
    Ok(langcluster_core::balancer::check_node(id, weight)?)
}

/// The prompt of an OpenAI-style request body (`field` is `messages`,
/// `prompt` or `input`): `(whole, head_chars)`, or None when the body is
/// not one of the shapes read fast (the caller then reads it in Python).
#[pyfunction]
fn read_prompt_fast(
    field: &Bound<'_, PyAny>,
    body: &[u8],
) -> errors::Result<Option<(String, usize)>> {
    use langcluster_core::prompt::{read, Field};
    let field = match convert::text("field", field)? {
        "messages" => Field::Messages,
        "prompt" => Field::Prompt,
        "input" => Field::Input,
        other => {
            return Err(langcluster_core::Error::invalid(
                "field",
                format!("must be 'messages', 'prompt' or 'input', got '{other}'"),
            )
            .into())
        }
    };
    Ok(read(field, body).map(|p| (p.whole, p.head_chars)))
}
