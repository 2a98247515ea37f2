"""Small helpers the test suites share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def redis_url(server: Any) -> str:
    """The URL of a test redis-server (database 0)."""
    return f"redis://{server.url}/0"


def name(namespace: str, key: str | bytes | int) -> bytes:
    """The Redis name under which a RedisCache of ``namespace`` keeps ``key``."""
    from langcluster.cache.keyspace import Keyspace

    return Keyspace(namespace).name(key)


def wait_until(condition: Callable[[], object], timeout_s: float = 5.0) -> bool:
    """Polls ``condition`` until it holds or ``timeout_s`` passes; whether it
    held. For outcomes that another process or thread brings about, where
    no clock of ours can be injected."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return bool(condition())


async def eventually(condition: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Awaits until ``condition()`` holds, letting the loop's other tasks
    run; fails after ``timeout_s``. For outcomes that background tasks on
    the loop bring about (a discovery follower, a health monitor, calls in
    flight), whose timers the test does not own."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.001)


class ManualClock:
    """A clock a test moves by hand: ``clock()`` is the time in seconds,
    ``clock.advance(s)`` moves it on."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def shared_stats(cluster: Any) -> dict[str, Any]:
    """``cluster.stats()["shared"]``: the counters of its SharedState."""
    out: dict[str, Any] = cluster.stats()["shared"]
    return out
