"""Admission in the cluster transports: at most so many requests in flight
per node, a bounded queue in order, refusals counted; a connection pool per
node; and a burst far past the bound that leaves nothing behind."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

import langcluster as lc
from tests.support.simulated import ServersInThread, servers

CHAT = "/v1/chat/completions"


def streamed(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "stream": True}


@pytest.mark.asyncio
async def test_past_the_bound_requests_wait_in_order_then_are_refused() -> None:
    (server,) = await servers(1, latency_s=0.0)
    server.gate = asyncio.Event()  # each stream is held after its first event
    nodes = [server.node()]
    async with lc.Cluster(service="t", nodes=nodes, balancer="round_robin") as cluster:
        transport = lc.AsyncClusterTransport(cluster, max_in_flight_per_node=1, max_queued=1)
        async with httpx.AsyncClient(transport=transport, base_url="http://chat") as client:
            first = await client.send(client.build_request("POST", CHAT, json=streamed("a")),
                                      stream=True)  # fmt: skip
            assert transport.stats()["in_flight"] == 1
            second = asyncio.create_task(client.post(CHAT, json={**streamed("b")}))
            while transport.stats()["waiting"] == 0:
                await asyncio.sleep(0)
            with pytest.raises(lc.Overloaded, match="in flight and 1 waiting") as refused:
                await client.post(CHAT, json=streamed("c"))
            assert isinstance(refused.value, httpx.TransportError)
            assert not second.done(), "the waiting one waits"
            server.gate.set()
            await first.aread()
            await first.aclose()
            assert (await second).status_code == 200
        s = transport.stats()
        assert (s["in_flight"], s["waiting"], s["capacity"]) == (0, 0, 1)
        assert (s["admitted"], s["waited"], s["refused_full"]) == (2, 1, 1)
        await transport.aclose()
    await server.kill()


@pytest.mark.asyncio
async def test_a_request_waits_no_longer_than_its_pool_timeout() -> None:
    (server,) = await servers(1, latency_s=0.0)
    server.gate = asyncio.Event()
    async with lc.Cluster(service="t", nodes=[server.node()], balancer="round_robin") as cluster:
        transport = lc.AsyncClusterTransport(cluster, max_in_flight_per_node=1)
        timeout = httpx.Timeout(5.0, pool=0.05)
        async with httpx.AsyncClient(transport=transport, base_url="http://chat",
                                     timeout=timeout) as client:  # fmt: skip
            held = await client.send(client.build_request("POST", CHAT, json=streamed("a")),
                                     stream=True)  # fmt: skip
            # The one slot stays taken: no room can come in time.
            with pytest.raises(lc.Overloaded, match="pool timeout"):
                await client.post(CHAT, json=streamed("b"))
            server.gate.set()
            await held.aclose()
        assert transport.stats()["refused_timeout"] == 1
        assert transport.stats()["in_flight"] == 0
        await transport.aclose()
    await server.kill()


@pytest.mark.asyncio
async def test_a_burst_far_past_the_bound_leaves_nothing_behind() -> None:
    backends = await servers(2, latency_s=0.001)
    nodes = [s.node() for s in backends]
    async with lc.Cluster(service="t", nodes=nodes, balancer="least_connections") as cluster:
        transport = lc.AsyncClusterTransport(cluster, max_in_flight_per_node=4, max_queued=16)
        async with httpx.AsyncClient(transport=transport, base_url="http://chat") as client:

            async def ask(i: int) -> str:
                try:
                    answer = await client.post(CHAT, json={**streamed(str(i)), "stream": False})
                except lc.Overloaded:
                    return "refused"
                return "ok" if answer.status_code == 200 else "failed"

            outcomes = await asyncio.gather(*(ask(i) for i in range(500)))
        s = transport.stats()
        # All 500 arrive at once: 8 go (4 a node), 16 wait, the rest are refused.
        assert outcomes.count("ok") == s["admitted"] == 8 + 16
        assert outcomes.count("refused") == s["refused_full"] == 500 - 24
        assert (s["in_flight"], s["waiting"]) == (0, 0)
        assert sum(b.requests for b in backends) == 24
        await transport.aclose()
    for b in backends:
        await b.kill()


@pytest.mark.asyncio
async def test_each_node_has_a_pool_of_its_own_sized_to_its_requests() -> None:
    backends = await servers(2, latency_s=0.0)
    nodes = [s.node() for s in backends]
    async with lc.Cluster(service="t", nodes=nodes, balancer="round_robin") as cluster:
        transport = lc.AsyncClusterTransport(cluster, max_in_flight_per_node=7)
        async with httpx.AsyncClient(transport=transport, base_url="http://chat") as client:
            for i in range(4):
                await client.post(CHAT, json={**streamed(str(i)), "stream": False})
            pools = transport._pools.pools
            assert {key[-1] for key in pools} == {b.port for b in backends}
            assert transport._pools.limits["max_connections"] == 7
        assert transport._pools.pools == {}, "closing the transport closed them"
        mine = lc.AsyncClusterTransport(cluster, limits=httpx.Limits(max_connections=3))
        assert mine._pools.limits["max_connections"] == 3
        with pytest.raises(ValueError, match=r"^limits: only without transport"):
            lc.AsyncClusterTransport(
                cluster, transport=httpx.AsyncHTTPTransport(), limits=httpx.Limits()
            )
        with pytest.raises(TypeError, match=r"^limits: "):
            lc.AsyncClusterTransport(cluster, limits=5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^max_in_flight_per_node: "):
            lc.AsyncClusterTransport(cluster, max_in_flight_per_node=0)
        with pytest.raises(ValueError, match=r"^max_queued: "):
            lc.ClusterTransport(cluster, max_queued=-1)
        await transport.aclose()
        await mine.aclose()
    for b in backends:
        await b.kill()


def test_the_blocking_transport_bounds_threads_the_same_way() -> None:
    with ServersInThread(1, latency_s=0.0) as fleet:
        server = fleet.servers[0]
        gate = fleet.run(_event())
        server.gate = gate
        cluster = lc.Cluster(service="t", nodes=[server.node()], balancer="round_robin")
        with cluster:
            transport = lc.ClusterTransport(cluster, max_in_flight_per_node=1, max_queued=1)
            with httpx.Client(transport=transport, base_url="http://chat") as client:
                held = client.send(client.build_request("POST", CHAT, json=streamed("a")),
                                   stream=True)  # fmt: skip
                answers: list[int] = []
                waiter = threading.Thread(
                    target=lambda: answers.append(client.post(CHAT, json=streamed("b")).status_code)
                )
                waiter.start()
                while transport.stats()["waiting"] == 0:
                    threading.Event().wait(0.001)
                with pytest.raises(lc.Overloaded):
                    client.post(CHAT, json=streamed("c"))
                fleet.loop.call_soon_threadsafe(gate.set)
                held.read()
                held.close()
                waiter.join(10)
                assert answers == [200]
            s = transport.stats()
            assert (s["in_flight"], s["admitted"], s["refused_full"]) == (0, 2, 1)
            transport.close()


async def _event() -> asyncio.Event:
    return asyncio.Event()


@pytest.mark.asyncio
async def test_the_transport_is_a_metrics_target() -> None:
    from tests.metrics.test_prometheus import scrape, value

    async with lc.Cluster(service="chat", nodes=[lc.Node("a", "h", 1)]) as cluster:
        transport = lc.AsyncClusterTransport(cluster, max_in_flight_per_node=3)
        text = scrape(lc.metrics.PrometheusCollector(transport))
        assert value(text, "langcluster_transport_capacity", service="chat") == 3
        assert value(text, "langcluster_transport_in_flight", service="chat") == 0
        refused = {"service": "chat", "result": "refused_full"}
        assert value(text, "langcluster_transport_requests_total", **refused) == 0
        await transport.aclose()
