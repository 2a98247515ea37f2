"""State shared by the processes of one service (workers, replicas)
through Redis: ``SharedState``."""

from __future__ import annotations

from langcluster.shared.state import SharedState

__all__ = ["SharedState"]
