"""Reference cycles through the Rust objects are collected: a breaker's
listener, a cached bound method, a cached value and a failover manager's
breakers all hold Python objects that may refer back to their owner."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from typing import Any

import langcluster as lc


def collected(make: Any) -> bool:
    """Whether the object ``make()`` returns, caught in a cycle, is freed by
    the garbage collector once dropped."""
    ref = weakref.ref(make())
    gc.collect()
    return ref() is None


class Owner:
    pass


def test_a_breaker_whose_listener_holds_its_owner_is_collected() -> None:
    def make() -> Owner:
        owner = Owner()
        owner.breaker = lc.CircuitBreaker("b")  # type: ignore[attr-defined]
        owner.breaker.on_state_change(lambda old, new: owner)  # type: ignore[attr-defined]
        return owner

    assert collected(make)


def test_a_cached_bound_method_kept_on_its_instance_is_collected() -> None:
    class Model:
        def __init__(self) -> None:
            self.embed = lc.cached(lc.MemoryCache(10), key_fn=lambda text: text)(self._embed)

        def _embed(self, text: str) -> int:
            return len(text)

    def make() -> Model:
        model = Model()
        assert model.embed("abc") == 3
        return model

    assert collected(make)


def test_a_cache_holding_a_value_that_refers_to_it_is_collected() -> None:
    def make() -> Owner:
        owner = Owner()
        owner.cache = lc.MemoryCache(10, on_evict=lambda *a: owner)  # type: ignore[attr-defined]
        owner.cache["me"] = owner  # type: ignore[attr-defined]
        return owner

    assert collected(make)


def test_a_failover_manager_with_breakers_is_collected() -> None:
    def make() -> lc.FailoverManager:
        manager = lc.FailoverManager(lc.RoundRobin([lc.Node("a", "h"), lc.Node("b", "h")]))
        assert manager.call_sync(lambda node: node.id) in ("a", "b")
        return manager

    assert collected(make)


MADE_UNDER_COLLECTION = """
import gc
import langcluster as lc

gc.set_threshold(1)  # a collection at nearly every allocation
cache = lc.MemoryCache(10, on_evict=lambda key, value, cause: None)
breaker = lc.CircuitBreaker()
for i in range(300):
    @lc.cached(cache)
    def f(x):
        return x

    @breaker
    def g():
        return 1

    assert f(i) == i and g() == 1
    lc.MemoryCache(4, on_evict=print)
    lc.RoundRobin([lc.Node(f"n{i}", "h")])
print("made")
"""


def test_objects_made_while_the_collector_runs_at_every_allocation() -> None:
    # The wrappers of ``cached`` and ``@breaker`` have an instance dict,
    # whose making may run a collection before the Rust contents exist; the
    # collector must then see nothing rather than a null reference (this
    # crashed CPython 3.11 before).
    done = subprocess.run(
        [sys.executable, "-c", MADE_UNDER_COLLECTION],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "made"
