"""Simulated model servers for demos and tests, yours included: real HTTP
servers on loopback that can be killed, slowed and restarted."""

from __future__ import annotations

from langcluster.testing.servers import SimulatedServer

__all__ = ["SimulatedServer"]
