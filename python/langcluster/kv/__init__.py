"""Exact mode for ``PrefixAware``: the servers' own KV cache events
(vLLM's ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared``, over
ZeroMQ) keep the router's record of what each server holds, and each
server's cache size bounds its record. Needs the extra
``langcluster[kv]`` (pyzmq).

- ``KvEventSubscriber``: one server's publisher, with gap detection and
  replay, into ``PrefixAware.apply_kv_events``.
- ``KvEvents``: a subscriber per node of a changing node set, from each
  node's ``metadata["kv_events"]``; ``Cluster(kv_events=True)`` runs one.
- ``kv_tokens``: the cache size a vLLM or SGLang server reports.
"""

from __future__ import annotations

from langcluster.kv.capacity import balancer_blocks, kv_tokens
from langcluster.kv.manager import KvEvents
from langcluster.kv.subscriber import KvEventSubscriber

__all__ = ["KvEventSubscriber", "KvEvents", "balancer_blocks", "kv_tokens"]
