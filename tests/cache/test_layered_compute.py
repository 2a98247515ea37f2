"""LayeredCache.get_or_set: single flight in a process and across
processes (the Redis lock), negative caching, XFetch early refresh, and the
arguments' checks. Against a real redis-server."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

pytestmark = pytest.mark.services


def test_get_or_set_single_flight_across_threads_and_instances(make: Any) -> None:
    calls: list[int] = []
    started = threading.Barrier(8)

    def slow() -> str:
        calls.append(1)
        time.sleep(0.2)
        return "computed"

    caches = [make(namespace="gs", lock_ttl_s=2.0) for _ in range(4)]  # four "processes"
    results: list[str] = []

    def worker(n: int) -> None:
        started.wait()
        results.append(caches[n % 4].get_or_set("cold", slow, ttl=30, lock=True))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["computed"] * 8
    assert len(calls) == 1  # once in the whole "cluster"
    assert sum(c.stats()["lock_waits"] for c in caches) >= 1


def test_get_or_set_negative_caching(make: Any) -> None:
    cache = make()
    calls: list[int] = []

    def absent() -> None:
        calls.append(1)

    assert cache.get_or_set("nothing", absent) is None
    assert cache.get_or_set("nothing", absent) is None
    assert len(calls) == 2  # None is not cached by default
    assert cache.get_or_set("n2", absent, negative_ttl=0.2) is None
    assert cache.get_or_set("n2", absent, negative_ttl=0.2) is None
    assert len(calls) == 3
    time.sleep(0.25)
    cache.get_or_set("n2", absent, negative_ttl=0.2)
    assert len(calls) == 4


def test_get_or_set_early_refresh_recomputes_before_expiry(make: Any) -> None:
    cache = make()
    calls: list[float] = []

    def factory() -> int:
        calls.append(time.monotonic())
        time.sleep(0.02)
        return len(calls)

    first = cache.get_or_set("x", factory, ttl=0.3, early_refresh=8.0)
    assert first == 1
    deadline = time.monotonic() + 0.28
    values = set()
    while time.monotonic() < deadline:
        values.add(cache.get_or_set("x", factory, ttl=0.3, early_refresh=8.0))
        time.sleep(0.005)
    assert len(calls) >= 2  # refreshed while the old value was still valid
    assert calls[1] - calls[0] < 0.3
    assert cache.stats()["early_refreshes"] >= 1
    assert None not in values
    # beta 0 (the default) never refreshes early
    plain = make(namespace="plain")
    plain.get_or_set("y", factory, ttl=0.3)
    n = len(calls)
    for _ in range(20):
        plain.get_or_set("y", factory, ttl=0.3)
    assert len(calls) == n


def test_bad_get_or_set_arguments_are_named(make: Any) -> None:
    cache = make()
    with pytest.raises(TypeError, match="factory"):
        cache.get_or_set("k", 42)
    with pytest.raises(ValueError, match="early_refresh"):
        cache.get_or_set("k", lambda: 1, early_refresh=-1)
    with pytest.raises(ValueError, match="negative_ttl"):
        cache.get_or_set("k", lambda: 1, negative_ttl=0)
    with pytest.raises(TypeError, match="key"):
        cache.get(1.5)
