"""``LayeredCache``: a ``MemoryCache`` (L1, per process) over a ``RedisCache``
(L2, shared), kept coherent across processes.

This module holds the orchestration; its parts live beside it: the L1
rules in ``coherence``, the write-back queue in ``writeback``, pub/sub in
``invalidation``, XFetch in ``refresh``. Every operation is one flow
(``langcluster._flow``), driven in the calling thread by the sync method
and on the running loop by its ``a`` twin.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from langcluster._aio import running_loop
from langcluster._checks import choice, count, flag, seconds
from langcluster._core import MemoryCache
from langcluster._counters import Counters
from langcluster._flow import Flow, adrive, drive
from langcluster._sentinel import MISSING
from langcluster.breaker import BreakerConfig
from langcluster.cache.coherence import DELETED, Coherence
from langcluster.cache.compute import compute, start
from langcluster.cache.invalidation import Invalidations
from langcluster.cache.memory import Flights
from langcluster.cache.redis import Item, RedisCache
from langcluster.cache.refresh import EarlyRefresh
from langcluster.cache.writeback import Enqueue, Entry, WriteBackQueue
from langcluster.errors import CacheError
from langcluster.types import Key, L2ErrorPolicy, WriteMode

__all__ = ["LayeredCache"]

_log = logging.getLogger(__name__)

# The breaker on the Redis path: quicker to retry than a model server's,
# since a Redis outage is usually a restart or a failover of seconds.
REDIS_BREAKER = BreakerConfig(open_timeout_s=1.0, max_open_timeout_s=10.0)


class LayeredCache:
    """L1 ``MemoryCache`` over L2 ``RedisCache``, kept coherent across
    processes; sync and async (``aget``, ``aset``, ...).

    **Reads** go L1, then the write-back queue, then L2 (one round trip
    that also asks for the seconds the entry has left), and an L2 hit fills
    L1 with a TTL no longer than that (and no longer than ``l1_ttl``).

    **Writes**, by ``mode``:

    - ``"write_through"`` (the default): L2 first, then L1, then an
      invalidation message. The call returns once Redis has the value. If
      Redis fails, the call raises ``CacheError`` (and drops the key from
      L1), unless ``on_l2_error="degrade"``, where the value goes to L1
      only and the error is counted. Concurrent writes of one key leave L1
      without the key rather than with a value Redis may not hold.
    - ``"write_back"``: L1 at once, and the write joins a queue that keeps
      the last write per key, sent to Redis in pipelined batches of up to
      ``flush_batch`` every ``flush_interval_s``, sooner when a batch is
      full, and on ``flush()`` / ``close()``. With Redis down the queue
      keeps everything and retries; a write that finds ``max_pending`` keys
      queued waits up to ``pending_timeout_s``, then raises ``CacheError``
      without writing. No write that returned is dropped, but it lives only
      in this process until its batch reaches Redis: a crash loses the last
      ``flush_interval_s`` of writes (all queued ones while Redis is down).

    **Coherence**: every write that reaches Redis publishes the keys it
    changed on ``langcluster:inv:<namespace>``, and the other instances
    drop them from L1 as the message arrives (``invalidation=False`` turns
    this off). Pub/sub delivers at most once, so a reconnecting subscriber
    clears L1 (it pings every second; 3 s of silence counts as a lost
    connection), and ``l1_ttl`` bounds how long an L1 entry can live
    without Redis. An L2 read that raced a write or an invalidation does
    not fill L1.

    The L2 path is guarded by a circuit breaker made from ``breaker`` (by
    default open 1 s, up to 10 s): with Redis dead, a call costs a refusal,
    not a socket timeout. Reads never raise for L2 errors: they serve L1
    and count the error.

    ``get_or_set`` computes a missing key once per process (single flight),
    and with ``lock=True`` once per cluster (a Redis lock of ``lock_ttl_s``
    while the others poll L2). ``early_refresh`` (XFetch's beta) recomputes
    a key before it expires, more likely as expiry nears and the longer the
    factory takes. ``negative_ttl`` caches a ``None`` result for that long.
    """

    def __init__(
        self,
        l1: MemoryCache,
        l2: RedisCache,
        *,
        mode: WriteMode = "write_through",
        l1_ttl: float | None = None,
        invalidation: bool = True,
        flush_interval_s: float = 0.05,
        flush_batch: int = 1000,
        max_pending: int = 10_000,
        pending_timeout_s: float = 5.0,
        on_l2_error: L2ErrorPolicy = "raise",
        breaker: BreakerConfig = REDIS_BREAKER,
        lock_ttl_s: float = 5.0,
    ) -> None:
        if not isinstance(l1, MemoryCache):
            raise TypeError(f"l1: must be a MemoryCache, got {type(l1).__name__}")
        if not isinstance(l2, RedisCache):
            raise TypeError(f"l2: must be a RedisCache, got {type(l2).__name__}")
        choice("mode", mode, ("write_through", "write_back"))
        choice("on_l2_error", on_l2_error, ("raise", "degrade"))
        seconds("l1_ttl", l1_ttl, optional=True)
        seconds("flush_interval_s", flush_interval_s)
        seconds("pending_timeout_s", pending_timeout_s)
        seconds("lock_ttl_s", lock_ttl_s)
        flag("invalidation", invalidation)
        count("flush_batch", flush_batch)
        count("max_pending", max_pending)
        if not isinstance(breaker, BreakerConfig):
            raise TypeError(f"breaker: must be a BreakerConfig, got {type(breaker).__name__}")
        self.l1 = l1
        self.l2 = l2
        self.mode = mode
        self.l1_ttl = l1_ttl
        self.on_l2_error = on_l2_error
        self.lock_ttl_s = lock_ttl_s
        self.breaker = breaker.make(f"redis:{l2.namespace}")
        self._l1_get = l1.get
        self._counts = Counters(
            "l2_hits", "misses", "l2_errors", "l2_refused", "degraded_writes", "flushed_writes",
            "invalidations_sent", "invalidations_received", "l1_resets", "early_refreshes",
            "lock_waits",
        )  # fmt: skip
        self._count = self._counts.add
        self._flights = Flights()
        self._refresh = EarlyRefresh(limit=max(1024, l1.capacity))
        self._coherence = Coherence(l1)
        self._queue: WriteBackQueue | None = None
        if mode == "write_back":
            self._queue = WriteBackQueue(
                self._send,
                name=l2.namespace,
                interval_s=flush_interval_s,
                batch=flush_batch,
                max_pending=max_pending,
                pending_timeout_s=pending_timeout_s,
            )
        self._invalidations: Invalidations | None = None
        if invalidation:
            self._invalidations = Invalidations(
                l2, self._coherence, on_reconnect=self._on_reconnect, count=self._count
            )
            # L1 is not filled until it is subscribed (coherence.py). A sync
            # caller waits here, so its first reads fill L1; a running loop
            # must not block: the subscriber comes up in the background.
            if running_loop() is None:
                self._invalidations.wait_subscribed(l2.socket_timeout_s * 2)

    # ------------------------------------------------------------- helpers

    def _l1_ttl_for(self, ttl: float | None) -> float | None:
        """L1 may keep an entry no longer than L2 does, nor than l1_ttl."""
        bounds = [t for t in (self.l2.ttl if ttl is None else ttl, self.l1_ttl) if t is not None]
        return min(bounds) if bounds else None

    def _admit(self) -> bool:
        if self.breaker.allow():
            return True
        self._count("l2_refused")
        return False

    def _refused(self) -> CacheError:
        return CacheError(
            f"redis ({self.l2.namespace}): the circuit is open after repeated errors; "
            f"not trying for now"
        )

    def _report(self, error: BaseException | None) -> None:
        if error is None:
            self.breaker.record_success()
        else:
            self.breaker.record_failure()
            self._count("l2_errors")

    def _on_reconnect(self) -> None:
        # Redis is evidently back: end the breaker's wait, let queued writes go.
        self.breaker.reset()
        if self._queue is not None:
            self._queue.wake()

    def _announce(self, names: list[bytes] | None) -> Flow[None]:
        """Publishes that `names` (None: everything) changed. A failure is
        counted and logged: the write itself succeeded."""
        if self._invalidations is None or names == []:
            return
        try:
            yield from self.l2._publish(
                self._invalidations.channel, self._invalidations.message(names)
            )
            self._count("invalidations_sent")
        except CacheError as error:
            self._count("l2_errors")
            _log.warning(
                "redis (%s): could not publish an invalidation: %s", self.l2.namespace, error
            )

    # ---------------------------------------------------------------- reads

    def _queued(self, key: Key) -> Any:
        """The value the write-back queue holds for `key`, or MISSING."""
        entry = self._queue.queued(key) if self._queue is not None else None
        return MISSING if entry is None else entry.value

    def _read(self, keys: list[Key]) -> Flow[dict[Key, Any]]:
        """What L2 holds of `keys`, filling L1 with it; an L2 failure or an
        open breaker reads as misses."""
        if not self._admit():
            self._count("misses", len(keys))
            return {}
        seq = self._coherence.seq
        try:
            raws, ttls = yield from self.l2._fetch([self.l2.keyspace.name(k) for k in keys])
        except CacheError as error:
            self._report(error)
            self._count("misses", len(keys))
            return {}
        self._report(None)
        found: dict[Key, Any] = {}
        fills: dict[Key, tuple[Any, float | None]] = {}
        for key, raw, left in zip(keys, raws, ttls, strict=True):
            value = self.l2._decode(raw, key)
            if value is MISSING:
                continue
            found[key] = value
            bounds = [t for t in (left, self.l1_ttl) if t is not None]
            fills[key] = (value, min(bounds) if bounds else None)
            self._refresh.read(key, left)
        self._coherence.fill(fills, seq)
        self._count("l2_hits", len(found))
        self._count("misses", len(keys) - len(found))
        return found

    def _get(self, key: Key, default: Any) -> Flow[Any]:
        queued = self._queued(key)
        if queued is not MISSING:
            return default if queued is DELETED else queued
        found = yield from self._read([key])
        return found.get(key, default)

    def _get_many(self, keys: Iterable[Key]) -> Flow[dict[Key, Any]]:
        keys = list(keys)
        found = self.l1.get_many(keys)
        rest = []
        for key in keys:
            if key in found:
                continue
            queued = self._queued(key)
            if queued is MISSING:
                rest.append(key)
            elif queued is not DELETED:
                found[key] = queued
        if rest:
            found.update((yield from self._read(rest)))
        return found

    def get(self, key: Key, default: Any = None) -> Any:
        """The value of `key` from L1, the queue or L2, or `default`."""
        value = self._l1_get(key, MISSING)
        if value is not MISSING:
            return value
        return drive(self._get(key, default))

    async def aget(self, key: Key, default: Any = None) -> Any:
        value = self._l1_get(key, MISSING)
        if value is not MISSING:
            return value
        return await adrive(self._get(key, default))

    def __contains__(self, key: Key) -> bool:
        return self.get(key, MISSING) is not MISSING

    def get_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """The entries found among `keys`; what L1 and the queue lack comes
        from L2 in one round trip."""
        return drive(self._get_many(keys))

    async def aget_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        return await adrive(self._get_many(keys))

    # --------------------------------------------------------------- writes

    def _through(
        self, items: list[Item], values: dict[Key, Any], l1_ttl: float | None
    ) -> Flow[list[Any] | None]:
        """Write-through: Redis, then L1, then the invalidation. Returns
        Redis's replies, or None when degraded (L1 only)."""
        self._coherence.begin(values)
        try:
            if not self._admit():
                raise self._refused()
            try:
                replies = yield from self.l2._store(items)
            except CacheError as error:
                self._report(error)
                raise
            self._report(None)
        except CacheError:
            if self.on_l2_error == "degrade":
                self._count("degraded_writes", len(items))
                self._coherence.finish(values, l1_ttl, degraded=True)
                return None
            # Redis may or may not have the write (a timeout): L1 must not
            # keep a value older than what Redis might hold now.
            self._coherence.finish(dict.fromkeys(values, MISSING), None)
            raise
        except BaseException:  # cancelled mid-write: the outcome is not known
            self._coherence.finish(dict.fromkeys(values, MISSING), None)
            raise
        self._coherence.finish(values, l1_ttl)
        yield from self._announce([name for name, _, _ in items])
        return replies

    def _set_many(self, mapping: Mapping[Key, Any], ttl: float | None) -> Flow[None]:
        values = dict(mapping)
        items = self.l2._items(values, ttl)  # every value serialized before any write
        l1_ttl = self._l1_ttl_for(ttl)
        if self._queue is not None:
            entries = {
                k: Entry(*item, v) for (k, v), item in zip(values.items(), items, strict=True)
            }
            yield Enqueue(self._queue, entries, lambda: self._coherence.apply(values, l1_ttl))
        elif items:
            yield from self._through(items, values, l1_ttl)

    def _delete_many(self, keys: Iterable[Key]) -> Flow[int]:
        keys = list(keys)
        items: list[Item] = [(self.l2.keyspace.name(k), None, None) for k in keys]
        deletes = dict.fromkeys(keys, DELETED)
        in_l1 = sum(1 for k in keys if k in self.l1)
        if self._queue is not None:
            queued = sum(
                1 for k in keys if (q := self._queued(k)) is not MISSING and q is not DELETED
            )
            entries = {k: Entry(*item, DELETED) for k, item in zip(keys, items, strict=True)}
            yield Enqueue(self._queue, entries, lambda: self._coherence.apply(deletes, None))
            return max(queued, in_l1)
        if not items:
            return 0
        replies = yield from self._through(items, deletes, None)
        return in_l1 if replies is None else int(sum(replies))

    def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        """Stores `value` under `key` for `ttl` seconds (default: the L2's)."""
        drive(self._set_many({key: value}, ttl))

    async def aset(self, key: Key, value: Any, ttl: float | None = None) -> None:
        await adrive(self._set_many({key: value}, ttl))

    def set_many(self, mapping: Mapping[Key, Any], ttl: float | None = None) -> None:
        """Stores every item of `mapping` (one round trip to Redis)."""
        drive(self._set_many(mapping, ttl))

    async def aset_many(self, mapping: Mapping[Key, Any], ttl: float | None = None) -> None:
        await adrive(self._set_many(mapping, ttl))

    def delete(self, key: Key) -> bool:
        """Removes `key` from both tiers; True if either had it (in
        write-back mode: if L1 or the queue had it)."""
        return drive(self._delete_many([key])) > 0

    async def adelete(self, key: Key) -> bool:
        return await adrive(self._delete_many([key])) > 0

    def delete_many(self, keys: Iterable[Key]) -> int:
        """Removes `keys` from both tiers; how many were there."""
        return drive(self._delete_many(keys))

    async def adelete_many(self, keys: Iterable[Key]) -> int:
        return await adrive(self._delete_many(keys))

    def clear(self) -> None:
        """Empties this namespace everywhere: the queue, Redis, this L1 and
        (by a message) the other instances' L1."""
        if self._queue is not None:
            self._queue.drop_all()  # waits for a batch in flight, which could land after
        self.l2.clear()
        self._coherence.invalidate(None)
        drive(self._announce(None))

    async def aclear(self) -> None:
        # In a thread: it may wait for a write-back batch in flight.
        await asyncio.to_thread(self.clear)

    # ------------------------------------------------------- write-back

    def _send(self, entries: list[Entry], forced: bool) -> None:
        """Sends one write-back batch (the queue's thread, or a flush)."""
        if not self._admit() and not forced:
            raise self._refused()
        items = [(e.name, e.payload, e.px) for e in entries]
        try:
            drive(self.l2._store(items))
        except CacheError as error:
            self._report(error)
            raise
        self._report(None)
        self._count("flushed_writes", len(items))
        drive(self._announce([e.name for e in entries]))

    def flush(self) -> None:
        """Sends every queued write to Redis now, even while the breaker is
        open; raises CacheError if Redis fails (the writes stay queued)."""
        if self._queue is not None:
            self._queue.flush()

    async def aflush(self) -> None:
        await asyncio.to_thread(self.flush)

    # --------------------------------------------------------- get_or_set

    def get_or_set(
        self,
        key: Key,
        factory: Callable[[], Any],
        ttl: float | None = None,
        *,
        lock: bool = False,
        early_refresh: float = 0.0,
        negative_ttl: float | None = None,
    ) -> Any:
        """The cached value of `key`, or `factory()` stored with `ttl`."""
        value, token = start(self, key, factory, early_refresh, negative_ttl)
        if value is not MISSING:
            return value
        flight = compute(self, key, factory, ttl, lock, token.refresh, negative_ttl)
        return self._flights.run(drive, token, (flight,), None)

    async def aget_or_set(
        self,
        key: Key,
        factory: Callable[[], Awaitable[Any] | Any],
        ttl: float | None = None,
        *,
        lock: bool = False,
        early_refresh: float = 0.0,
        negative_ttl: float | None = None,
    ) -> Any:
        """`get_or_set` on asyncio; `factory` may be sync or async."""
        value, token = start(self, key, factory, early_refresh, negative_ttl)
        if value is not MISSING:
            return value
        flight = compute(self, key, factory, ttl, lock, token.refresh, negative_ttl)
        return await self._flights.arun(adrive, token, (flight,), None)

    # ------------------------------------------------------------ the rest

    def stats(self) -> dict[str, Any]:
        """Counters of both tiers. ``l1_hits`` is the L1 cache's own hit
        count (so it includes direct use of that MemoryCache)."""
        out: dict[str, Any] = self._counts.snapshot()
        out["l1_hits"] = self.l1.stats()["hits"]
        out["pending_writes"] = len(self._queue) if self._queue is not None else 0
        out["l2_rejected"] = self.l2.stats()["rejected"]
        out["breaker"] = self.breaker.state
        out["subscribed"] = self._invalidations is not None and self._invalidations.subscribed
        return out

    def close(self) -> None:
        """Flushes the write-back queue, stops the background threads and
        closes the RedisCache's connections. Raises CacheError if queued
        writes could not reach Redis; they stay queued, and ``flush()`` may
        be called again (it reconnects)."""
        try:
            if self._invalidations is not None:
                self._invalidations.close()
            if self._queue is not None:
                self._queue.close()
        finally:
            self.l2.close()

    async def aclose(self) -> None:
        try:
            await asyncio.to_thread(self.close)
        finally:
            await self.l2.aclose()

    def __enter__(self) -> LayeredCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> LayeredCache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
