"""The Cluster facade over real loopback HTTP servers: wiring, failover,
events, the cache, the sync face, config files and their errors."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import langcluster as lc
from langcluster.testing import SimulatedServer
from tests.support.helpers import eventually
from tests.support.simulated import asker, servers

FAST_BREAKER = lc.BreakerConfig(
    window_size=4, minimum_calls=2, open_timeout_s=0.3, max_open_timeout_s=0.5
)


@pytest.mark.asyncio
async def test_calls_fail_over_when_a_server_dies_and_events_tell_the_story() -> None:
    backends = await servers(3, latency_s=0.002)
    client = httpx.AsyncClient(timeout=1.0)
    cluster = lc.Cluster(
        service="t", nodes=[s.node() for s in backends], balancer="round_robin",
        breaker=FAST_BREAKER,
    )  # fmt: skip
    events: list[lc.ClusterEvent] = []

    async def collect() -> None:
        async for event in cluster.events():
            events.append(event)

    async with cluster:
        collector = asyncio.create_task(collect())
        await asyncio.sleep(0)
        served = [await cluster.call(asker(client)) for _ in range(30)]
        assert set(served) == {"s0", "s1", "s2"}
        await backends[1].kill()
        served = [await cluster.call(asker(client)) for _ in range(60)]  # none fails
        assert "s1" not in served[-20:]
        stats = cluster.stats()
        assert stats["nodes"]["s1"]["breaker"] in ("open", "half_open")
        assert stats["calls"]["errors"] == 0
        assert stats["failover"]["retries"] >= 1
        await asyncio.sleep(0.05)
        collector.cancel()
    kinds = {(e.source, e.kind, e.node_id) for e in events}
    assert ("failover", "breaker_opened", "s1") in kinds
    assert ("failover", "node_failed", "s1") in kinds
    await client.aclose()
    for backend in backends:
        await backend.kill()


@pytest.mark.asyncio
async def test_health_checks_take_a_dead_server_out_and_bring_it_back() -> None:
    backends = await servers(2)
    cluster = lc.Cluster(
        service="t", nodes=[s.node() for s in backends],
        # Timeouts a busy host meets: one slow check would flip a node.
        health=lc.HealthConfig(lc.TcpCheck(timeout_s=1.0), interval_s=0.2, timeout_s=0.15,
                               rise=1, fall=1),
    )  # fmt: skip
    async with cluster:

        def status(node_id: str) -> lc.NodeStatus:
            return cluster.registry.get(node_id).status  # type: ignore[union-attr]

        await eventually(lambda: status("s0") is status("s1") is lc.NodeStatus.HEALTHY)
        await backends[0].kill()
        await eventually(lambda: status("s0") is lc.NodeStatus.UNHEALTHY)
        assert cluster.stats()["nodes"]["s0"]["available"] is False
        assert {cluster.pick().id for _ in range(10)} == {"s1"}
        await backends[0].start()
        await eventually(lambda: status("s0") is lc.NodeStatus.HEALTHY)
        assert "health" in cluster.stats()["nodes"]["s0"]
    for backend in backends:
        await backend.kill()


@pytest.mark.asyncio
async def test_a_node_whose_health_checks_pass_again_leaves_ejection_at_once() -> None:
    backends = await servers(2, latency_s=0.001)
    client = httpx.AsyncClient(timeout=0.5)
    cluster = lc.Cluster(
        service="t", nodes=[s.node() for s in backends], balancer="round_robin",
        health=lc.HealthConfig(lc.TcpCheck(timeout_s=0.1), interval_s=0.1, timeout_s=0.05,
                               rise=1, fall=1),
        # Open for a minute: only a health check can bring the node back soon.
        breaker=lc.BreakerConfig(window_size=2, minimum_calls=2, open_timeout_s=60.0),
        failover=lc.FailoverConfig(max_attempts=2, backoff=lc.Backoff(base_s=0.001, max_s=0.002)),
    )  # fmt: skip
    async with cluster:
        events: list[lc.ClusterEvent] = []
        cluster.subscribe(events.append)
        await backends[0].kill()
        await eventually(lambda: cluster.registry.get("s0").status is lc.NodeStatus.UNHEALTHY)  # type: ignore[union-attr]
        # Its breaker opens as two failed calls would open it (calls could
        # not be relied on for that: the health check may take the node out
        # of rotation first).
        breaker = cluster.failover.breaker("s0")
        breaker.record_failure()
        breaker.record_failure()
        assert breaker.state == "open"
        await backends[0].start()
        await eventually(lambda: cluster.registry.get("s0").status is lc.NodeStatus.HEALTHY)  # type: ignore[union-attr]
        assert cluster.failover.breaker("s0").state == "half_open"  # not open for a minute
        answers = [await cluster.call(asker(client)) for _ in range(10)]
        assert "s0" in answers
        assert cluster.failover.breaker("s0").state == "closed"
        kinds = [(e.kind, e.node_id) for e in events]
        opened = kinds.index(("breaker_opened", "s0"))
        assert ("breaker_half_open", "s0") in kinds[opened:]
    await client.aclose()
    for backend in backends:
        await backend.kill()


@pytest.mark.asyncio
async def test_a_first_passing_check_leaves_an_ejection_standing() -> None:
    # Ejected before its first check (by this process's calls or another
    # process's word), a node whose first check passes was never seen to
    # recover: its breaker stays open for its time.
    backends = await servers(2, latency_s=0.001)
    gate = asyncio.Event()

    class Gated(lc.TcpCheck):  # the first checks wait until the ejection is made
        async def check(self, node: lc.Node) -> None:
            await gate.wait()
            await super().check(node)

    cluster = lc.Cluster(
        service="t", nodes=[s.node() for s in backends],
        health=lc.HealthConfig(Gated(timeout_s=1.0), interval_s=2.0, timeout_s=1.5, rise=1),
        breaker=lc.BreakerConfig(open_timeout_s=60.0),
    )  # fmt: skip
    async with cluster:
        assert cluster.registry.get("s0").status is lc.NodeStatus.UNKNOWN  # type: ignore[union-attr]
        cluster.failover.breaker("s0").open_for(60.0)
        gate.set()
        await eventually(lambda: cluster.registry.get("s0").status is lc.NodeStatus.HEALTHY)  # type: ignore[union-attr]
        assert cluster.failover.breaker("s0").state == "open"
    for backend in backends:
        await backend.kill()


@pytest.mark.asyncio
async def test_cache_key_serves_repeats_from_the_cache() -> None:
    backends = await servers(1)
    client = httpx.AsyncClient()
    calls = 0

    async def ask(node: lc.Node) -> str:
        nonlocal calls
        calls += 1
        return await asker(client)(node)

    async with lc.Cluster(
        service="t", nodes=[backends[0].node()], cache=lc.MemoryCache(100)
    ) as cluster:
        assert await cluster.call(ask, cache_key="same prompt") == "s0"
        assert await cluster.call(ask, cache_key="same prompt") == "s0"
        assert calls == 1
        assert cluster.stats()["calls"]["cache_hits"] == 1
    await client.aclose()
    await backends[0].kill()


@pytest.mark.asyncio
async def test_close_stops_every_task_and_deregisters_what_it_registered() -> None:
    discovery = lc.StaticDiscovery([lc.Node("other", "127.0.0.1", 1)])
    me = lc.Node("me", "127.0.0.1", 2)
    before = set(asyncio.all_tasks())
    cluster = lc.Cluster(
        service="t", discovery=discovery, register=me,
        health=lc.HealthConfig(lc.TcpCheck(), interval_s=0.5, timeout_s=0.1),
    )  # fmt: skip
    await cluster.astart()
    assert {n.id for n in await discovery.nodes()} == {"other", "me"}
    await asyncio.sleep(0.05)
    assert {n.id for n in cluster.registry.nodes()} == {"other", "me"}
    assert set(asyncio.all_tasks()) - before  # discovery follower, health scheduler
    await cluster.aclose()
    await asyncio.sleep(0)
    assert set(asyncio.all_tasks()) - before == set()
    assert [n.id for n in await discovery.nodes()] == ["other"]


def test_the_sync_face() -> None:
    async def boot() -> list[SimulatedServer]:
        return await servers(2)

    loop = asyncio.new_event_loop()
    backends = loop.run_until_complete(boot())
    import threading

    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        with lc.Cluster(service="t", nodes=[s.node() for s in backends]) as cluster:

            def ask(node: lc.Node) -> str:
                response = httpx.post(
                    f"http://{node.address}:{node.port}/v1/completions", json={"prompt": "x"}
                )
                response.raise_for_status()
                return response.headers["x-served-by"]

            got = {cluster.call_sync(ask) for _ in range(20)}
            assert got == {"s0", "s1"}
            assert cluster.stats()["calls"]["calls"] == 20
    finally:
        for backend in backends:
            asyncio.run_coroutine_threadsafe(backend.kill(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()
