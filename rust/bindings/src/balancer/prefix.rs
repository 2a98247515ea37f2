//! `PrefixAware`: the prefix-cache-aware balancer. It shares the base
//! class's node-set methods and adds picks by prompt.

use std::sync::Arc;

use langcluster_core::balancer::{
    self as core, EventCounts, NodeState, PrefixConfig, DEFAULT_DECAY_S,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::lease::{PickState, Route};
use super::{stats_dict, Balancer, CoreResult, Handle, Lease};
use crate::convert::{
    flag, integer, iterate, node_specs, number, optional_integer, optional_number, prompt_hashes,
    text, token_sequence,
};
use crate::errors::{Error, Result};

type Core = core::PrefixAware<Handle>;

/// The core balancer with the caller's clock, as leases pick through it.
struct Clocked {
    core: Arc<Core>,
    /// A callable returning seconds, or None for the process's clock.
    clock: Option<Py<PyAny>>,
}

impl Clocked {
    /// Now, in nanoseconds of the caller's clock (or the process's).
    fn now(&self, py: Python<'_>) -> Result<u64> {
        let Some(clock) = &self.clock else {
            return Ok(langcluster_core::clock::now_ns());
        };
        let value = clock.call0(py)?;
        let seconds = number("clock", value.bind(py))?;
        if !(seconds.is_finite() && seconds >= 0.0) {
            return Err(langcluster_core::Error::invalid(
                "clock",
                format!("must return a number of seconds from 0, got {seconds:?}"),
            )
            .into());
        }
        Ok((seconds * 1e9) as u64)
    }
}

impl PickState for Clocked {
    fn pick_state(&self, py: Python<'_>, route: &Route) -> CoreResult<(Handle, Arc<NodeState>)> {
        let hashes: &[u64] = match route {
            Route::Blocks(hashes) => hashes,
            Route::Key(_) => &[],
        };
        // A clock that fails or lies at enter time falls back to the
        // process's: the lease was already checked when it was made.
        let now = self
            .now(py)
            .unwrap_or_else(|_| langcluster_core::clock::now_ns());
        self.core.pick_at(hashes, &[], now, |m| {
            (m.handle.clone_ref(py), Arc::clone(&m.state))
        })
    }
}

/// Routes each prompt to a node that already holds its prefix in its KV
/// cache, unless that node is overloaded; see the user guide.
#[pyclass(extends = Balancer, frozen, module = "langcluster._core")]
pub struct PrefixAware {
    core: Arc<Core>,
    clocked: Arc<Clocked>,
    /// What turns a str prompt into token ids (`encode` of a tokenizer
    /// object, or the callable itself), or None to read text as bytes.
    tokenize: Option<Py<PyAny>>,
    decay_s: f64,
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

/// The token ids a tokenizer returned: a list or tuple of ints, an
/// encoding with `.ids` (Hugging Face `tokenizers`), or a mapping with
/// `"input_ids"` (`transformers`).
fn tokenized(config: &PrefixConfig, out: &Bound<'_, PyAny>) -> Result<Vec<u32>> {
    const NAME: &str = "tokenizer(prompt)";
    if let Some(ids) = token_sequence(config, out, NAME)? {
        return Ok(ids);
    }
    let inner = if let Ok(ids) = out.getattr("ids") {
        Some(ids)
    } else if out.hasattr("keys").unwrap_or(false) {
        out.get_item("input_ids").ok()
    } else {
        None
    };
    if let Some(inner) = inner {
        if let Some(ids) = token_sequence(config, &inner, NAME)? {
            return Ok(ids);
        }
    }
    Err(Error::expected(
        "tokenizer",
        "to return token ids (a list of ints, or an encoding with .ids)",
        out,
    ))
}

impl PrefixAware {
    fn hashes(&self, py: Python<'_>, prompt: Option<&Bound<'_, PyAny>>) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let Some(prompt) = prompt.filter(|p| !p.is_none()) else {
            return Ok(out);
        };
        let config = self.core.config();
        match &self.tokenize {
            Some(tokenize) if prompt.is_instance_of::<PyString>() => {
                let ids = tokenized(config, tokenize.bind(py).call1((prompt,))?.as_any())?;
                config.hash(core::Prompt::Tokens(&ids), &mut out);
            }
            _ => prompt_hashes(config, prompt, &mut out)?,
        }
        Ok(out)
    }

    fn node_id<'a>(node_id: &'a Bound<'_, PyAny>) -> Result<&'a str> {
        text("node_id", node_id)
    }
}

/// `EventCounts` as a dict.
fn event_dict<'py>(py: Python<'py>, c: &EventCounts) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("batches", c.batches)?;
    d.set_item("refused", c.refused)?;
    d.set_item("stored", c.stored)?;
    d.set_item("removed", c.removed)?;
    d.set_item("cleared", c.cleared)?;
    d.set_item("ignored", c.ignored)?;
    d.set_item("orphaned", c.orphaned)?;
    d.set_item("unknown_removed", c.unknown_removed)?;
    d.set_item("unmapped", c.unmapped)?;
    Ok(d)
}

#[pymethods]
impl PrefixAware {
    #[new]
    #[pyo3(signature = (
        nodes=None, *, block_size=None, token_block_size=None, max_blocks=None,
        node_blocks=None, max_prompt_blocks=None, balance_rel=None, balance_abs=None,
        min_match=None, prefill_weight=None, prefill_decay_s=None, choices=None,
        load=None, shards=None, decay_s=None, seed=None, tokenizer=None, clock=None
    ))]
    #[pyo3(
        text_signature = "(nodes=None, *, block_size=64, token_block_size=16, \
        max_blocks=262144, node_blocks=None, max_prompt_blocks=1024, balance_rel=1.5, \
        balance_abs=8.0, min_match=0.1, prefill_weight=4.0, prefill_decay_s=1.0, \
        choices=None, load='in_flight', shards=16, decay_s=10.0, seed=None, \
        tokenizer=None, clock=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        nodes: Option<&Bound<'_, PyAny>>,
        block_size: Option<&Bound<'_, PyAny>>,
        token_block_size: Option<&Bound<'_, PyAny>>,
        max_blocks: Option<&Bound<'_, PyAny>>,
        node_blocks: Option<&Bound<'_, PyAny>>,
        max_prompt_blocks: Option<&Bound<'_, PyAny>>,
        balance_rel: Option<&Bound<'_, PyAny>>,
        balance_abs: Option<&Bound<'_, PyAny>>,
        min_match: Option<&Bound<'_, PyAny>>,
        prefill_weight: Option<&Bound<'_, PyAny>>,
        prefill_decay_s: Option<&Bound<'_, PyAny>>,
        choices: Option<&Bound<'_, PyAny>>,
        load: Option<&Bound<'_, PyAny>>,
        shards: Option<&Bound<'_, PyAny>>,
        decay_s: Option<&Bound<'_, PyAny>>,
        seed: Option<&Bound<'_, PyAny>>,
        tokenizer: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> Result<PyClassInitializer<Self>> {
        let d = PrefixConfig::default();
        let config = PrefixConfig {
            block_bytes: size("block_size", block_size, d.block_bytes)?,
            block_tokens: size("token_block_size", token_block_size, d.block_tokens)?,
            max_blocks: size("max_blocks", max_blocks, d.max_blocks)?,
            node_blocks: match optional_integer("node_blocks", node_blocks)? {
                None => d.node_blocks,
                // 0 would mean "a share": a capacity given must be at least 1.
                Some(v) => usize::try_from(v).ok().filter(|&v| v >= 1).ok_or_else(|| {
                    langcluster_core::Error::invalid(
                        "node_blocks",
                        format!("must be an int from 1 to 2**31, or None, got {v}"),
                    )
                })?,
            },
            max_prompt_blocks: size("max_prompt_blocks", max_prompt_blocks, d.max_prompt_blocks)?,
            shards: size("shards", shards, d.shards)?,
            balance_rel: optional_number("balance_rel", balance_rel)?.unwrap_or(d.balance_rel),
            balance_abs: optional_number("balance_abs", balance_abs)?.unwrap_or(d.balance_abs),
            min_match: optional_number("min_match", min_match)?.unwrap_or(d.min_match),
            prefill_weight: optional_number("prefill_weight", prefill_weight)?
                .unwrap_or(d.prefill_weight),
            prefill_decay_s: optional_number("prefill_decay_s", prefill_decay_s)?
                .unwrap_or(d.prefill_decay_s),
            choices: match optional_integer("choices", choices)? {
                None => d.choices,
                Some(v) => usize::try_from(v).ok().filter(|&v| v >= 1).ok_or_else(|| {
                    langcluster_core::Error::invalid(
                        "choices",
                        format!("must be an int from 1 to 1024, or None (every node), got {v}"),
                    )
                })?,
            },
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
        let tokenize = match tokenizer.filter(|t| !t.is_none()) {
            None => None,
            Some(t) => {
                let encode = if t.hasattr("encode")? {
                    t.getattr("encode")?
                } else {
                    t.clone()
                };
                if !encode.is_callable() {
                    return Err(Error::expected(
                        "tokenizer",
                        "a callable (text -> token ids) or an object with .encode",
                        t,
                    ));
                }
                Some(encode.unbind())
            }
        };
        let clock = match clock.filter(|c| !c.is_none()) {
            None => None,
            Some(c) if c.is_callable() => Some(c.clone().unbind()),
            Some(c) => return Err(Error::expected("clock", "a callable returning seconds", c)),
        };
        let specs = node_specs(nodes)?;
        let core = Arc::new(Core::new(config, specs, decay_s)?);
        let clocked = Arc::new(Clocked {
            core: Arc::clone(&core),
            clock,
        });
        clocked.now(py)?;
        // The base class's methods (begin, update, stats...) work on the
        // node-set half as on any balancer; leases pick by prompt.
        let base = Balancer {
            inner: core.balancer().clone(),
            leases: clocked.clone(),
            routes_by_key: false,
        };
        Ok(PyClassInitializer::from(base).add_subclass(PrefixAware {
            core,
            clocked,
            tokenize,
            decay_s,
        }))
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
        let hashes = self.hashes(py, prompt)?;
        let now = self.clocked.now(py)?;
        let Some(exclude) = exclude.filter(|e| !e.is_none()) else {
            return Ok(self
                .core
                .pick_at(&hashes, &[], now, |m| m.handle.clone_ref(py))?);
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
            .pick_at(&hashes, &ids, now, |m| m.handle.clone_ref(py))?)
    }

    /// A context manager (sync and async) that picks for `prompt` on entry
    /// and holds the request in flight until exit.
    #[pyo3(signature = (prompt=None))]
    fn acquire(&self, py: Python<'_>, prompt: Option<&Bound<'_, PyAny>>) -> Result<Lease> {
        let hashes = self.hashes(py, prompt)?;
        Ok(Lease::new(self.clocked.clone(), Route::Blocks(hashes)))
    }

    /// Ends one request on `node_id` as every balancer's `end` does;
    /// `ttft_s`, the time to its first token when the caller saw it, is
    /// kept per node (``stats()[id]["ttft_s"]``, an average).
    #[pyo3(signature = (node_id, latency_s, ok=None, *, ttft_s=None))]
    #[pyo3(text_signature = "($self, node_id, latency_s, ok=True, *, ttft_s=None)")]
    fn end(
        &self,
        node_id: &Bound<'_, PyAny>,
        latency_s: &Bound<'_, PyAny>,
        ok: Option<&Bound<'_, PyAny>>,
        ttft_s: Option<&Bound<'_, PyAny>>,
    ) -> Result<bool> {
        let node_id = Self::node_id(node_id)?;
        let latency_s = number("latency_s", latency_s)?;
        let ok = ok.map(|ok| flag("ok", ok)).transpose()?.unwrap_or(true);
        let ttft_s = optional_number("ttft_s", ttft_s)?;
        if let Some(t) = ttft_s {
            langcluster_core::error::latency_seconds("ttft_s", t)?;
        }
        let ended = self.core.balancer().end(node_id, latency_s, ok)?;
        if let (true, Some(t)) = (ended, ttft_s) {
            self.core.observe_ttft(node_id, t)?;
        }
        Ok(ended)
    }

    /// Records a time to first token seen for a request on `node_id`
    /// (`end(..., ttft_s=)` does the same at a request's end; a stream's
    /// reader reports it when the first chunk arrives). Returns False when
    /// the node has been removed meanwhile.
    fn observe_ttft(&self, node_id: &Bound<'_, PyAny>, ttft_s: &Bound<'_, PyAny>) -> Result<bool> {
        let id = Self::node_id(node_id)?;
        let ttft_s = number("ttft_s", ttft_s)?;
        Ok(self.core.observe_ttft(id, ttft_s)?)
    }

    /// Forgets what the record holds for `node_id` and the prefill work
    /// counted there: for a server known to have restarted cold (or to
    /// have cleared its cache). Raises KeyError for an unknown node.
    fn forget(&self, node_id: &Bound<'_, PyAny>) -> Result<()> {
        Ok(self.core.forget(Self::node_id(node_id)?)?)
    }

    /// Sets how many blocks `node_id`'s record holds at most: its server's
    /// KV cache, in this balancer's blocks (``langcluster.kv`` learns it
    /// from vLLM and SGLang). 0 returns it to the balancer's default.
    fn set_node_blocks(&self, node_id: &Bound<'_, PyAny>, blocks: &Bound<'_, PyAny>) -> Result<()> {
        let id = Self::node_id(node_id)?;
        let n = integer("blocks", blocks)?;
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        Ok(self.core.set_node_blocks(id, n)?)
    }

    /// How many leading blocks of `prompt` the record holds for each node,
    /// ``{node_id: blocks}``; nothing is recorded and nothing picked.
    fn depths<'py>(
        &self,
        py: Python<'py>,
        prompt: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyDict>> {
        let hashes = self.hashes(py, Some(prompt))?;
        let d = PyDict::new(py);
        for (id, depth) in self.core.depths(&hashes) {
            d.set_item(id, depth)?;
        }
        Ok(d)
    }

    /// Applies one batch of `node_id`'s KV cache events, the msgpack
    /// payload vLLM (or SGLang) publishes, to the record: exact mode.
    /// Returns what it did (``{"stored": ..., "removed": ...}``). Bytes
    /// that are not one whole batch raise ValueError naming `data` and
    /// change nothing; an unknown node raises KeyError.
    fn apply_kv_events<'py>(
        &self,
        py: Python<'py>,
        node_id: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyDict>> {
        let id = Self::node_id(node_id)?.to_owned();
        let Ok(bytes) = data.cast::<PyBytes>() else {
            return Err(Error::expected("data", "bytes", data));
        };
        let owned = bytes.as_bytes().to_vec();
        let core = &self.core;
        let counts = py.detach(|| core.apply_kv_events(&id, &owned))?;
        Ok(event_dict(py, &counts)?)
    }

    /// Per-node counters as every balancer has them, plus `"blocks"` (the
    /// prompt blocks the record holds for the node), `"capacity"` (the
    /// most it holds), `"prefill_blocks"` (prefill work sent there and not
    /// yet taken as done) and `"ttft_s"` (reported time to first token, an
    /// average; None before any report).
    fn stats<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyDict>> {
        let out = stats_dict(py, self.core.balancer().stats())?;
        for (id, blocks) in self.core.prefix_stats().blocks_per_node {
            if let Some(d) = out.get_item(&id)? {
                d.set_item("blocks", blocks)?;
            }
        }
        for q in self.core.queue_stats(self.clocked.now(py)?) {
            if let Some(d) = out.get_item(&q.id)? {
                d.set_item("capacity", q.capacity)?;
                d.set_item("prefill_blocks", q.prefill_blocks)?;
                d.set_item("ttft_s", q.ttft_s)?;
            }
        }
        Ok(out)
    }

    /// The record as a whole: `blocks`, `max_blocks`, `bytes` (its memory),
    /// `evictions`, `prompts` (picks with at least one block),
    /// `prompt_blocks`, `matched_blocks` (held by the node chosen),
    /// `match_rate` (their ratio), `spills` (picks that passed over the
    /// deepest match because its node was overloaded), `placements`
    /// (picks for prompts no eligible node held), the journal's counts, and
    /// `events`, what the servers' KV events did (see `apply_kv_events`).
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
        d.set_item("placements", s.placements)?;
        d.set_item("journal_dropped", s.journal_dropped)?;
        d.set_item("merged", s.merged)?;
        d.set_item("merge_skipped", s.merge_skipped)?;
        d.set_item("events", event_dict(py, &s.events)?)?;
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
        d.set_item("node_blocks", (c.node_blocks > 0).then_some(c.node_blocks))?;
        d.set_item("max_prompt_blocks", c.max_prompt_blocks)?;
        d.set_item("balance_rel", c.balance_rel)?;
        d.set_item("balance_abs", c.balance_abs)?;
        d.set_item("min_match", c.min_match)?;
        d.set_item("prefill_weight", c.prefill_weight)?;
        d.set_item("prefill_decay_s", c.prefill_decay_s)?;
        d.set_item("choices", (c.choices > 0).then_some(c.choices))?;
        d.set_item(
            "load",
            if c.use_latency {
                "latency"
            } else {
                "in_flight"
            },
        )?;
        d.set_item("shards", c.shards)?;
        d.set_item("decay_s", self.decay_s)?;
        d.set_item("tokenizer", self.tokenize.is_some())?;
        d.set_item("seed", c.seed)?;
        Ok(d)
    }
}
