"""The Cluster facade in one page: three simulated model servers, found by
static discovery, health-checked over HTTP, called through failover with a
cache in front. One server dies mid-run; no request fails.

Run with `python examples/cluster_demo.py` (nothing else needs to run).
"""

from __future__ import annotations

import asyncio

import httpx

import langcluster as lc
from langcluster.testing import SimulatedServer


async def main() -> None:
    servers = [await SimulatedServer(f"gpu-{i}", latency_s=0.005).start() for i in range(3)]
    cluster = lc.Cluster(
        service="chat",
        nodes=[s.node() for s in servers],
        balancer="adaptive",
        health=lc.HealthConfig(lc.HttpCheck("/health"), interval_s=0.5, timeout_s=0.2),
        breaker=lc.BreakerConfig(window_size=6, minimum_calls=2, open_timeout_s=1.0),
        cache=lc.MemoryCache(1_000, ttl=60),
    )
    client = httpx.AsyncClient(timeout=1.0)

    async def complete(node: lc.Node, prompt: str) -> str:
        url = f"http://{node.address}:{node.port}/v1/completions"
        response = await client.post(url, json={"prompt": prompt})
        response.raise_for_status()
        return response.headers["x-served-by"]

    async def watch() -> None:
        async for event in cluster.events():
            if event.kind not in ("retry", "node_failed"):
                print(f"  event: {event.source}/{event.kind} {event.node_id} {event.detail}")

    async with cluster:
        watcher = asyncio.create_task(watch())
        failed = 0
        for i in range(200):
            prompt = f"question {i % 120}"  # repeats: the cache answers those
            if i == 60:
                print("gpu-1 goes down")
                await servers[1].kill()

            async def ask(node: lc.Node, prompt: str = prompt) -> str:
                return await complete(node, prompt)

            try:
                await cluster.call(ask, cache_key=prompt)
            except lc.LangClusterError:
                failed += 1
            await asyncio.sleep(0.01)
        stats = cluster.stats()
        watcher.cancel()
    print("calls:", stats["calls"]["calls"], "cache hits:", stats["calls"]["cache_hits"])
    print("picks per node:", {n: s["picks"] for n, s in stats["nodes"].items()})
    print("failed requests:", failed)
    await client.aclose()
    for server in servers:
        await server.kill()


if __name__ == "__main__":
    asyncio.run(main())
