//! The Python balancer classes. `Balancer` is the common base holding a
//! type-erased core balancer; each algorithm is a subclass that only has a
//! constructor, so every method is written once.

use std::sync::Arc;

mod lease;
mod prefix;

use langcluster_core::balancer::{
    self as core, NodeSpec, NodeState, NodeStats, Strategy, DEFAULT_DECAY_S, DEFAULT_VNODES,
};
use langcluster_core::Error as CoreError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert::{
    check_routing_key, flag, node_specs, number, optional_integer, optional_number, routing_hash,
    text,
};
use crate::errors::Result;
pub use lease::Lease;
use lease::{PickState, Route};
pub use prefix::PrefixAware;

type Handle = Py<PyAny>;
type CoreResult<T> = std::result::Result<T, CoreError>;

/// What the Python classes need from a core balancer, whatever its strategy.
trait DynBalancer: Send + Sync {
    fn pick(&self, py: Python<'_>, key: Option<u64>) -> CoreResult<Handle>;
    fn update(&self, nodes: Vec<NodeSpec<Handle>>) -> CoreResult<()>;
    fn set_available(&self, id: &str, available: bool) -> CoreResult<bool>;
    fn begin(&self, id: &str) -> CoreResult<()>;
    fn end(&self, id: &str, latency_s: f64, ok: bool) -> CoreResult<bool>;
    fn release(&self, id: &str) -> bool;
    fn stats(&self) -> Vec<NodeStats>;
    fn handles(&self, py: Python<'_>) -> Vec<Handle>;
    fn contains(&self, id: &str) -> bool;
    fn len(&self) -> usize;
    fn available_len(&self) -> usize;
}

impl<S: Strategy> DynBalancer for core::Balancer<Handle, S> {
    #[inline]
    fn pick(&self, py: Python<'_>, key: Option<u64>) -> CoreResult<Handle> {
        self.pick_with(key, |m| m.handle.clone_ref(py))
    }

    fn update(&self, nodes: Vec<NodeSpec<Handle>>) -> CoreResult<()> {
        core::Balancer::update(self, nodes)
    }

    fn set_available(&self, id: &str, available: bool) -> CoreResult<bool> {
        core::Balancer::set_available(self, id, available)
    }

    fn begin(&self, id: &str) -> CoreResult<()> {
        core::Balancer::begin(self, id)
    }

    fn end(&self, id: &str, latency_s: f64, ok: bool) -> CoreResult<bool> {
        core::Balancer::end(self, id, latency_s, ok)
    }

    fn release(&self, id: &str) -> bool {
        core::Balancer::release(self, id)
    }

    fn stats(&self) -> Vec<NodeStats> {
        core::Balancer::stats(self)
    }

    fn handles(&self, py: Python<'_>) -> Vec<Handle> {
        self.with_members(|ms| ms.iter().map(|m| m.handle.clone_ref(py)).collect())
    }

    fn contains(&self, id: &str) -> bool {
        self.state_of(id).is_some()
    }

    fn len(&self) -> usize {
        core::Balancer::len(self)
    }

    fn available_len(&self) -> usize {
        core::Balancer::available_len(self)
    }
}

impl<S: Strategy> PickState for core::Balancer<Handle, S> {
    fn pick_state(&self, py: Python<'_>, route: &Route) -> CoreResult<(Handle, Arc<NodeState>)> {
        let key = match route {
            Route::Key(key) => *key,
            Route::Blocks(_) => None,
        };
        self.pick_with(key, |m| (m.handle.clone_ref(py), Arc::clone(&m.state)))
    }
}

/// Base class of every balancer. Not instantiable itself.
#[pyclass(subclass, frozen, module = "langcluster._core")]
pub struct Balancer {
    inner: Arc<dyn DynBalancer>,
    /// The same core balancer, as leases see it.
    leases: Arc<dyn PickState>,
    /// Whether the strategy routes by key (consistent hashing).
    routes_by_key: bool,
}

impl Balancer {
    fn build<S: Strategy + 'static>(
        strategy: S,
        nodes: Option<&Bound<'_, PyAny>>,
        decay_s: f64,
    ) -> Result<Self> {
        Ok(Self::build_typed(strategy, nodes, decay_s)?.0)
    }

    /// The base, and the core balancer with its type, for a subclass that
    /// picks without going through the base.
    #[allow(clippy::type_complexity)]
    fn build_typed<S: Strategy + 'static>(
        strategy: S,
        nodes: Option<&Bound<'_, PyAny>>,
        decay_s: f64,
    ) -> Result<(Self, Arc<core::Balancer<Handle, S>>)> {
        let specs = node_specs(nodes)?;
        let core = Arc::new(core::Balancer::with_decay(strategy, specs, decay_s)?);
        let base = Self {
            inner: core.clone(),
            leases: core.clone(),
            routes_by_key: S::ROUTES_BY_KEY,
        };
        Ok((base, core))
    }

    #[inline]
    fn key_hash(&self, key: Option<&Bound<'_, PyAny>>) -> Result<Option<u64>> {
        match key {
            None => Ok(None),
            Some(k) if k.is_none() => Ok(None),
            Some(k) if self.routes_by_key => routing_hash(k).map(Some),
            Some(k) => check_routing_key(k).map(|()| None),
        }
    }
}

#[pymethods]
impl Balancer {
    /// Picks a node and returns the node object itself.
    #[pyo3(signature = (key=None))]
    #[inline]
    fn pick(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> Result<Handle> {
        let hash = self.key_hash(key)?;
        Ok(self.inner.pick(py, hash)?)
    }

    /// A context manager (sync and async) that picks a node on entry, counts
    /// the request in flight, and on exit reports its latency and outcome.
    #[pyo3(signature = (key=None))]
    fn acquire(&self, key: Option<&Bound<'_, PyAny>>) -> Result<Lease> {
        let hash = self.key_hash(key)?;
        Ok(Lease::new(Arc::clone(&self.leases), Route::Key(hash)))
    }

    /// Counts one request in flight on `node_id`.
    fn begin(&self, node_id: &Bound<'_, PyAny>) -> Result<()> {
        Ok(self.inner.begin(text("node_id", node_id)?)?)
    }

    /// Ends one request on `node_id` with its latency and outcome. Returns
    /// False, changing nothing, when the node has been removed meanwhile.
    /// An `end` with no `begin` before it still records the outcome (a
    /// caller may report requests it did not count in flight); the count in
    /// flight never drops below zero.
    #[pyo3(signature = (node_id, latency_s, ok=None))]
    #[pyo3(text_signature = "($self, node_id, latency_s, ok=True)")]
    fn end(
        &self,
        node_id: &Bound<'_, PyAny>,
        latency_s: &Bound<'_, PyAny>,
        ok: Option<&Bound<'_, PyAny>>,
    ) -> Result<bool> {
        let node_id = text("node_id", node_id)?;
        let latency_s = number("latency_s", latency_s)?;
        let ok = ok.map(|ok| flag("ok", ok)).transpose()?.unwrap_or(true);
        Ok(self.inner.end(node_id, latency_s, ok)?)
    }

    /// Ends one request on `node_id` without an outcome (a cancelled
    /// request): the in-flight count drops, no latency or failure is
    /// recorded. Returns False when the node has been removed meanwhile.
    fn release(&self, node_id: &Bound<'_, PyAny>) -> Result<bool> {
        Ok(self.inner.release(text("node_id", node_id)?))
    }

    /// Replaces the node set atomically; nodes that stay keep their counters.
    fn update(&self, nodes: &Bound<'_, PyAny>) -> Result<()> {
        let specs = node_specs(Some(nodes))?;
        Ok(self.inner.update(specs)?)
    }

    /// Takes a node out of rotation or puts it back. Returns whether it changed.
    fn set_available(
        &self,
        node_id: &Bound<'_, PyAny>,
        available: &Bound<'_, PyAny>,
    ) -> Result<bool> {
        let node_id = text("node_id", node_id)?;
        Ok(self
            .inner
            .set_available(node_id, flag("available", available)?)?)
    }

    /// Per-node counters: `{id: {"picks", "in_flight", "successes",
    /// "failures", "ewma_latency_s", "available", "weight"}}`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, self.inner.stats())
    }

    /// The current node objects, available or not, in the order given.
    #[getter]
    fn nodes(&self, py: Python<'_>) -> Vec<Handle> {
        self.inner.handles(py)
    }

    /// How many nodes are available.
    #[getter]
    fn available_count(&self) -> usize {
        self.inner.available_len()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, node_id: &Bound<'_, PyAny>) -> bool {
        node_id
            .extract::<&str>()
            .map(|id| self.inner.contains(id))
            .unwrap_or(false)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let name = slf.get_type().name()?;
        let this = slf.get();
        Ok(format!(
            "{name}(nodes={}, available={})",
            this.inner.len(),
            this.inner.available_len()
        ))
    }
}

/// `{id: {counter: value}}` for the nodes' counters.
fn stats_dict(py: Python<'_>, stats: Vec<NodeStats>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for s in stats {
        let d = PyDict::new(py);
        d.set_item("picks", s.picks)?;
        d.set_item("in_flight", s.in_flight)?;
        d.set_item("successes", s.successes)?;
        d.set_item("failures", s.failures)?;
        d.set_item("ewma_latency_s", s.ewma_latency_s)?;
        d.set_item("available", s.available)?;
        d.set_item("weight", s.weight)?;
        out.set_item(s.id, d)?;
    }
    Ok(out)
}

macro_rules! simple_balancer {
    ($(#[$doc:meta])* $name:ident, $strategy:expr) => {
        $(#[$doc])*
        #[pyclass(extends = Balancer, frozen, module = "langcluster._core")]
        pub struct $name;

        #[pymethods]
        impl $name {
            #[new]
            #[pyo3(signature = (nodes=None))]
            fn new(nodes: Option<&Bound<'_, PyAny>>) -> Result<PyClassInitializer<Self>> {
                let base = Balancer::build($strategy, nodes, DEFAULT_DECAY_S)?;
                Ok(PyClassInitializer::from(base).add_subclass($name))
            }
        }
    };
}

simple_balancer!(
    /// Round robin over the available nodes; exact under concurrency.
    RoundRobin,
    core::RoundRobin::default()
);
simple_balancer!(
    /// Smooth weighted round robin on a precomputed schedule.
    WeightedRoundRobin,
    core::WeightedRoundRobin::default()
);
simple_balancer!(
    /// Fewest requests in flight (per unit of weight); ties broken at random.
    LeastConnections,
    core::LeastConnections
);
simple_balancer!(
    /// A random available node, weighted when weights differ.
    Random,
    core::Random
);
simple_balancer!(
    /// The less loaded of two random nodes.
    PowerOfTwoChoices,
    core::PowerOfTwoChoices
);

/// Power of two choices over peak-EWMA latency × (in flight + 1).
#[pyclass(extends = Balancer, frozen, module = "langcluster._core")]
pub struct Adaptive {
    /// The same core balancer as the base's, with its type: `pick` calls it
    /// directly, which spares a subtype check of `self` and a dynamic call
    /// (about a fifth of a pick).
    core: Arc<core::Balancer<Handle, core::Adaptive>>,
}

#[pymethods]
impl Adaptive {
    #[new]
    #[pyo3(signature = (nodes=None, *, decay_s=None))]
    #[pyo3(text_signature = "(nodes=None, *, decay_s=10.0)")]
    fn new(
        nodes: Option<&Bound<'_, PyAny>>,
        decay_s: Option<&Bound<'_, PyAny>>,
    ) -> Result<PyClassInitializer<Self>> {
        let decay_s = optional_number("decay_s", decay_s)?.unwrap_or(DEFAULT_DECAY_S);
        let (base, core) = Balancer::build_typed(core::Adaptive, nodes, decay_s)?;
        Ok(PyClassInitializer::from(base).add_subclass(Adaptive { core }))
    }

    /// Picks a node and returns the node object itself.
    #[pyo3(signature = (key=None))]
    #[inline]
    fn pick(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> Result<Handle> {
        if let Some(k) = key.filter(|k| !k.is_none()) {
            check_routing_key(k)?;
        }
        Ok(self.core.pick_with(None, |m| m.handle.clone_ref(py))?)
    }
}

/// Consistent hashing on a ring of virtual nodes, with optional bounded load.
#[pyclass(extends = Balancer, frozen, module = "langcluster._core")]
pub struct ConsistentHash {
    vnodes: u32,
    load_factor: Option<f64>,
}

#[pymethods]
impl ConsistentHash {
    #[new]
    #[pyo3(signature = (nodes=None, *, vnodes=None, load_factor=None))]
    #[pyo3(text_signature = "(nodes=None, *, vnodes=160, load_factor=None)")]
    fn new(
        nodes: Option<&Bound<'_, PyAny>>,
        vnodes: Option<&Bound<'_, PyAny>>,
        load_factor: Option<&Bound<'_, PyAny>>,
    ) -> Result<PyClassInitializer<Self>> {
        let vnodes = optional_integer("vnodes", vnodes)?.unwrap_or(i64::from(DEFAULT_VNODES));
        let load_factor = optional_number("load_factor", load_factor)?;
        let strategy = core::ConsistentHash::from_settings(vnodes, load_factor)?;
        let vnodes = strategy.vnodes();
        let base = Balancer::build(strategy, nodes, DEFAULT_DECAY_S)?;
        Ok(PyClassInitializer::from(base).add_subclass(ConsistentHash {
            vnodes,
            load_factor,
        }))
    }

    /// Virtual nodes per node of mean weight.
    #[getter]
    fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// The bounded-load factor, or None when load is not bounded.
    #[getter]
    fn load_factor(&self) -> Option<f64> {
        self.load_factor
    }
}
