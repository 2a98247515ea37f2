"""ConsulDiscovery against the Consul HTTP API emulator in tests/, or against
a real agent when `consul` is on PATH or CONSUL_HTTP_ADDR is set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pytest

import langcluster as lc
from langcluster import DiscoveryError
from langcluster.discovery import ConsulDiscovery
from tests.support.servers import Agent

pytestmark = pytest.mark.services


def discovery(agent: Agent, **kwargs: object) -> ConsulDiscovery:
    kwargs.setdefault("wait_s", 5)
    return ConsulDiscovery("llm", host=agent.host, port=agent.port, **kwargs)  # type: ignore[arg-type]


async def next_ids(watch: AsyncIterator[list[lc.Node]], timeout: float = 5.0) -> list[str]:
    return sorted(n.id for n in await asyncio.wait_for(anext(watch), timeout))


@pytest.mark.asyncio
async def test_register_list_deregister_with_a_ttl_check(consul_agent: Agent) -> None:
    d = discovery(consul_agent)
    await d.register(lc.Node("gpu-1", "10.0.0.1", 8000, weight=3, metadata={"model": "m"}))
    (node,) = await d.nodes()
    assert (node.id, node.address, node.port, node.weight, node.metadata) == (
        "gpu-1", "10.0.0.1", 8000, 3, {"model": "m"},
    )  # fmt: skip
    await d.deregister("gpu-1")
    assert await d.nodes() == []
    await d.close()


@pytest.mark.asyncio
async def test_blocking_watch_sees_registrations_promptly(consul_agent: Agent) -> None:
    watcher, registrant = discovery(consul_agent), discovery(consul_agent)
    watch = watcher.watch()
    assert await next_ids(watch) == []
    delays = []
    for i in range(5):
        started = time.perf_counter()
        await registrant.register(lc.Node(f"n{i}", "10.0.0.1", 8000 + i))
        while f"n{i}" not in await next_ids(watch):
            pass
        delays.append(time.perf_counter() - started)
    # The 200 ms figure is measured by benches/python/propagation_report.py;
    # here only what a loaded CI machine cannot break: no poll interval.
    assert sorted(delays)[2] < 0.2, delays
    assert max(delays) < 1.0, delays
    if consul_agent.emulator is not None:
        # Blocking queries, not polling: a handful of requests per change.
        assert consul_agent.emulator.requests < 80
    await registrant.close()
    await watch.aclose()
    await watcher.close()


@pytest.mark.asyncio
async def test_a_dead_registrant_turns_critical_then_is_deregistered(consul_agent: Agent) -> None:
    registrant = discovery(consul_agent, ttl_s=1, deregister_critical_after_s=1)
    await registrant.register(lc.Node("doomed", "10.0.0.9", 9000))
    watcher = discovery(consul_agent)
    watch = watcher.watch()
    assert await next_ids(watch) == ["doomed"]
    await asyncio.sleep(1.5)  # past one TTL: the keeper keeps it passing
    assert [n.id for n in await watcher.nodes()] == ["doomed"]
    await registrant._stop_keeper("doomed")  # the process "dies": no more TTL updates
    assert await next_ids(watch, timeout=5) == []  # critical: filtered by ?passing
    if consul_agent.emulator is not None:
        for _ in range(100):
            if "doomed" not in consul_agent.emulator.services:
                break
            await asyncio.sleep(0.05)
        assert "doomed" not in consul_agent.emulator.services  # reaped
    await watch.aclose()
    await watcher.close()


class _Health(BaseHTTPRequestHandler):
    healthy = True

    def do_GET(self) -> None:
        self.send_response(200 if type(self).healthy else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.asyncio
async def test_an_http_check_with_success_before_passing(consul_agent: Agent) -> None:
    if consul_agent.emulator is None:
        pytest.skip("timing of agent-run checks is the emulator's (a real agent runs them too)")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    d = discovery(consul_agent, check_kind="http", check_interval_s=0.1, check_timeout_s=0.05)
    # The client's check definition, with Consul's anti-flapping thresholds.
    original = d._check_definition
    d._check_definition = lambda node, ttl: {  # type: ignore[method-assign]
        **original(node, ttl),
        "SuccessBeforePassing": 3,
        "FailuresBeforeCritical": 2,
    }
    watch = d.watch()
    assert await next_ids(watch) == []
    started = time.perf_counter()
    await d.register(lc.Node("web", "127.0.0.1", port))
    assert await next_ids(watch) == ["web"]
    assert time.perf_counter() - started >= 0.2  # three passing results first
    _Health.healthy = False
    assert await next_ids(watch) == []
    _Health.healthy = True
    await watch.aclose()
    await d.close()
    server.shutdown()
    server.server_close()


@pytest.mark.asyncio
async def test_a_backwards_index_restarts_the_watch(consul_agent: Agent) -> None:
    if consul_agent.emulator is None:
        pytest.skip("a real agent's index cannot be moved back from a test")
    emulator = consul_agent.emulator
    # A query blocked on the old, higher index only returns at its wait.
    d = discovery(consul_agent, wait_s=0.5)
    watch = d.watch()
    assert await next_ids(watch) == []
    other = discovery(consul_agent)
    await other.register(lc.Node("a", "10.0.0.1", 1))
    assert await next_ids(watch) == ["a"]
    with emulator.changed:
        emulator.index = 1  # as after an agent restart
        emulator.changed.notify_all()
    await other.register(lc.Node("b", "10.0.0.2", 2))
    ids = await next_ids(watch)
    while ids != ["a", "b"]:
        ids = await next_ids(watch)
    await watch.aclose()
    await other.close()
    await d.close()


@pytest.mark.asyncio
async def test_consul_errors_keep_the_last_snapshot_and_are_reported(
    consul_agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    if consul_agent.emulator is None:
        pytest.skip("stopping the agent is the emulator's part")
    errors: list[Exception] = []
    d = discovery(consul_agent, on_error=errors.append, wait_s=0.2)
    await d.register(lc.Node("a", "10.0.0.1", 1))
    watch = d.watch()
    assert await next_ids(watch) == ["a"]
    pending = asyncio.ensure_future(anext(watch))
    with caplog.at_level(logging.WARNING, logger="langcluster.discovery.consul"):
        consul_agent.emulator.stop()
        for _ in range(100):
            if errors:
                break
            await asyncio.sleep(0.05)
    assert errors
    assert not pending.done()  # no empty snapshot: the last one stands
    assert "consul watch of llm failed" in caplog.text
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending
    await watch.aclose()
    d._registered.clear()
    await d.close()


@pytest.mark.asyncio
async def test_malformed_instances_are_skipped(
    consul_agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    d = discovery(consul_agent)
    d.client.agent.service.register("llm", service_id="bad", address="10.0.0.1", port=70000)
    await d.register(lc.Node("good", "10.0.0.2", 2))
    with caplog.at_level(logging.WARNING, logger="langcluster.discovery.consul"):
        ids = sorted(n.id for n in await d.nodes())
    # "bad" has no check, so it is passing; its port is out of range.
    assert ids == ["good"]
    assert "skipping malformed instance" in caplog.text
    d.client.agent.service.deregister("bad")
    await d.close()


def test_unreachable_consul_and_bad_arguments() -> None:
    d = ConsulDiscovery("llm", port=9)  # nothing listens on the discard port
    with pytest.raises(DiscoveryError, match="consul"):
        asyncio.run(d.nodes())
    with pytest.raises(ValueError, match=r"^check_kind"):
        ConsulDiscovery("llm", check_kind="grpc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl_s"):
        ConsulDiscovery("llm", ttl_s=0)
