"""Simulated model servers for the cluster suites, and a call that asks one."""

from __future__ import annotations

from typing import Any

import httpx

import langcluster as lc
from langcluster.testing import SimulatedServer


async def servers(n: int, **kwargs: Any) -> list[SimulatedServer]:
    return [await SimulatedServer(f"s{i}", seed=i, **kwargs).start() for i in range(n)]


def asker(client: httpx.AsyncClient) -> Any:
    async def ask(node: lc.Node) -> str:
        response = await client.post(
            f"http://{node.address}:{node.port}/v1/completions", json={"prompt": "hi"}
        )
        response.raise_for_status()
        return str(response.json()["node"])

    return ask
