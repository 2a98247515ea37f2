"""A model server SIGKILLed mid-run: how many calls fail, under the defaults.

    python benches/failover_kill.py [--concurrency 8 32 128 256] [--per-worker 15]

Three simulated model servers, each a process of its own, answer chat
completions in `--latency-s` (0.5 s). The real OpenAI SDK calls them through
`AsyncClusterTransport` over a round-robin cluster with every failover
setting at its default, `--concurrency` calls at once, `--per-worker` calls
per caller. When a third of the calls have answered, server 0 gets SIGKILL:
the calls in flight on it break, its connections are refused from then on.
Each row gives the failed calls (the goal is none), the retries, the
retries the budget refused, and the same run with the budget off
(`retry_budget=None`) for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import httpx
import openai

import langcluster as lc

SERVER = """
import asyncio, sys
from langcluster.testing import SimulatedServer

async def main():
    server = await SimulatedServer(sys.argv[1], latency_s=float(sys.argv[2])).start()
    print(server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def start(latency_s: float) -> list[tuple[subprocess.Popen[str], int]]:
    out = []
    for i in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, f"s{i}", str(latency_s)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        out.append((proc, int(proc.stdout.readline())))
    return out


async def run(concurrency: int, per_worker: int, latency_s: float, budget: bool) -> dict[str, Any]:
    servers = start(latency_s)
    nodes = [lc.Node(f"s{i}", "127.0.0.1", port) for i, (_, port) in enumerate(servers)]
    failover = None if budget else lc.FailoverConfig(retry_budget=None)
    cluster = lc.Cluster(service="chat", nodes=nodes, balancer="round_robin", failover=failover)
    total = concurrency * per_worker
    answered = 0
    errors: Counter[str] = Counter()
    killed = asyncio.Event()
    try:
        async with cluster:
            client = openai.AsyncOpenAI(
                base_url="http://chat/v1", api_key="-", max_retries=0, timeout=30,
                http_client=httpx.AsyncClient(transport=lc.AsyncClusterTransport(cluster)),
            )  # fmt: skip

            async def worker(w: int) -> None:
                nonlocal answered
                for i in range(per_worker):
                    try:
                        await client.chat.completions.create(
                            model="m",
                            messages=[{"role": "user", "content": f"caller {w} call {i}"}],
                            max_tokens=4,
                        )
                        answered += 1
                    except Exception as error:
                        errors[type(error).__name__] += 1
                    if answered >= total // 3 and not killed.is_set():
                        killed.set()
                        os.kill(servers[0][0].pid, signal.SIGKILL)

            started = time.perf_counter()
            await asyncio.gather(*(worker(w) for w in range(concurrency)))
            took = time.perf_counter() - started
            await client.close()
            stats = cluster.failover.stats()
    finally:
        for proc, _ in servers:
            proc.kill()
            proc.wait()
    return {
        "concurrency": concurrency,
        "calls": total,
        "failed": sum(errors.values()),
        "errors": dict(errors),
        "retries": stats["retries"],
        "budget_refused": stats["budget_exhausted"],
        "seconds": round(took, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 128, 256])
    parser.add_argument("--per-worker", type=int, default=15, help="calls per caller (15)")
    parser.add_argument("--latency-s", type=float, default=0.5, help="each answer's time (0.5)")
    args = parser.parse_args()
    print("| concurrency | calls | failed (defaults) | retries | refused by the budget "
          "| failed, budget off | seconds |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for c in args.concurrency:
        on = asyncio.run(run(c, args.per_worker, args.latency_s, budget=True))
        off = asyncio.run(run(c, args.per_worker, args.latency_s, budget=False))
        failed = f"{on['failed']} {on['errors']}" if on["failed"] else "0"
        print(
            f"| {c} | {on['calls']} | {failed} | {on['retries']} | {on['budget_refused']} "
            f"| {off['failed']} | {on['seconds']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
