"""The Redis tier against hostile bytes: whoever can write to the Redis
chooses what a cache reads. A cache decodes only its own format, refuses
unsigned payloads when it signs, counts every refusal as a miss, keeps its
namespace to itself, and never lets a decoding error escape. Against a real
redis-server."""

from __future__ import annotations

import pickle
from typing import Any

import msgpack
import pytest
import redis

from langcluster import CacheError, MemoryCache
from langcluster.cache import LayeredCache, RedisCache
from tests.support.helpers import name, redis_url

pytestmark = pytest.mark.services

KEY = b"a signing key of 32 bytes, ok..."


class Boom:
    """A pickle that, once loaded, would end the process."""

    def __reduce__(self) -> Any:
        return (exec, ("raise SystemExit('an attacker payload ran')",))


EVIL = b"P" + pickle.dumps(Boom())


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_a_cache_that_is_not_pickle_never_unpickles(redis_server: Any, serializer: str) -> None:
    cache = RedisCache(
        redis_url(redis_server), namespace=f"safe-{serializer}", serializer=serializer
    )
    raw = redis.Redis.from_url(redis_url(redis_server))
    raw.set(name(f"safe-{serializer}", "k"), EVIL)
    assert cache.get("k", "miss") == "miss"
    assert cache.get_many(["k"]) == {}
    assert cache.stats()["rejected"] == 2
    layered = LayeredCache(MemoryCache(10), cache, invalidation=False)
    assert layered.get("k", "miss") == "miss"
    assert layered.get_or_set("k", lambda: "computed") == "computed"  # the attack is overwritten
    layered.close()


def test_a_custom_serializer_cache_refuses_other_formats(redis_server: Any) -> None:
    class Text:
        def dumps(self, value: Any) -> bytes:
            return str(value).encode()

        def loads(self, data: bytes) -> Any:
            return data.decode()

    cache = RedisCache(redis_url(redis_server), namespace="text", serializer=Text())
    raw = redis.Redis.from_url(redis_url(redis_server))
    raw.set(name("text", "k"), EVIL)
    assert cache.get("k", "miss") == "miss"
    cache.set("k", "fine")
    assert cache.get("k") == "fine"


@pytest.mark.parametrize("serializer", ["pickle", "json", "msgpack"])
def test_with_a_signing_key_every_unsigned_payload_is_refused(
    redis_server: Any, serializer: str
) -> None:
    ns = f"signed-{serializer}"
    cache = RedisCache(
        redis_url(redis_server), namespace=ns, serializer=serializer, signing_key=KEY
    )
    cache.set("good", {"a": 1})
    assert cache.get("good") == {"a": 1}
    raw = redis.Redis.from_url(redis_url(redis_server))
    unsigned = {"pickle": EVIL, "json": b'J{"a": 2}', "msgpack": b"M" + msgpack.packb({"a": 2})}
    raw.set(name(ns, "unsigned"), unsigned[serializer])
    assert cache.get("unsigned", "miss") == "miss"
    other = RedisCache(redis_url(redis_server), namespace=ns, serializer=serializer,
                       signing_key=b"a different key of 32 bytes....")  # fmt: skip
    assert other.get("good", "miss") == "miss"  # signed, but not with its key
    assert cache.stats()["rejected"] == 1
    assert other.stats()["rejected"] == 1


@pytest.mark.parametrize(
    ("key", "error"),
    [(b"", ValueError), ("", ValueError), (b"short", ValueError), (12345, TypeError)],
)
def test_weak_or_wrong_signing_keys_are_refused_by_name(
    redis_server: Any, key: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"^signing_key:"):
        RedisCache(redis_url(redis_server), namespace="k", signing_key=key)


@pytest.mark.parametrize(
    ("serializer", "garbage"),
    [("pickle", b"P\x80\x05garbage"), ("json", b"J{not json"), ("msgpack", b"M\xc1\xc1"),
     ("json", b"J" + b"[" * 100_000 + b"]" * 100_000), ("pickle", b""), ("json", b"X?")],
)  # fmt: skip
def test_a_payload_that_does_not_decode_is_a_counted_miss(
    redis_server: Any, serializer: str, garbage: bytes
) -> None:
    ns = f"garbage-{serializer}"
    cache = RedisCache(redis_url(redis_server), namespace=ns, serializer=serializer)
    redis.Redis.from_url(redis_url(redis_server)).set(name(ns, "k"), garbage)
    assert cache.get("k", "miss") == "miss"
    assert cache.get_many(["k"]) == {}
    layered = LayeredCache(MemoryCache(10), cache, invalidation=False)
    assert layered.get("k", "miss") == "miss"
    assert layered.get_or_set("k", lambda: 7) == 7
    assert cache.stats()["rejected"] >= 3
    layered.close()


def test_namespaces_never_alias_each_other(redis_server: Any) -> None:
    url = redis_url(redis_server)
    app, prod = RedisCache(url, namespace="app"), RedisCache(url, namespace="app:prod")
    prod.set("k", "prod's")
    app.set("k", "app's")
    assert app.clear() == 1  # only its own key
    assert prod.get("k") == "prod's"
    a, b = RedisCache(url, namespace="a"), RedisCache(url, namespace="b")
    a.set("b:s:x", "written by a")
    assert b.get("x", "absent") == "absent"
    assert b.keys() == []
    assert a.keys() == ["b:s:x"]


def test_a_key_utf8_cannot_encode_is_refused_by_name(redis_server: Any) -> None:
    cache = RedisCache(redis_url(redis_server), namespace="u")
    with pytest.raises(ValueError, match=r"^key:"):
        cache.set("\ud800", 1)
    with pytest.raises(CacheError):  # nothing listens: the key was checked first
        RedisCache("redis://127.0.0.1:9/0", namespace="u", socket_timeout_s=0.1).get("ok")
