"""The facade: ``Cluster`` wires every tier for one service, and builds
itself from a config file (``Cluster.from_config``)."""

from __future__ import annotations

from langcluster.cluster.facade import BALANCERS, Cluster, ClusterEvent, ClusterEventSource

__all__ = ["BALANCERS", "Cluster", "ClusterEvent", "ClusterEventSource"]
