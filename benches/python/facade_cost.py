"""What the ``Cluster`` facade adds to its failover manager: ns per
``Cluster.call_sync`` against ``FailoverManager.call_sync`` on the cluster's
own manager (and the same for ``await ... call``), a healthy cluster of 3,
round robin, a no-op function, no cache, nothing watching.

    python benches/python/facade_cost.py [--blocks 40] [--calls 2000]

The two take turns block by block (the garbage collector paused within a
block, as timeit does); each figure is the median block.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import langcluster as lc


def block(run: Callable[[int], None], calls: int) -> float:
    gc.disable()
    try:
        started = time.perf_counter()
        run(calls)
        return (time.perf_counter() - started) / calls * 1e9
    finally:
        gc.enable()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    nodes = [lc.Node(f"n{i}", "127.0.0.1", 9000 + i) for i in range(3)]
    samples: dict[str, list[float]] = {}
    with lc.Cluster(service="bench", nodes=nodes, balancer="round_robin") as cluster:
        manager = cluster.failover

        def sync_runner(call: Callable[..., Any]) -> Callable[[int], None]:
            def run(n: int) -> None:
                for _ in range(n):
                    call(id)

            return run

        async def work(node: Any) -> int:
            return 1

        def async_runner(call: Callable[..., Any]) -> Callable[[int], None]:
            async def calls(n: int) -> None:
                for _ in range(n):
                    await call(work)

            loop = asyncio.new_event_loop()
            return lambda n: loop.run_until_complete(calls(n))

        runners = {
            "FailoverManager.call_sync": sync_runner(manager.call_sync),
            "Cluster.call_sync": sync_runner(cluster.call_sync),
            "await FailoverManager.call": async_runner(manager.call),
            "await Cluster.call": async_runner(cluster.call),
        }
        for run in runners.values():
            run(args.calls)  # warm
        for _ in range(args.blocks):
            for name, run in runners.items():
                samples.setdefault(name, []).append(block(run, args.calls))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print("| path | ns per call |")
    print("|---|---:|")
    for name, ns in medians.items():
        print(f"| {name} | {ns:,.0f} |")
    sync = medians["Cluster.call_sync"] - medians["FailoverManager.call_sync"]
    aio = medians["await Cluster.call"] - medians["await FailoverManager.call"]
    print(f"\nthe facade adds {sync:,.0f} ns (sync) and {aio:,.0f} ns (async)")
    return medians


if __name__ == "__main__":
    main()
