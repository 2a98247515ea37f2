"""The httpx transports: where requests go, what is retried, what a
``Retry-After`` does, streams passed through and broken, routing keys, and
the refusals of bad settings."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import langcluster as lc
from langcluster.failover import FailoverEventKind as Kind
from langcluster.integrations.openai_body import read_prompt
from langcluster.integrations.transport import retry_after_s
from tests.metrics.test_prometheus import scrape, value
from tests.support.helpers import ManualClock
from tests.support.simulated import ServersInThread, servers

NODES = [lc.Node(f"n{i}", "10.0.0.1", 8000 + i) for i in range(3)]
CHAT = "/v1/chat/completions"


def chat(*contents: str) -> dict[str, Any]:
    """A chat: a system prompt, then user and assistant in turn."""
    messages = [
        {"role": "system" if i == 0 else "user" if i % 2 else "assistant", "content": content}
        for i, content in enumerate(contents)
    ]
    return {"model": "m", "messages": messages}


class Recorder:
    """An inner transport that answers as ``answer(request)`` says and
    keeps every request it was handed."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.seen: list[httpx.Request] = []
        self.answer = answer or (lambda request: httpx.Response(200, json={"ok": True}))

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return self.answer(request)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    @property
    def hosts(self) -> list[str]:
        return [f"{r.url.host}:{r.url.port}" for r in self.seen]


def told_once(
    cluster: lc.Cluster, events: list[lc.ClusterEvent], counter: str, kind: Kind, metric: str
) -> None:
    """What happened once is in the failover stats, the events and the metrics."""
    assert cluster.failover.stats()[counter] == 1
    assert [e.kind for e in events].count(kind) == 1
    samples = scrape(lc.metrics.PrometheusCollector(cluster))
    assert value(samples, f"langcluster_{metric}_total", service="chat") == 1


def cluster_of(balancer: str = "round_robin", clock: Any = None, **options: Any) -> lc.Cluster:
    return lc.Cluster(
        service="chat", nodes=NODES, balancer=balancer, balancer_options=options or None,
        failover=lc.FailoverConfig(backoff=lc.Backoff(base_s=0.0001, max_s=0.0001), clock=clock),
    )  # fmt: skip


@pytest.mark.asyncio
async def test_a_request_goes_to_a_picked_node_with_path_query_headers_and_body_kept() -> None:
    recorder = Recorder()
    async with cluster_of() as cluster:
        transport = lc.AsyncClusterTransport(cluster, transport=recorder.transport())
        async with httpx.AsyncClient(transport=transport, base_url="http://chat") as client:
            for _ in range(3):
                response = await client.post(
                    "/v1/x?a=1", content=b"payload", headers={"x-trace": "t"}
                )
                assert response.json() == {"ok": True}
                assert (
                    str(response.request.url) == "http://chat/v1/x?a=1"
                )  # the caller's, as it was
                assert response.request.headers["host"] == "chat"
    assert sorted(recorder.hosts) == ["10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.1:8002"]
    for request in recorder.seen:
        assert (request.url.path, request.url.query) == ("/v1/x", b"a=1")
        assert request.content == b"payload"
        assert request.headers["x-trace"] == "t"
        assert request.headers["host"] == f"{request.url.host}:{request.url.port}"


@pytest.mark.asyncio
async def test_a_node_scheme_comes_from_its_metadata() -> None:
    recorder = Recorder()
    node = lc.Node("tls", "10.0.0.9", 8443, metadata={"scheme": "https"})
    async with lc.Cluster(service="chat", nodes=[node], balancer="round_robin") as cluster:
        transport = lc.AsyncClusterTransport(cluster, transport=recorder.transport())
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get("http://chat/v1/models")
    assert str(recorder.seen[0].url) == "https://10.0.0.9:8443/v1/models"


@pytest.mark.asyncio
async def test_a_status_to_retry_moves_to_another_node_and_counts_against_the_first() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502 if request.url.port == 8000 else 200, json={})

    recorder = Recorder(answer)
    async with cluster_of() as cluster:
        transport = lc.AsyncClusterTransport(cluster, transport=recorder.transport())
        async with httpx.AsyncClient(transport=transport) as client:
            statuses = [(await client.get("http://chat/")).status_code for _ in range(6)]
        stats = cluster.balancer.stats()
    assert statuses == [200] * 6
    assert recorder.hosts.count("10.0.0.1:8000") >= 1
    assert stats["n0"]["failures"] >= 1
    assert stats["n1"]["failures"] == stats["n2"]["failures"] == 0


@pytest.mark.asyncio
async def test_the_caller_gets_the_last_refusal_when_no_node_does_better() -> None:
    recorder = Recorder(lambda request: httpx.Response(503, json={"error": "overloaded"}))
    async with cluster_of() as cluster:
        transport = lc.AsyncClusterTransport(cluster, transport=recorder.transport())
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://chat/")
    assert response.status_code == 503
    assert response.json() == {"error": "overloaded"}
    assert len(recorder.seen) == 3  # max_attempts


@pytest.mark.asyncio
async def test_a_status_not_listed_is_handed_over_untouched() -> None:
    recorder = Recorder(lambda request: httpx.Response(501, json={"error": "no such thing"}))
    async with cluster_of() as cluster:
        transport = lc.AsyncClusterTransport(cluster, transport=recorder.transport())
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://chat/")
    assert (response.status_code, len(recorder.seen)) == (501, 1)


@pytest.mark.asyncio
async def test_a_server_error_is_tried_again_on_another_node_by_default() -> None:
    # A 500 says the server failed (an engine that died, out of memory), as
    # the OpenAI SDK reads it: another node answers instead.
    def answer(request: httpx.Request) -> httpx.Response:
        if len(recorder.seen) == 1:
            return httpx.Response(500, json={"error": "engine dead"})
        return httpx.Response(200, json={"ok": True})

    recorder = Recorder(answer)
    async with cluster_of() as cluster:
        transport = lc.AsyncClusterTransport(cluster, transport=recorder.transport())
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://chat/")
    assert response.status_code == 200
    assert len(recorder.seen) == 2
    assert recorder.hosts[0] != recorder.hosts[1]


@pytest.mark.asyncio
async def test_retry_after_holds_the_node_out_without_a_failure_until_its_time() -> None:
    clock = ManualClock()
    busy = {"n0"}

    def answer(request: httpx.Request) -> httpx.Response:
        if f"n{request.url.port - 8000}" in busy:
            return httpx.Response(429, headers={"Retry-After": "7"}, json={})
        return httpx.Response(200, json={})

    recorder = Recorder(answer)
    events: list[lc.ClusterEvent] = []
    async with cluster_of(clock=clock) as cluster:
        cluster.subscribe(events.append)
        transport = lc.AsyncClusterTransport(cluster, transport=recorder.transport())
        async with httpx.AsyncClient(transport=transport) as client:
            statuses = [(await client.get("http://chat/")).status_code for _ in range(6)]
            assert statuses == [200] * 6
            assert cluster.failover.taken_out() == ["n0"]
            assert recorder.hosts.count("10.0.0.1:8000") == 1  # asked once, then left alone
            assert cluster.failover.breaker("n0").metrics()["failures"] == 0
            busy.clear()
            clock.advance(7.01)
            for _ in range(3):
                await client.get("http://chat/")
            assert cluster.failover.taken_out() == []
            assert recorder.hosts.count("10.0.0.1:8000") == 2
    told_once(cluster, events, "busy", Kind.NODE_BUSY, "node_pauses")


@pytest.mark.asyncio
async def test_retry_after_is_capped() -> None:
    clock = ManualClock()
    recorder = Recorder(lambda r: httpx.Response(503, headers={"Retry-After": "86400"}))
    async with cluster_of(clock=clock) as cluster:
        transport = lc.AsyncClusterTransport(
            cluster, transport=recorder.transport(), max_retry_after_s=2
        )
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get("http://chat/")).status_code == 503
        assert len(cluster.failover.taken_out()) == 3
        clock.advance(2.01)
        cluster.failover._revive_due()
        assert cluster.failover.taken_out() == []


def test_retry_after_reads_seconds_and_dates_and_refuses_garbage() -> None:
    assert retry_after_s("12") == 12.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    for garbage in (None, "", "-3", "soon", "1.5e9999", "Wed, 99 Foo"):
        assert retry_after_s(garbage) is None


@pytest.mark.asyncio
async def test_a_dead_node_is_failed_over() -> None:
    fleet = await servers(3, latency_s=0.0)
    await fleet[0].kill()
    nodes = [s.node() for s in fleet]
    cluster = lc.Cluster(service="chat", nodes=nodes, balancer="round_robin")
    async with cluster, httpx.AsyncClient(transport=lc.AsyncClusterTransport(cluster)) as client:
        for _ in range(6):
            response = await client.post("http://chat/v1/completions", json={"prompt": "x"})
            assert response.headers["x-served-by"] in ("s1", "s2")
    for server in fleet:
        await server.kill()


@pytest.mark.asyncio
async def test_a_stream_passes_through_unbuffered_and_a_break_counts_against_its_node() -> None:
    (server,) = await servers(1, latency_s=0.0)
    server.gate = asyncio.Event()  # the server holds the stream after its first event
    events: list[lc.ClusterEvent] = []
    async with lc.Cluster(service="chat", nodes=[server.node()], balancer="round_robin") as cluster:
        cluster.subscribe(events.append)
        transport = lc.AsyncClusterTransport(cluster)
        async with httpx.AsyncClient(transport=transport) as client:
            body = {**chat("hello there"), "stream": True}
            async with client.stream("POST", f"http://chat{CHAT}", json=body) as response:
                lines = response.aiter_lines()
                first = await anext(lines)
                assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["content"]
                assert cluster.balancer.stats()["s0"]["in_flight"] == 1  # held while it streams
                await server.kill()
                with pytest.raises(httpx.TransportError):
                    async for _ in lines:
                        pass
            server.gate.set()
            assert cluster.balancer.stats()["s0"]["in_flight"] == 0
    told_once(cluster, events, "late_failures", Kind.LATE_FAILURE, "late_failures")


@pytest.mark.asyncio
async def test_a_whole_stream_ends_with_done_and_frees_the_node() -> None:
    (server,) = await servers(1, latency_s=0.0)
    async with lc.Cluster(service="chat", nodes=[server.node()], balancer="round_robin") as cluster:
        async with httpx.AsyncClient(transport=lc.AsyncClusterTransport(cluster)) as client:
            body = {**chat("hi"), "stream": True}
            async with client.stream("POST", f"http://chat{CHAT}", json=body) as response:
                lines = [line async for line in response.aiter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        assert cluster.balancer.stats()["s0"]["in_flight"] == 0
        assert cluster.failover.stats()["late_failures"] == 0
    await server.kill()


@pytest.mark.asyncio
async def test_a_stream_reports_its_time_to_first_token_to_a_prefix_aware_balancer() -> None:
    (server,) = await servers(1, latency_s=0.05)
    async with lc.Cluster(
        service="chat", nodes=[server.node()], balancer="prefix_aware"
    ) as cluster:
        async with httpx.AsyncClient(transport=lc.AsyncClusterTransport(cluster)) as client:
            await client.post(f"http://chat{CHAT}", json=chat("whole"))
            assert cluster.balancer.stats()["s0"]["ttft_s"] is None, "a JSON answer has none"
            body = {**chat("hi"), "stream": True}
            async with client.stream("POST", f"http://chat{CHAT}", json=body) as response:
                async for _ in response.aiter_lines():
                    pass
        ttft = cluster.balancer.stats()["s0"]["ttft_s"]
        assert ttft is not None
        assert 0.025 <= ttft < 30, "the server holds the first token at least 25 ms"
    await server.kill()


# ------------------------------------------------------------------ keys


async def route(cluster: lc.Cluster, bodies: list[Any], **options: Any) -> list[str]:
    recorder = Recorder()
    transport = lc.AsyncClusterTransport(cluster, transport=recorder.transport(), **options)
    async with httpx.AsyncClient(transport=transport) as client:
        for body in bodies:
            path, data, extra = body if isinstance(body, tuple) else (CHAT, body, None)
            await client.post(f"http://chat{path}", json=data, headers=extra)
    return recorder.hosts


@pytest.mark.asyncio
async def test_auto_keys_send_a_shared_prefix_to_one_prefix_aware_node() -> None:
    system = "You answer questions about tax law, briefly and with care. " * 8
    async with cluster_of("prefix_aware", seed=1) as cluster:
        hosts = await route(cluster, [chat(system, f"question {i}") for i in range(8)])
    assert len(set(hosts[1:])) == 1


@pytest.mark.asyncio
async def test_auto_keys_hash_the_conversation_before_its_newest_message() -> None:
    async with cluster_of("consistent_hash") as cluster:
        first = await route(cluster, [chat("sys", "hello", "hi!", f"more {i}") for i in range(6)])
        other = await route(cluster, [chat("sys", f"q{i}") for i in range(12)])
        plain = await route(cluster, [("/v1/embeddings", {"input": "x"}, None)] * 4)
        models = await route(cluster, [("/v1/models", {}, None)] * 6)
    assert len(set(first)) == 1
    assert len(set(other)) == 1  # the head of each is the system prompt alone
    assert len(set(plain)) == 1
    assert len(set(models)) > 1  # no key: spread


@pytest.mark.asyncio
async def test_a_session_header_pins_a_session() -> None:
    async with cluster_of("consistent_hash") as cluster:
        pinned = [(CHAT, chat(f"topic {i}", "q"), {"x-session-id": "abc"}) for i in range(8)]
        assert len(set(await route(cluster, pinned))) == 1
    async with cluster_of("prefix_aware", seed=1) as cluster:
        pinned = [(CHAT, chat(f"topic {i}", "q"), {"x-session-id": "abc"}) for i in range(8)]
        assert len(set(await route(cluster, pinned))) == 1


@pytest.mark.asyncio
async def test_a_key_function_decides_and_none_sends_no_key() -> None:
    seen: list[str] = []

    def key(request: httpx.Request) -> str:
        seen.append(request.url.path)
        return "fixed"

    async with cluster_of("consistent_hash") as cluster:
        hosts = await route(cluster, [chat(f"s{i}", "q") for i in range(6)], key=key)
        spread = await route(cluster, [chat("same", "q")] * 6, key=None)
    assert len(set(hosts)) == 1
    assert seen == [CHAT] * 6
    assert len(set(spread)) > 1


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[" * 100_000, b'{"messages": 3}', b'{"messages": []}', b"\xff\xfe",
     b'{"messages": [1, null, {"role": 5, "content": [{"type": "image_url"}]}]}',
     json.dumps({"prompt": [[[[["deep"]]]]]}).encode()],
)  # fmt: skip
def test_read_prompt_takes_any_bytes(body: bytes) -> None:
    for path in (CHAT, "/v1/completions", "/v1/embeddings", "/v1/models"):
        found = read_prompt(path, body)
        assert found is None or isinstance(found.whole, str)


def test_read_prompt_renders_role_and_content_in_order() -> None:
    found = read_prompt(CHAT, json.dumps(chat("be brief", "hello")).encode())
    assert found is not None
    assert found.whole == "<|system|>\nbe brief\n<|user|>\nhello\n"
    assert found.head == "<|system|>\nbe brief\n"
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, "b"]}]}
    assert read_prompt(CHAT, json.dumps(parts).encode()).whole == "<|user|>\nab\n"  # type: ignore[union-attr]


# --------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"key": "prompt"}, "key"),
        ({"retry_statuses": 503}, "retry_statuses"),
        ({"retry_statuses": [200, 700]}, "retry_statuses"),
        ({"retry_statuses": [True]}, "retry_statuses"),
        ({"transport": httpx.HTTPTransport()}, "transport"),
        ({"session_header": ""}, "session_header"),
        ({"session_header": 3}, "session_header"),
        ({"max_retry_after_s": -1}, "max_retry_after_s"),
        ({"max_retry_after_s": float("nan")}, "max_retry_after_s"),
        ({"max_retry_after_s": 10_000}, "max_retry_after_s"),
    ],
)
@pytest.mark.asyncio
async def test_bad_settings_are_refused_by_name(options: dict[str, Any], named: str) -> None:
    cluster = cluster_of()
    with pytest.raises((TypeError, ValueError), match=f"^{named}:"):
        lc.AsyncClusterTransport(cluster, **options)
    with pytest.raises(TypeError, match=r"^cluster:"):
        lc.AsyncClusterTransport(cluster.balancer)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^transport:"):
        lc.ClusterTransport(cluster, transport=httpx.AsyncHTTPTransport())  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_cluster_not_started_says_so() -> None:
    transport = lc.AsyncClusterTransport(cluster_of(), transport=Recorder().transport())
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(lc.ClusterNotRunning):
            await client.get("http://chat/")


# ------------------------------------------------------------------- sync


def test_the_blocking_transport_routes_fails_over_and_streams() -> None:
    with ServersInThread(3, latency_s=0.0) as fleet:
        fleet.run(fleet.servers[0].kill())
        nodes = [s.node() for s in fleet.servers]
        with lc.Cluster(service="chat", nodes=nodes, balancer="round_robin") as cluster:
            with httpx.Client(transport=lc.ClusterTransport(cluster)) as client:
                served = {
                    client.post(f"http://chat{CHAT}", json=chat("hi")).headers["x-served-by"]
                    for _ in range(6)
                }
                body = {**chat("hi"), "stream": True}
                with client.stream("POST", f"http://chat{CHAT}", json=body) as response:
                    lines = [line for line in response.iter_lines() if line]
            assert served == {"s1", "s2"}
            assert lines[-1] == "data: [DONE]"
            assert all(s["in_flight"] == 0 for s in cluster.balancer.stats().values())


@pytest.mark.asyncio
async def test_the_urls_made_for_nodes_are_bounded() -> None:
    recorder = Recorder()
    async with cluster_of() as cluster:
        transport = lc.AsyncClusterTransport(cluster, transport=recorder.transport())
        async with httpx.AsyncClient(transport=transport) as client:
            for i in range(1100):
                await client.get(f"http://chat/v1/item/{i}")
        assert len(transport._router._urls) <= 1024
    assert recorder.seen[-1].url.path == "/v1/item/1099"


def test_the_overhead_benchmark_runs() -> None:
    script = Path(__file__).resolve().parents[2] / "benches" / "transport_overhead.py"
    done = subprocess.run(
        [sys.executable, str(script), "--rounds", "1", "--requests", "10", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    clients = ("own", "hand-rolled", "round_robin", "prefix_aware")
    libs = ("httpx", "httpx2")  # the OpenAI SDK's, installed with the test extras
    expected = {f"{face} {lib} {c}" for face in ("async", "sync") for lib in libs for c in clients}
    assert set(rows) == expected
    assert all(row["us_per_request"] > 0 for row in rows.values())


@pytest.mark.asyncio
async def test_a_session_header_must_be_a_header_name() -> None:
    with pytest.raises(ValueError, match=r"^session_header: 'x session'"):
        lc.AsyncClusterTransport(cluster_of(), session_header="x session")


@pytest.mark.asyncio
async def test_a_hedged_request_answers_from_the_faster_node_and_frees_both() -> None:
    slow, fast = await servers(2, latency_s=0.0)
    slow.latency_s = 30.0  # answers only if waited for: the hedge must not wait
    cluster = lc.Cluster(
        service="chat", nodes=[slow.node(), fast.node()], balancer="round_robin",
        failover=lc.FailoverConfig(hedge_after_s=0.01),
    )  # fmt: skip
    async with cluster, httpx.AsyncClient(transport=lc.AsyncClusterTransport(cluster)) as client:
        served = [
            (await client.post(f"http://chat{CHAT}", json=chat("hi"))).headers["x-served-by"]
            for _ in range(4)
        ]
        assert served == ["s1"] * 4
        assert cluster.failover.stats()["hedges"] >= 2  # at least each time the slow one came first
        assert all(s["in_flight"] == 0 for s in cluster.balancer.stats().values())
    for server in (slow, fast):
        await server.kill()


@pytest.mark.asyncio
async def test_an_answer_from_a_node_that_left_meanwhile_is_handed_over() -> None:
    async with cluster_of() as cluster:

        def answer(request: httpx.Request) -> httpx.Response:
            cluster.balancer.update(NODES[1:])  # discovery dropped n0 while it answered
            return httpx.Response(200, json={"ok": True})

        transport = lc.AsyncClusterTransport(cluster, transport=Recorder(answer).transport())
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://chat/")
        assert response.json() == {"ok": True}
        assert all(s["in_flight"] == 0 for s in cluster.balancer.stats().values())
        assert cluster.failover.stats()["retries"] == 0
