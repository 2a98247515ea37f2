"""The real clients users hold, through the transports, against three
simulated OpenAI servers: the ``openai`` package (async and blocking,
streamed and not, on the SDK's default client, httpx2's in the SDK 3.x, and
on an httpx one) and LangChain's ``ChatOpenAI``."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest
import pytest_asyncio
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

import langcluster as lc
from langcluster.testing import SimulatedServer
from tests.support.helpers import eventually
from tests.support.simulated import ServersInThread, servers

SYSTEMS = [f"You are a {job}. Answer as one would, briefly and with care. " * 6
           for job in ("lawyer", "chef", "pilot", "nurse")]  # fmt: skip


@pytest_asyncio.fixture
async def fleet() -> AsyncIterator[list[SimulatedServer]]:
    started = await servers(3, latency_s=0.001)
    yield started
    for server in started:
        await server.kill()


# The SDK's own default clients (httpx2's since the SDK 3.x), and httpx's.
ASYNC_CLIENTS = {"sdk": openai.DefaultAsyncHttpxClient, "httpx": httpx.AsyncClient}
CLIENTS = {"sdk": openai.DefaultHttpxClient, "httpx": httpx.Client}
BOTH = pytest.mark.parametrize("library", ["sdk", "httpx"])


def async_openai(cluster: lc.Cluster, library: str = "httpx") -> openai.AsyncOpenAI:
    http = ASYNC_CLIENTS[library](transport=lc.AsyncClusterTransport(cluster))
    return openai.AsyncOpenAI(
        base_url="http://chat/v1",
        api_key="-",
        max_retries=0,
        http_client=http,  # type: ignore[arg-type]
    )


def messages(system: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


@BOTH
@pytest.mark.asyncio
async def test_every_answer_of_the_async_client_parses(
    fleet: list[SimulatedServer], library: str
) -> None:
    nodes = [s.node() for s in fleet]
    async with lc.Cluster(service="chat", nodes=nodes, balancer="prefix_aware") as cluster:
        client = async_openai(cluster, library)
        answer = await client.chat.completions.create(
            model="m",
            messages=messages(SYSTEMS[0], "hello"),  # type: ignore[arg-type]
        )
        assert answer.choices[0].message.content.endswith("hello")  # type: ignore[union-attr]
        assert answer.system_fingerprint in {s.node_id for s in fleet}
        assert answer.usage is not None
        assert answer.usage.prompt_tokens > 0
        stream = await client.chat.completions.create(
            model="m", messages=messages(SYSTEMS[0], "streamed"),  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.endswith("streamed")
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens > 0
        completion = await client.completions.create(model="m", prompt="complete me")
        assert completion.choices[0].text.endswith("complete me")
        pieces = await client.completions.create(model="m", prompt="piecewise", stream=True)
        assert "".join([c.choices[0].text async for c in pieces]).endswith("piecewise")
        vectors = await client.embeddings.create(model="m", input=["a", "b"])
        assert [len(v.embedding) for v in vectors.data] == [16, 16]
        floats = await client.embeddings.create(model="m", input="a", encoding_format="float")
        assert floats.data[0].embedding == pytest.approx(vectors.data[0].embedding)
        assert [m.id async for m in client.models.list()] == ["simulated"]
        await client.close()


@BOTH
@pytest.mark.asyncio
async def test_no_call_fails_when_a_server_dies_mid_run(
    fleet: list[SimulatedServer], library: str
) -> None:
    # Retries after refused connections are free; the calls in flight on the
    # server when it dies (up to a third of 90 here) are charged to the
    # retry budget, whose defaults pay for them all.
    cluster = lc.Cluster(service="chat", nodes=[s.node() for s in fleet], balancer="round_robin")
    victim = fleet[0]
    async with cluster:
        client = async_openai(cluster, library)

        async def ask(i: int) -> str | None:
            answer = await client.chat.completions.create(
                model="m",
                messages=messages(SYSTEMS[i % 4], f"q{i}"),  # type: ignore[arg-type]
            )
            return answer.system_fingerprint

        tasks = [asyncio.create_task(ask(i)) for i in range(90)]
        await eventually(lambda: cluster.balancer.stats()[victim.node_id]["in_flight"] >= 3)
        await victim.kill()
        after = await asyncio.gather(*tasks)  # raises if any call failed
        after += await asyncio.gather(*(ask(i) for i in range(30)))
        await client.close()
        stats = cluster.failover.stats()
    assert after[-30:].count(victim.node_id) == 0
    assert stats["retries"] >= 3
    assert stats["failures"] == 0


@pytest.mark.asyncio
async def test_cached_tokens_show_prefix_routing_at_work() -> None:
    rates = {}
    for balancer in ("prefix_aware", "round_robin"):
        started = await servers(3, latency_s=0.0)
        nodes = [s.node() for s in started]
        options = {"seed": 1} if balancer == "prefix_aware" else None
        cluster = lc.Cluster(
            service="chat", nodes=nodes, balancer=balancer, balancer_options=options
        )
        cached = prompt = 0
        async with cluster:
            client = async_openai(cluster)
            for round_ in range(4):
                for i, system in enumerate(SYSTEMS * 2):
                    answer = await client.chat.completions.create(
                        model="m",
                        messages=messages(system, f"q{round_}.{i}"),  # type: ignore[arg-type]
                    )
                    usage = answer.usage
                    assert usage is not None
                    assert usage.prompt_tokens_details is not None
                    cached += usage.prompt_tokens_details.cached_tokens or 0
                    prompt += usage.prompt_tokens
            await client.close()
        rates[balancer] = cached / prompt
        assert rates[balancer] == pytest.approx(
            sum(s.cached_tokens for s in started) / sum(s.prompt_tokens for s in started)
        )
        for server in started:
            await server.kill()
    # Each system prompt is read once by the server that keeps it, against
    # once per server under round robin.
    assert rates["prefix_aware"] > 0.8
    assert rates["prefix_aware"] > rates["round_robin"] + 0.1


@pytest.fixture
def thread_fleet() -> Iterator[ServersInThread]:
    with ServersInThread(3, latency_s=0.001) as fleet:
        yield fleet


@BOTH
def test_every_answer_of_the_blocking_client_parses(
    thread_fleet: ServersInThread, library: str
) -> None:
    nodes = [s.node() for s in thread_fleet.servers]
    with lc.Cluster(service="chat", nodes=nodes, balancer="prefix_aware") as cluster:
        http = CLIENTS[library](transport=lc.ClusterTransport(cluster))
        client = openai.OpenAI(
            base_url="http://chat/v1",
            api_key="-",
            max_retries=0,
            http_client=http,  # type: ignore[arg-type]
        )
        answers = [
            client.chat.completions.create(
                model="m",
                messages=messages(SYSTEMS[1], f"q{i}"),  # type: ignore[arg-type]
            )
            for i in range(6)
        ]
        assert [a.choices[0].message.content for a in answers][-1].endswith("q5")  # type: ignore[union-attr]
        assert len({a.system_fingerprint for a in answers[1:]}) == 1
        stream = client.chat.completions.create(
            model="m",
            messages=messages(SYSTEMS[1], "s"),
            stream=True,  # type: ignore[arg-type]
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream).endswith("s")
        raw = client.embeddings.create(model="m", input="x")
        assert len(raw.data[0].embedding) == 16
        thread_fleet.run(thread_fleet.servers[0].kill())
        for i in range(9):  # the dead server is failed over
            client.chat.completions.create(
                model="m",
                messages=messages(SYSTEMS[i % 4], "again"),  # type: ignore[arg-type]
            )
        client.close()


@BOTH
def test_langchain_chat_openai_through_both_transports(
    thread_fleet: ServersInThread, library: str
) -> None:
    nodes = [s.node() for s in thread_fleet.servers]
    with lc.Cluster(service="chat", nodes=nodes, balancer="prefix_aware") as cluster:
        blocking = CLIENTS[library](transport=lc.ClusterTransport(cluster))
        non_blocking = ASYNC_CLIENTS[library](transport=lc.AsyncClusterTransport(cluster))
        model = ChatOpenAI(
            model="m", base_url="http://chat/v1", api_key="-", max_retries=0,  # type: ignore[arg-type]
            http_client=blocking, http_async_client=non_blocking,
        )  # fmt: skip
        prompt = [SystemMessage(SYSTEMS[2]), HumanMessage("what now?")]
        answer = model.invoke(prompt)
        assert str(answer.content).endswith("what now?")
        streamed = "".join(str(chunk.content) for chunk in model.stream(prompt))
        assert streamed.endswith("what now?")

        async def both() -> list[str]:
            first = await model.ainvoke(prompt)
            pieces = [str(c.content) async for c in model.astream(prompt)]
            await non_blocking.aclose()  # its connections belong to this loop
            return [str(first.content), "".join(pieces)]

        assert all(text.endswith("what now?") for text in asyncio.run(both()))
        blocking.close()
        served = {s.node_id: s.requests for s in thread_fleet.servers}
        assert max(served.values()) == 4  # one prompt, one server


def test_base64_embeddings_are_little_endian_float32(thread_fleet: ServersInThread) -> None:
    nodes = [s.node() for s in thread_fleet.servers]
    with lc.Cluster(service="chat", nodes=nodes) as cluster:
        client = httpx.Client(transport=lc.ClusterTransport(cluster))
        body = {"model": "m", "input": "x", "encoding_format": "base64", "dimensions": 4}
        raw = client.post("http://chat/v1/embeddings", json=body).json()["data"][0]["embedding"]
        body["encoding_format"] = "float"
        floats = client.post("http://chat/v1/embeddings", json=body).json()["data"][0]["embedding"]
        client.close()
    assert struct.unpack("<4f", base64.b64decode(raw)) == pytest.approx(floats)
