"""``HealthMonitor``: every node of a registry checked on one asyncio
scheduler (not a task or thread per node), status changes written to the
registry and so to the bound balancers; and ``HealthConfig``, its settings
held for later."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langcluster._aio import call_in_loop, cancel_and_wait
from langcluster._checks import count, fraction, seconds
from langcluster._settings import Settings, complete, keyword_parameters, typed_like
from langcluster.health.checks import HealthCheck
from langcluster.node import Node, NodeStatus
from langcluster.registry import NodeEvent, NodeEventKind, NodeRegistry

__all__ = ["HealthConfig", "HealthMonitor", "NodeHealth"]


@dataclass
class NodeHealth:
    """What the monitor knows of one node."""

    status: NodeStatus = NodeStatus.UNKNOWN
    successes: int = 0  # in a row
    failures: int = 0  # in a row
    last_ok: bool | None = None
    last_error: str | None = None
    latency_s: float | None = None
    at: float | None = None  # when last checked, time.time()


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
            raise TypeError(f"registry: must be a NodeRegistry, got {type(registry).__name__}")
        given = {k: v for k, v in locals().items() if k not in ("self", "registry")}
        self.config = config = HealthConfig(**given)
        self.registry = registry
        self.check: HealthCheck = config.check
        self.interval_s: float = config.interval_s
        self.timeout_s: float = config.timeout_s
        self.rise: int = config.rise
        self.fall: int = config.fall
        self.jitter: float = config.jitter
        self._rng = random.Random(seed)
        self._health: dict[str, NodeHealth] = {}
        self._queue: list[tuple[float, int, str]] = []  # (due, tiebreak, node id)
        self._counter = 0
        self._scheduled: set[str] = set()  # in the queue or being checked
        self._departed = 0  # nodes removed since the queue was last rebuilt
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self.checks_run = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self, *, spread: bool = True) -> None:
        """Starts checking (nothing happens when it runs already). The first
        checks are spread over an interval; ``spread=False`` makes them all
        at once (a process taking over the checks of others that stopped)."""
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._unsubscribe = self.registry.subscribe(self._on_registry)
        now = time.monotonic()
        for node in self.registry.nodes():
            self._schedule(node.id, now + (self._rng.uniform(0, self.interval_s) if spread else 0))

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        task, self._task = self._task, None
        self._stopping = True
        self._wake.set()
        for pending in [task, *self._running]:
            await cancel_and_wait(pending)
        # A check cancelled mid-way never rescheduled its node: the next
        # start schedules every node afresh.
        self._queue.clear()
        self._scheduled.clear()
        self._departed = 0
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
            call_in_loop(task.get_loop(), self._forget, event.node.id)

    def _forget(self, node_id: str) -> None:
        """A node left the registry: its health goes now, its place in the
        queue when it comes due, or sooner: once departed nodes are half the
        queue, the queue is rebuilt without them, so that churn (nodes that
        come and go every few seconds) cannot grow it."""
        self._health.pop(node_id, None)
        self._departed += 1
        if self._departed > 64 and self._departed * 2 > len(self._queue):
            live = [entry for entry in self._queue if self.registry.get(entry[2]) is not None]
            gone = {entry[2] for entry in self._queue} - {entry[2] for entry in live}
            heapq.heapify(live)
            self._queue = live
            self._scheduled -= gone
            self._departed = 0

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
        self._scheduled.discard(node.id)
        if self.registry.get(node.id) is None:
            self._health.pop(node.id, None)  # removed while being checked
            return
        self._record(node, error, latency)
        if self.registry.get(node.id) is not None:
            next_due = started + self.interval_s * (1 - self.jitter * self._rng.random())
            self._schedule(node.id, next_due)

    def _record(self, node: Node, error: BaseException | None, latency: float) -> None:
        health = self._health.setdefault(node.id, NodeHealth(status=node.status))
        health.at = time.time()
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
            except KeyError:  # deregistered while being checked (from another thread)
                self._health.pop(node.id, None)
                return
        current = self.registry.get(node.id)
        health.status = current.status if current is not None else new

    def status(self) -> dict[str, NodeHealth]:
        """A copy of every checked node's health."""
        return {k: NodeHealth(**vars(v)) for k, v in self._health.items()}


def _check(given: dict[str, Any]) -> dict[str, Any]:
    """The settings of a HealthMonitor, checked and completed."""
    values = complete("HealthMonitor", keyword_parameters(HealthMonitor, skip=1), given)
    check = values["check"]
    if not isinstance(check, HealthCheck):
        raise TypeError(f"check: {check!r} has no async check(node) method")
    interval = float(seconds("interval_s", values["interval_s"]))
    timeout = float(seconds("timeout_s", values["timeout_s"]))
    if timeout >= interval:
        raise ValueError(f"timeout_s: must be shorter than interval_s ({timeout} >= {interval})")
    for name in ("rise", "fall", "max_concurrency"):
        count(name, values[name])
    fraction("jitter", values["jitter"], below_one=True)
    seed = values["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed: must be an int or None, got {type(seed).__name__}")
    return {**values, "interval_s": interval, "timeout_s": timeout}


class HealthConfig(Settings, check=_check):
    """The settings of a ``HealthMonitor`` (its arguments after the
    registry, with its defaults), for ``Cluster``: checked when made."""

    @typed_like(HealthMonitor)
    def __init__(self, check: HealthCheck, **settings: Any) -> None:
        super().__init__(check=check, **settings)
