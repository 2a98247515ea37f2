"""The cache tier: ``MemoryCache`` (Rust, per process) and ``cached``; the
Redis tier ``RedisCache``; and ``LayeredCache``, the first over the second,
kept coherent across processes."""

from __future__ import annotations

from langcluster.cache.layered import LayeredCache
from langcluster.cache.memory import CachedFunction, MemoryCache, cached
from langcluster.cache.redis import RedisCache

__all__ = ["Cache", "CachedFunction", "LayeredCache", "MemoryCache", "RedisCache", "cached"]

Cache = MemoryCache | RedisCache | LayeredCache
"""Any of the three caches: the same methods, and async twins on the two
that do I/O."""
