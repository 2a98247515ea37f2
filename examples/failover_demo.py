"""Failover in action: three simulated model servers, one of which goes
down mid-run and comes back.

Run with `python examples/failover_demo.py`. No server is needed: each
"model server" is a coroutine. The event log shows the breaker opening, the
node leaving rotation, the trial call and the node's return; no request
fails.
"""

from __future__ import annotations

import asyncio
import collections
import time

import langcluster as lc

NODES = [lc.Node(f"gpu-{i}", "127.0.0.1", 9000 + i) for i in range(3)]
down: set[str] = set()


async def generate(node: lc.Node) -> str:
    await asyncio.sleep(0.002)
    if node.id in down:
        raise ConnectionError(f"{node.id} refused the connection")
    return node.id


async def main() -> None:
    manager = lc.FailoverManager(
        lc.RoundRobin(NODES),
        breaker=lc.BreakerConfig(
            minimum_calls=3, window_size=10, open_timeout_s=0.5, max_open_timeout_s=1.0
        ),
        backoff=lc.Backoff(base_s=0.001, max_s=0.01),
    )
    started = time.perf_counter()

    def log(event: lc.FailoverEvent) -> None:
        if event.kind != "retry":
            node = event.node.id if event.node is not None else "-"
            print(f"{time.perf_counter() - started:6.2f}s  {event.kind:<18} {node}")

    manager.subscribe(log)
    served: collections.Counter[str] = collections.Counter()
    failed = 0

    async def client() -> None:
        nonlocal failed
        for _ in range(300):
            try:
                served[await manager.call(generate)] += 1
            except Exception:
                failed += 1
            await asyncio.sleep(0.005)

    async def chaos() -> None:
        await asyncio.sleep(0.3)
        print(f"{time.perf_counter() - started:6.2f}s  -- gpu-1 goes down --")
        down.add("gpu-1")
        await asyncio.sleep(0.6)
        print(f"{time.perf_counter() - started:6.2f}s  -- gpu-1 is back --")
        down.clear()

    await asyncio.gather(*(client() for _ in range(4)), chaos())
    print(f"served: {dict(sorted(served.items()))}; failed requests: {failed}")
    print(f"stats: {manager.stats()}")
    assert failed == 0


if __name__ == "__main__":
    asyncio.run(main())
