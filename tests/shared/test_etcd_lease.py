"""With etcd as the discovery backend, the one health checker of a service
is elected through an etcd lease (a key created in one transaction), and
the statuses it finds still travel through Redis."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import pytest

import langcluster as lc
from langcluster.discovery import EtcdDiscovery
from langcluster.testing import SimulatedServer
from tests.support.helpers import eventually, redis_url

INTERVAL_S = 1.0  # a lease of 1.5 intervals: 2 s, etcd's shortest


def endpoint(server: Any) -> str:
    return f"http://{server.url}"


def checked(etcd: Any, redis: Any) -> lc.Cluster:
    health = lc.HealthConfig(
        lc.HttpCheck("/health"), interval_s=INTERVAL_S, timeout_s=0.2, rise=1, fall=1
    )
    return lc.Cluster(
        service="chat", discovery=EtcdDiscovery("chat", endpoints=[endpoint(etcd)]),
        balancer="round_robin", health=health,
        shared_state=lc.SharedState(redis_url(redis), namespace="etcd-lease", signing_key=b"k"),
    )  # fmt: skip


def holds(cluster: lc.Cluster) -> bool:
    lease = cluster.shared_state._lease  # type: ignore[union-attr]
    return lease is not None and lease.holder


async def elected(etcd: Any) -> bytes | None:
    key = base64.b64encode(b"/langcluster/services.elections/chat/health").decode()
    async with httpx.AsyncClient() as client:
        found = await client.post(f"{endpoint(etcd)}/v3/kv/range", json={"key": key})
    kvs = found.json().get("kvs", [])
    return base64.b64decode(kvs[0]["value"]) if kvs else None


@pytest.mark.asyncio
@pytest.mark.services
async def test_the_checker_is_elected_in_etcd_and_the_others_follow_through_redis(
    fleet: list[SimulatedServer], etcd_server: Any, redis_server: Any
) -> None:
    announcer = EtcdDiscovery("chat", endpoints=[endpoint(etcd_server)])
    for server in fleet:
        await announcer.register(server.node())
    a, b = checked(etcd_server, redis_server), checked(etcd_server, redis_server)
    await a.astart()
    try:
        async with b:
            await eventually(lambda: holds(a) != holds(b))
            holder, follower = (a, b) if holds(a) else (b, a)
            assert await elected(etcd_server) == holder.shared_state._origin  # type: ignore[union-attr]
            followed = follower.health.checks_run  # type: ignore[union-attr]
            await fleet[0].kill()
            await eventually(lambda: follower.registry.get("s0").status is lc.NodeStatus.UNHEALTHY)  # type: ignore[union-attr]
            assert follower.health.checks_run == followed  # type: ignore[union-attr]  # told
            await holder.aclose()  # resigns: the key goes at once, not when its lease lapses
            mine = follower.shared_state._origin  # type: ignore[union-attr]
            assert await elected(etcd_server) in (None, mine)
            await eventually(lambda: holds(follower))
            assert await elected(etcd_server) == follower.shared_state._origin  # type: ignore[union-attr]
    finally:
        await a.aclose()
        await announcer.close()


@pytest.mark.asyncio
@pytest.mark.services
async def test_an_election_has_one_holder_and_lapses_with_its_lease(etcd_server: Any) -> None:
    one = EtcdDiscovery("svc", endpoints=[endpoint(etcd_server)])
    two = EtcdDiscovery("svc", endpoints=[endpoint(etcd_server)])
    try:
        assert await one.campaign("health", b"one", 2)
        assert not await two.campaign("health", b"two", 2)
        assert await one.campaign("health", b"one", 2)  # renewed
        assert not await two.campaign("health", b"two", 2)
        assert await one.nodes() == []  # the election is not a node of the service
        # "one" stops renewing (it died): its lease lapses, and the key with it.
        started = time.monotonic()
        while not await two.campaign("health", b"two", 2):
            assert time.monotonic() - started < 10, "the lease never lapsed"
        assert time.monotonic() - started >= 1.0
        assert not await one.campaign("health", b"one", 2)  # its lease gone, it lost
    finally:
        await one.close()
        await two.close()
