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
from langcluster.cluster import Cluster, ClusterEvent, FailoverConfig, HealthConfig
from langcluster.consul_discovery import ConsulDiscovery
from langcluster.discovery import Discovery, StaticDiscovery
from langcluster.errors import (
    CacheError,
    CircuitOpenError,
    DiscoveryError,
    LangClusterError,
    NoAvailableNode,
)
from langcluster.etcd import EtcdDiscovery
from langcluster.failover import Backoff, BreakerConfig, FailoverEvent, FailoverManager
from langcluster.health import (
    CallableCheck,
    CompositeCheck,
    HealthMonitor,
    HttpCheck,
    NodeHealth,
    TcpCheck,
)
from langcluster.layered import LayeredCache
from langcluster.node import Node, NodeStatus
from langcluster.redis_cache import RedisCache
from langcluster.registry import NodeEvent, NodeEventKind, NodeRegistry

__all__ = [
    "Adaptive",
    "Backoff",
    "Balancer",
    "BreakerConfig",
    "CacheError",
    "CachedFunction",
    "CallableCheck",
    "CircuitBreaker",
    "CircuitOpenError",
    "Cluster",
    "ClusterEvent",
    "CompositeCheck",
    "ConsistentHash",
    "ConsulDiscovery",
    "Discovery",
    "DiscoveryError",
    "EtcdDiscovery",
    "FailoverConfig",
    "FailoverEvent",
    "FailoverManager",
    "HealthConfig",
    "HealthMonitor",
    "HttpCheck",
    "LangClusterError",
    "LayeredCache",
    "Lease",
    "LeastConnections",
    "MemoryCache",
    "NoAvailableNode",
    "Node",
    "NodeEvent",
    "NodeEventKind",
    "NodeHealth",
    "NodeRegistry",
    "NodeStatus",
    "PowerOfTwoChoices",
    "Random",
    "RedisCache",
    "RoundRobin",
    "StaticDiscovery",
    "TcpCheck",
    "WeightedRoundRobin",
    "__version__",
    "cached",
]
