"""Health: checks (``HealthCheck`` and the built-in ones) and the
``HealthMonitor`` that runs them on every node of a registry."""

from __future__ import annotations

from langcluster.health.checks import (
    CallableCheck,
    CheckFailed,
    CompositeCheck,
    HealthCheck,
    HttpCheck,
    TcpCheck,
)
from langcluster.health.monitor import HealthConfig, HealthMonitor, NodeHealth

__all__ = [
    "CallableCheck",
    "CheckFailed",
    "CompositeCheck",
    "HealthCheck",
    "HealthConfig",
    "HealthMonitor",
    "HttpCheck",
    "NodeHealth",
    "TcpCheck",
]
