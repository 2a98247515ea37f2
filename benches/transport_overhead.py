"""What a request costs through the cluster transports, against httpx's own
transport to the same server, on loopback.

The server is a ``SimulatedServer`` (no latency) in a process of its own,
so that the client's work is what is timed. Each round sends ``--requests``
chat completions (a 2 KB system prompt and a question) through each of
four keep-alive clients, taking turns request by request: httpx's
transport straight to the server, a hand-rolled round-robin transport (what
one writes without a library), and ``AsyncClusterTransport`` over two
three-node clusters whose nodes all point at that server (round robin: no
body is read for a key; PrefixAware: every body is read and routed by its
prompt); then the same for the blocking clients. Each request is timed
alone; the figure is the median request, and its ratio to the library's
own transport ("own"). The same is done with httpx2's clients (the OpenAI
SDK 3.x's default), against httpx2's own transport, when it is installed.
With ``--in-process`` there is no server: every transport sends to one in
the client's process that answers at once, so that what is timed is the
client's own work alone (blocking clients).

    python benches/transport_overhead.py [--rounds 7] [--requests 400]
        [--library httpx|httpx2|both] [--in-process] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from types import ModuleType
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


URL = "http://chat"
PATH = "/v1/chat/completions"


def cluster(port: int, balancer: str) -> lc.Cluster:
    nodes = [lc.Node(f"n{i}", "127.0.0.1", port) for i in range(3)]
    return lc.Cluster(service="bench", nodes=nodes, balancer=balancer)


NAMES = ("own", "hand-rolled", "round_robin", "prefix_aware")


class HandRolled(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """What one writes by hand in pure Python: the next address in turn put
    in the URL, no failover, no key, no accounting."""

    def __init__(self, port: int, lib: ModuleType = httpx) -> None:
        self.ports = itertools.cycle([port] * 3)
        self.inner = lib.HTTPTransport()
        self.ainner = lib.AsyncHTTPTransport()

    def aim(self, request: httpx.Request) -> httpx.Request:
        request.url = request.url.copy_with(host="127.0.0.1", port=next(self.ports))
        request.headers["host"] = request.url.netloc.decode()
        return request

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(self.aim(request))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.ainner.handle_async_request(self.aim(request))

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.ainner.aclose()


async def async_round(port: int, n: int, lib: ModuleType) -> dict[str, list[float]]:
    """Each request timed alone; the three clients take turns, request by
    request, so that a slow moment of the machine falls on all of them."""
    tag = f"{lib.__name__} "
    times: dict[str, list[float]] = {f"async {tag}{name}": [] for name in NAMES}
    async with cluster(port, "round_robin") as rr, cluster(port, "prefix_aware") as prefix:
        clients = {
            f"async {tag}own": (lib.AsyncClient(), f"http://127.0.0.1:{port}"),
            f"async {tag}hand-rolled": (lib.AsyncClient(transport=HandRolled(port, lib)), URL),
            f"async {tag}round_robin": (
                lib.AsyncClient(transport=lc.AsyncClusterTransport(rr)),
                URL,
            ),
            f"async {tag}prefix_aware": (
                lib.AsyncClient(transport=lc.AsyncClusterTransport(prefix)),
                URL,
            ),
        }
        for i in range(20 + n):
            for name, (client, base) in clients.items():
                started = time.perf_counter()
                (await client.post(f"{base}{PATH}", json=body(i))).raise_for_status()
                if i >= 20:  # the first ones warm the connections
                    times[name].append(time.perf_counter() - started)
        for client, _ in clients.values():
            await client.aclose()
    return times


def instant(lib: ModuleType) -> Any:
    """A transport that answers every request at once, in-process."""

    class Instant(lib.BaseTransport):  # type: ignore[name-defined,misc]
        def handle_request(self, request: Any) -> Any:
            request.read()
            headers = {"content-type": "application/json"}
            return lib.Response(200, headers=headers, content=b'{"ok": true}')

    return Instant()


def in_process_round(n: int, lib: ModuleType) -> dict[str, list[float]]:
    tag = f"{lib.__name__} "
    times: dict[str, list[float]] = {f"in-process {tag}{name}": [] for name in NAMES}
    hand = HandRolled(1, lib)
    hand.inner = instant(lib)
    with cluster(1, "round_robin") as rr, cluster(1, "prefix_aware") as prefix:
        clients = {
            f"in-process {tag}own": lib.Client(transport=instant(lib)),
            f"in-process {tag}hand-rolled": lib.Client(transport=hand),
            f"in-process {tag}round_robin": lib.Client(
                transport=lc.ClusterTransport(rr, transport=instant(lib))
            ),
            f"in-process {tag}prefix_aware": lib.Client(
                transport=lc.ClusterTransport(prefix, transport=instant(lib))
            ),
        }
        for i in range(20 + n):
            for name, client in clients.items():
                started = time.perf_counter()
                client.post(f"{URL}{PATH}", json=body(i)).raise_for_status()
                if i >= 20:
                    times[name].append(time.perf_counter() - started)
        for client in clients.values():
            client.close()
    return times


def sync_round(port: int, n: int, lib: ModuleType) -> dict[str, list[float]]:
    tag = f"{lib.__name__} "
    times: dict[str, list[float]] = {f"sync {tag}{name}": [] for name in NAMES}
    with cluster(port, "round_robin") as rr, cluster(port, "prefix_aware") as prefix:
        clients = {
            f"sync {tag}own": (lib.Client(), f"http://127.0.0.1:{port}"),
            f"sync {tag}hand-rolled": (lib.Client(transport=HandRolled(port, lib)), URL),
            f"sync {tag}round_robin": (lib.Client(transport=lc.ClusterTransport(rr)), URL),
            f"sync {tag}prefix_aware": (lib.Client(transport=lc.ClusterTransport(prefix)), URL),
        }
        for i in range(20 + n):
            for name, (client, base) in clients.items():
                started = time.perf_counter()
                client.post(f"{base}{PATH}", json=body(i)).raise_for_status()
                if i >= 20:
                    times[name].append(time.perf_counter() - started)
        for client, _ in clients.values():
            client.close()
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--library", choices=("httpx", "httpx2", "both"), default="both")
    parser.add_argument("--in-process", action="store_true", help="no server: the client's work")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    libs = [httpx] if args.library != "httpx2" else []
    if args.library != "httpx":
        try:
            import httpx2
        except ImportError:
            if args.library == "httpx2":
                parser.error("--library httpx2: httpx2 is not installed (pip install openai)")
        else:
            libs.append(httpx2)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True
    )  # fmt: skip
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        samples: dict[str, list[float]] = {}
        rounds: list[Callable[[], dict[str, list[float]]]] = []
        for lib in libs:
            if args.in_process:
                rounds.append(lambda lib=lib: in_process_round(args.requests, lib))
                continue
            rounds.append(lambda lib=lib: asyncio.run(async_round(port, args.requests, lib)))
            rounds.append(lambda lib=lib: sync_round(port, args.requests, lib))
        for _ in range(args.rounds):
            for run in rounds:
                for name, seconds in run().items():
                    samples.setdefault(name, []).extend(seconds)
    finally:
        server.terminate()
        server.wait()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    result = {}
    for name, median in medians.items():
        base = medians[name.rsplit(" ", 1)[0] + " own"]
        result[name] = {"us_per_request": median * 1e6, "vs_own": median / base}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'client':<29} {'µs/request':>11} {'vs own':>9}")
        for name, row in result.items():
            print(f"{name:<29} {row['us_per_request']:>11.1f} {row['vs_own']:>8.3f}x")
    return result


if __name__ == "__main__":
    main()
