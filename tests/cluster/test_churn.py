"""A cluster under node churn, as an autoscaler makes it: thousands of
nodes come and go through discovery while calls flow and health checks
run. Every per-node structure must follow the live node count, and memory
must stay flat."""

from __future__ import annotations

import asyncio
import gc
import itertools
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

import langcluster as lc
from tests.support.helpers import eventually

STABLE = 5
CHURNED = 10_000
STEP = 10  # nodes added and removed per discovery change


def holds(cluster: lc.Cluster, count: int) -> Callable[[], bool]:
    """Whether the cluster's registry holds ``count`` nodes."""
    return lambda: len(cluster.registry.nodes()) == count


def sizes(cluster: lc.Cluster) -> dict[str, int]:
    """Every per-node structure of the cluster, by size."""
    failover, health = cluster.failover, cluster.health
    assert health is not None
    return {
        "registry": len(cluster.registry.nodes()),
        "balancer": len(cluster.balancer),
        "balancer stats": len(cluster.balancer.stats()),
        "breakers": len(failover.stats()["nodes"]),
        "cooling": len(failover._cooling),
        "taken out": len(failover.taken_out()),
        "health": len(health.status()),
        "health queue": len(health._queue),
        "health scheduled": len(health._scheduled),
    }


@pytest.mark.asyncio
async def test_ten_thousand_nodes_come_and_go_and_nothing_stays_behind() -> None:
    discovery = lc.StaticDiscovery(
        [lc.Node(f"stable-{i}", "10.0.0.1", 8000 + i) for i in range(STABLE)], poll_s=0.001
    )

    async def healthy(node: lc.Node) -> bool:
        await asyncio.sleep(0)  # a check in flight while its node may leave
        return not node.id.endswith("7")

    cluster = lc.Cluster(
        service="churn", discovery=discovery, balancer="round_robin",
        health=lc.HealthConfig(lc.CallableCheck(healthy), interval_s=0.01, timeout_s=0.005,
                               rise=1, fall=1),
        breaker=lc.BreakerConfig(window_size=2, minimum_calls=2, open_timeout_s=60.0),
        failover=lc.FailoverConfig(max_attempts=2, backoff=lc.Backoff(base_s=0.0001, max_s=0.0002)),
    )  # fmt: skip

    async def answer(node: Any) -> str:
        await asyncio.sleep(0)
        if node.id.endswith("3"):  # a third of the churned nodes fail: breakers open
            raise ConnectionError(node.id)
        return str(node.id)

    calls = 0
    stop = asyncio.Event()

    async def traffic() -> None:
        nonlocal calls
        while not stop.is_set():
            try:
                await cluster.call(answer)
            except lc.LangClusterError:
                pass
            except ConnectionError:
                pass
            calls += 1

    memory: list[int] = []
    tracemalloc.start()
    try:
        async with cluster:
            workers = [asyncio.create_task(traffic()) for _ in range(4)]
            names = (f"pod-{i}" for i in itertools.count())
            live: list[str] = []
            for step in range(CHURNED // STEP):
                for _ in range(STEP):
                    name = next(names)
                    await discovery.register(lc.Node(name, "10.0.1.1", 9000))
                    live.append(name)
                while len(live) > 2 * STEP:
                    await discovery.deregister(live.pop(0))
                await eventually(holds(cluster, STABLE + len(live)))
                before = calls
                await eventually(lambda before=before: calls > before)  # calls reach the nodes
                if step in (CHURNED // STEP // 2, CHURNED // STEP - 1):
                    gc.collect()
                    memory.append(tracemalloc.get_traced_memory()[0])
            for name in live:
                await discovery.deregister(name)
            await eventually(holds(cluster, STABLE))
            stop.set()
            await asyncio.gather(*workers)
            # Departed nodes still queued for a check leave as they come due.
            await eventually(lambda: max(sizes(cluster).values()) <= STABLE)
            final = sizes(cluster)
    finally:
        tracemalloc.stop()
    assert calls >= CHURNED // STEP  # calls flowed all along: some after every change
    assert final["registry"] == final["balancer"] == STABLE
    assert all(size <= STABLE for size in final.values()), final
    growth = memory[1] - memory[0]
    assert growth < 256 * 1024, f"memory grew by {growth} bytes over the second half"
