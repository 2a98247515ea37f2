"""``LayeredCache.get_or_set``: one computation of a missing key per
process (single flight, ``Flights``), or per cluster with ``lock=True``,
and XFetch early refresh (``refresh``).

The flight is one flow: look in L2; with ``lock``, take the key's Redis
lock (SET NX PX) or wait for its holder's value, polling L2; call the
factory; store the result; release the lock, whatever happened.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from langcluster._checks import seconds
from langcluster._core import MemoryCache
from langcluster._flow import Call, Flow, Sleep
from langcluster._sentinel import MISSING
from langcluster.errors import CacheError
from langcluster.types import Key

if TYPE_CHECKING:
    from langcluster.cache.layered import LayeredCache

__all__ = ["FlightToken", "compute", "start"]

_log = logging.getLogger(__name__)


class FlightToken:
    """The single-flight handle of one key: the flight first looks in L1
    (another caller may have filled it) unless it is an early refresh."""

    __slots__ = ("key", "l1", "refresh")

    def __init__(self, l1: MemoryCache, key: Key, refresh: bool) -> None:
        self.l1 = l1
        self.key = key
        self.refresh = refresh

    def __hash__(self) -> int:
        return hash((type(self.key), self.key, self.refresh))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, FlightToken)
            and type(other.key) is type(self.key)
            and other.key == self.key
            and other.refresh == self.refresh
        )

    def lookup(self, default: Any) -> Any:
        return default if self.refresh else self.l1.get(self.key, default)

    def store(self, value: Any) -> None:
        """The flight stores the value itself (in both tiers)."""


def start(
    cache: LayeredCache, key: Key, factory: Any, early_refresh: float, negative_ttl: float | None
) -> tuple[Any, FlightToken]:
    """Checks the arguments; returns the L1 value to answer with, or
    MISSING and the token of the flight to run (an XFetch early refresh, or
    a plain miss)."""
    if not callable(factory):
        raise TypeError(f"factory: must be callable, got {type(factory).__name__}")
    if isinstance(early_refresh, bool) or not isinstance(early_refresh, int | float):
        raise TypeError("early_refresh: must be a number (the XFetch beta; 0 turns it off)")
    if not 0 <= early_refresh <= 100:
        raise ValueError(f"early_refresh: must be from 0 to 100, got {early_refresh!r}")
    seconds("negative_ttl", negative_ttl, optional=True)
    value = cache.l1.get(key, MISSING)
    refresh = False
    if value is not MISSING and early_refresh and cache._refresh.due(key, early_refresh):
        cache._count("early_refreshes")
        value, refresh = MISSING, True
    return value, FlightToken(cache.l1, key, refresh)


def compute(
    cache: LayeredCache,
    key: Key,
    factory: Callable[[], Any],
    ttl: float | None,
    lock: bool,
    refresh: bool,
    negative_ttl: float | None,
) -> Flow[Any]:
    """One flight of get_or_set; see the module docstring. A ``None``
    result is stored only with ``negative_ttl`` (for that long)."""
    if not refresh:
        found = yield from cache._get(key, MISSING)
        if found is not MISSING:
            return found
    name = cache.l2.keyspace.name(key)
    token = os.urandom(16)
    held = False
    if lock and not refresh:
        held, found = yield from _wait_lock(cache, key, name, token)
        if found is not MISSING:
            return found
    try:
        started = time.monotonic()
        result = yield Call(factory)
        cache._refresh.computed(key, started, cache.l2.ttl if ttl is None else ttl)
        if result is not None:
            yield from cache._set_many({key: result}, ttl)
        elif negative_ttl is not None:
            yield from cache._set_many({key: None}, negative_ttl)
        return result
    finally:
        if held:
            try:
                yield from cache.l2._unlock(name, token)
            except CacheError:
                cache._count("l2_errors")  # it expires by itself


def _wait_lock(cache: LayeredCache, key: Key, name: bytes, token: bytes) -> Flow[tuple[bool, Any]]:
    """Takes the cluster-wide compute lock of `key`, or waits for the
    holder's value; (held, value found meanwhile or MISSING). Gives up
    waiting (and computes) when the lock expires or Redis fails."""
    deadline = time.monotonic() + cache.lock_ttl_s
    px = max(1, round(cache.lock_ttl_s * 1000))
    try:
        while time.monotonic() < deadline:
            if (yield from cache.l2._try_lock(name, token, px)):
                return True, MISSING
            cache._count("lock_waits")
            yield Sleep(min(0.05, cache.lock_ttl_s / 20))
            found = yield from cache._get(key, MISSING)
            if found is not MISSING:
                return False, found
    except CacheError as error:
        cache._count("l2_errors")
        _log.debug("redis (%s): lock unavailable: %s", cache.l2.namespace, error)
    return False, MISSING
