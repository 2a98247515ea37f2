"""What a cluster hands its shared state when it starts: the parts the
shared state works on. The shared state knows these parts, never the
``Cluster`` that holds them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langcluster.failover import FailoverManager
    from langcluster.health import HealthMonitor
    from langcluster.registry import NodeRegistry

__all__ = ["Campaign", "SharedParts"]

# One round of an election: (name, holder, TTL s) -> True when holder holds it.
Campaign = Callable[[str, bytes, float], Awaitable[bool]]


@dataclass(frozen=True)
class SharedParts:
    """``service`` names the keys and channel; ejections go through the
    ``failover`` manager's breakers, health statuses through the
    ``registry`` (checked by ``health``, when the cluster has checks), the
    prefix index through the ``balancer`` (a ``PrefixAware`` one).
    ``campaign`` (etcd discovery's) elects the one health checker; without
    it, a Redis lease does."""

    service: str
    failover: FailoverManager
    registry: NodeRegistry
    balancer: Any
    health: HealthMonitor | None = None
    campaign: Campaign | None = None
