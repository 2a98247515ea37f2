"""What a ``Cluster``'s lifecycle is made of.

- ``State``: new -> starting -> running -> closing -> closed. A failed
  start ends closed; nothing leaves closed.
- ``LoopThread``: the event loop of a sync cluster, in a thread of its own.
  It runs coroutines there for callers in other threads, and stops by
  cancelling every task left, closing async generators and the loop, and
  joining the thread.
- ``InFlight``: the calls under way, async and sync, so that ``close``
  can wait for them and cancel the async ones that outstay the drain.
- ``Parts`` and ``abandoned``: what a cluster dropped without ``close``
  must stop, held apart from the cluster so that a finalizer can reach it
  once the cluster is gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import functools
import threading
import time
import warnings
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from langcluster._counters import Counters

if TYPE_CHECKING:
    from langcluster.health import HealthMonitor

__all__ = ["InFlight", "LoopThread", "Parts", "State", "abandoned"]

T = TypeVar("T")


class LoopThread:
    """An event loop in a daemon thread named ``name``."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()
        ready.wait()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Runs ``coroutine`` on the loop and waits for its result (raises
        ``TimeoutError`` after ``timeout_s``, having cancelled it)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout_s} s") from None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancels what is left on the loop, stops it, closes it and joins
        the thread. Idempotent; safe from any thread but the loop's own."""
        if self.loop.is_closed():
            return
        if self.thread.is_alive() and self.loop.is_running():
            # A task that will not stop is left: the thread is a daemon.
            with contextlib.suppress(TimeoutError, RuntimeError):
                self.run(_cancel_the_rest(), timeout_s)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout_s)
        if not self.thread.is_alive():
            self.loop.close()


async def _cancel_the_rest() -> None:
    current = asyncio.current_task()
    rest = [task for task in asyncio.all_tasks() if task is not current]
    for task in rest:
        task.cancel()
    if rest:
        await asyncio.wait(rest, timeout=5.0)
    loop = asyncio.get_running_loop()
    await loop.shutdown_asyncgens()
    # The threads of the loop's default executor (close waits for the calls
    # in flight in one) end here, not seconds after close has returned.
    await loop.shutdown_default_executor()


class State(str, enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class InFlight:
    """The calls under way: for async calls a count and their tasks (a task
    may make nested calls, so it is counted), under a lock; for blocking
    calls an atomic count (``enter_sync``/``leave_sync``, no lock on the
    call path), which ``wait_idle`` polls."""

    POLL_S = 0.005  # how often wait_idle looks at the blocking calls' count

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._count = 0
        self._waiters = 0  # close() waiting: only then is there anyone to notify
        self._tasks: dict[asyncio.Task[Any], int] = {}
        self._sync = Counters("calls")
        self.enter_sync = functools.partial(self._sync.add, "calls", 1)
        self.leave_sync = functools.partial(self._sync.add, "calls", -1)

    def enter(self, task: asyncio.Task[Any] | None) -> None:
        """An async call of ``task`` begins (None: a coroutine run outside
        any task, counted as a blocking call)."""
        if task is None:
            self.enter_sync()
            return
        with self._lock:
            self._count += 1
            self._tasks[task] = self._tasks.get(task, 0) + 1

    def leave(self, task: asyncio.Task[Any] | None) -> None:
        if task is None:
            self.leave_sync()
            return
        with self._lock:
            self._count -= 1
            left = self._tasks.pop(task) - 1
            if left:
                self._tasks[task] = left
            if not self._count and self._waiters:
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Whether every call ended within ``timeout_s`` (blocking)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            self._waiters += 1
            try:
                while True:
                    left = deadline - time.monotonic()
                    if not self._sync.get("calls"):
                        return self._idle.wait_for(lambda: not self._count, max(0.0, left))
                    if left <= 0:
                        return False
                    self._idle.wait(min(left, self.POLL_S))
            finally:
                self._waiters -= 1

    def tasks(self) -> list[asyncio.Task[Any]]:
        with self._idle:
            return list(self._tasks)


class Parts:
    """What a running cluster has started, reachable without the cluster."""

    def __init__(self, health: HealthMonitor | None) -> None:
        self.health = health
        self.loop: asyncio.AbstractEventLoop | None = None
        self.runner: LoopThread | None = None
        self.follow: asyncio.Task[None] | None = None
        self.kv_follow: asyncio.Task[None] | None = None


def abandoned(service: str, parts: Parts) -> None:
    """A running cluster was collected (or the interpreter is exiting)
    without ``close``: warn, and stop its tasks and its thread."""
    warnings.warn(
        f"Cluster {service!r} was never closed: its tasks were stopped when it was "
        "collected; close it (close(), await aclose(), with or async with)",
        ResourceWarning,
        stacklevel=2,
    )
    if parts.runner is not None:
        parts.runner.stop()
        return
    loop = parts.loop
    if loop is None or loop.is_closed():
        return
    tasks = [parts.follow, parts.kv_follow]
    if parts.health is not None:
        tasks.append(parts.health._task)
    for task in tasks:
        if task is not None:
            loop.call_soon_threadsafe(task.cancel)
