"""langcluster: cluster machinery for applications that talk to many model servers.

Load balancers and the memory cache run in a Rust core; see the README for
what is built.
"""

from __future__ import annotations

from langcluster._core import (
    Adaptive,
    Balancer,
    ConsistentHash,
    Lease,
    LeastConnections,
    PowerOfTwoChoices,
    Random,
    RoundRobin,
    WeightedRoundRobin,
    __version__,
)
from langcluster.breaker import CircuitBreaker
from langcluster.cache import CachedFunction, MemoryCache, cached
from langcluster.errors import (
    CacheError,
    CircuitOpenError,
    DiscoveryError,
    LangClusterError,
    NoAvailableNode,
)
from langcluster.failover import Backoff, BreakerConfig, FailoverEvent, FailoverManager
from langcluster.node import Node, NodeStatus
from langcluster.registry import NodeEvent, NodeEventKind, NodeRegistry

__all__ = [
    "Adaptive",
    "Backoff",
    "Balancer",
    "BreakerConfig",
    "CacheError",
    "CachedFunction",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConsistentHash",
    "DiscoveryError",
    "FailoverEvent",
    "FailoverManager",
    "LangClusterError",
    "Lease",
    "LeastConnections",
    "MemoryCache",
    "NoAvailableNode",
    "Node",
    "NodeEvent",
    "NodeEventKind",
    "NodeRegistry",
    "NodeStatus",
    "PowerOfTwoChoices",
    "Random",
    "RoundRobin",
    "WeightedRoundRobin",
    "__version__",
    "cached",
]
