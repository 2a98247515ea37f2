"""LayeredCache keeps L1 from holding a value Redis no longer holds, when
this process's own writes and reads race: concurrent writes of one key
(async, threads, batches), and an L2 read that fills L1 while a write is
under way. The races are made deterministic by holding back the reply of
one Redis round trip until the other write has finished, on a real
redis-server."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import redis

from langcluster import MemoryCache
from langcluster.cache import LayeredCache, RedisCache
from tests.support.helpers import redis_url

pytestmark = pytest.mark.services


class HeldAsync:
    """A real async Redis client whose next pipeline is answered late: Redis
    applies it at once, but its reply reaches the caller only after
    ``release``."""

    def __init__(self, url: str) -> None:
        self.client = redis.asyncio.Redis.from_url(url)
        self.release = asyncio.Event()
        self.applied = asyncio.Event()
        self.hold_next = False

    def pipeline(self, **kwargs: Any) -> Any:
        pipe = self.client.pipeline(**kwargs)
        if self.hold_next:
            self.hold_next = False
            execute = pipe.execute

            async def held() -> Any:
                replies = await execute()
                self.applied.set()
                await self.release.wait()
                return replies

            pipe.execute = held
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class HeldSync:
    """The sync twin of ``HeldAsync``, with threading events."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.release = threading.Event()
        self.applied = threading.Event()
        self.hold_next = False

    def pipeline(self, **kwargs: Any) -> Any:
        pipe = self.client.pipeline(**kwargs)
        if self.hold_next:
            self.hold_next = False
            execute = pipe.execute

            def held() -> Any:
                replies = execute()
                self.applied.set()
                assert self.release.wait(10)
                return replies

            pipe.execute = held
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def layered(url: str, **clients: Any) -> LayeredCache:
    return LayeredCache(
        MemoryCache(100), RedisCache(url, namespace="order", **clients), invalidation=False
    )


def test_two_concurrent_asets_of_a_key_leave_l1_agreeing_with_redis(redis_server: Any) -> None:
    url = redis_url(redis_server)
    raw = redis.Redis.from_url(url)

    async def main() -> None:
        client = HeldAsync(url)
        cache = layered(url, async_client=client)
        client.hold_next = True
        first = asyncio.create_task(cache.aset("k", "first"))
        await client.applied.wait()  # Redis has "first"; its reply is late
        await cache.aset("k", "second")  # Redis has "second", last
        client.release.set()
        await first  # the late reply arrives last
        assert raw.get(cache.l2.keyspace.name("k")) is not None
        in_redis = await cache.l2.aget("k")
        assert in_redis == "second"
        # L1 may drop the key, never keep a value Redis does not hold.
        assert cache.l1.get("k", "absent") in ("absent", in_redis)
        assert await cache.aget("k") == "second"
        await cache.aclose()

    asyncio.run(main())


def test_two_concurrent_set_manys_leave_l1_agreeing_with_redis(redis_server: Any) -> None:
    url = redis_url(redis_server)

    async def main() -> None:
        client = HeldAsync(url)
        cache = layered(url, async_client=client)
        client.hold_next = True
        first = asyncio.create_task(cache.aset_many({"a": 1, "b": 1}))
        await client.applied.wait()
        await cache.aset_many({"b": 2, "c": 2})
        client.release.set()
        await first
        assert cache.l1.get("b", "absent") in ("absent", 2)
        assert await cache.aget_many(["a", "b", "c"]) == {"a": 1, "b": 2, "c": 2}
        await cache.aclose()

    asyncio.run(main())


def test_two_threads_setting_a_key_leave_l1_agreeing_with_redis(redis_server: Any) -> None:
    url = redis_url(redis_server)
    client = HeldSync(url)
    cache = layered(url, client=client)
    client.hold_next = True
    first = threading.Thread(target=cache.set_many, args=({"k": "first"},))
    first.start()
    assert client.applied.wait(10)
    cache.set("k", "second")
    client.release.set()
    first.join(10)
    assert cache.l1.get("k", "absent") in ("absent", "second")
    assert cache.get("k") == "second"
    cache.close()


def test_a_read_racing_a_write_does_not_fill_l1_with_the_old_value(redis_server: Any) -> None:
    url = redis_url(redis_server)

    async def main() -> None:
        client = HeldAsync(url)
        cache = layered(url, async_client=client)
        await cache.aset("k", "old")
        cache.l1.clear()
        client.hold_next = True
        read = asyncio.create_task(cache.aget("k"))  # its fetch finds "old", late
        await client.applied.wait()
        await cache.aset("k", "new")
        client.release.set()
        assert await read == "old"  # it began before the write: fine to answer
        assert cache.l1.get("k") == "new"  # but its fill must not undo the write
        await cache.aclose()

    asyncio.run(main())
