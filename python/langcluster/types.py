"""The types that public signatures share, and the option strings each
parameter accepts, spelled one way: lower case, words joined by ``_``."""

from __future__ import annotations

from typing import Literal, Protocol, TypeAlias, runtime_checkable

__all__ = [
    "BalancerName",
    "BreakerState",
    "CheckKind",
    "CompositeMode",
    "Key",
    "L2ErrorPolicy",
    "NodeLike",
    "Policy",
    "PrefixLoad",
    "Prompt",
    "Scheme",
    "Serializer",
    "Window",
    "WriteMode",
]

Key: TypeAlias = str | bytes | int
"""A key for a cache or a balancer: ``str``, ``bytes`` or ``int`` (``42``
and ``"42"`` route alike, and are different cache keys)."""

PrefixLoad: TypeAlias = Literal["in_flight", "latency"]
"""What ``PrefixAware`` counts as a node's load: its requests in flight, or
those scaled by its latency EWMA relative to the other nodes'."""

Prompt: TypeAlias = str | bytes | int | list[int] | tuple[int, ...]
"""A prompt as ``PrefixAware`` reads it: text (cut into byte blocks), or
token ids (cut into token blocks). Any ``Key`` is a prompt, so
``PrefixAware`` takes the key of a ``Cluster`` call as its prompt."""


@runtime_checkable
class NodeLike(Protocol):
    """What a balancer accepts as a node: a ``langcluster.Node``, or any
    object with an ``id`` (a non-empty str) and, optionally, ``weight`` (a
    positive number) and ``status`` (a ``NodeStatus`` or its value)."""

    @property
    def id(self) -> str: ...


Policy: TypeAlias = Literal["tinylfu", "lru", "lfu", "fifo"]
"""A ``MemoryCache`` eviction policy."""

Window: TypeAlias = Literal["count", "time"]
"""A ``CircuitBreaker`` window: the last N calls, or the last N seconds."""

BreakerState: TypeAlias = Literal["closed", "open", "half_open", "forced_open", "disabled"]
"""The state of a ``CircuitBreaker``."""

WriteMode: TypeAlias = Literal["write_through", "write_back"]
"""How a ``LayeredCache`` writes to Redis."""

L2ErrorPolicy: TypeAlias = Literal["raise", "degrade"]
"""What a write-through ``LayeredCache`` does when Redis fails."""

Serializer: TypeAlias = Literal["pickle", "json", "msgpack"]
"""A ``RedisCache`` serializer by name (or pass an object with dumps/loads)."""

CompositeMode: TypeAlias = Literal["all", "any", "quorum"]
"""How a ``CompositeCheck`` combines its checks."""

CheckKind: TypeAlias = Literal["ttl", "http", "tcp"]
"""The check Consul keeps on a registered instance."""

Scheme: TypeAlias = Literal["http", "https"]
"""A URL scheme."""

BalancerName: TypeAlias = Literal[
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "consistent_hash",
    "adaptive",
    "random",
    "power_of_two_choices",
    "prefix_aware",
]
"""A balancer by name, for ``Cluster`` and the config file."""
