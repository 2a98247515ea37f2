"""The events of a ``Cluster``: node events from its registry and failover
events from its failover manager, in one type."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from langcluster.failover import FailoverEventKind
from langcluster.registry import NodeEventKind

__all__ = ["ClusterEvent", "ClusterEventSource"]


class ClusterEventSource(str, enum.Enum):
    """Which part of a cluster an event comes from."""

    NODE = "node"  # the registry: discovery, health, draining
    FAILOVER = "failover"  # the failover manager: breakers, retries, priority levels

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ClusterEvent:
    """One event of ``Cluster.events()``: a ``NodeEventKind`` from the
    registry (health flips arrive as ``status_changed``) or a
    ``FailoverEventKind`` from the failover manager. ``node_id`` is None for
    cluster-wide events; ``at`` a ``time.time()`` timestamp."""

    source: ClusterEventSource
    kind: NodeEventKind | FailoverEventKind
    node_id: str | None
    detail: str
    at: float = field(default_factory=time.time)
