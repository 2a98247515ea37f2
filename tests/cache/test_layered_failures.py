"""LayeredCache when Redis fails: reads serve L1, write-through raises or
degrades, write-back queues and pushes back, nothing acknowledged is lost
to a SIGKILL, a reconnect or a silent connection clears L1, and the
breaker turns timeouts into refusals. Against real redis-server processes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from langcluster import BreakerConfig, CacheError, MemoryCache
from langcluster.cache import LayeredCache, RedisCache
from tests.support.helpers import name, redis_url, wait_until
from tests.support.servers import free_port

pytestmark = pytest.mark.services


def test_redis_down_reads_serve_l1_write_through_raises_unless_degraded(
    redis_restartable: Any,
) -> None:
    url = redis_url(redis_restartable)
    strict = LayeredCache(MemoryCache(100), RedisCache(url, namespace="d", socket_timeout_s=0.2))
    degrade = LayeredCache(
        MemoryCache(100), RedisCache(url, namespace="d2", socket_timeout_s=0.2),
        on_l2_error="degrade",
    )  # fmt: skip
    strict.set("warm", 1)
    redis_restartable.kill()
    assert strict.get("warm") == 1  # L1
    assert strict.get("cold", "default") == "default"  # a miss, not an error
    with pytest.raises(CacheError):
        strict.set("k", 2)
    assert strict.l1.get("k") is None
    degrade.set("k", 2)
    assert degrade.get("k") == 2
    assert degrade.stats()["degraded_writes"] == 1
    # The breaker opens: a dead Redis costs a refusal, not a timeout per call.
    for _ in range(10):
        strict.get("cold")
    assert strict.breaker.state == "open"
    for _ in range(1000):
        assert strict.get("cold", None) is None
    stats = strict.stats()  # each refused at once, none tried on the dead Redis
    assert stats["l2_errors"] >= 4
    assert stats["l2_refused"] >= 1000
    with pytest.raises(CacheError, match="circuit is open"):
        strict.set("k", 3)
    strict.close()
    degrade.close()


def test_write_back_back_pressure_waits_then_fails_without_writing(
    redis_restartable: Any,
) -> None:
    url = redis_url(redis_restartable)
    cache = LayeredCache(
        MemoryCache(100), RedisCache(url, namespace="bp", socket_timeout_s=0.2),
        mode="write_back", max_pending=5, pending_timeout_s=0.3, flush_interval_s=0.02,
    )  # fmt: skip
    redis_restartable.kill()
    cache.set_many({i: i for i in range(5)})
    cache.set(0, "rewrite")  # a queued key takes no room
    started = time.monotonic()
    with pytest.raises(CacheError, match="max_pending=5"):
        cache.set("sixth", 6)
    assert 0.25 < time.monotonic() - started < 2
    assert cache.get("sixth", "absent") == "absent"
    redis_restartable.start()
    # The flusher drains the queue once Redis is back (the subscriber's
    # reconnect ends the breaker's wait), and the writer gets room.
    cache.set("sixth", 6)
    cache.close()
    raw = redis.Redis.from_url(url)
    assert raw.exists(name("bp", "sixth"))
    assert raw.exists(name("bp", 4))


def test_sigkill_mid_run_loses_no_acknowledged_write_back_write(redis_restartable: Any) -> None:
    url = redis_url(redis_restartable)
    cache = LayeredCache(
        MemoryCache(10_000), RedisCache(url, namespace="kill", socket_timeout_s=0.2),
        mode="write_back", flush_interval_s=0.01, max_pending=100_000,
    )  # fmt: skip
    acknowledged: dict[str, int] = {}
    read_errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                for i in range(0, 3000, 7):
                    cache.get(f"k{i}")
            except BaseException as error:
                read_errors.append(error)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(3000):
        cache.set(f"k{i}", i)
        acknowledged[f"k{i}"] = i
        if i == 1000:
            redis_restartable.kill()  # SIGKILL, mid-run
        if i == 2000:
            redis_restartable.start()  # empty: writes flushed before the kill are gone
        if i % 100 == 0:
            time.sleep(0.005)
    stop.set()
    thread.join()
    assert read_errors == []
    cache.flush()
    # Writes flushed before the SIGKILL died with Redis (no persistence);
    # the queue cannot know that. Everything acknowledged after the restart
    # began, and everything still queued at the kill, must be there.
    raw = redis.Redis.from_url(url)
    present = {
        k: v for k, v in zip(acknowledged, raw.mget([name("kill", k) for k in acknowledged]),
                             strict=True) if v is not None
    }  # fmt: skip
    assert all(f"k{i}" in present for i in range(2000, 3000))
    queued_at_kill = [f"k{i}" for i in range(1001, 2000)]
    assert all(k in present for k in queued_at_kill)
    assert cache.stats()["l2_errors"] > 0
    cache.close()


def test_a_reconnect_clears_l1(redis_restartable: Any) -> None:
    url = redis_url(redis_restartable)
    cache = LayeredCache(MemoryCache(100), RedisCache(url, namespace="rc", socket_timeout_s=0.2))
    cache.set("k", 1)
    assert cache.l1.get("k") == 1
    redis_restartable.kill()
    assert wait_until(lambda: not cache.stats()["subscribed"], 3)
    redis_restartable.start()
    assert wait_until(lambda: cache.stats()["l1_resets"] == 1, 5)
    assert cache.l1.get("k") is None  # invalidations may have been lost meanwhile
    cache.close()


def test_the_breaker_is_made_from_the_given_config(make: Any) -> None:
    cache = make(breaker=BreakerConfig(window_size=2, minimum_calls=1))
    cache.set("k", 1)
    assert cache.breaker.name == "redis:lc"
    assert cache.breaker.metrics()["calls"] == 1  # the one SET went through it
    unreachable = LayeredCache(
        MemoryCache(10),
        RedisCache(f"redis://127.0.0.1:{free_port()}/0", namespace="lc", socket_timeout_s=0.2),
        invalidation=False,
        breaker=BreakerConfig(window_size=2, minimum_calls=1, max_open_timeout_s=None),
    )
    with pytest.raises(CacheError):
        unreachable.set("k", 2)
    assert unreachable.breaker.state == "open"  # one failure in a window of 2 opened it
    unreachable.close()


def test_a_silent_subscriber_connection_is_noticed_and_l1_cleared(
    make: Any, redis_server: Any
) -> None:
    cache = make()
    cache.set("k", 1)
    assert cache.l1.get("k") == 1
    raw = redis.Redis.from_url(redis_url(redis_server))
    # CLIENT PAUSE ALL: Redis keeps the sockets open but answers nothing,
    # as a network partition would look. The subscriber's PINGs go unanswered.
    raw.execute_command("CLIENT", "PAUSE", "4500", "ALL")
    assert wait_until(lambda: cache.stats()["l1_resets"] == 1, 10)
    assert cache.l1.get("k") is None
    assert cache.stats()["subscribed"]
