"""Health checks and the health monitor.

A check is an object with ``async check(node)`` that returns normally when
the node is healthy and raises otherwise: ``TcpCheck``, ``HttpCheck``,
``CallableCheck`` and ``CompositeCheck``. ``HealthMonitor`` runs one check
for every node of a registry on one asyncio scheduler (not a task or thread
per node) and writes status changes to the registry, and so to the bound
balancers.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from langcluster._loops import call_in_loop, cancel_and_wait
from langcluster.node import Node, NodeStatus
from langcluster.registry import NodeEvent, NodeEventKind, NodeRegistry

__all__ = [
    "CallableCheck",
    "CompositeCheck",
    "HealthCheck",
    "HealthMonitor",
    "HttpCheck",
    "NodeHealth",
    "TcpCheck",
]

_log = logging.getLogger("langcluster.health")


class CheckFailed(Exception):
    """A check's verdict: the node is not healthy."""


@runtime_checkable
class HealthCheck(Protocol):
    async def check(self, node: Node) -> None: ...


def _positive(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name}: must be a positive number, got {value!r}")
    return float(value)


class TcpCheck:
    """Healthy when a TCP connection to ``address:port`` opens within
    ``timeout_s``."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = _positive("timeout_s", timeout_s)

    async def check(self, node: Node) -> None:
        if node.port is None:
            raise CheckFailed(f"{node.id}: no port to connect to")
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(node.address, node.port), self.timeout_s
        )
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    def __repr__(self) -> str:
        return f"TcpCheck(timeout_s={self.timeout_s})"


class HttpCheck:
    """Healthy when ``method`` on ``http://address:port{path}`` answers with a
    status in ``expect_status`` within ``timeout_s``. One pooled httpx
    client per event loop serves every node."""

    def __init__(
        self,
        path: str = "/health",
        *,
        expect_status: Iterable[int] = range(200, 400),
        timeout_s: float = 2.0,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        scheme: str = "http",
    ) -> None:
        if not path.startswith("/"):
            raise ValueError(f"path: must start with '/', got {path!r}")
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme: must be 'http' or 'https', got {scheme!r}")
        self.path = path
        self.expect_status = frozenset(expect_status)
        if not self.expect_status:
            raise ValueError("expect_status: must not be empty")
        self.timeout_s = _positive("timeout_s", timeout_s)
        self.method = method.upper()
        self.headers = dict(headers or {})
        self.scheme = scheme
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}

    def _client(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            for old in [lp for lp in self._clients if lp.is_closed()]:
                del self._clients[old]
            client = httpx.AsyncClient(
                timeout=self.timeout_s,
                headers=self.headers,
                limits=httpx.Limits(max_keepalive_connections=100, max_connections=1000),
            )
            self._clients[loop] = client
        return client

    async def check(self, node: Node) -> None:
        url = f"{self.scheme}://{node.url}{self.path}"
        response = await self._client().request(self.method, url)
        if response.status_code not in self.expect_status:
            raise CheckFailed(f"{url} answered {response.status_code}")

    async def aclose(self) -> None:
        """Closes the pooled client of the running loop."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def __repr__(self) -> str:
        return f"HttpCheck({self.path!r}, method={self.method!r}, timeout_s={self.timeout_s})"


class CallableCheck:
    """Wraps ``fn(node)``, sync or async: healthy unless it returns False or
    raises."""

    def __init__(self, fn: Callable[[Node], bool | Awaitable[bool | None] | None]) -> None:
        if not callable(fn):
            raise TypeError("fn: must be callable")
        self.fn = fn

    async def check(self, node: Node) -> None:
        result = self.fn(node)
        if inspect.isawaitable(result):
            result = await result
        if result is False:
            raise CheckFailed(f"{node.id}: check returned False")


class CompositeCheck:
    """Runs several checks at once: ``mode="all"`` needs every one to pass,
    ``"any"`` one, ``"quorum"`` more than half."""

    def __init__(self, checks: Iterable[HealthCheck], mode: str = "all") -> None:
        self.checks = list(checks)
        if not self.checks:
            raise ValueError("checks: must not be empty")
        for c in self.checks:
            if not isinstance(c, HealthCheck):
                raise TypeError(f"checks: {c!r} has no async check(node) method")
        if mode not in ("all", "any", "quorum"):
            raise ValueError(f"mode: must be 'all', 'any' or 'quorum', got {mode!r}")
        self.mode = mode

    async def aclose(self) -> None:
        """Closes the checks that hold connections (``HttpCheck``)."""
        for c in self.checks:
            close = getattr(c, "aclose", None)
            if close is not None:
                await close()

    async def check(self, node: Node) -> None:
        results = await asyncio.gather(
            *(c.check(node) for c in self.checks), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r
        failures = [r for r in results if isinstance(r, Exception)]
        passed = len(results) - len(failures)
        needed = {"all": len(results), "any": 1, "quorum": len(results) // 2 + 1}[self.mode]
        if passed < needed:
            raise CheckFailed(
                f"{node.id}: {passed} of {len(results)} checks passed ({self.mode}); "
                f"first failure: {failures[0]!r}"
            )


@dataclass
class NodeHealth:
    """What the monitor knows of one node."""

    status: NodeStatus = NodeStatus.UNKNOWN
    successes: int = 0  # in a row
    failures: int = 0  # in a row
    last_ok: bool | None = None
    last_error: str | None = None
    latency_s: float | None = None
    checked_at: float | None = None  # time.time()


class HealthMonitor:
    """Checks every node of ``registry`` every ``interval_s``.

    - One scheduler task for all nodes; a node's first check comes at a
      random point in ``[0, interval_s)`` and each later one
      ``interval_s`` after the last, up to ``jitter x interval_s`` early
      (never late), so checks spread out and a dead node is UNHEALTHY
      within ``fall x interval_s + timeout_s``.
    - ``rise`` passes in a row make a node HEALTHY, ``fall`` failures in a
      row UNHEALTHY; in between its status stays, so a flapping node does
      not flap the registry. A check slower than ``timeout_s`` fails.
    - ``status()`` gives each node's last result, latency and error.
    """

    def __init__(
        self,
        registry: NodeRegistry,
        check: HealthCheck,
        *,
        interval_s: float = 10.0,
        timeout_s: float = 2.0,
        rise: int = 2,
        fall: int = 3,
        jitter: float = 0.1,
        max_concurrency: int = 1000,
        seed: int | None = None,
    ) -> None:
        if not isinstance(registry, NodeRegistry):
            raise TypeError("registry: must be a NodeRegistry")
        if not isinstance(check, HealthCheck):
            raise TypeError(f"check: {check!r} has no async check(node) method")
        self.interval_s = _positive("interval_s", interval_s)
        self.timeout_s = _positive("timeout_s", timeout_s)
        if self.timeout_s >= self.interval_s:
            raise ValueError(
                f"timeout_s: must be shorter than interval_s ({timeout_s} >= {interval_s})"
            )
        for name, value in (("rise", rise), ("fall", fall), ("max_concurrency", max_concurrency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")
        if not (0 <= jitter < 1):
            raise ValueError(f"jitter: must be in [0, 1), got {jitter!r}")
        self.registry = registry
        self.check = check
        self.rise, self.fall, self.jitter = rise, fall, jitter
        self._rng = random.Random(seed)
        self._health: dict[str, NodeHealth] = {}
        self._queue: list[tuple[float, int, str]] = []  # (due, tiebreak, node id)
        self._counter = 0
        self._scheduled: set[str] = set()  # in the queue or being checked
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._slots = asyncio.Semaphore(max_concurrency)
        self.checks_run = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._unsubscribe = self.registry.subscribe(self._on_registry)
        now = time.monotonic()
        for node in self.registry.nodes():
            self._schedule(node.id, now + self._rng.uniform(0, self.interval_s))

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        task, self._task = self._task, None
        self._stopping = True
        self._wake.set()
        for pending in [task, *self._running]:
            await cancel_and_wait(pending)
        self._stopping = False

    async def __aenter__(self) -> HealthMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------- schedule

    def _schedule(self, node_id: str, due: float) -> None:
        if node_id in self._scheduled:
            return  # one check chain per node, however it was announced
        self._scheduled.add(node_id)
        self._counter += 1
        heapq.heappush(self._queue, (due, self._counter, node_id))
        self._wake.set()

    def _on_registry(self, event: NodeEvent) -> None:
        # Registry events may come from any thread; the schedule belongs to
        # the monitor's loop. Before start() nothing is scheduled: start()
        # schedules every node the registry has then.
        task = self._task
        if task is None:
            return
        if event.kind is NodeEventKind.ADDED:
            due = time.monotonic() + self._rng.uniform(0, self.interval_s)
            call_in_loop(task.get_loop(), self._schedule, event.node.id, due)
        elif event.kind is NodeEventKind.REMOVED:
            call_in_loop(task.get_loop(), self._health.pop, event.node.id, None)

    async def _run(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            while self._queue and self._queue[0][0] <= now:
                _, _, node_id = heapq.heappop(self._queue)
                node = self.registry.get(node_id)
                if node is None:
                    self._scheduled.discard(node_id)
                    continue  # deregistered: forget it
                task = asyncio.ensure_future(self._check(node))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            self._wake.clear()
            delay = self._queue[0][0] - now if self._queue else None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _check(self, node: Node) -> None:
        started = time.monotonic()
        error: BaseException | None = None
        async with self._slots:
            try:
                await asyncio.wait_for(self.check.check(node), self.timeout_s)
            except asyncio.CancelledError:
                raise
            except asyncio.TimeoutError:
                error = TimeoutError(f"no answer within {self.timeout_s} s")
            except Exception as exc:
                error = exc
        self.checks_run += 1
        latency = time.monotonic() - started
        self._record(node, error, latency)
        self._scheduled.discard(node.id)
        if self.registry.get(node.id) is not None:
            next_due = started + self.interval_s * (1 - self.jitter * self._rng.random())
            self._schedule(node.id, next_due)

    def _record(self, node: Node, error: BaseException | None, latency: float) -> None:
        health = self._health.setdefault(node.id, NodeHealth(status=node.status))
        health.checked_at = time.time()
        health.latency_s = latency
        health.last_ok = error is None
        health.last_error = None if error is None else f"{type(error).__name__}: {error}"
        if error is None:
            health.successes += 1
            health.failures = 0
            flip = health.successes >= self.rise and node.status is not NodeStatus.HEALTHY
            new = NodeStatus.HEALTHY
        else:
            health.failures += 1
            health.successes = 0
            flip = health.failures >= self.fall and node.status is not NodeStatus.UNHEALTHY
            new = NodeStatus.UNHEALTHY
        if node.status is NodeStatus.DRAINING:
            flip = False  # draining is an operator's decision, not the checker's
        if flip:
            try:
                self.registry.set_status(node.id, new)
            except KeyError:
                return  # deregistered while being checked
        current = self.registry.get(node.id)
        health.status = current.status if current is not None else new

    def status(self) -> dict[str, NodeHealth]:
        """A copy of every checked node's health."""
        return {k: NodeHealth(**vars(v)) for k, v in self._health.items()}
