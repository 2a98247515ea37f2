"""The ``make`` fixture of the LayeredCache suites."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from langcluster import CacheError, MemoryCache
from langcluster.cache import LayeredCache, RedisCache
from tests.support.helpers import redis_url


@pytest.fixture
def make(redis_server: Any) -> Iterator[Any]:
    """Builds LayeredCaches on the test's redis-server, and closes them.
    ``ttl``, ``signing_key`` and ``socket_timeout_s`` go to the RedisCache,
    ``clock`` to the MemoryCache, the rest to the LayeredCache."""
    made: list[LayeredCache] = []

    def build(namespace: str = "lc", capacity: int = 1000, **kwargs: Any) -> LayeredCache:
        l2_kwargs = {
            k: kwargs.pop(k) for k in ("ttl", "signing_key", "socket_timeout_s") if k in kwargs
        }
        l1_kwargs = {k: kwargs.pop(k) for k in ("clock",) if k in kwargs}
        cache = LayeredCache(
            MemoryCache(capacity, **l1_kwargs),
            RedisCache(redis_url(redis_server), namespace=namespace, **l2_kwargs),
            **kwargs,
        )
        made.append(cache)
        return cache

    yield build
    for cache in made:
        with contextlib.suppress(CacheError):
            cache.close()
