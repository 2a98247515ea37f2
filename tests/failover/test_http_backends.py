"""Three local HTTP backends behind a FailoverManager: one is killed mid-run
and no call fails (max_attempts=2); restarted, it is back in rotation after
its breaker's trial."""

from __future__ import annotations

import asyncio

import pytest

import langcluster as lc
from langcluster import Backoff, BreakerConfig, FailoverManager
from tests.support.helpers import ManualClock


class Backend:
    """A minimal HTTP/1.0 server answering its own name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = self.name.encode()
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def kill(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()


async def get(node: lc.Node) -> str:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(node.address, node.port), timeout=1.0
    )
    try:
        writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout=1.0)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise ConnectionError(f"bad response from {node.id}")
    return body.decode()


@pytest.mark.asyncio
async def test_a_killed_backend_costs_no_failed_call_and_comes_back() -> None:
    backends = [Backend(f"b{i}") for i in range(3)]
    for b in backends:
        await b.start()
    nodes = [lc.Node(b.name, "127.0.0.1", b.port) for b in backends]
    clock = ManualClock()  # breakers and cool-downs move only when the test says
    fm = FailoverManager(
        lc.RoundRobin(nodes),
        max_attempts=2,
        backoff=Backoff(base_s=0.001, max_s=0.005),
        breaker=BreakerConfig(minimum_calls=2, window_size=10, open_timeout_s=0.3),
        clock=clock,
    )
    failures = 0
    answers: list[str] = []

    async def client(n: int) -> None:
        nonlocal failures
        for _ in range(n):
            try:
                answers.append(await fm.call(get))
            except Exception:
                failures += 1
            await asyncio.sleep(0.002)

    try:
        run = asyncio.gather(*(client(100) for _ in range(4)))
        while len(answers) < 40:  # traffic flows to all three
            await asyncio.sleep(0.001)
        await backends[1].kill()
        await run
        assert failures == 0
        assert "b1" in fm.taken_out()
        killed_answers = len(answers)

        await backends[1].start()  # same port
        clock.advance(60.0)  # past any open time: the next call to b1 is a trial
        await asyncio.gather(*(client(30) for _ in range(4)))
        assert failures == 0
        assert "b1" in answers[killed_answers:]
        assert fm.taken_out() == []
        assert fm.breaker("b1").state == "closed"
    finally:
        for b in backends:
            if b.server is not None and b.server.is_serving():
                await b.kill()
