"""LayeredCache (MemoryCache over RedisCache) against real redis-server
processes: both write modes, coherence across instances and processes,
Redis failures (SIGKILL included), get_or_set."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
import redis

from langcluster import CacheError, MemoryCache
from langcluster.cache import LayeredCache, RedisCache
from tests.support.helpers import ManualClock, name, redis_url, wait_until

pytestmark = pytest.mark.services


def test_reads_go_l1_then_l2_and_fill_l1_no_longer_than_l2_keeps_it(
    make: Any, redis_server: Any
) -> None:
    clock = ManualClock()
    writer, reader = make(), make(clock=clock)
    writer.set("prompt", "answer", ttl=100)
    # (a read racing with the write's invalidation would not fill L1)
    assert wait_until(lambda: reader.stats()["invalidations_received"] == 1)
    assert reader.l1.get("prompt") is None
    assert reader.get("prompt") == "answer"  # from L2
    assert reader.l1.get("prompt") == "answer"  # filled
    assert reader.get("prompt") == "answer"  # from L1
    stats = reader.stats()
    assert stats["l2_hits"] == 1
    assert stats["l1_hits"] >= 1
    clock.advance(98)
    assert reader.l1.get("prompt") == "answer"
    clock.advance(2.5)
    assert reader.l1.get("prompt") is None  # the fill's TTL followed L2's
    redis.Redis.from_url(redis_url(redis_server)).delete(reader.l2.keyspace.name("prompt"))
    assert reader.get("prompt", "gone") == "gone"
    assert reader.stats()["misses"] == 1


def test_l1_ttl_caps_the_l1_copy(make: Any) -> None:
    clock = ManualClock()
    cache = make(l1_ttl=0.1, clock=clock)
    cache.set("k", 1)  # no TTL in Redis
    clock.advance(0.11)
    assert cache.l1.get("k") is None
    assert cache.get("k") == 1  # back from L2


def test_write_through_reaches_redis_before_returning_and_invalidates_others(
    make: Any, redis_server: Any
) -> None:
    raw = redis.Redis.from_url(redis_url(redis_server))
    one, two = make(), make()
    one.set("k", "v1")
    assert raw.exists(one.l2.keyspace.name("k"))
    assert two.get("k") == "v1"
    one.set("k", "v2")
    # How soon is a benchmark's figure (benches/python/layered_report.py).
    assert wait_until(lambda: two.l1.get("k") is None, 10), "L1 never invalidated"
    assert two.get("k") == "v2"
    one.delete("k")
    assert wait_until(lambda: two.get("k", "none") == "none", 10)
    assert one.stats()["invalidations_sent"] == 3
    assert two.stats()["invalidations_received"] == 3
    assert one.stats()["invalidations_received"] == 0  # its own are ignored


def test_batch_operations(make: Any) -> None:
    one, two = make(), make()
    one.set_many({f"k{i}": i for i in range(100)}, ttl=30)
    assert wait_until(lambda: two.stats()["invalidations_received"] == 1)
    assert two.get_many([f"k{i}" for i in range(105)]) == {f"k{i}": i for i in range(100)}
    assert len(two.l1) == 100
    assert one.delete_many(["k1", "k2", "nope"]) == 2
    assert wait_until(lambda: "k1" not in two.l1 and "k2" not in two.l1, 0.1)
    one.clear()
    assert wait_until(lambda: len(two.l1) == 0, 0.1)
    assert two.get_many(["k3", "k4"]) == {}


def test_get_many_from_l2_is_one_round_trip(make: Any, redis_server: Any) -> None:
    raw = redis.Redis.from_url(redis_url(redis_server))
    writer, reader = make(), make()
    writer.set_many({f"p{i}": i for i in range(1000)})

    def calls(command: str) -> int:
        return int(raw.info("commandstats").get(f"cmdstat_{command}", {"calls": 0})["calls"])

    before = {c: calls(c) for c in ("mget", "pttl", "get")}
    assert len(reader.get_many([f"p{i}" for i in range(1000)])) == 1000
    after = {c: calls(c) for c in ("mget", "pttl", "get")}
    # one pipeline: one MGET and the PTTLs that bound the L1 copies
    assert after["mget"] - before["mget"] == 1
    assert after["pttl"] - before["pttl"] == 1000
    assert after["get"] == before["get"]


def test_write_back_acknowledges_at_once_coalesces_and_flushes(
    make: Any, redis_server: Any
) -> None:
    raw = redis.Redis.from_url(redis_url(redis_server))
    cache = make(mode="write_back", flush_interval_s=10)  # only explicit flushes
    other = make()
    for i in range(500):
        cache.set("hot", i)
    cache.set_many({f"k{i}": i for i in range(10)})
    cache.delete("k0")
    assert cache.get("hot") == 499
    assert cache.get("k0", "deleted") == "deleted"
    assert not raw.exists(cache.l2.keyspace.name("hot"))  # not yet in Redis
    assert cache.stats()["pending_writes"] == 11
    cache.flush()
    assert cache.stats()["pending_writes"] == 0
    assert cache.stats()["flushed_writes"] == 11  # 500 writes of one key became one
    assert other.get("hot") == 499
    assert other.get_many([f"k{i}" for i in range(10)]) == {f"k{i}": i for i in range(1, 10)}


def test_write_back_reads_its_queue_when_l1_has_evicted(make: Any) -> None:
    cache = make(mode="write_back", capacity=8, flush_interval_s=10)
    cache.set_many({f"k{i}": i for i in range(200)})
    assert len(cache.l1) <= 8
    assert cache.get("k3") == 3  # from the queue, not a stale L2 miss
    assert cache.get_many(["k5", "k150"]) == {"k5": 5, "k150": 150}
    cache.flush()
    assert cache.get("k3") == 3  # now from L2


def test_write_back_flushes_by_interval_and_by_size(make: Any, redis_server: Any) -> None:
    raw = redis.Redis.from_url(redis_url(redis_server))
    by_time = make(namespace="t", mode="write_back", flush_interval_s=0.05)
    by_time.set("k", 1)
    assert wait_until(lambda: raw.exists(name("t", "k")), 2.0)
    by_size = make(namespace="s", mode="write_back", flush_interval_s=30, flush_batch=50)
    by_size.set_many({i: i for i in range(50)})
    assert wait_until(lambda: raw.exists(name("s", 49)), 2.0)


WRITER = textwrap.dedent(
    """
    import sys, time
    from langcluster import MemoryCache
    from langcluster.cache import LayeredCache
    from langcluster.cache import RedisCache
    cache = LayeredCache(MemoryCache(100), RedisCache(sys.argv[1], namespace="shared"))
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(1, 301):
        cache.set("counter", i)
        print(i, time.monotonic(), flush=True)
        time.sleep(0.002)
    cache.close()
    """
)


def test_two_processes_never_read_stale_l1_100ms_after_a_write(redis_server: Any) -> None:
    url = redis_url(redis_server)
    reader = LayeredCache(MemoryCache(100), RedisCache(url, namespace="shared"))
    reader.set("counter", 0)
    reads: list[tuple[float, int]] = []
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as child:  # fmt: skip
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.flush()
        while child.poll() is None:
            reads.append((time.monotonic(), reader.get("counter")))
            time.sleep(0.0005)
        writes = [line.split() for line in child.stdout.read().splitlines()]
    assert child.returncode == 0
    assert len(writes) == 300
    returned = [(float(t), int(i)) for i, t in writes]
    stale = [
        (at, seen)
        for at, seen in reads
        # the newest write that had returned more than 100 ms before this read
        if (_newest := max((i for t, i in returned if t < at - 0.1), default=0)) > seen
    ]
    assert stale == [], f"{len(stale)} stale reads, first {stale[:3]}"
    assert reader.get("counter") == 300
    assert reader.stats()["invalidations_received"] >= 300
    reader.close()


def test_tampered_signed_payload_is_a_miss(make: Any, redis_server: Any) -> None:
    cache = make(signing_key=b"a secret of 16+ bytes")
    cache.set("k", {"a": 1})
    raw = redis.Redis.from_url(redis_url(redis_server))
    stored = cache.l2.keyspace.name("k")
    payload = raw.get(stored)
    assert payload is not None
    raw.set(stored, payload[:-1] + bytes([payload[-1] ^ 1]))
    cache.l1.clear()
    assert cache.get("k", "miss") == "miss"
    assert cache.stats()["l2_rejected"] == 1


def test_unserializable_value_writes_nothing(make: Any) -> None:
    for mode in ("write_through", "write_back"):
        cache = make(namespace=mode, mode=mode)
        with pytest.raises(CacheError, match="cannot serialize a lock"):
            cache.set("k", threading.Lock())
        assert cache.get("k", "absent") == "absent"
        assert cache.stats()["pending_writes"] == 0


def test_async_twins(make: Any) -> None:
    async def main() -> None:
        for mode in ("write_through", "write_back"):
            one, two = make(namespace=f"a-{mode}", mode=mode), make(namespace=f"a-{mode}")
            await one.aset("k", 1)
            await one.aset_many({"a": 1, "b": 2})
            await one.aflush() if mode == "write_back" else None
            assert await two.aget("k") == 1
            assert await two.aget_many(["a", "b", "c"]) == {"a": 1, "b": 2}
            assert await one.adelete("a") is True
            await one.aflush() if mode == "write_back" else None
            assert await two.adelete_many(["b", "zz"]) == 1
            calls: list[int] = []

            async def factory(calls: list[int] = calls) -> str:
                calls.append(1)
                await asyncio.sleep(0.05)
                return "v"

            got = await asyncio.gather(*[one.aget_or_set("g", factory, lock=True) for _ in "abcde"])
            assert got == ["v"] * 5
            assert len(calls) == 1
            await one.aclear()
            assert await one.aget("k", "gone") == "gone"
            await one.aclose()
            await two.aclose()

    asyncio.run(main())


def test_over_a_redis_cluster(redis_cluster: Any) -> None:
    def build() -> LayeredCache:
        return LayeredCache(
            MemoryCache(1000), RedisCache(redis_cluster.url, namespace="lcc", cluster=True)
        )

    one, two = build(), build()
    one.set_many({f"k{i}": i for i in range(300)})
    assert two.get_many([f"k{i}" for i in range(300)]) == {f"k{i}": i for i in range(300)}
    one.set("k1", "new")
    assert wait_until(lambda: two.get("k1") == "new", 0.5)
    one.clear()
    one.close()
    two.close()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"mode": "write-around"}, "mode"),
        ({"on_l2_error": "ignore"}, "on_l2_error"),
        ({"l1_ttl": 0}, "l1_ttl"),
        ({"flush_interval_s": -1}, "flush_interval_s"),
        ({"max_pending": 0}, "max_pending"),
        ({"flush_batch": 1.5}, "flush_batch"),
        ({"pending_timeout_s": 0}, "pending_timeout_s"),
        ({"lock_ttl_s": None}, "lock_ttl_s"),
        ({"breaker": "yes"}, "breaker"),
    ],
)
def test_bad_arguments_are_named(redis_server: Any, kwargs: dict[str, Any], name: str) -> None:
    l2 = RedisCache(redis_url(redis_server), namespace="bad")
    with pytest.raises((ValueError, TypeError), match=name):
        LayeredCache(MemoryCache(10), l2, invalidation=False, **kwargs)
    with pytest.raises(TypeError, match="l1"):
        LayeredCache({}, l2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="l2"):
        LayeredCache(MemoryCache(10), MemoryCache(10))  # type: ignore[arg-type]
