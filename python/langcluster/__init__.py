"""langcluster: cluster machinery for applications that talk to many model servers.

Load balancers run in a lock-free Rust core; see the README for what is built.
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
from langcluster.errors import (
    CacheError,
    CircuitOpenError,
    DiscoveryError,
    LangClusterError,
    NoAvailableNode,
)
from langcluster.node import Node, NodeStatus

__all__ = [
    "Adaptive",
    "Balancer",
    "CacheError",
    "CircuitOpenError",
    "ConsistentHash",
    "DiscoveryError",
    "LangClusterError",
    "Lease",
    "LeastConnections",
    "NoAvailableNode",
    "Node",
    "NodeStatus",
    "PowerOfTwoChoices",
    "Random",
    "RoundRobin",
    "WeightedRoundRobin",
    "__version__",
]
