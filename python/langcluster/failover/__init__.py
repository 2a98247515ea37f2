"""Failover: calls run on balancer-picked nodes behind per-node circuit
breakers, and move to another node when they fail."""

from __future__ import annotations

from langcluster.failover.events import FailoverEvent, FailoverEventKind
from langcluster.failover.manager import FailoverConfig, FailoverManager
from langcluster.failover.retry import Backoff

__all__ = ["Backoff", "FailoverConfig", "FailoverEvent", "FailoverEventKind", "FailoverManager"]
