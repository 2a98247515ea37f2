"""langcluster: cluster machinery for applications that talk to many model
servers.

Balancers, the memory cache and circuit breakers run in a Rust core; the
tiers that do I/O (discovery, health, Redis, failover) are Python on
asyncio, with sync faces. Every public name is importable from here; the
subpackages (``cache``, ``discovery``, ``health``, ``cluster``,
``integrations``, ``testing``, ``cli``) follow the architecture.
"""

from __future__ import annotations

from langcluster import metrics
from langcluster._core import (
    Adaptive,
    Balancer,
    ConsistentHash,
    Lease,
    LeastConnections,
    PowerOfTwoChoices,
    PrefixAware,
    Random,
    RoundRobin,
    WeightedRoundRobin,
    __version__,
)
from langcluster.breaker import BreakerConfig, CircuitBreaker
from langcluster.cache import CachedFunction, LayeredCache, MemoryCache, RedisCache, cached
from langcluster.cluster import Cluster, ClusterEvent, ClusterEventSource
from langcluster.discovery import ConsulDiscovery, Discovery, EtcdDiscovery, StaticDiscovery
from langcluster.errors import (
    CacheError,
    CircuitOpenError,
    ClusterNotRunning,
    DiscoveryError,
    LangClusterError,
    NoAvailableNode,
    NodeBusy,
    Overloaded,
)
from langcluster.failover import (
    Backoff,
    FailoverConfig,
    FailoverEvent,
    FailoverEventKind,
    FailoverManager,
)
from langcluster.health import (
    CallableCheck,
    CompositeCheck,
    HealthCheck,
    HealthConfig,
    HealthMonitor,
    HttpCheck,
    NodeHealth,
    TcpCheck,
)
from langcluster.integrations.transport import AsyncClusterTransport, ClusterTransport
from langcluster.kv import KvEvents, KvEventSubscriber
from langcluster.node import Node, NodeStatus
from langcluster.registry import NodeEvent, NodeEventKind, NodeRegistry
from langcluster.shared import SharedState
from langcluster.types import Key, NodeLike, Prompt

__all__ = [
    "Adaptive",
    "AsyncClusterTransport",
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
    "ClusterEventSource",
    "ClusterNotRunning",
    "ClusterTransport",
    "CompositeCheck",
    "ConsistentHash",
    "ConsulDiscovery",
    "Discovery",
    "DiscoveryError",
    "EtcdDiscovery",
    "FailoverConfig",
    "FailoverEvent",
    "FailoverEventKind",
    "FailoverManager",
    "HealthCheck",
    "HealthConfig",
    "HealthMonitor",
    "HttpCheck",
    "Key",
    "KvEventSubscriber",
    "KvEvents",
    "LangClusterError",
    "LayeredCache",
    "Lease",
    "LeastConnections",
    "MemoryCache",
    "NoAvailableNode",
    "Node",
    "NodeBusy",
    "NodeEvent",
    "NodeEventKind",
    "NodeHealth",
    "NodeLike",
    "NodeRegistry",
    "NodeStatus",
    "Overloaded",
    "PowerOfTwoChoices",
    "PrefixAware",
    "Prompt",
    "Random",
    "RedisCache",
    "RoundRobin",
    "SharedState",
    "StaticDiscovery",
    "TcpCheck",
    "WeightedRoundRobin",
    "__version__",
    "cached",
    "metrics",
]
