"""The simulated servers speak OpenAI's wire format as vLLM does: their
answers, their prefix cache, their queue and 429s, their refusals."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

import langcluster as lc
from langcluster.testing import SimulatedServer
from langcluster.testing.openai_api import BYTES_PER_TOKEN, PrefixCache
from tests.support.helpers import ManualClock, eventually

SYSTEM = "x" * 640  # ten 16-token blocks of four-byte tokens


@pytest_asyncio.fixture
async def server() -> AsyncIterator[SimulatedServer]:
    started = await SimulatedServer("gpu-0", latency_s=0.0, seed=1).start()
    yield started
    await started.kill()


def chat(question: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return {"model": "m", "messages": messages, **extra}


@pytest.mark.asyncio
async def test_cached_tokens_are_the_prefix_held_in_whole_blocks(server: SimulatedServer) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        first = (await client.post("/v1/chat/completions", json=chat("one"))).json()
        second = (await client.post("/v1/chat/completions", json=chat("two"))).json()
    prompt_bytes = len(f"<|system|>\n{SYSTEM}\n<|user|>\none\n")
    assert first["usage"]["prompt_tokens"] == -(-prompt_bytes // BYTES_PER_TOKEN)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # The system prompt and its framing fill ten whole blocks; the question does not.
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 160
    assert second["object"] == "chat.completion"
    assert second["system_fingerprint"] == "gpu-0"
    assert second["choices"][0]["message"]["content"] == "[gpu-0] answer to: two"
    assert server.cached_tokens == 160
    assert server.hit_rate == 160 / server.prompt_tokens


def test_the_prefix_cache_evicts_the_least_recent_and_a_prompts_head_last() -> None:
    cache = PrefixCache(capacity_blocks=3, block_tokens=1)  # four-byte blocks
    assert cache.admit("aaaabbbbcccc") == 0
    assert cache.admit("aaaabbbbdddd") == 2  # the last block of the first is evicted
    assert cache.admit("aaaabbbbcccc") == 2
    assert cache.admit("eeee") == 0
    assert cache.admit("aaaa") == 1  # the head of a prompt goes last


@pytest.mark.asyncio
async def test_a_full_queue_answers_429_with_retry_after() -> None:
    server = await SimulatedServer("busy", latency_s=0.0, max_running=1, max_queue=1).start()
    server.gate = asyncio.Event()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        held = await client.send(
            client.build_request("POST", "/v1/completions", json={"prompt": "a", "stream": True}),
            stream=True,
        )  # runs, holding the one slot
        waiting = asyncio.create_task(client.post("/v1/completions", json={"prompt": "b"}))
        await eventually(lambda: server.requests >= 2)
        refused = await client.post("/v1/completions", json={"prompt": "c"})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        server.gate.set()
        await held.aread()
        await held.aclose()
        assert (await waiting).status_code == 200
    assert server.rejected == 1
    await server.kill()


@pytest.mark.asyncio
async def test_the_transport_holds_a_full_server_out_and_goes_elsewhere() -> None:
    busy = await SimulatedServer("busy", latency_s=0.0, max_running=1, max_queue=0).start()
    free = await SimulatedServer("free", latency_s=0.0).start()
    busy.gate = asyncio.Event()
    clock = ManualClock()
    cluster = lc.Cluster(
        service="chat", nodes=[busy.node(), free.node()], balancer="round_robin",
        failover=lc.FailoverConfig(clock=clock),
    )  # fmt: skip
    async with cluster, httpx.AsyncClient(base_url=f"http://127.0.0.1:{busy.port}") as direct:
        held = await direct.send(
            direct.build_request("POST", "/v1/completions", json={"prompt": "a", "stream": True}),
            stream=True,
        )
        async with httpx.AsyncClient(transport=lc.AsyncClusterTransport(cluster)) as client:
            for _ in range(4):
                answer = await client.post("http://chat/v1/completions", json={"prompt": "b"})
                assert answer.headers["x-served-by"] == "free"
        assert cluster.failover.taken_out() == ["busy"]
        assert busy.rejected == 1
        busy.gate.set()
        await held.aclose()
    for server in (busy, free):
        await server.kill()


@pytest.mark.asyncio
async def test_refusals_are_openai_errors(server: SimulatedServer) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        missing = await client.get("/v1/nothing")
        not_json = await client.post("/v1/completions", content=b"{oops")
        not_object = await client.post("/v1/completions", content=b"[1]")
        deep = await client.post("/v1/completions", content=b"[" * 100_000)
        wrong = [
            await client.post(path, json=body)
            for path, body in [
                ("/v1/chat/completions", {"messages": {"role": "user"}}),
                ("/v1/chat/completions", {"messages": []}),
                ("/v1/chat/completions", {"messages": ["hi"]}),
                ("/v1/completions", {"prompt": 3}),
                ("/v1/embeddings", {}),
            ]
        ]
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    for answer in (not_json, not_object, deep, *wrong):
        assert answer.status_code == 400
        assert answer.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.asyncio
async def test_a_stream_is_events_then_done_and_max_tokens_cuts_it(server: SimulatedServer) -> None:
    body = chat("a b c d e f", stream=True, max_tokens=3, stream_options={"include_usage": True})
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.headers["content-type"] == "text/event-stream"
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert [e["object"] for e in events] == ["chat.completion.chunk"] * 5
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[3]["choices"][0]["finish_reason"] == "length"
    assert events[4]["choices"] == []
    assert events[4]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("options", "named"),
    [({"latency_s": -1}, "latency_s"), ({"max_running": 0}, "max_running"),
     ({"block_tokens": 0}, "block_tokens"), ({"retry_after_s": "1"}, "retry_after_s"),
     ({"model": ""}, "model"), ({"max_queue": -1}, "max_queue")],
)  # fmt: skip
def test_bad_settings_are_refused_by_name(options: dict[str, Any], named: str) -> None:
    with pytest.raises((TypeError, ValueError), match=f"^{named}:"):
        SimulatedServer("s", **options)
