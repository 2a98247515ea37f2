"""SharedState over Redis Cluster (three real masters): given a
``redis.asyncio.RedisCluster`` client, every kind of sharing works as over
one Redis: ejections (and their keys, read back by a late worker), the
health lease, and the prefix index."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio

import langcluster as lc
from langcluster.testing import SimulatedServer
from tests.support.helpers import eventually, shared_stats


def worker(fleet: list[SimulatedServer], client: Any) -> lc.Cluster:
    return lc.Cluster(
        service="chat", nodes=[s.node() for s in fleet], balancer="prefix_aware",
        breaker=lc.BreakerConfig(open_timeout_s=60.0),
        # Checks that a busy host does not fail: a flap (down, then up) would
        # rightly revive the ejected node this test watches.
        health=lc.HealthConfig(lc.HttpCheck("/health"), interval_s=0.2, timeout_s=0.15, fall=10),
        shared_state=lc.SharedState(client, namespace="rc", signing_key=b"k"),
    )  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.services
async def test_every_kind_of_sharing_works_over_redis_cluster(
    fleet: list[SimulatedServer], redis_cluster: Any
) -> None:
    clients = [redis.asyncio.RedisCluster.from_url(redis_cluster.url) for _ in range(3)]
    a, b, late = (worker(fleet, client) for client in clients)
    try:
        async with a, b:
            await eventually(lambda: shared_stats(a)["connected"] and shared_stats(b)["connected"])
            homes = [a.balancer.pick(f"group {g}. " * 60).id for g in range(6)]  # type: ignore[attr-defined]
            await eventually(lambda: shared_stats(b)["routes_merged"] >= 6)
            again = [b.balancer.pick(f"group {g}. " * 60 + "?").id for g in range(6)]  # type: ignore[attr-defined]
            assert again == homes
            a.failover.breaker("s0").open_for(30.0)
            await eventually(lambda: b.failover.breaker("s0").state == "open")
            leases = [c.shared_state._lease for c in (a, b)]  # type: ignore[union-attr]
            await eventually(lambda: sum(lease.holder for lease in leases) == 1)  # type: ignore[union-attr]
            async with late:  # reads the ejection in force from its key
                await eventually(lambda: late.failover.breaker("s0").state == "open")
            assert shared_stats(a)["publish_failures"] == 0
            assert shared_stats(a)["redis_errors"] == 0
    finally:
        for client in clients:
            await client.aclose()
