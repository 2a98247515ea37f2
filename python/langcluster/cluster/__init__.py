"""The facade: ``Cluster`` wires every tier for one service, and builds
itself from a config file (``Cluster.from_config``)."""

from __future__ import annotations

from langcluster.cluster.events import ClusterEvent, ClusterEventSource
from langcluster.cluster.facade import BALANCERS, Cluster

__all__ = ["BALANCERS", "Cluster", "ClusterEvent", "ClusterEventSource"]
