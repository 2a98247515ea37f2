"""MemoryCache: the mapping API, TTL, statistics, eviction callbacks and the
errors that name their argument."""

from __future__ import annotations

import enum
import gc
import logging

import pytest

from langcluster import MemoryCache
from tests.support.helpers import ManualClock

POLICIES = ["tinylfu", "lru", "lfu", "fifo"]


@pytest.fixture(params=POLICIES)
def cache(request: pytest.FixtureRequest) -> MemoryCache:
    return MemoryCache(100, policy=request.param)


def test_values_are_kept_by_reference(cache: MemoryCache) -> None:
    value = {"answer": [42]}
    cache.set("k", value)
    assert cache.get("k") is value
    assert cache["k"] is value


def test_none_is_a_value_told_apart_from_a_miss_by_default(cache: MemoryCache) -> None:
    missing = object()
    cache.set("none", None)
    assert cache.get("none", missing) is None
    assert cache.get("absent", missing) is missing
    assert "none" in cache
    assert "absent" not in cache


def test_str_bytes_and_int_keys_are_distinct(cache: MemoryCache) -> None:
    cache["1"] = "str"
    cache[b"1"] = "bytes"
    cache[1] = "int"
    cache[2**80] = "big"
    cache[-(2**63)] = "min"
    assert [cache["1"], cache[b"1"], cache[1], cache[2**80], cache[-(2**63)]] == [
        "str",
        "bytes",
        "int",
        "big",
        "min",
    ]
    assert sorted(map(repr, cache.keys())) == sorted(map(repr, ["1", b"1", 1, 2**80, -(2**63)]))


def test_equal_keys_built_separately_find_the_same_entry(cache: MemoryCache) -> None:
    cache["user:" + str(7)] = 1
    assert cache["".join(["user:", "7"])] == 1
    cache[b"ab" + b"c"] = 2
    assert cache[bytes([97, 98, 99])] == 2
    cache[2**70 + 1] = 3
    assert cache[int("1180591620717411303425")] == 3
    cache["é" * 3] = 4
    assert cache["".join(["é"] * 3)] == 4


def test_subclass_keys_are_stored_as_their_base_type(cache: MemoryCache) -> None:
    class Color(str, enum.Enum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    cache[Color.RED] = "from enum"
    assert cache["red"] == "from enum"
    cache[Level.HIGH] = "from int enum"
    assert cache[3] == "from int enum"
    assert {type(k) for k in cache} == {str, int}


def test_mapping_methods(cache: MemoryCache) -> None:
    cache.set_many({"a": 1, "b": 2, "c": 3})
    cache.set_many([("d", 4)])
    assert len(cache) == 4
    assert cache.get_many(["a", "b", "zz"]) == {"a": 1, "b": 2}
    assert cache.pop("a") == 1
    assert cache.pop("a", "gone") == "gone"
    with pytest.raises(KeyError):
        cache.pop("a")
    assert cache.delete("b") is True
    assert cache.delete("b") is False
    del cache["c"]
    with pytest.raises(KeyError):
        del cache["c"]
    with pytest.raises(KeyError):
        cache["c"]
    assert cache.delete_many(["d", "x"]) == 1
    assert len(cache) == 0
    cache["e"] = 5
    assert list(cache) == ["e"]
    cache.clear()
    assert len(cache) == 0
    assert cache.keys() == []


def test_stats_count_hits_misses_and_reset(cache: MemoryCache) -> None:
    cache["a"] = 1
    cache.get("a")
    cache.get("b")
    _ = "a" in cache  # membership counts nothing
    stats = cache.stats()
    assert stats == {
        "hits": 1,
        "misses": 1,
        "evictions": 0,
        "expirations": 0,
        "rejections": 0,
        "size": 1,
        "weighted_size": 1,
        "capacity": 100,
        "hit_ratio": 0.5,
    }
    cache.reset_stats()
    assert cache.stats()["hits"] == 0
    assert cache.stats()["size"] == 1


def test_capacity_is_never_exceeded_and_evictions_are_counted(cache: MemoryCache) -> None:
    for i in range(1000):
        cache[i] = i
        assert len(cache) <= 100
    assert cache.stats()["evictions"] == 900


def test_ttl_expires_entries() -> None:
    clock = ManualClock()
    cache = MemoryCache(100, clock=clock)
    cache.set("short", 1, ttl=0.05)
    cache.set("long", 2, ttl=60)
    cache.set("forever", 3)
    assert cache.get("short") == 1
    clock.advance(0.049)
    assert cache.get("short") == 1
    clock.advance(0.002)
    assert cache.get("short") is None
    assert "short" not in cache
    assert cache.get("long") == 2
    assert sorted(cache.keys()) == ["forever", "long"]
    assert cache.stats()["expirations"] == 1


def test_default_ttl_and_per_entry_override() -> None:
    clock = ManualClock()
    cache = MemoryCache(10, ttl=0.05, clock=clock)
    assert cache.ttl == pytest.approx(0.05)
    cache["default"] = 1
    cache.set("override", 2, ttl=60)
    clock.advance(0.06)
    assert cache.get("default") is None
    assert cache["override"] == 2


def test_purge_expired_frees_an_idle_cache() -> None:
    clock = ManualClock()
    cache = MemoryCache(1000, ttl=0.02, clock=clock)
    cache.set_many({i: i for i in range(500)})
    clock.advance(0.03)
    assert len(cache) == 500  # still held: nothing has touched the cache
    assert cache.purge_expired() == 500
    assert len(cache) == 0


def test_reads_free_expired_entries_without_a_write() -> None:
    clock = ManualClock()
    cache = MemoryCache(1000, policy="lru", shards=1, clock=clock)
    for i in range(200):
        cache.set(i, i, ttl=0.02)
    clock.advance(0.03)
    for _ in range(64 * 30):
        cache.get("other")
    assert len(cache) == 0


def test_on_evict_reports_size_and_expiry_after_the_lock_is_released() -> None:
    seen: list[tuple[object, object, str]] = []
    holder: dict[str, MemoryCache] = {}

    def listener(key: object, value: object, cause: str) -> None:
        # Re-entering the cache from the listener must not deadlock.
        assert holder["cache"].get(key) is None
        seen.append((key, value, cause))

    clock = ManualClock()
    cache = MemoryCache(2, policy="lru", shards=1, on_evict=listener, clock=clock)
    holder["cache"] = cache
    cache["a"] = 1
    cache["b"] = 2
    cache["a"] = 10  # a replacement is not an eviction
    cache["c"] = 3
    cache.set("d", 4, ttl=0.01)
    clock.advance(0.02)
    cache.get("d")
    assert seen == [("b", 2, "size"), ("a", 10, "size"), ("d", 4, "expired")]


def test_a_raising_listener_is_logged_and_the_write_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def listener(key: object, value: object, cause: str) -> None:
        raise RuntimeError("listener bug")

    cache = MemoryCache(1, on_evict=listener)
    with caplog.at_level(logging.ERROR, logger="langcluster.cache.memory"):
        cache["a"] = 1
        cache["b"] = 2
    assert cache["b"] == 2
    assert "on_evict callback raised" in caplog.text


def test_values_are_released_when_evicted() -> None:
    class Tracked:
        pass

    cache = MemoryCache(1, policy="lru")
    import weakref

    first = Tracked()
    ref = weakref.ref(first)
    cache["a"] = first
    del first
    cache["b"] = Tracked()
    gc.collect()
    assert ref() is None


def test_a_finalizer_that_uses_the_cache_does_not_deadlock() -> None:
    cache = MemoryCache(1, policy="lru", shards=1)

    class Reentrant:
        def __del__(self) -> None:
            cache.get("anything")
            cache["from-del"] = 1

    cache["a"] = Reentrant()
    cache["b"] = 2  # evicts and drops the Reentrant value
    assert cache.get("from-del") == 1


def test_properties_and_repr() -> None:
    cache = MemoryCache(1000, policy="lru", shards=4)
    assert (cache.capacity, cache.policy, cache.shards, cache.ttl) == (1000, "lru", 4, None)
    assert repr(cache) == "MemoryCache(capacity=1000, policy='lru', size=0)"
    assert MemoryCache(10).policy == "tinylfu"
    assert cache.memory_usage() > 0


@pytest.mark.parametrize("policy", ["tinylfu", "lfu", "lru", "fifo"])
def test_memory_follows_the_entries_held_not_the_capacity(policy: str) -> None:
    # A capacity is often a bound never reached: an empty cache of 100
    # million entries costs what an empty cache of a thousand does.
    small = MemoryCache(1_000, policy=policy, shards=8).memory_usage()
    huge = MemoryCache(10**8, policy=policy, shards=8)
    assert huge.memory_usage() < max(2 * small, 64 * 1024)
    huge.set_many({i: i for i in range(50_000)})
    grown = huge.memory_usage()
    assert 50_000 * 16 < grown < 50_000 * 200, grown
    # Full, a cache sized for what it holds costs about as much.
    full = MemoryCache(50_000, policy=policy, shards=8)
    full.set_many({i: i for i in range(60_000)})
    assert grown < 2 * full.memory_usage()


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"capacity": 0}, ValueError, "capacity"),
        ({"capacity": -5}, ValueError, "capacity"),
        ({"capacity": 1.5}, TypeError, "capacity"),
        ({"capacity": True}, TypeError, "capacity"),
        ({"capacity": 10, "policy": "arc"}, ValueError, "policy"),
        ({"capacity": 10, "policy": 3}, TypeError, "policy"),
        ({"capacity": 10, "ttl": -1}, ValueError, "ttl"),
        ({"capacity": 10, "ttl": 0}, ValueError, "ttl"),
        ({"capacity": 10, "ttl": float("nan")}, ValueError, "ttl"),
        ({"capacity": 10, "ttl": "5"}, TypeError, "ttl"),
        ({"capacity": 10, "shards": 0}, ValueError, "shards"),
        ({"capacity": 10, "shards": 11}, ValueError, "shards"),
        ({"capacity": 10, "on_evict": 5}, TypeError, "on_evict"),
    ],
)
def test_bad_arguments_are_named(
    kwargs: dict[str, object], error: type[Exception], names: str
) -> None:
    with pytest.raises(error, match=names):
        MemoryCache(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [1.5, None, True, ("a",), ["a"], object()])
def test_unsupported_keys_raise_type_error_naming_key(key: object) -> None:
    cache = MemoryCache(10)
    with pytest.raises(TypeError, match="key: must be str, bytes or int"):
        cache.set(key, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        cache.get(key)  # type: ignore[arg-type]


def test_set_ttl_is_checked_and_set_many_checks_every_key_first() -> None:
    cache = MemoryCache(10)
    with pytest.raises(ValueError, match="ttl"):
        cache.set("a", 1, ttl=-0.5)
    with pytest.raises(TypeError, match="key"):
        cache.set_many({"ok": 1, 2.5: 2})  # type: ignore[dict-item]
    assert "ok" not in cache
    with pytest.raises(TypeError, match="mapping"):
        cache.set_many([1, 2])  # type: ignore[list-item]


def test_an_injected_clock_drives_expiry_and_its_failures_reach_the_caller() -> None:
    clock = ManualClock()
    cache = MemoryCache(10, ttl=5, clock=clock)
    cache["k"] = 1
    clock.advance(4.9)
    assert cache["k"] == 1
    clock.advance(0.2)
    assert "k" not in cache

    def broken() -> float:
        raise RuntimeError("clock stopped")

    with pytest.raises(TypeError, match=r"^clock: must be a function"):
        MemoryCache(10, clock=lambda: "noon")  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match=r"^clock:"):
        MemoryCache(10, clock=5)  # type: ignore[arg-type]
    flaky = {"ok": True}

    def sometimes() -> float:
        if flaky["ok"]:
            return 1.0
        return broken()

    cache = MemoryCache(10, clock=sometimes)
    flaky["ok"] = False
    with pytest.raises(RuntimeError, match="clock stopped"):
        cache.get("k")
