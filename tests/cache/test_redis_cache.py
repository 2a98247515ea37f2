"""RedisCache against a real redis-server started by the tests."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

import pytest
import redis

from langcluster import CacheError
from langcluster.cache import RedisCache
from tests.support.helpers import name

pytestmark = pytest.mark.services


def url(server: Any) -> str:
    return f"redis://{server.url}/0"


def test_round_trip_of_every_method(redis_server: Any) -> None:
    cache = RedisCache(url(redis_server), namespace="t1")
    value = {"text": "héllo", "tokens": [1, 2, 3]}
    cache.set("k", value)
    cache.set(b"k", "bytes key")
    cache.set(7, None)
    assert cache.get("k") == value
    assert cache.get(b"k") == "bytes key"
    assert cache.get(7, "default") is None  # None is a value
    assert cache.get("absent", "default") == "default"
    assert "k" in cache
    assert sorted(map(repr, cache.keys())) == sorted(map(repr, ["k", b"k", 7]))
    assert len(cache) == 3
    assert cache.pop("k") == value
    with pytest.raises(KeyError):
        cache.pop("k")
    assert cache.delete(b"k") is True
    assert cache.delete(b"k") is False
    cache.set_many({"a": 1, "b": 2, "c": 3})
    assert cache.get_many(["a", "b", "zz"]) == {"a": 1, "b": 2}
    assert cache.delete_many(["a", "zz"]) == 1
    stats = cache.stats()
    assert stats["hits"] >= 5
    assert stats["misses"] >= 2
    cache.close()


def test_clear_removes_only_its_namespace(redis_server: Any) -> None:
    one, two = (
        RedisCache(url(redis_server), namespace="one"),
        RedisCache(url(redis_server), namespace="two"),
    )
    one.set_many({i: i for i in range(1200)})
    two.set("keep", 1)
    raw = redis.Redis.from_url(url(redis_server))
    raw.set("unrelated", b"x")
    assert one.clear() == 1200
    assert len(one) == 0
    assert two.get("keep") == 1
    assert raw.get("unrelated") == b"x"


def test_batches_are_one_round_trip(redis_server: Any) -> None:
    cache = RedisCache(url(redis_server), namespace="batch")
    raw = redis.Redis.from_url(url(redis_server))
    raw.config_resetstat()
    cache.set_many({f"k{i}": i for i in range(100)})
    cache.get_many([f"k{i}" for i in range(100)])
    stats = raw.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] == 1
    assert stats["cmdstat_set"]["calls"] == 100  # pipelined: one round trip


def test_ttl_and_jitter(redis_server: Any) -> None:
    cache = RedisCache(url(redis_server), namespace="ttl", ttl=0.2, ttl_jitter=0.1)
    raw = redis.Redis.from_url(url(redis_server))
    started = time.monotonic()
    cache.set("short", 1)
    pttl = raw.pttl(name("ttl", "short"))
    elapsed_ms = (time.monotonic() - started) * 1000
    assert 180 - elapsed_ms - 1 <= pttl <= 220  # 200 ms +- 10 %, less what has passed
    cache.set("long", 2, ttl=60)
    time.sleep(0.3)
    assert cache.get("short") is None
    assert cache.get("long") == 2


@pytest.mark.parametrize("serializer", ["pickle", "json", "msgpack"])
def test_serializers(redis_server: Any, serializer: str) -> None:
    cache = RedisCache(url(redis_server), namespace=f"ser-{serializer}", serializer=serializer)
    cache.set("x", {"a": [1, 2], "b": "c"})
    assert cache.get("x") == {"a": [1, 2], "b": "c"}
    raw = redis.Redis.from_url(url(redis_server)).get(name(f"ser-{serializer}", "x"))
    assert raw is not None
    assert raw[:1] == {"pickle": b"P", "json": b"J", "msgpack": b"M"}[serializer]


def test_a_custom_serializer(redis_server: Any) -> None:
    class Upper:
        def dumps(self, value: str) -> bytes:
            return value.upper().encode()

        def loads(self, data: bytes) -> str:
            return data.decode().lower()

    cache = RedisCache(url(redis_server), namespace="custom", serializer=Upper())
    cache.set("x", "hello")
    assert cache.get("x") == "hello"


def test_signed_pickles_reject_tampering_and_unsigned_payloads(
    redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RedisCache(url(redis_server), namespace="signed", signing_key=b"a secret of 16+ bytes")
    cache.set("x", [1, 2, 3])
    assert cache.get("x") == [1, 2, 3]
    raw = redis.Redis.from_url(url(redis_server))
    payload = raw.get(name("signed", "x"))
    assert payload is not None
    assert payload[:1] == b"S"

    class Boom:
        def __reduce__(self) -> Any:
            return (exec, ("raise SystemExit('unpickled an attacker payload')",))

    import pickle

    evil = pickle.dumps(Boom())
    raw.set(name("signed", "forged"), b"S" + b"\0" * 32 + evil)  # a wrong signature
    raw.set(name("signed", "plain"), b"P" + evil)  # an unsigned pickle
    with caplog.at_level(logging.WARNING, logger="langcluster.cache.redis"):
        assert cache.get("forged", "miss") == "miss"
        assert cache.get("plain", "miss") == "miss"
    assert cache.stats()["rejected"] == 2
    assert "signature does not match" in caplog.text
    other = RedisCache(url(redis_server), namespace="signed", signing_key=b"another 16+ byte key")
    assert other.get("x", "miss") == "miss"


def test_a_stalled_redis_never_holds_a_caller_past_the_socket_timeout() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    port = listener.getsockname()[1]
    cache = RedisCache(f"redis://127.0.0.1:{port}/0", namespace="stall", socket_timeout_s=0.2)
    started = time.perf_counter()
    with pytest.raises(CacheError, match="Timeout"):
        cache.get("x")
    assert time.perf_counter() - started < 0.6
    assert cache.stats()["errors"] == 1

    async def async_call() -> None:
        with pytest.raises(CacheError):
            await cache.aget("x")

    started = time.perf_counter()
    asyncio.run(async_call())
    assert time.perf_counter() - started < 0.6
    listener.close()


def test_async_twins(redis_server: Any) -> None:
    async def scenario() -> None:
        cache = RedisCache(url(redis_server), namespace="async")
        await cache.aset("a", 1)
        await cache.aset_many({"b": 2, "c": 3}, ttl=30)
        assert await cache.aget("a") == 1
        assert await cache.aget_many(["a", "b", "x"]) == {"a": 1, "b": 2}
        assert await cache.acontains("c")
        assert await cache.adelete("c") is True
        assert await cache.adelete_many(["a", "zz"]) == 1
        assert await cache.aclear() == 1
        assert await cache.aget("b") is None
        await cache.aclose()

    asyncio.run(scenario())


def test_threads_share_one_cache(redis_server: Any) -> None:
    cache = RedisCache(url(redis_server), namespace="threads")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(200):
                cache.set(f"{n}:{i}", i)
                assert cache.get(f"{n}:{i}") == i
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(cache) == 800


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"namespace": ""}, ValueError, "namespace"),
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl_jitter": 1.0}, ValueError, "ttl_jitter"),
        ({"socket_timeout_s": 0}, ValueError, "socket_timeout_s"),
        ({"serializer": "yaml"}, ValueError, "serializer"),
        ({"serializer": object()}, TypeError, "serializer"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=name):
        RedisCache("redis://127.0.0.1:9/0", **kwargs)


def test_bad_keys_are_named() -> None:
    cache = RedisCache("redis://127.0.0.1:9/0")
    with pytest.raises(TypeError, match="key"):
        cache.get(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        cache.set(True, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("serializer", ["pickle", "json"])
def test_a_value_that_cannot_be_serialized_names_its_type_and_writes_nothing(
    redis_server: Any, serializer: str
) -> None:
    cache = RedisCache(url(redis_server), namespace="unser", serializer=serializer)
    with pytest.raises(CacheError, match="value: cannot serialize a lock"):
        cache.set("k", threading.Lock())
    with pytest.raises(CacheError, match="lock"):
        cache.set_many({"a": 1, "b": threading.Lock()})  # serialized whole, first
    assert cache.keys() == []
    cache.close()
