"""What a request costs through the cluster transports, against httpx's own
transport to the same server, on loopback.

The server is a ``SimulatedServer`` (no latency) in a process of its own,
so that the client's work is what is timed. Each round sends ``--requests``
chat completions (a 2 KB system prompt and a question) one after another
on one keep-alive client, in turn: httpx's transport straight to the
server, then ``AsyncClusterTransport`` over a three-node cluster whose
nodes all point at that server (round robin: no body is read for a key;
PrefixAware: every body is read and routed by its prompt), then the same
for the blocking clients. The figure is the median over rounds of the time
per request, and its ratio to httpx's own.

    python benches/transport_overhead.py [--rounds 7] [--requests 400] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

import langcluster as lc

SERVER = """
import asyncio, sys
from langcluster.testing import SimulatedServer

async def main():
    server = await SimulatedServer("bench", latency_s=0.0).start()
    print(server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

SYSTEM = "You are a careful assistant who answers briefly. " * 40


def body(i: int) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"q{i}"}]
    return {"model": "m", "messages": messages}


def cluster(port: int, balancer: str) -> lc.Cluster:
    nodes = [lc.Node(f"n{i}", "127.0.0.1", port) for i in range(3)]
    return lc.Cluster(service="bench", nodes=nodes, balancer=balancer)


async def time_async(client: httpx.AsyncClient, url: str, n: int) -> float:
    for i in range(20):  # warm the connection
        (await client.post(url, json=body(i))).raise_for_status()
    started = time.perf_counter()
    for i in range(n):
        (await client.post(url, json=body(i))).raise_for_status()
    return (time.perf_counter() - started) / n


def time_sync(client: httpx.Client, url: str, n: int) -> float:
    for i in range(20):
        client.post(url, json=body(i)).raise_for_status()
    started = time.perf_counter()
    for i in range(n):
        client.post(url, json=body(i)).raise_for_status()
    return (time.perf_counter() - started) / n


async def async_round(port: int, n: int) -> dict[str, float]:
    out = {}
    direct = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with httpx.AsyncClient() as client:
        out["async httpx"] = await time_async(client, direct, n)
    for balancer in ("round_robin", "prefix_aware"):
        async with cluster(port, balancer) as c:
            transport = lc.AsyncClusterTransport(c)
            async with httpx.AsyncClient(transport=transport) as client:
                out[f"async {balancer}"] = await time_async(
                    client, "http://chat/v1/chat/completions", n
                )
    return out


def sync_round(port: int, n: int) -> dict[str, float]:
    out = {}
    with httpx.Client() as client:
        out["sync httpx"] = time_sync(client, f"http://127.0.0.1:{port}/v1/chat/completions", n)
    for balancer in ("round_robin", "prefix_aware"):
        with cluster(port, balancer) as c, httpx.Client(transport=lc.ClusterTransport(c)) as client:
            out[f"sync {balancer}"] = time_sync(client, "http://chat/v1/chat/completions", n)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True
    )  # fmt: skip
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        samples: dict[str, list[float]] = {}
        rounds: list[Callable[[], dict[str, float]]] = [
            lambda: asyncio.run(async_round(port, args.requests)),
            lambda: sync_round(port, args.requests),
        ]
        for _ in range(args.rounds):
            for run in rounds:
                for name, seconds in run().items():
                    samples.setdefault(name, []).append(seconds)
    finally:
        server.terminate()
        server.wait()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    result = {}
    for name, median in medians.items():
        base = medians[f"{name.split()[0]} httpx"]
        result[name] = {"us_per_request": median * 1e6, "vs_httpx": median / base}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'client':<22} {'µs/request':>11} {'vs httpx':>9}")
        for name, row in result.items():
            print(f"{name:<22} {row['us_per_request']:>11.1f} {row['vs_httpx']:>8.3f}x")
    return result


if __name__ == "__main__":
    main()
