"""``LayeredCache``: a ``MemoryCache`` (L1, per process) over a
``RedisCache`` (L2, shared), kept coherent across processes.

Reads go L1, then the write-back queue, then L2 (one round trip that also
asks for the seconds the entry has left), and an L2 hit fills L1 with a TTL
no longer than that (and no longer than ``l1_ttl``).

Writes, by ``mode``:

- ``"write-through"``: L2 first, then L1, then an invalidation message. The
  call returns once Redis has the value. If Redis fails, the call raises
  ``CacheError`` (and drops the key from L1), unless
  ``on_l2_error="degrade"``, where the value goes to L1 only and the error
  is counted.
- ``"write-back"``: L1 at once, and the write joins a queue that keeps the
  last write per key. A background thread sends the queue to Redis as
  pipelined batches of up to ``flush_batch`` every ``flush_interval_s``,
  sooner when a batch is full, and on ``flush()`` / ``close()``. When Redis
  is down the queue keeps everything and retries; a write that finds
  ``max_pending`` keys queued waits for a flush, up to
  ``pending_timeout_s``, and then raises ``CacheError`` without writing
  anything. No write that returned is ever dropped, but a write lives only
  in this process until its batch reaches Redis: if the process crashes,
  the writes of the last ``flush_interval_s`` (all queued ones while Redis
  is down) are lost. ``close()`` flushes, and raises if it could not.

Coherence: every write that reaches Redis publishes the keys it changed on
the channel ``langcluster:inv:<namespace>``; the other instances on that
namespace drop them from their L1 as the message arrives (an instance
ignores its own). Pub/sub delivers at most once, so when the subscriber
reconnects it clears the whole L1 (it pings every second, and a connection
silent for 3 s counts as lost, so a partition cannot hide), and ``l1_ttl`` bounds how long any L1
entry can live without Redis. An L2 read that raced with an invalidation
does not fill L1.

The L2 path is guarded by a ``CircuitBreaker``: with Redis dead, a call
costs one refusal, not a socket timeout. Reads never raise for L2 errors:
they serve L1 and count the error.

``get_or_set`` computes a missing key once per process (single flight), and
with ``lock=True`` once per cluster: the first process takes a short Redis
lock (SET NX PX) while the others poll L2 for the value. ``early_refresh``
(the beta of XFetch, Vattani et al. 2015) recomputes a key before it
expires, with a probability that grows as expiry nears and with the time
the factory takes. ``negative_ttl`` caches a ``None`` result for that long;
without it, ``None`` is not cached.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import logging
import math
import os
import random
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from langcluster._core import MemoryCache
from langcluster.breaker import CircuitBreaker
from langcluster.cache import _Flights
from langcluster.errors import CacheError
from langcluster.redis_cache import _MISSING, RedisCache

__all__ = ["LayeredCache"]

_log = logging.getLogger("langcluster.layered")
_DELETED: Any = object()  # a queued delete in write-back mode
_Key = str | bytes | int
_Item = tuple[bytes, bytes | None, int | None]  # Redis name, payload or None (delete), PX
_LEN = struct.Struct(">I")
# The invalidation subscriber pings Redis every _PING_S and reconnects (and
# so clears L1) when it hears nothing for _SILENCE_S.
_PING_S = 1.0
_SILENCE_S = 3.0


class _Entry:
    """A queued write-back write: what Redis gets, and the value for reads."""

    __slots__ = ("name", "payload", "px", "value")

    def __init__(self, name: bytes, payload: bytes | None, px: int | None, value: Any) -> None:
        self.name = name
        self.payload = payload
        self.px = px
        self.value = value


class _Token:
    """The single-flight handle of one key: the flight first looks in L1
    (another caller may have filled it) unless it is an early refresh."""

    __slots__ = ("key", "l1", "refresh")

    def __init__(self, l1: MemoryCache, key: _Key, refresh: bool) -> None:
        self.l1 = l1
        self.key = key
        self.refresh = refresh

    def __hash__(self) -> int:
        return hash((type(self.key), self.key, self.refresh))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Token)
            and type(other.key) is type(self.key)
            and other.key == self.key
            and other.refresh == self.refresh
        )

    def lookup(self, default: Any) -> Any:
        return default if self.refresh else self.l1.get(self.key, default)

    def store(self, value: Any) -> None:
        """The flight's function stores the value itself."""


def _positive(name: str, value: float | None, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name}: must be a positive number, got {value!r}")


class LayeredCache:
    """L1 ``MemoryCache`` over L2 ``RedisCache``; see the module docstring."""

    def __init__(
        self,
        l1: MemoryCache,
        l2: RedisCache,
        *,
        mode: str = "write-through",
        l1_ttl: float | None = None,
        invalidation: bool = True,
        flush_interval_s: float = 0.05,
        flush_batch: int = 1000,
        max_pending: int = 10_000,
        pending_timeout_s: float = 5.0,
        on_l2_error: str = "raise",
        breaker: CircuitBreaker | None = None,
        lock_ttl_s: float = 5.0,
    ) -> None:
        if not isinstance(l1, MemoryCache):
            raise TypeError(f"l1: must be a MemoryCache, got {type(l1).__name__}")
        if not isinstance(l2, RedisCache):
            raise TypeError(f"l2: must be a RedisCache, got {type(l2).__name__}")
        if mode not in ("write-through", "write-back"):
            raise ValueError(f"mode: must be 'write-through' or 'write-back', got {mode!r}")
        if on_l2_error not in ("raise", "degrade"):
            raise ValueError(f"on_l2_error: must be 'raise' or 'degrade', got {on_l2_error!r}")
        _positive("l1_ttl", l1_ttl)
        _positive("flush_interval_s", flush_interval_s, optional=False)
        _positive("pending_timeout_s", pending_timeout_s, optional=False)
        _positive("lock_ttl_s", lock_ttl_s, optional=False)
        for name, count in (("flush_batch", flush_batch), ("max_pending", max_pending)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {count!r}")
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"breaker: must be a CircuitBreaker, got {type(breaker).__name__}")
        self.l1 = l1
        self.l2 = l2
        self.mode = mode
        self.write_back = mode == "write-back"
        self.l1_ttl = l1_ttl
        self.invalidation = invalidation
        self.flush_interval_s = flush_interval_s
        self.flush_batch = flush_batch
        self.max_pending = max_pending
        self.pending_timeout_s = pending_timeout_s
        self.on_l2_error = on_l2_error
        self.lock_ttl_s = lock_ttl_s
        self.breaker = breaker or CircuitBreaker(
            f"redis:{l2.namespace}",
            window_size=20,
            minimum_calls=5,
            open_timeout_s=1.0,
            max_open_timeout_s=10.0,
            record=CacheError,
        )
        self.channel = f"langcluster:inv:{l2.namespace}".encode()
        self._id = os.urandom(16)
        self._l1_get = l1.get
        self._lock = threading.Lock()  # counters, XFetch metadata
        self._counts = dict.fromkeys(
            ("l2_hits", "misses", "l2_errors", "l2_refused", "degraded_writes",
             "flushed_writes", "invalidations_sent", "invalidations_received",
             "l1_resets", "early_refreshes", "lock_waits"),
            0,
        )  # fmt: skip
        self._stripes = [threading.Lock() for _ in range(64)]
        self._flights = _Flights()
        self._meta: dict[Any, tuple[float, float]] = {}  # key -> (delta_s, expires monotonic)
        self._delta_ewma = 0.0
        # Invalidations received: a sequence number, the last number per
        # recently invalidated key, and a floor for keys that fell out.
        self._inv_seq = 0
        self._inv_keys: OrderedDict[Any, int] = OrderedDict()
        self._inv_floor = 0
        # write-back queue: pending (waiting) and inflight (being written)
        self._qcond = threading.Condition(threading.Lock())
        self._pending: dict[Any, _Entry] = {}
        self._inflight: dict[Any, _Entry] = {}
        self._flush_lock = threading.Lock()  # one batch at a time, so per-key order holds
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._subscribed = threading.Event()
        self._pubsub: Any = None
        if self.write_back:
            self._start(self._run_flusher, "flusher")
            _WRITE_BACK.add(self)
        if invalidation:
            self._start(self._run_subscriber, "invalidation")
            # A first read should already be covered by invalidations; with
            # Redis down, the subscriber keeps trying in the background.
            self._subscribed.wait(l2.socket_timeout_s * 2)

    def _start(self, target: Callable[[], None], what: str) -> None:
        thread = threading.Thread(
            target=target, name=f"langcluster-{what}:{self.l2.namespace}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    # ------------------------------------------------------------- helpers

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

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

    def _queued(self, key: _Key) -> _Entry | None:
        if not (self._pending or self._inflight):
            return None
        with self._qcond:
            return self._pending.get(key) or self._inflight.get(key)

    def _fill(
        self, keys: list[_Key], raws: list[Any], ttls: list[float | None], seq: int
    ) -> dict[_Key, Any]:
        """Decodes an L2 read, fills L1 with what it found (unless an
        invalidation arrived meanwhile), and returns the hits."""
        found: dict[_Key, Any] = {}
        quiet = seq == self._inv_seq
        floor_ok = self._inv_floor <= seq
        now = time.monotonic()
        for key, raw, left in zip(keys, raws, ttls, strict=True):
            value = self.l2._decode(raw, key)
            if value is _MISSING:
                continue
            found[key] = value
            if quiet or (floor_ok and self._inv_keys.get(key, 0) <= seq):
                bounds = [t for t in (left, self.l1_ttl) if t is not None]
                self.l1.set(key, value, ttl=min(bounds) if bounds else None)
            if left is not None and self._delta_ewma:
                self._remember(key, self._delta_ewma, now + left)
        hits = len(found)
        with self._lock:
            self._counts["l2_hits"] += hits
            self._counts["misses"] += len(keys) - hits
        return found

    def _remember(self, key: _Key, delta: float, expires: float) -> None:
        with self._lock:
            if len(self._meta) >= max(1024, self.l1.capacity) and key not in self._meta:
                self._meta.pop(next(iter(self._meta)))
            self._meta[key] = (delta, expires)

    def _message(self, names: Iterable[bytes] | None) -> bytes:
        if names is None:
            return b"C" + self._id
        return b"K" + self._id + b"".join(_LEN.pack(len(n)) + n for n in names)

    def _publish(self, names: list[bytes] | None) -> None:
        if not self.invalidation or names == []:
            return
        try:
            self.l2._client.publish(self.channel, self._message(names))
            self._count("invalidations_sent")
        except Exception as error:  # the write itself succeeded
            self._count("l2_errors")
            _log.warning("redis (%s): could not publish an invalidation: %s", self.channel, error)

    async def _apublish(self, names: list[bytes] | None) -> None:
        if not self.invalidation or names == []:
            return
        try:
            await self.l2._async().publish(self.channel, self._message(names))
            self._count("invalidations_sent")
        except Exception as error:
            self._count("l2_errors")
            _log.warning("redis (%s): could not publish an invalidation: %s", self.channel, error)

    # ---------------------------------------------------------------- reads

    def get(self, key: _Key, default: Any = None) -> Any:
        value = self._l1_get(key, _MISSING)
        if value is not _MISSING:
            return value
        return self._get_l2(key, default)

    def _get_l2(self, key: _Key, default: Any) -> Any:
        queued = self._queued(key)
        if queued is not None:
            return default if queued.value is _DELETED else queued.value
        if not self._admit():
            self._count("misses")
            return default
        seq = self._inv_seq
        try:
            raws, ttls = self.l2._fetch([self.l2._key(key)])
        except CacheError as error:
            self._report(error)
            self._count("misses")
            return default
        self._report(None)
        return self._fill([key], raws, ttls, seq).get(key, default)

    async def aget(self, key: _Key, default: Any = None) -> Any:
        value = self._l1_get(key, _MISSING)
        if value is not _MISSING:
            return value
        queued = self._queued(key)
        if queued is not None:
            return default if queued.value is _DELETED else queued.value
        if not self._admit():
            self._count("misses")
            return default
        seq = self._inv_seq
        try:
            raws, ttls = await self.l2._afetch([self.l2._key(key)])
        except CacheError as error:
            self._report(error)
            self._count("misses")
            return default
        self._report(None)
        return self._fill([key], raws, ttls, seq).get(key, default)

    def __contains__(self, key: _Key) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def _local_many(self, keys: list[_Key]) -> tuple[dict[_Key, Any], list[_Key]]:
        """What L1 and the queue answer, and the keys left for L2."""
        found = self.l1.get_many(keys)
        rest = []
        for key in keys:
            if key in found:
                continue
            queued = self._queued(key)
            if queued is None:
                rest.append(key)
            elif queued.value is not _DELETED:
                found[key] = queued.value
        return found, rest

    def get_many(self, keys: Iterable[_Key]) -> dict[_Key, Any]:
        found, rest = self._local_many(list(keys))
        if rest and self._admit():
            seq = self._inv_seq
            try:
                raws, ttls = self.l2._fetch([self.l2._key(k) for k in rest])
            except CacheError as error:
                self._report(error)
            else:
                self._report(None)
                found.update(self._fill(rest, raws, ttls, seq))
                return found
        self._count("misses", len(rest))
        return found

    async def aget_many(self, keys: Iterable[_Key]) -> dict[_Key, Any]:
        found, rest = self._local_many(list(keys))
        if rest and self._admit():
            seq = self._inv_seq
            try:
                raws, ttls = await self.l2._afetch([self.l2._key(k) for k in rest])
            except CacheError as error:
                self._report(error)
            else:
                self._report(None)
                found.update(self._fill(rest, raws, ttls, seq))
                return found
        self._count("misses", len(rest))
        return found

    # --------------------------------------------------------------- writes

    def _prepare(self, mapping: Mapping[_Key, Any], ttl: float | None) -> list[_Item]:
        """Redis names, payloads and PX of a write, every value serialized
        before anything is written."""
        px = self.l2._px(ttl)
        return [(self.l2._key(k), self.l2._dumps(v), px) for k, v in mapping.items()]

    def _through(self, items: list[_Item]) -> list[Any]:
        """Writes to L2 for write-through and returns Redis's replies; on
        failure raises CacheError, or _Degraded (the caller then keeps L1
        only)."""
        if not self._admit():
            error: CacheError = self._refused()
        else:
            try:
                replies = self.l2._store(items)
            except CacheError as failed:
                self._report(failed)
                error = failed
            else:
                self._report(None)
                return replies
        raise self._degrade_or_raise(items, error)

    async def _athrough(self, items: list[_Item]) -> list[Any]:
        if not self._admit():
            error: CacheError = self._refused()
        else:
            try:
                replies = await self.l2._astore(items)
            except CacheError as failed:
                self._report(failed)
                error = failed
            else:
                self._report(None)
                return replies
        raise self._degrade_or_raise(items, error)

    def _degrade_or_raise(self, items: list[_Item], error: CacheError) -> Exception:
        """The exception for a failed write-through: _Degraded, or `error`."""
        if self.on_l2_error == "degrade":
            self._count("degraded_writes", len(items))
            degraded = _Degraded()
            degraded.__cause__ = error
            return degraded
        # Redis may or may not have the write (a timeout): L1 must not keep
        # an older value than Redis might now hold.
        self.l1.delete_many([self.l2._unkey(name) for name, _, _ in items])
        return error

    def set(self, key: _Key, value: Any, ttl: float | None = None) -> None:
        items = self._prepare({key: value}, ttl)
        l1_ttl = self._l1_ttl_for(ttl)
        if self.write_back:
            self._enqueue({key: _Entry(*items[0], value)})
            self.l1.set(key, value, ttl=l1_ttl)
            return
        with self._stripes[hash(key) & 63]:
            try:
                self._through(items)
            except _Degraded:
                self.l1.set(key, value, ttl=l1_ttl)
                return
            self.l1.set(key, value, ttl=l1_ttl)
        self._publish([items[0][0]])

    async def aset(self, key: _Key, value: Any, ttl: float | None = None) -> None:
        items = self._prepare({key: value}, ttl)
        l1_ttl = self._l1_ttl_for(ttl)
        if self.write_back:
            await self._aenqueue({key: _Entry(*items[0], value)})
            self.l1.set(key, value, ttl=l1_ttl)
            return
        try:
            await self._athrough(items)
        except _Degraded:
            self.l1.set(key, value, ttl=l1_ttl)
            return
        self.l1.set(key, value, ttl=l1_ttl)
        await self._apublish([items[0][0]])

    def set_many(self, mapping: Mapping[_Key, Any], ttl: float | None = None) -> None:
        mapping = dict(mapping)
        items = self._prepare(mapping, ttl)
        l1_ttl = self._l1_ttl_for(ttl)
        if self.write_back:
            self._enqueue(
                {k: _Entry(*item, v) for (k, v), item in zip(mapping.items(), items, strict=True)}
            )
        elif items:
            try:
                self._through(items)
            except _Degraded:
                self.l1.set_many(mapping, ttl=l1_ttl)
                return
        self.l1.set_many(mapping, ttl=l1_ttl)
        if not self.write_back:
            self._publish([name for name, _, _ in items])

    async def aset_many(self, mapping: Mapping[_Key, Any], ttl: float | None = None) -> None:
        mapping = dict(mapping)
        items = self._prepare(mapping, ttl)
        l1_ttl = self._l1_ttl_for(ttl)
        if self.write_back:
            await self._aenqueue(
                {k: _Entry(*item, v) for (k, v), item in zip(mapping.items(), items, strict=True)}
            )
        elif items:
            try:
                await self._athrough(items)
            except _Degraded:
                self.l1.set_many(mapping, ttl=l1_ttl)
                return
        self.l1.set_many(mapping, ttl=l1_ttl)
        if not self.write_back:
            await self._apublish([name for name, _, _ in items])

    def delete(self, key: _Key) -> bool:
        """Removes `key` from both tiers; True if either had it (in
        write-back mode: if L1 or the queue had it)."""
        return self.delete_many([key]) > 0

    async def adelete(self, key: _Key) -> bool:
        return await self.adelete_many([key]) > 0

    def _deletes(self, keys: list[_Key]) -> list[_Item]:
        return [(self.l2._key(k), None, None) for k in keys]

    def delete_many(self, keys: Iterable[_Key]) -> int:
        keys = list(keys)
        items = self._deletes(keys)
        if self.write_back:
            had = sum(1 for k in keys if (q := self._queued(k)) and q.value is not _DELETED)
            self._enqueue({k: _Entry(*item, _DELETED) for k, item in zip(keys, items, strict=True)})
            return max(had, self.l1.delete_many(keys))
        in_l1 = self.l1.delete_many(keys)
        if not items:
            return 0
        try:
            removed = sum(self._through(items))
        except _Degraded:
            return in_l1
        self._publish([name for name, _, _ in items])
        return int(removed)

    async def adelete_many(self, keys: Iterable[_Key]) -> int:
        keys = list(keys)
        items = self._deletes(keys)
        if self.write_back:
            had = sum(1 for k in keys if (q := self._queued(k)) and q.value is not _DELETED)
            await self._aenqueue(
                {k: _Entry(*item, _DELETED) for k, item in zip(keys, items, strict=True)}
            )
            return max(had, self.l1.delete_many(keys))
        in_l1 = self.l1.delete_many(keys)
        if not items:
            return 0
        try:
            removed = sum(await self._athrough(items))
        except _Degraded:
            return in_l1
        await self._apublish([name for name, _, _ in items])
        return int(removed)

    def clear(self) -> None:
        """Empties this namespace everywhere: the queue, Redis, this L1 and
        (by a message) the other instances' L1."""
        with self._flush_lock, self._qcond:
            self._pending.clear()
            self._qcond.notify_all()
        self.l2.clear()
        self.l1.clear()
        self._publish(None)

    async def aclear(self) -> None:
        # In a thread: it must wait for a write-back batch in flight, or that
        # batch could land after the UNLINKs.
        await asyncio.to_thread(self.clear)

    # ------------------------------------------------- write-back queue

    def _has_room(self, entries: Mapping[Any, _Entry]) -> bool:
        new = sum(1 for k in entries if k not in self._pending)
        used = len(self._pending) + len(self._inflight)
        return new == 0 or used + new <= self.max_pending or used == 0

    def _put(self, entries: Mapping[Any, _Entry]) -> None:
        self._pending.update(entries)
        if len(self._pending) >= self.flush_batch:
            self._wake.set()

    def _full(self) -> CacheError:
        return CacheError(
            f"redis ({self.l2.namespace}): the write-back queue is full "
            f"(max_pending={self.max_pending}) and was not drained within "
            f"pending_timeout_s={self.pending_timeout_s}; nothing was written"
        )

    def _enqueue(self, entries: Mapping[Any, _Entry]) -> None:
        deadline = time.monotonic() + self.pending_timeout_s
        with self._qcond:
            while not self._has_room(entries):
                self._wake.set()
                left = deadline - time.monotonic()
                timed_out = left <= 0 or not self._qcond.wait(left)
                if timed_out and not self._has_room(entries):
                    raise self._full()
            self._put(entries)

    async def _aenqueue(self, entries: Mapping[Any, _Entry]) -> None:
        with self._qcond:
            if self._has_room(entries):
                self._put(entries)
                return
        # Full: wait for a flush in a worker thread, not on the event loop.
        await asyncio.to_thread(self._enqueue, entries)

    def _flush_once(self, forced: bool = False) -> bool:
        """Sends what is queued, in batches; True when the queue was empty
        or fully sent. On a Redis error the unsent writes go back to the
        queue (behind any newer write of the same key) and CacheError is
        raised. `forced` (an explicit flush) tries Redis even when the
        breaker is open."""
        with self._flush_lock:
            with self._qcond:
                if not self._pending:
                    return True
                self._inflight, self._pending = self._pending, {}
            try:
                while True:
                    with self._qcond:
                        keys = list(self._inflight)[: self.flush_batch]
                        batch = [self._inflight[k] for k in keys]
                    if not batch:
                        return True
                    if not self._admit() and not forced:
                        raise self._refused()
                    items = [(e.name, e.payload, e.px) for e in batch]
                    try:
                        self.l2._store(items)
                    except CacheError as error:
                        self._report(error)
                        raise
                    self._report(None)
                    with self._qcond:
                        for k in keys:
                            del self._inflight[k]
                        self._qcond.notify_all()
                    self._count("flushed_writes", len(items))
                    self._publish([e.name for e in batch])
            finally:
                with self._qcond:
                    if self._inflight:  # not sent: back in the queue
                        for k, entry in self._inflight.items():
                            self._pending.setdefault(k, entry)
                        self._inflight = {}

    def flush(self) -> None:
        """Sends every queued write to Redis now, even while the breaker is
        open; raises CacheError if Redis fails (the writes stay queued)."""
        while True:
            self._flush_once(forced=True)
            with self._qcond:
                if not self._pending:
                    return

    async def aflush(self) -> None:
        await asyncio.to_thread(self.flush)

    def _run_flusher(self) -> None:
        backoff = self.flush_interval_s
        while not self._closing.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            try:
                self._flush_once()
                backoff = self.flush_interval_s
            except CacheError as error:
                backoff = min(max(backoff * 2, 0.05), 1.0)
                _log.debug("redis (%s): flush failed, retrying: %s", self.l2.namespace, error)
            except Exception:  # pragma: no cover - a bug; keep flushing
                _log.exception("redis (%s): flush failed", self.l2.namespace)

    # ------------------------------------------------------ invalidation

    def _on_message(self, data: bytes) -> None:
        op, sender = data[:1], data[1:17]
        if sender == self._id:
            return
        self._count("invalidations_received")
        if op == b"K":
            keys, at, body = [], 17, data
            try:
                while at < len(body):
                    (size,) = _LEN.unpack_from(body, at)
                    keys.append(self.l2._unkey(body[at + 4 : at + 4 + size]))
                    at += 4 + size
            except (struct.error, ValueError, UnicodeDecodeError):
                op = b"?"
            else:
                self._invalidated(keys)
                return
        if op != b"C":
            _log.warning("redis (%s): an unreadable invalidation; clearing L1", self.channel)
        self._invalidated(None)

    def _invalidated(self, keys: list[_Key] | None) -> None:
        """Drops `keys` (None: everything) from L1, and marks them so an L2
        read already under way does not put the old value back."""
        self._inv_seq += 1
        seq = self._inv_seq
        if keys is None:
            self._inv_floor = seq
            self._inv_keys.clear()
            self.l1.clear()
            return
        for key in keys:
            self._inv_keys[key] = seq
            self._inv_keys.move_to_end(key)
        while len(self._inv_keys) > 4096:
            self._inv_floor = self._inv_keys.popitem(last=False)[1]
        self.l1.delete_many(keys)

    def _run_subscriber(self) -> None:
        backoff = 0.05
        connected_before = False
        while not self._closing.is_set():
            pubsub = None
            try:
                pubsub = self.l2._client.pubsub()
                pubsub.subscribe(self.channel)
                heard = pinged = time.monotonic()
                while not self._closing.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    now = time.monotonic()
                    if message is not None:
                        heard = now
                    elif now - heard > _SILENCE_S:
                        # A partition can leave the socket open but dead;
                        # invalidations would then be lost without notice.
                        raise ConnectionError(f"no answer to PING for {_SILENCE_S} s")
                    if now - pinged >= _PING_S:
                        pubsub.ping()
                        pinged = now
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        if connected_before:
                            # Messages sent while we were away are lost.
                            self._invalidated(None)
                            self._count("l1_resets")
                            # Redis is evidently back: end the breaker's
                            # wait, and let queued writes go now.
                            self.breaker.reset()
                            self._wake.set()
                        connected_before = True
                        backoff = 0.05
                        self._subscribed.set()
                    elif message["type"] == "message":
                        self._on_message(message["data"])
            except Exception as error:
                self._subscribed.clear()
                self._count("l2_errors")
                _log.debug("redis (%s): subscriber lost: %s", self.channel, error)
                self._closing.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    # --------------------------------------------------------- get_or_set

    def _early(self, key: _Key, beta: float) -> bool:
        """XFetch: True when this caller should recompute before expiry."""
        meta = self._meta.get(key)
        if meta is None or beta <= 0:
            return False
        delta, expires = meta
        return time.monotonic() - delta * beta * math.log(1.0 - random.random()) >= expires

    def _computed(self, key: _Key, started: float, ttl: float | None) -> None:
        delta = time.monotonic() - started
        with self._lock:
            old = self._delta_ewma
            self._delta_ewma = 0.8 * old + 0.2 * delta if old else delta
        ttl = self.l2.ttl if ttl is None else ttl
        if ttl is not None:
            self._remember(key, delta, time.monotonic() + ttl)

    def _check_flight_args(
        self, factory: Any, early_refresh: float, negative_ttl: float | None
    ) -> None:
        if not callable(factory):
            raise TypeError(f"factory: must be callable, got {type(factory).__name__}")
        if isinstance(early_refresh, bool) or not isinstance(early_refresh, int | float):
            raise TypeError("early_refresh: must be a number (the XFetch beta; 0 turns it off)")
        if early_refresh < 0:
            raise ValueError(f"early_refresh: must be >= 0, got {early_refresh!r}")
        _positive("negative_ttl", negative_ttl)

    def _flight_start(
        self, key: _Key, factory: Any, early_refresh: float, negative_ttl: float | None
    ) -> tuple[Any, bool]:
        """Checks the arguments; (the L1 value to return, False), or
        (_MISSING, whether this is an XFetch early refresh) to compute."""
        self._check_flight_args(factory, early_refresh, negative_ttl)
        value = self._l1_get(key, _MISSING)
        if value is _MISSING:
            return _MISSING, False
        if early_refresh and self._early(key, early_refresh):
            self._count("early_refreshes")
            return _MISSING, True
        return value, False

    def get_or_set(
        self,
        key: _Key,
        factory: Callable[[], Any],
        ttl: float | None = None,
        *,
        lock: bool = False,
        early_refresh: float = 0.0,
        negative_ttl: float | None = None,
    ) -> Any:
        """The cached value of `key`, or `factory()` stored with `ttl`."""
        value, refresh = self._flight_start(key, factory, early_refresh, negative_ttl)
        if value is not _MISSING:
            return value

        def compute() -> Any:
            if not refresh:
                found = self.get(key, _MISSING)
                if found is not _MISSING:
                    return found
            name = self.l2._key(key)
            token = os.urandom(16)
            held = False
            if lock and not refresh:
                held, found = self._wait_lock(key, name, token)
                if found is not _MISSING:
                    return found
            try:
                started = time.monotonic()
                result = factory()
                store, store_ttl = self._to_store(key, result, ttl, negative_ttl, started)
                if store:
                    self.set(key, result, store_ttl)
                return result
            finally:
                if held:
                    self._release(name, token)

        return self._flights.run(compute, _Token(self.l1, key, refresh), (), None)  # type: ignore[arg-type]

    def _to_store(
        self, key: _Key, result: Any, ttl: float | None, negative_ttl: float | None, started: float
    ) -> tuple[bool, float | None]:
        """Notes the compute time; whether to store `result`, and for how
        long (a None result only with negative caching)."""
        self._computed(key, started, ttl)
        if result is None:
            return negative_ttl is not None, negative_ttl
        return True, ttl

    def _lock_poll_s(self) -> float:
        return min(0.05, self.lock_ttl_s / 20)

    def _wait_lock(self, key: _Key, name: bytes, token: bytes) -> tuple[bool, Any]:
        """Takes the cluster-wide compute lock of `key`, or waits for the
        holder's value; (held, value found meanwhile or _MISSING). Gives up
        waiting (and computes) when the lock expires or Redis fails."""
        deadline = time.monotonic() + self.lock_ttl_s
        px = max(1, round(self.lock_ttl_s * 1000))
        try:
            while time.monotonic() < deadline:
                if self.l2._try_lock(name, token, px):
                    return True, _MISSING
                self._count("lock_waits")
                time.sleep(self._lock_poll_s())
                found = self.get(key, _MISSING)
                if found is not _MISSING:
                    return False, found
        except CacheError as error:
            self._count("l2_errors")
            _log.debug("redis (%s): lock unavailable: %s", self.l2.namespace, error)
        return False, _MISSING

    def _release(self, name: bytes, token: bytes) -> None:
        try:
            self.l2._unlock(name, token)
        except CacheError:
            self._count("l2_errors")  # it expires by itself

    async def _arelease(self, name: bytes, token: bytes) -> None:
        try:
            await self.l2._aunlock(name, token)
        except CacheError:
            self._count("l2_errors")

    async def aget_or_set(
        self,
        key: _Key,
        factory: Callable[[], Awaitable[Any] | Any],
        ttl: float | None = None,
        *,
        lock: bool = False,
        early_refresh: float = 0.0,
        negative_ttl: float | None = None,
    ) -> Any:
        """`get_or_set` for asyncio; `factory` may be sync or async."""
        value, refresh = self._flight_start(key, factory, early_refresh, negative_ttl)
        if value is not _MISSING:
            return value

        async def compute() -> Any:
            if not refresh:
                found = await self.aget(key, _MISSING)
                if found is not _MISSING:
                    return found
            name = self.l2._key(key)
            token = os.urandom(16)
            held = False
            if lock and not refresh:
                held, found = await self._await_lock(key, name, token)
                if found is not _MISSING:
                    return found
            try:
                started = time.monotonic()
                result = factory()
                if inspect.isawaitable(result):
                    result = await result
                store, store_ttl = self._to_store(key, result, ttl, negative_ttl, started)
                if store:
                    await self.aset(key, result, store_ttl)
                return result
            finally:
                if held:
                    await self._arelease(name, token)

        return await self._flights.arun(compute, _Token(self.l1, key, refresh), (), None)  # type: ignore[arg-type]

    async def _await_lock(self, key: _Key, name: bytes, token: bytes) -> tuple[bool, Any]:
        deadline = time.monotonic() + self.lock_ttl_s
        px = max(1, round(self.lock_ttl_s * 1000))
        try:
            while time.monotonic() < deadline:
                if await self.l2._atry_lock(name, token, px):
                    return True, _MISSING
                self._count("lock_waits")
                await asyncio.sleep(self._lock_poll_s())
                found = await self.aget(key, _MISSING)
                if found is not _MISSING:
                    return False, found
        except CacheError as error:
            self._count("l2_errors")
            _log.debug("redis (%s): lock unavailable: %s", self.l2.namespace, error)
        return False, _MISSING

    # ------------------------------------------------------------ the rest

    def stats(self) -> dict[str, Any]:
        """Counters of both tiers. ``l1_hits`` is the L1 cache's own hit
        count (so it includes direct use of that MemoryCache)."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
        out["l1_hits"] = self.l1.stats()["hits"]
        with self._qcond:
            out["pending_writes"] = len(self._pending) + len(self._inflight)
        out["l2_rejected"] = self.l2.stats()["rejected"]
        out["breaker"] = self.breaker.state
        out["subscribed"] = self._subscribed.is_set()
        return out

    def close(self) -> None:
        """Flushes the write-back queue, stops the background threads and
        closes the RedisCache's connections. Raises CacheError if queued
        writes could not reach Redis; they stay queued, and ``flush()`` may
        be called again (it reconnects)."""
        self._closing.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        try:
            if self.write_back:
                self.flush()
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


class _Degraded(Exception):
    """L2 failed and ``on_l2_error="degrade"``: write L1 only."""


_WRITE_BACK: weakref.WeakSet[LayeredCache] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """The daemon flusher dies with the interpreter: flush what is queued."""
    for cache in list(_WRITE_BACK):
        try:
            cache.flush()
        except CacheError as error:
            _log.error("redis (%s): queued writes lost at exit: %s", cache.l2.namespace, error)
