"""Simulated model servers for the cluster suites, and a call that asks one."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx

import langcluster as lc
from langcluster.testing import SimulatedServer

T = TypeVar("T")


async def servers(n: int, **kwargs: Any) -> list[SimulatedServer]:
    return [await SimulatedServer(f"s{i}", seed=i, **kwargs).start() for i in range(n)]


def asker(client: httpx.AsyncClient) -> Any:
    async def ask(node: lc.Node) -> str:
        response = await client.post(
            f"http://{node.address}:{node.port}/v1/completions", json={"prompt": "hi"}
        )
        response.raise_for_status()
        return response.headers["x-served-by"]

    return ask


class ServersInThread:
    """Simulated servers on an event loop in a thread of their own, for
    tests of blocking clients: ``with ServersInThread(3) as fleet``, then
    ``fleet.servers``, ``fleet.run(coroutine)``."""

    def __init__(self, n: int, **kwargs: Any) -> None:
        self.n = n
        self.kwargs = kwargs
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers: list[SimulatedServer] = []

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def __enter__(self) -> ServersInThread:
        self.thread.start()
        self.servers = self.run(servers(self.n, **self.kwargs))
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            self.run(server.kill())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
