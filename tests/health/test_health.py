"""Health checks and the monitor, against real loopback TCP and HTTP
servers."""

from __future__ import annotations

import asyncio
import time

import pytest

import langcluster as lc
from langcluster import (
    CallableCheck,
    CompositeCheck,
    HealthMonitor,
    HttpCheck,
    NodeRegistry,
    NodeStatus,
    TcpCheck,
)
from tests.support.helpers import eventually


class Server:
    """A loopback server that answers HTTP with a settable status."""

    def __init__(self) -> None:
        self.status = 200
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % self.status
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def node_for(server: Server, name: str = "s") -> lc.Node:
    return lc.Node(name, "127.0.0.1", server.port)


@pytest.mark.asyncio
async def test_tcp_and_http_checks() -> None:
    server = Server()
    await server.start()
    node = node_for(server)
    await TcpCheck(timeout_s=1).check(node)
    http = HttpCheck("/health", timeout_s=1)
    await http.check(node)
    server.status = 503
    with pytest.raises(Exception, match="503"):
        await http.check(node)
    await http.aclose()
    await server.stop()
    with pytest.raises(ConnectionRefusedError):
        await TcpCheck(timeout_s=1).check(node)


@pytest.mark.asyncio
async def test_callable_and_composite_checks() -> None:
    node = lc.Node("x", "127.0.0.1", 1)
    ok = CallableCheck(lambda n: True)
    bad = CallableCheck(lambda n: False)

    async def async_ok(n: lc.Node) -> None:
        return None

    await CallableCheck(async_ok).check(node)
    with pytest.raises(Exception, match="returned False"):
        await bad.check(node)
    await CompositeCheck([ok, bad], require="any").check(node)
    await CompositeCheck([ok, ok, bad], require="quorum").check(node)
    with pytest.raises(Exception, match="1 of 2"):
        await CompositeCheck([ok, bad], require="all").check(node)
    with pytest.raises(ValueError, match=r"^require"):
        CompositeCheck([ok], require="most")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_the_monitor_detects_failure_and_recovery_within_its_bounds() -> None:
    # The bounds are in checks, not seconds (a busy host stretches seconds):
    # down after `fall` failed checks in a row, up after `rise` passing ones,
    # plus the one check that may have been under way at the change.
    server = Server()
    await server.start()
    registry = NodeRegistry([node_for(server)])
    balancer = lc.RoundRobin()
    registry.bind(balancer)
    # A timeout a busy host meets: a spurious failure would cost a check.
    interval, timeout, rise, fall = 0.3, 0.25, 2, 3
    monitor = HealthMonitor(
        registry,
        TcpCheck(timeout_s=timeout),
        interval_s=interval,
        timeout_s=timeout,
        rise=rise,
        fall=fall,
    )
    async with monitor:
        await wait_for_status(registry, "s", NodeStatus.HEALTHY, 10)
        await server.stop()
        before = monitor.checks_run
        await wait_for_status(registry, "s", NodeStatus.UNHEALTHY, 10)
        assert monitor.checks_run - before <= fall + 1
        assert monitor.status()["s"].failures >= fall
        assert not balancer.stats()["s"]["available"]
        await server.start()
        before = monitor.checks_run
        await wait_for_status(registry, "s", NodeStatus.HEALTHY, 10)
        assert monitor.checks_run - before <= rise + 1
        health = monitor.status()["s"]
        assert health.successes >= rise
        assert health.last_ok
        assert health.latency_s is not None
    await server.stop()


async def wait_for_status(
    registry: NodeRegistry, node_id: str, status: NodeStatus, limit_s: float
) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        node = registry.get(node_id)
        if node is not None and node.status is status:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{node_id} did not become {status} within {limit_s} s")


@pytest.mark.asyncio
async def test_hysteresis_keeps_a_flapping_node_steady() -> None:
    verdicts = iter([True, True] + [True, False] * 20)
    registry = NodeRegistry([lc.Node("f", "127.0.0.1", 1)])
    changes: list[str] = []
    registry.subscribe(lambda e: changes.append(e.node.status.value))
    monitor = HealthMonitor(
        registry,
        CallableCheck(lambda n: next(verdicts, True)),
        interval_s=0.01,
        timeout_s=0.005,
        rise=2,
        fall=2,
        jitter=0,
    )
    async with monitor:
        await asyncio.sleep(0.5)
    assert changes == ["healthy"]


@pytest.mark.asyncio
async def test_nodes_added_later_are_checked_and_removed_ones_forgotten() -> None:
    registry = NodeRegistry()
    seen: list[str] = []

    def record(n: lc.Node) -> bool:
        seen.append(n.id)
        return True

    async with HealthMonitor(registry, CallableCheck(record), interval_s=0.02, timeout_s=0.01):
        registry.register(lc.Node("late", "127.0.0.1", 1))
        await asyncio.sleep(0.1)
        assert "late" in seen
        registry.deregister("late")
        await asyncio.sleep(0.05)
        count = len(seen)
        await asyncio.sleep(0.1)
        assert len(seen) == count


def test_bad_monitor_configuration_is_named() -> None:
    registry = NodeRegistry()
    check = TcpCheck()
    with pytest.raises(ValueError, match="timeout_s"):
        HealthMonitor(registry, check, interval_s=1, timeout_s=1)
    with pytest.raises(ValueError, match="rise"):
        HealthMonitor(registry, check, rise=0)
    with pytest.raises(ValueError, match="jitter"):
        HealthMonitor(registry, check, jitter=1.5)
    with pytest.raises(TypeError, match="check"):
        HealthMonitor(registry, object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path"):
        HttpCheck("health")
    with pytest.raises(ValueError, match="timeout_s"):
        TcpCheck(timeout_s=0)


@pytest.mark.asyncio
async def test_a_monitor_stopped_mid_check_checks_every_node_when_started_again() -> None:
    registry = NodeRegistry([lc.Node("a", "127.0.0.1", 1)])
    checking, release = asyncio.Event(), asyncio.Event()

    async def slow(node: lc.Node) -> bool:
        checking.set()
        await release.wait()
        return True

    monitor = HealthMonitor(registry, CallableCheck(slow), interval_s=60, timeout_s=30)
    await monitor.start(spread=False)
    await checking.wait()
    await monitor.stop()  # the check in flight is cancelled
    checking.clear()
    release.set()
    await monitor.start(spread=False)
    await asyncio.wait_for(checking.wait(), 5)  # node a is checked again
    await eventually(lambda: monitor.checks_run == 1)
    await monitor.stop()
