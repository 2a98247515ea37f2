"""Every change a ``LayeredCache`` makes to its L1 goes through here, so
that L1 never keeps a value that Redis no longer holds.

Three things race with each other in one process: writes (this process's),
L2 reads that fill L1 with what they found, and invalidations (other
processes' writes, by message). The rules:

- **Writes to Redis.** A write-through write is *begun* before its Redis
  round trip and *finished* after it. If two writes of one key overlap in
  time, nobody knows which one Redis applied last (two connections, two
  replies that may cross), so when they finish, L1 drops the key instead of
  keeping either value; the next read fetches what Redis holds. A write
  alone sets L1 to its value. A write that failed (Redis may or may not
  have it) drops the key too.
- **Fills.** An L2 read notes the sequence number before its round trip;
  its fill of a key is skipped if the key was written, begun or
  invalidated since, or is being written now: the value it read may be
  older than what Redis holds by then.
- **Invalidations** drop the keys (or all of L1) and mark them.
- **Not listening.** While the invalidation subscriber is not subscribed
  (before its first subscription, and after it lost the connection), other
  processes' writes go unheard: fills are skipped and a finished write
  drops its key, so L1 holds nothing it could not be told about.

Each of these takes one short lock and applies its L1 change under it, so
the changes reach L1 in the order they were decided. The lock is
re-entrant: an ``on_evict`` callback of the L1 runs under it and may use the
cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from langcluster._core import MemoryCache
from langcluster._sentinel import MISSING
from langcluster.types import Key

__all__ = ["DELETED", "Coherence"]

# The value of a write that deletes its key.
DELETED: Any = type("Deleted", (), {"__repr__": lambda self: "DELETED"})()
# Keys whose last change is remembered one by one; older changes are
# summed up by a floor (a read older than it fills nothing).
_REMEMBERED = 4096


class _Write:
    """The writes of one key now in flight."""

    __slots__ = ("in_flight", "overlapped")

    def __init__(self) -> None:
        self.in_flight = 0
        self.overlapped = False


class Coherence:
    """The L1 of one ``LayeredCache``, changed by the rules of the module
    docstring."""

    def __init__(self, l1: MemoryCache) -> None:
        self.l1 = l1
        self._lock = threading.RLock()
        self._seq = 0
        self._changed: OrderedDict[Key, int] = OrderedDict()  # key -> seq of its last change
        self._floor = 0
        self._writes: dict[Key, _Write] = {}
        self.listening = True  # whether other processes' invalidations reach us

    @property
    def seq(self) -> int:
        """The sequence number to note before an L2 read."""
        return self._seq

    def _mark(self, key: Key) -> None:
        self._changed[key] = self._seq
        self._changed.move_to_end(key)
        if len(self._changed) > _REMEMBERED:
            self._floor = self._changed.popitem(last=False)[1]

    def _set(self, key: Key, value: Any, ttl: float | None) -> None:
        if value is DELETED:
            self.l1.delete(key)
        else:
            self.l1.set(key, value, ttl)

    # ---------------------------------------------------------- writes

    def begin(self, keys: Iterable[Key]) -> None:
        """Writes of ``keys`` are about to go to Redis."""
        with self._lock:
            self._seq += 1
            for key in keys:
                write = self._writes.get(key)
                if write is None:
                    write = self._writes[key] = _Write()
                elif write.in_flight:
                    write.overlapped = True
                write.in_flight += 1
                self._mark(key)

    def finish(
        self, values: Mapping[Key, Any], ttl: float | None, *, degraded: bool = False
    ) -> None:
        """The begun writes of ``values`` are over: L1 takes each value
        (``DELETED`` deletes; ``MISSING``, an outcome not known, drops the
        key), or drops the key if another write of it overlapped. A
        ``degraded`` write (Redis failed, and the cache was told to carry on
        in L1) keeps its value even while not listening."""
        with self._lock:
            self._seq += 1
            for key, value in values.items():
                write = self._writes[key]
                write.in_flight -= 1
                unheard = not self.listening and not degraded
                if write.overlapped or value is MISSING or unheard:
                    self.l1.delete(key)
                else:
                    self._set(key, value, ttl)
                if not write.in_flight:
                    del self._writes[key]
                self._mark(key)

    def apply(self, values: Mapping[Key, Any], ttl: float | None) -> None:
        """Changes L1 at once (a write-back write, which Redis gets later)."""
        with self._lock:
            self._seq += 1
            for key, value in values.items():
                self._set(key, value, ttl)
                self._mark(key)

    # ----------------------------------------------------------- reads

    def fill(self, found: Mapping[Key, tuple[Any, float | None]], seq: int) -> None:
        """Puts what an L2 read started at ``seq`` found into L1, with each
        entry's TTL, except the keys changed since or being written."""
        if not found or not self.listening:
            return
        with self._lock:
            quiet = seq == self._seq
            for key, (value, ttl) in found.items():
                if key in self._writes:
                    continue
                if quiet or (self._floor <= seq and self._changed.get(key, 0) <= seq):
                    self.l1.set(key, value, ttl)

    # --------------------------------------------------- invalidations

    def invalidate(self, keys: Iterable[Key] | None) -> None:
        """Another process changed ``keys`` (None: anything): drops them."""
        with self._lock:
            self._seq += 1
            if keys is None:
                self._floor = self._seq
                self._changed.clear()
                self.l1.clear()
                return
            keys = list(keys)
            for key in keys:
                self._mark(key)
            self.l1.delete_many(keys)
