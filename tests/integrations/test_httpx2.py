"""The transports under httpx2's clients (the OpenAI SDK 3.x builds its
default clients on httpx2): what is sent is httpx2's own, refusals are
httpx2 errors, a client of one library is never handed the other's
answers, and ``limits=`` of either library is taken."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import httpx
import pytest

import langcluster as lc
from langcluster.failover.retry import UNSENT
from tests.support.simulated import ServersInThread, servers

httpx2 = pytest.importorskip("httpx2")  # installed with the OpenAI SDK 3.x

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.asyncio
async def test_an_httpx2_client_gets_httpx2_answers_over_httpx2_pools() -> None:
    started = await servers(2, latency_s=0.0)
    nodes = [s.node() for s in started]
    async with lc.Cluster(service="t", nodes=nodes, balancer="round_robin") as cluster:
        transport = lc.AsyncClusterTransport(cluster, limits=httpx2.Limits(max_connections=3))
        assert isinstance(transport, httpx2.AsyncBaseTransport)
        assert isinstance(transport, httpx.AsyncBaseTransport)
        async with httpx2.AsyncClient(transport=transport, base_url="http://chat") as client:
            answers = [await client.post(CHAT, json=BODY) for _ in range(4)]
            streamed = await client.post(CHAT, json={**BODY, "stream": True})
            pools = transport._pools
            assert {type(p) for p in pools.pools.values()} == {httpx2.AsyncHTTPTransport}
            assert pools.limits["max_connections"] == 3
        assert all(isinstance(a, httpx2.Response) and a.status_code == 200 for a in answers)
        assert {a.json()["system_fingerprint"] for a in answers} == {s.node_id for s in started}
        assert b"data: [DONE]" in streamed.content
        assert transport.stats()["in_flight"] == 0
        await transport.aclose()
    for server in started:
        await server.kill()


@pytest.mark.asyncio
async def test_overloaded_is_an_error_of_either_library() -> None:
    (server,) = await servers(1, latency_s=0.0)
    server.gate = asyncio.Event()  # each stream is held after its first event
    async with lc.Cluster(service="t", nodes=[server.node()], balancer="round_robin") as cluster:
        transport = lc.AsyncClusterTransport(cluster, max_in_flight_per_node=1, max_queued=0)
        async with httpx2.AsyncClient(transport=transport, base_url="http://chat") as client:
            held = await client.send(
                client.build_request("POST", CHAT, json={**BODY, "stream": True}), stream=True
            )
            with pytest.raises(httpx2.TransportError) as refused:
                await client.post(CHAT, json=BODY)
            assert isinstance(refused.value, lc.Overloaded)
            assert isinstance(refused.value, httpx.TransportError)
            server.gate.set()
            await held.aread()
            await held.aclose()
        assert transport.stats()["refused_full"] == 1
        await transport.aclose()
    await server.kill()


def test_a_transport_given_serves_only_clients_of_its_library() -> None:
    with ServersInThread(1, latency_s=0.0) as fleet:
        nodes = [s.node() for s in fleet.servers]
        with lc.Cluster(service="t", nodes=nodes) as cluster:
            transport = lc.ClusterTransport(cluster, transport=httpx.HTTPTransport())
            client = httpx2.Client(transport=transport, base_url="http://chat")
            with pytest.raises(TypeError, match=r"^transport: a HTTPTransport cannot send"):
                client.post(CHAT, json=BODY)
            client.close()
            own = lc.ClusterTransport(cluster, transport=httpx2.HTTPTransport())
            with httpx2.Client(transport=own, base_url="http://chat") as client:
                assert client.post(CHAT, json=BODY).status_code == 200
            with pytest.raises(TypeError, match=r"^transport: must be an httpx\.BaseTransport"):
                lc.ClusterTransport(cluster, transport=object())  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"^limits: must be an httpx\.Limits"):
                lc.ClusterTransport(cluster, limits={"max_connections": 1})  # type: ignore[arg-type]


def test_a_connection_httpx2_could_not_make_is_a_free_retry() -> None:
    assert httpx2.ConnectError in UNSENT
    assert httpx2.ConnectTimeout in UNSENT


@pytest.mark.parametrize("lib", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_the_request_sent_names_the_node_and_keeps_every_other_header(lib: Any) -> None:
    from langcluster._http import with_host as _with_host

    request = lib.Request("POST", "http://chat/v1/x", headers={"X-Tag": "v", "accept": "a"})
    out = _with_host(request.headers, b"127.0.0.1:9000")
    assert out["host"] == "127.0.0.1:9000"
    assert (out["x-tag"], out["accept"]) == ("v", "a")
    assert request.headers["host"] == "chat", "the caller's request is left as it was"
    assert [k for k, _ in out.raw] == [k for k, _ in request.headers.raw]
    bare = lib.Headers({"a": "1"})
    assert _with_host(bare, b"h:1").raw == [(b"Host", b"h:1"), (b"a", b"1")]

    class Opaque(dict[str, str]):  # headers kept some other way: the library's copy
        def copy(self) -> Opaque:
            return Opaque(self)

    assert _with_host(Opaque(a="1"), b"h:1") == {"a": "1", "host": "h:1"}


@pytest.mark.parametrize("lib", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_a_header_read_directly_reads_as_the_library_reads_it(lib: Any) -> None:
    from langcluster._http import header

    raw = [("X-Session-Id", b"a"), ("x-session-id", b"b"), ("Content-Type", b"text/plain"),
           ("x-latin", "\xe9".encode("latin-1"))]  # fmt: skip
    headers = lib.Headers(raw)
    for name in ("x-session-id", "content-type", "x-latin", "absent"):
        assert header(headers, name) == headers.get(name), name
    assert header({"x-session-id": "kept some other way"}, "x-session-id") == "kept some other way"


def test_without_httpx2_the_transports_are_httpx_ones() -> None:
    # An SDK before 3.x, or none: httpx2 cannot be imported.
    script = """
import sys
sys.modules["httpx2"] = None
import httpx
import langcluster as lc
from langcluster._http import LIBRARIES
from langcluster.failover.retry import UNSENT
assert LIBRARIES == (httpx,)
assert lc.AsyncClusterTransport.__mro__[1] is httpx.AsyncBaseTransport
assert issubclass(lc.Overloaded, httpx.TransportError)
assert UNSENT == (ConnectionRefusedError, httpx.ConnectError, httpx.ConnectTimeout)
with lc.Cluster(service="t", nodes=[lc.Node("a", "127.0.0.1", 1)]) as cluster:
    with httpx.Client(transport=lc.ClusterTransport(cluster, max_queued=0)) as client:
        try:
            client.get("http://t/x")
        except lc.NoAvailableNode as error:  # its one node refused the connection
            if isinstance(error.__cause__, httpx.ConnectError):
                print("refused as an httpx error")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "refused as an httpx error"
