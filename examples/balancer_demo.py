"""Balancers in action: seven algorithms over simulated model servers.

Run with `python examples/balancer_demo.py` (after `make dev`). No server is
needed: each "model server" is a coroutine with its own latency. Midway one
node turns slow, and the table shows how each balancer's traffic moves.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time

import langcluster as lc

NODES = [lc.Node(f"gpu-{i}", "127.0.0.1", 9000 + i, weight=w) for i, w in enumerate([3, 2, 1, 1])]
BASE_LATENCY_S = {"gpu-0": 0.004, "gpu-1": 0.005, "gpu-2": 0.006, "gpu-3": 0.006}
SLOW_NODE, SLOW_LATENCY_S = "gpu-1", 0.060
REQUESTS, CONCURRENCY = 400, 16


async def serve(node: lc.Node, slow: bool) -> None:
    """A simulated model server: answers after its latency, with jitter."""
    base = SLOW_LATENCY_S if slow and node.id == SLOW_NODE else BASE_LATENCY_S[node.id]
    await asyncio.sleep(base * random.uniform(0.8, 1.2))


async def drive(balancer: lc.Balancer, slow: bool) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    queue = iter(range(REQUESTS))

    async def worker() -> None:
        for i in queue:
            key = f"conversation-{i % 50}" if isinstance(balancer, lc.ConsistentHash) else None
            async with balancer.acquire(key) as node:
                counts[node.id] += 1
                await serve(node, slow)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return counts


def row(name: str, phase: str, counts: collections.Counter[str]) -> str:
    shares = "  ".join(f"{counts[n.id] / REQUESTS:6.1%}" for n in NODES)
    return f"{name:<20} {phase:<8} {shares}"


async def main() -> None:
    random.seed(7)
    balancers: list[lc.Balancer] = [
        lc.RoundRobin(NODES),
        lc.WeightedRoundRobin(NODES),
        lc.LeastConnections(NODES),
        lc.PowerOfTwoChoices(NODES),
        lc.Adaptive(NODES),
        lc.Random(NODES),
        lc.ConsistentHash(NODES, load_factor=1.25),
    ]
    print(
        f"weights {[n.weight for n in NODES]}; {SLOW_NODE} turns {SLOW_LATENCY_S * 1e3:.0f} ms slow"
    )
    print(f"{'balancer':<20} {'phase':<8} " + "  ".join(f"{n.id:>6}" for n in NODES))
    started = time.perf_counter()
    for b in balancers:
        print(row(type(b).__name__, "normal", await drive(b, slow=False)))
        print(row("", "slow", await drive(b, slow=True)))
    b = lc.RoundRobin(NODES)
    b.set_available("gpu-0", False)
    print(
        f"gpu-0 marked unavailable: round robin now picks {sorted({b.pick().id for _ in range(8)})}"
    )
    print(f"done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    asyncio.run(main())
