"""The gateway example, driven by the ``openai`` client: answers parse,
streams pass through unbuffered, a gateway without backends says 502 and
fails its health check, and an overloaded one says 503 with Retry-After."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path
from types import ModuleType

import httpx
import openai
import pytest

import langcluster as lc
from tests.support.simulated import servers


def example() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "examples" / "llm_gateway.py"
    spec = importlib.util.spec_from_file_location("llm_gateway", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.asyncio
async def test_the_gateway_answers_the_openai_client_and_streams_through() -> None:
    gateway = example()
    backends = await servers(3, latency_s=0.0)
    cluster = lc.Cluster(
        service="gateway", nodes=[b.node() for b in backends], balancer="prefix_aware"
    )
    async with cluster:
        server, task, port = await gateway.serve(gateway.gateway(cluster))
        api = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-")
        answer = await api.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}]
        )
        assert answer.choices[0].message.content.endswith("hello")  # type: ignore[union-attr]
        assert [m.id async for m in api.models.list()] == ["simulated"]
        vectors = await api.embeddings.create(model="m", input=["a", "b"])
        assert len(vectors.data) == 2
        for backend in backends:  # each holds its stream after the first event
            backend.gate = asyncio.Event()
        stream = await api.chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": "one two three"}]
        )
        chunks = stream.__aiter__()
        first = await anext(chunks)  # reaches us while the server still holds the rest
        assert first.choices[0].delta.content
        for backend in backends:
            backend.gate.set()  # type: ignore[union-attr]
        rest = "".join([c.choices[0].delta.content or "" async for c in chunks])
        assert rest.endswith("one two three")
        for backend in backends:
            await backend.kill()
        once = api.with_options(max_retries=0)
        with pytest.raises(openai.InternalServerError) as refused:
            await once.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
        assert refused.value.status_code == 502
        await api.close()
        server.should_exit = True
        await task


@pytest.mark.asyncio
async def test_health_says_whether_a_backend_is_available() -> None:
    gateway = example()
    backends = await servers(2, latency_s=0.0)
    cluster = lc.Cluster(service="gateway", nodes=[b.node() for b in backends])
    async with cluster:
        server, task, port = await gateway.serve(gateway.gateway(cluster))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            up = await client.get("/health")
            assert (up.status_code, up.json()["backends_available"]) == (200, 2)
            for backend in backends:
                cluster.registry.set_status(backend.node_id, "unhealthy")
            down = await client.get("/health")
            assert down.status_code == 503
            assert down.json()["status"] == "no backend available"
        server.should_exit = True
        await task
    for backend in backends:
        await backend.kill()


@pytest.mark.asyncio
async def test_an_overloaded_gateway_answers_503_with_retry_after_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = example()
    backends = await servers(2, latency_s=0.0)
    for backend in backends:  # each holds its streams after the first event
        backend.gate = asyncio.Event()
    cluster = lc.Cluster(service="gateway", nodes=[b.node() for b in backends])
    app = gateway.gateway(cluster, max_in_flight_per_node=1, max_queued=0)
    async with cluster:
        server, task, port = await gateway.serve(app)
        api = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        messages = [{"role": "user", "content": "hold on"}]
        held = [
            await api.chat.completions.create(model="m", stream=True, messages=messages)  # type: ignore[arg-type]
            for _ in range(2)
        ]
        with caplog.at_level(logging.WARNING, logger="llm_gateway"):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                refused = await client.post(
                    "/v1/chat/completions", json={"model": "m", "messages": messages}
                )
                health = (await client.get("/health")).json()
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "overloaded"
        assert (health["in_flight"], health["refused"]) == (2, 1)
        assert any("overloaded" in r.getMessage() for r in caplog.records)
        for backend in backends:
            backend.gate.set()  # type: ignore[union-attr]
        for stream in held:  # the held streams end whole
            assert "".join([c.choices[0].delta.content or "" async for c in stream])
        await api.close()
        server.should_exit = True
        await task
    for backend in backends:
        await backend.kill()
