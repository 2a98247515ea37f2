"""An OpenAI-compatible gateway: every /v1 request is forwarded through
langcluster's transport, which routes chats by PrefixAware (each prompt goes
to the server that already holds its prefix, unless that one is
overloaded), fails over when a server dies, and streams answers through as
they come. Starlette on uvicorn (`pip install langcluster[gateway]`).

Run `python examples/llm_gateway.py`: it starts three simulated backends
and the gateway on loopback, talks to it with the `openai` client, kills the
backend one conversation sticks to, and shows the move. `gateway(cluster)`
is the app, for `uvicorn` with backends of your own.

`GET /health` is 503 while no backend is available. Overloaded (as many
requests in flight and waiting as the transport admits) it answers 503 with
`Retry-After` at once, and logs it, rather than hold what it cannot serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import httpx

try:
    import openai
    import uvicorn
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as missing:  # pragma: no cover - the extra is not installed
    raise SystemExit(
        f"the gateway needs {missing.name}: pip install 'langcluster[gateway]' "
        "(from a clone: pip install '.[gateway]')"
    ) from None

import langcluster as lc
from langcluster.testing import SimulatedServer

HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}
log = logging.getLogger("llm_gateway")


def gateway(
    cluster: lc.Cluster, *, max_in_flight_per_node: int = 128, max_queued: int = 1024
) -> Starlette:
    transport = lc.AsyncClusterTransport(
        cluster, max_in_flight_per_node=max_in_flight_per_node, max_queued=max_queued
    )
    upstream = httpx.AsyncClient(base_url="http://backends", transport=transport, timeout=60)
    refused = {"total": 0, "unlogged": 0, "logged_at": 0.0}  # logged at most once a second

    async def forward(request: Request) -> Response:
        outgoing = upstream.build_request(
            request.method, request.url.path, params=request.query_params,
            headers={k: v for k, v in request.headers.items() if k not in HOP_BY_HOP},
            content=await request.body(),
        )  # fmt: skip
        try:
            answer = await upstream.send(outgoing, stream=True)
        except lc.Overloaded:  # too much in flight: come back in a second
            refused["total"] += 1
            refused["unlogged"] += 1
            if time.monotonic() - refused["logged_at"] >= 1:
                log.warning("overloaded: %d request(s) answered 503", refused["unlogged"])
                refused.update(unlogged=0, logged_at=time.monotonic())
            body = {"error": {"message": "the gateway is overloaded", "type": "overloaded"}}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
        except Exception as error:  # no backend answered: a 502, as a proxy says
            message = f"no backend answered ({type(error).__name__})"
            log.warning("502: %s: %s", message, error)
            return JSONResponse({"error": {"message": message}}, status_code=502)
        return StreamingResponse(  # each chunk leaves as it arrives
            answer.aiter_raw(), status_code=answer.status_code,
            headers={k: v for k, v in answer.headers.items() if k not in HOP_BY_HOP},
            background=BackgroundTask(answer.aclose),
        )  # fmt: skip

    async def health(request: Request) -> Response:  # for the load balancer in front
        available, admission = cluster.balancer.available_count, transport.stats()
        return JSONResponse({
            "status": "ok" if available else "no backend available",
            "backends_available": available, "in_flight": admission["in_flight"],
            "waiting": admission["waiting"], "refused": refused["total"],
        }, status_code=200 if available else 503)  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await upstream.aclose()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/{path:path}", forward, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def serve(app: Starlette) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """The app on uvicorn on a free loopback port: the server, its task, the port."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, server.servers[0].sockets[0].getsockname()[1]


async def main() -> None:
    backends = [await SimulatedServer(f"gpu-{i}", latency_s=0.003).start() for i in range(3)]
    cluster = lc.Cluster(
        service="gateway", nodes=[b.node() for b in backends], balancer="prefix_aware",
        breaker=lc.BreakerConfig(window_size=4, minimum_calls=2, open_timeout_s=5.0),
    )  # fmt: skip
    async with cluster:
        server, task, port = await serve(gateway(cluster))
        api = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-")
        systems = [f"You are a {job}. Answer as one would, briefly." for job in ("lawyer", "chef")]

        async def turn(system: str, n: int) -> str:
            messages = [{"role": "system", "content": system},
                        {"role": "user", "content": f"question {n}"}]  # fmt: skip
            answer = await api.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
            return str(answer.system_fingerprint)

        for system in systems:
            print(f"{system[:18]:<18} served by", [await turn(system, n) for n in range(4)])
        stream = await api.chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": "stream this"}]
        )
        print("streamed:", "|".join([c.choices[0].delta.content or "" async for c in stream]))
        sticky = await turn(systems[0], 0)
        print(f"{sticky} goes down")
        await next(b for b in backends if b.node_id == sticky).kill()
        print(f"{systems[0][:18]:<18} served by", [await turn(systems[0], n) for n in range(4)])
        await api.close()
        server.should_exit = True
        await task
    for backend in backends:
        await backend.kill()


if __name__ == "__main__":
    asyncio.run(main())
