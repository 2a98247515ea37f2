"""MemoryCache bounded by weight (a weigher) and entries that expire when
idle (time-to-idle), driven by an injected clock."""

from __future__ import annotations

import pytest

from langcluster import MemoryCache
from tests.support.helpers import ManualClock

POLICIES = ["tinylfu", "lru", "lfu", "fifo"]


def by_length(key: object, value: object) -> int:
    assert isinstance(value, str | bytes)
    return len(value)


@pytest.mark.parametrize("policy", POLICIES)
def test_capacity_is_a_total_weight(policy: str) -> None:
    cache = MemoryCache(1_000, policy=policy, weigher=by_length)
    assert cache.weigher is by_length
    assert (cache.shards, cache.max_weight) == (1, 1_000)
    for i in range(50):
        cache[f"k{i}"] = "x" * 100
        stats = cache.stats()
        assert stats["weighted_size"] <= 1_000
    stats = cache.stats()
    assert stats["weighted_size"] == 100 * stats["size"]
    assert stats["size"] <= 10
    assert stats["evictions"] == 50 - stats["size"]


@pytest.mark.parametrize("policy", POLICIES)
def test_an_entry_heavier_than_the_capacity_is_refused_and_counted(policy: str) -> None:
    evicted: list[tuple[object, str]] = []
    cache = MemoryCache(
        1_000, policy=policy, weigher=by_length, on_evict=lambda k, v, why: evicted.append((k, why))
    )
    cache["small"] = "s" * 10
    cache["huge"] = "h" * 1_001
    assert "huge" not in cache
    assert cache["small"] == "s" * 10
    stats = cache.stats()
    assert (stats["rejections"], stats["weighted_size"]) == (1, 10)
    # Rewritten too heavy, the old value is evicted rather than left stale.
    cache["small"] = "s" * 2_000
    assert "small" not in cache
    assert evicted == [("small", "size")]
    assert cache.stats()["rejections"] == 2


def test_a_rewrite_reweighs_the_entry() -> None:
    cache = MemoryCache(1_000, policy="lru", weigher=by_length)
    cache["a"] = "x" * 100
    cache["b"] = "x" * 100
    cache.set("a", "x" * 700)
    assert cache.stats()["weighted_size"] == 800
    cache.set("a", "x")
    assert cache.stats()["weighted_size"] == 101
    # Growing past the capacity evicts others, never the entry written.
    cache.set("b", "x" * 990)
    assert cache.get("b") == "x" * 990
    assert cache.stats()["weighted_size"] <= 1_000


def test_zero_weight_entries_take_no_capacity() -> None:
    cache = MemoryCache(10, weigher=lambda k, v: 0)
    for i in range(100):
        cache[i] = i
    assert (len(cache), cache.stats()["weighted_size"]) == (100, 0)


def test_a_sharded_weighted_cache_bounds_entries_by_the_shard_share() -> None:
    cache = MemoryCache(1_000, weigher=by_length, shards=4)
    assert cache.max_weight == 250
    cache["fits"] = "x" * 250
    assert "fits" in cache


def test_the_weigher_runs_outside_the_lock_and_its_errors_store_nothing() -> None:
    cache = MemoryCache(100, weigher=by_length)

    def reentrant(key: object, value: object) -> int:
        # Reading the cache from the weigher would deadlock under a shard lock.
        cache_b.get("other")
        return 1

    cache_b = MemoryCache(100, weigher=reentrant)
    cache_b["k"] = "v"
    assert cache_b["k"] == "v"

    class Boom(Exception):
        pass

    def raising(key: object, value: object) -> int:
        raise Boom("no weight")

    failing = MemoryCache(100, weigher=raising)
    with pytest.raises(Boom):
        failing["k"] = "v"
    with pytest.raises(Boom):
        failing.set_many({"a": "1", "b": "2"})
    assert len(failing) == 0
    # A value the weigher cannot measure: its own TypeError, nothing stored.
    with pytest.raises(AssertionError):
        cache.set("n", 5)
    assert "n" not in cache


@pytest.mark.parametrize(
    ("returned", "error"),
    [(-1, ValueError), (2**32, ValueError), (1.5, TypeError), ("3", TypeError), (True, TypeError)],
)
def test_a_bad_weight_is_refused_naming_the_weigher(returned: object, error: type) -> None:
    cache = MemoryCache(100, weigher=lambda k, v: returned)
    with pytest.raises(error, match="weigher"):
        cache["k"] = "v"
    assert len(cache) == 0


def test_set_many_weighs_every_value_before_storing_any() -> None:
    seen: list[object] = []

    def weigh(key: object, value: object) -> int:
        seen.append(key)
        if value == "bad":
            return -1
        return 1

    cache = MemoryCache(100, weigher=weigh)
    with pytest.raises(ValueError, match="weigher"):
        cache.set_many([("a", "ok"), ("b", "bad")])
    assert seen == ["a", "b"]
    assert len(cache) == 0


def test_bad_weigher_and_tti_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="weigher"):
        MemoryCache(10, weigher=5)  # type: ignore[arg-type]
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="tti"):
            MemoryCache(10, tti=bad)
        with pytest.raises(ValueError, match="tti"):
            MemoryCache(10).set("k", 1, tti=bad)
    with pytest.raises(TypeError, match="tti"):
        MemoryCache(10, tti="5")  # type: ignore[arg-type]


def test_a_cached_function_weighs_its_results() -> None:
    from langcluster import cached

    cache = MemoryCache(100, weigher=lambda key, value: len(value))

    @cached(cache)
    def answer(n: int) -> str:
        return "x" * n

    assert answer(60) == "x" * 60
    assert answer(30) == "x" * 30
    assert answer(200) == "x" * 200  # returned, too heavy to keep
    stats = cache.stats()
    assert (stats["weighted_size"], stats["rejections"]) == (90, 1)


@pytest.mark.parametrize("policy", POLICIES)
def test_idle_entries_expire_and_reads_keep_them(policy: str) -> None:
    clock = ManualClock()
    cache = MemoryCache(100, policy=policy, tti=10, clock=clock)
    assert cache.tti == 10
    cache["read"] = 1
    cache["idle"] = 2
    for _ in range(5):
        clock.advance(6)
        assert cache.get("read") == 1
    assert "idle" not in cache
    assert sorted(cache.keys()) == ["read"]
    clock.advance(10)
    assert cache.get("read") is None
    assert cache.stats()["expirations"] == 2


def test_ttl_and_tti_together_whichever_comes_first() -> None:
    clock = ManualClock()
    cache = MemoryCache(100, clock=clock)
    cache.set("capped", 1, ttl=15, tti=10)
    clock.advance(9)
    assert cache["capped"] == 1
    clock.advance(5.9)
    assert cache["capped"] == 1
    clock.advance(0.2)
    assert "capped" not in cache
    cache.set("idle", 2, ttl=100, tti=1)
    clock.advance(1.1)
    assert "idle" not in cache


def test_contains_and_peeks_do_not_count_as_use() -> None:
    clock = ManualClock()
    cache = MemoryCache(100, tti=10, clock=clock)
    cache["k"] = 1
    for _ in range(3):
        clock.advance(3)
        assert "k" in cache
    clock.advance(2)
    assert cache.get("k") is None


def test_writes_count_as_use_and_purge_frees_idle_entries() -> None:
    clock = ManualClock()
    cache = MemoryCache(100, tti=10, clock=clock)
    cache["kept"] = 1
    cache["gone"] = 2
    clock.advance(8)
    cache["kept"] = 3
    clock.advance(8)
    assert cache.purge_expired() == 1
    assert cache.keys() == ["kept"]
    clock.advance(3)
    assert cache.purge_expired() == 1
    assert len(cache) == 0


def test_set_many_applies_tti_and_a_per_entry_tti_overrides_the_default() -> None:
    clock = ManualClock()
    cache = MemoryCache(100, tti=100, clock=clock)
    cache.set_many({"a": 1, "b": 2}, tti=1)
    cache.set("c", 3, tti=1_000)
    cache["d"] = 4
    clock.advance(150)
    assert sorted(cache.keys()) == ["c"]
