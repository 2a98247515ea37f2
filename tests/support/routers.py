"""A router process of a service with several, for the shared prefix index
test: a PrefixAware cluster over the given servers that sends its share of
a workload, each request at its time, through the cluster's transport."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx

import langcluster as lc
from langcluster.testing.fleet import prompt_text
from tests.support import workers
from tests.support.helpers import eventually
from tests.support.simulated import ServersInThread

Requests = list[tuple[float, tuple[int, ...]]]  # (arrival s, block ids)


def replay(
    requests: Requests, n_routers: int, url: str | None, *, servers: int, **server_options: Any
) -> tuple[float, list[dict[str, Any]]]:
    """The servers' token hit rate over ``requests``, each dealt at random
    to one of ``n_routers`` router processes (sharing through Redis at
    ``url``, or not), and the routers' reports."""
    deal = random.Random(7)
    shares: list[Requests] = [[] for _ in range(n_routers)]
    for request in requests:
        shares[deal.randrange(n_routers)].append(request)
    ready = workers.SPAWN.Queue()
    schedules = [workers.SPAWN.Queue() for _ in range(n_routers)]
    with ServersInThread(servers, latency_s=0.0, **server_options) as fleet:
        ports = [s.port for s in fleet.servers]
        args = [(ports, url, ready, schedule) for schedule in schedules]
        with workers.spawned(route, args):
            for _ in range(n_routers):
                assert ready.get(timeout=120)[0] == "ready"
            start = time.time() + 0.5
            for schedule, share in zip(schedules, shares, strict=True):
                schedule.put((start, share))
            reports = [ready.get(timeout=120)[1] for _ in range(n_routers)]
        cached = sum(s.cached_tokens for s in fleet.servers)
        prompt = sum(s.prompt_tokens for s in fleet.servers)
    assert sum(r["sent"] for r in reports) == len(requests)
    assert all(r["failed"] == 0 for r in reports)
    return cached / prompt, reports


def route(ports: list[int], redis_url: str | None, ready: Any, schedule: Any) -> None:
    """Runs in a spawned process: reports ``("ready", None)``, takes from
    ``schedule`` the wall-clock start and its requests (``(at_s, blocks)``),
    sends them, and reports ``("report", {...})``."""
    asyncio.run(_route(ports, redis_url, ready, schedule))


async def _route(ports: list[int], redis_url: str | None, ready: Any, schedule: Any) -> None:
    shared = lc.SharedState(redis_url, namespace="routers", signing_key=b"k") if redis_url else None
    nodes = [lc.Node(f"s{i}", "127.0.0.1", port) for i, port in enumerate(ports)]
    cluster = lc.Cluster(service="chat", nodes=nodes, balancer="prefix_aware", shared_state=shared)
    async with cluster:
        transport = lc.AsyncClusterTransport(cluster)
        async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
            if shared is not None:
                await eventually(lambda: shared.connected)
            ready.put(("ready", None))
            loop = asyncio.get_running_loop()
            start_wall, requests = await loop.run_in_executor(None, schedule.get)
            failed = 0

            async def send(blocks: tuple[int, ...]) -> None:
                nonlocal failed
                body = {"prompt": prompt_text(blocks), "max_tokens": 1}
                try:
                    response = await client.post("http://chat/v1/completions", json=body)
                    response.raise_for_status()
                except httpx.HTTPError:
                    failed += 1

            tasks: list[asyncio.Task[None]] = []
            begin = loop.time() + (start_wall - time.time())
            for at_s, blocks in requests:
                loop.call_at(begin + at_s, lambda b=blocks: tasks.append(loop.create_task(send(b))))
            last = max((at for at, _ in requests), default=0.0)
            done = loop.create_future()
            loop.call_at(begin + last + 0.001, done.set_result, None)
            await done
            await asyncio.gather(*tasks)
            stats = cluster.stats()
    ready.put(("report", {"failed": failed, "sent": len(requests), "shared": stats.get("shared")}))
