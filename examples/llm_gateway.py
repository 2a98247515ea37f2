"""A small OpenAI-compatible gateway: POST /v1/chat/completions is routed
across several model servers by PrefixAware, which sends each prompt to the
server that already holds its prefix in its KV cache (unless that server is
overloaded), and fails over when one dies.

Run with `python examples/llm_gateway.py`: it starts three simulated
backends and the gateway on loopback, talks to it as an OpenAI client
would, kills the backend one conversation sticks to, and shows the move.
"""

from __future__ import annotations

import asyncio
import json

import httpx

import langcluster as lc
from langcluster.testing import SimulatedServer


def prompt(body: dict) -> str:
    """The whole conversation as the server will read it: PrefixAware cuts
    it into blocks and matches the leading ones a server already holds."""
    return json.dumps(body.get("messages") or [])


async def start_gateway(cluster: lc.Cluster, client: httpx.AsyncClient) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode().split()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            length = int(value) if name.lower() == "content-length" else length
        body = json.loads(await reader.readexactly(length) or b"{}")
        if request_line[:2] != ["POST", "/v1/chat/completions"]:
            status, answer = 404, {"error": {"message": "not found"}}
        else:

            async def forward(node: lc.Node) -> dict:
                url = f"http://{node.address}:{node.port}/v1/chat/completions"
                response = await client.post(url, json=body)
                response.raise_for_status()
                return response.json()

            try:
                status, answer = 200, await cluster.call(forward, key=prompt(body))
            except Exception as error:  # every backend failed: a 502, as a proxy says
                status, answer = 502, {"error": {"message": f"{type(error).__name__}"}}
        data = json.dumps(answer).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def main() -> None:
    backends = [await SimulatedServer(f"gpu-{i}", latency_s=0.003).start() for i in range(3)]
    cluster = lc.Cluster(
        service="gateway", nodes=[b.node() for b in backends], balancer="prefix_aware",
        breaker=lc.BreakerConfig(window_size=4, minimum_calls=2, open_timeout_s=5.0),
    )  # fmt: skip
    upstream = httpx.AsyncClient(timeout=2.0)
    async with cluster:
        gateway = await start_gateway(cluster, upstream)
        port = gateway.sockets[0].getsockname()[1]
        api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=5.0)
        systems = [
            f"You are a {job}. Answer as one would, briefly." for job in ("lawyer", "chef", "pilot")
        ]

        async def turn(system: str, n: int) -> str:
            messages = [{"role": "system", "content": system},
                        {"role": "user", "content": f"question {n}"}]  # fmt: skip
            response = await api.post(
                "/chat/completions", json={"model": "m", "messages": messages}
            )
            return str(response.json().get("node", response.status_code))

        for system in systems:
            print(f"{system:<18} served by", [await turn(system, n) for n in range(4)])
        sticky = await turn(systems[0], 0)
        print(f"{sticky} goes down")
        await next(b for b in backends if b.node_id == sticky).kill()
        print(f"{systems[0]:<18} served by", [await turn(systems[0], n) for n in range(4)])
        await api.aclose()
        gateway.close()
    await upstream.aclose()
    for backend in backends:
        await backend.kill()


if __name__ == "__main__":
    asyncio.run(main())
