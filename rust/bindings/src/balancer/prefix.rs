//! `PrefixAware`: the prefix-cache-aware balancer. It shares the base
//! class's node-set methods and adds picks by prompt.

use std::sync::Arc;

use langcluster_core::balancer::{self as core, NodeState, PrefixConfig, DEFAULT_DECAY_S};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::lease::{PickState, Route};
use super::{stats_dict, Balancer, CoreResult, Handle, Lease};
use crate::convert::{
    integer, iterate, node_specs, optional_integer, optional_number, prompt_hashes, text,
};
use crate::errors::Result;

type Core = core::PrefixAware<Handle>;

impl PickState for Core {
    fn pick_state(&self, py: Python<'_>, route: &Route) -> CoreResult<(Handle, Arc<NodeState>)> {
        let hashes: &[u64] = match route {
            Route::Blocks(hashes) => hashes,
            Route::Key(_) => &[],
        };
        self.pick_hashed(hashes, |m| (m.handle.clone_ref(py), Arc::clone(&m.state)))
    }
}

/// Routes each prompt to a node that already holds its prefix in its KV
/// cache, unless that node is overloaded; see the user guide.
#[pyclass(extends = Balancer, frozen, module = "langcluster._core")]
pub struct PrefixAware {
    core: Arc<Core>,
}

fn size(name: &'static str, value: Option<&Bound<'_, PyAny>>, default: usize) -> Result<usize> {
    Ok(match optional_integer(name, value)? {
        None => default,
        // Negative or beyond the platform's size: the core's range check
        // names it, from a value it is sure to refuse.
        Some(v) => usize::try_from(v).unwrap_or(0),
    })
}

/// A seed: an int from 0 to 2**64-1.
fn seed_value(value: &Bound<'_, PyAny>) -> Result<u64> {
    integer("seed", value)?;
    value.extract::<u64>().map_err(|_| {
        langcluster_core::Error::invalid("seed", "must be an int from 0 to 2**64-1").into()
    })
}

impl PrefixAware {
    fn hashes(&self, prompt: Option<&Bound<'_, PyAny>>) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        if let Some(prompt) = prompt.filter(|p| !p.is_none()) {
            prompt_hashes(self.core.config(), prompt, &mut out)?;
        }
        Ok(out)
    }
}

#[pymethods]
impl PrefixAware {
    #[new]
    #[pyo3(signature = (
        nodes=None, *, block_size=None, token_block_size=None, max_blocks=None,
        max_prompt_blocks=None, balance_rel=None, balance_abs=None, min_match=None,
        load=None, shards=None, decay_s=None, seed=None
    ))]
    #[pyo3(
        text_signature = "(nodes=None, *, block_size=64, token_block_size=16, \
        max_blocks=262144, max_prompt_blocks=1024, balance_rel=1.5, balance_abs=8.0, \
        min_match=0.5, load='in_flight', shards=16, decay_s=10.0, seed=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        nodes: Option<&Bound<'_, PyAny>>,
        block_size: Option<&Bound<'_, PyAny>>,
        token_block_size: Option<&Bound<'_, PyAny>>,
        max_blocks: Option<&Bound<'_, PyAny>>,
        max_prompt_blocks: Option<&Bound<'_, PyAny>>,
        balance_rel: Option<&Bound<'_, PyAny>>,
        balance_abs: Option<&Bound<'_, PyAny>>,
        min_match: Option<&Bound<'_, PyAny>>,
        load: Option<&Bound<'_, PyAny>>,
        shards: Option<&Bound<'_, PyAny>>,
        decay_s: Option<&Bound<'_, PyAny>>,
        seed: Option<&Bound<'_, PyAny>>,
    ) -> Result<PyClassInitializer<Self>> {
        let d = PrefixConfig::default();
        let config = PrefixConfig {
            block_bytes: size("block_size", block_size, d.block_bytes)?,
            block_tokens: size("token_block_size", token_block_size, d.block_tokens)?,
            max_blocks: size("max_blocks", max_blocks, d.max_blocks)?,
            max_prompt_blocks: size("max_prompt_blocks", max_prompt_blocks, d.max_prompt_blocks)?,
            shards: size("shards", shards, d.shards)?,
            balance_rel: optional_number("balance_rel", balance_rel)?.unwrap_or(d.balance_rel),
            balance_abs: optional_number("balance_abs", balance_abs)?.unwrap_or(d.balance_abs),
            min_match: optional_number("min_match", min_match)?.unwrap_or(d.min_match),
            use_latency: match load {
                Some(v) if !v.is_none() => match text("load", v)? {
                    "in_flight" => false,
                    "latency" => true,
                    other => {
                        return Err(langcluster_core::Error::invalid(
                            "load",
                            format!("must be 'in_flight' or 'latency', got {other:?}"),
                        )
                        .into())
                    }
                },
                _ => d.use_latency,
            },
            seed: match seed {
                Some(v) if !v.is_none() => Some(seed_value(v)?),
                _ => None,
            },
        };
        let decay_s = optional_number("decay_s", decay_s)?.unwrap_or(DEFAULT_DECAY_S);
        config.check()?;
        let specs = node_specs(nodes)?;
        let core = Arc::new(Core::new(config, specs, decay_s)?);
        // The base class's methods (begin, end, update, stats...) work on
        // the node-set half as on any balancer; leases pick by prompt.
        let base = Balancer {
            inner: core.balancer().clone(),
            leases: core.clone(),
            routes_by_key: false,
        };
        Ok(PyClassInitializer::from(base).add_subclass(PrefixAware { core }))
    }

    /// Picks the node for `prompt` (a str, bytes, or a list or tuple of
    /// token ids) and records that it now holds the prompt's blocks. With no
    /// prompt, the least loaded node. `exclude` (node ids) is never chosen:
    /// a retry passes the nodes it tried, and raises NoAvailableNode when
    /// it has tried every available node.
    #[pyo3(signature = (prompt=None, *, exclude=None))]
    fn pick(
        &self,
        py: Python<'_>,
        prompt: Option<&Bound<'_, PyAny>>,
        exclude: Option<&Bound<'_, PyAny>>,
    ) -> Result<Handle> {
        let hashes = self.hashes(prompt)?;
        let Some(exclude) = exclude.filter(|e| !e.is_none()) else {
            return Ok(self.core.pick_hashed(&hashes, |m| m.handle.clone_ref(py))?);
        };
        if exclude.is_instance_of::<pyo3::types::PyString>() {
            return Err(crate::errors::Error::expected(
                "exclude",
                "an iterable of node ids, not one str",
                exclude,
            ));
        }
        let items = iterate("exclude", "an iterable of node ids", exclude)?
            .collect::<PyResult<Vec<_>>>()?;
        let ids: Vec<&str> = items
            .iter()
            .map(|i| text("exclude", i))
            .collect::<Result<_>>()?;
        Ok(self
            .core
            .pick_excluding(&hashes, &ids, |m| m.handle.clone_ref(py))?)
    }

    /// A context manager (sync and async) that picks for `prompt` on entry
    /// and holds the request in flight until exit.
    #[pyo3(signature = (prompt=None))]
    fn acquire(&self, prompt: Option<&Bound<'_, PyAny>>) -> Result<Lease> {
        let hashes = self.hashes(prompt)?;
        Ok(Lease::new(self.core.clone(), Route::Blocks(hashes)))
    }

    /// Per-node counters as every balancer has them, plus `"blocks"`: how
    /// many prompt blocks the record holds for the node.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = stats_dict(py, self.core.balancer().stats())?;
        for (id, blocks) in self.core.prefix_stats().blocks_per_node {
            if let Some(d) = out.get_item(&id)? {
                d.set_item("blocks", blocks)?;
            }
        }
        Ok(out)
    }

    /// The record as a whole: `blocks`, `max_blocks`, `bytes` (its memory),
    /// `evictions`, `prompts` (picks with at least one block),
    /// `prompt_blocks`, `matched_blocks` (held by the node chosen),
    /// `match_rate` (their ratio) and `spills` (picks that passed over the
    /// deepest match because its node was overloaded).
    fn prefix_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.core.prefix_stats();
        let d = PyDict::new(py);
        d.set_item("blocks", s.blocks)?;
        d.set_item("max_blocks", s.max_blocks)?;
        d.set_item("bytes", s.bytes)?;
        d.set_item("evictions", s.evictions)?;
        d.set_item("prompts", s.prompts)?;
        d.set_item("prompt_blocks", s.prompt_blocks)?;
        d.set_item("matched_blocks", s.matched_blocks)?;
        let rate = if s.prompt_blocks == 0 {
            0.0
        } else {
            s.matched_blocks as f64 / s.prompt_blocks as f64
        };
        d.set_item("match_rate", rate)?;
        d.set_item("spills", s.spills)?;
        d.set_item("journal_dropped", s.journal_dropped)?;
        d.set_item("merged", s.merged)?;
        d.set_item("merge_skipped", s.merge_skipped)?;
        Ok(d)
    }

    /// Keeps a journal of this router's picks for prompts (each pick's node
    /// id and prompt blocks), up to `max_bytes` between two
    /// `take_journal` calls (picks beyond are counted in
    /// `prefix_stats()["journal_dropped"]`); 0 turns it off. For routers
    /// that share what they route (`SharedState` does).
    fn keep_journal(&self, max_bytes: &Bound<'_, PyAny>) -> Result<()> {
        let max = integer("max_bytes", max_bytes)?;
        let max = usize::try_from(max)
            .ok()
            .filter(|&m| m <= 1 << 30)
            .ok_or_else(|| {
                langcluster_core::Error::invalid(
                    "max_bytes",
                    format!("must be an int from 0 to 2**30, got {max}"),
                )
            })?;
        self.core.set_journal(max);
        Ok(())
    }

    /// The picks kept since the last call, as bytes for another router's
    /// `merge_journal` (b"" when there are none).
    fn take_journal<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let data = self.core.take_journal();
        PyBytes::new(py, &data)
    }

    /// Records what another router's journal says it routed, as if this
    /// router had routed it. Picks of nodes this router does not have are
    /// skipped. Bytes that are not a whole journal made with the same block
    /// sizes raise ValueError naming `data`, and nothing is recorded.
    /// Returns how many picks were merged.
    fn merge_journal(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> Result<usize> {
        let Ok(bytes) = data.cast::<PyBytes>() else {
            return Err(crate::errors::Error::expected("data", "bytes", data));
        };
        let owned = bytes.as_bytes().to_vec();
        let core = &self.core;
        Ok(py.detach(|| core.merge_journal(&owned))?)
    }

    /// The settings in force, by their argument names.
    #[getter]
    fn settings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.core.config();
        let d = PyDict::new(py);
        d.set_item("block_size", c.block_bytes)?;
        d.set_item("token_block_size", c.block_tokens)?;
        d.set_item("max_blocks", c.max_blocks)?;
        d.set_item("max_prompt_blocks", c.max_prompt_blocks)?;
        d.set_item("balance_rel", c.balance_rel)?;
        d.set_item("balance_abs", c.balance_abs)?;
        d.set_item("min_match", c.min_match)?;
        d.set_item(
            "load",
            if c.use_latency {
                "latency"
            } else {
                "in_flight"
            },
        )?;
        d.set_item("shards", c.shards)?;
        d.set_item("seed", c.seed)?;
        Ok(d)
    }
}
