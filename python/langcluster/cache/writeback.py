"""The write-back queue of a ``LayeredCache``: writes acknowledged at once
and sent to Redis later, in batches, by a thread of its own.

- The queue keeps the last write per key (a delete is a write too), so a
  hot key rewritten a thousand times between flushes costs one command.
- A daemon thread sends pipelined batches of up to ``batch`` every
  ``interval_s``, sooner when a batch is full, and ``flush()`` sends
  everything now. One batch is in flight at a time, so writes of a key
  reach Redis in order.
- When a batch fails, its unsent writes go back into the queue behind any
  newer write of the same key: nothing acknowledged is dropped. The thread
  retries with backoff.
- A write that finds ``max_pending`` keys queued waits for a flush, up to
  ``pending_timeout_s``, then raises ``CacheError`` without writing.
- At interpreter exit, queues that were never closed are flushed.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from langcluster._flow import Effect
from langcluster.errors import CacheError
from langcluster.types import Key

__all__ = ["Enqueue", "Entry", "WriteBackQueue"]

_log = logging.getLogger(__name__)


class Entry:
    """A queued write: what Redis gets (name, payload or None to delete,
    PX), and the value reads see meanwhile."""

    __slots__ = ("name", "payload", "px", "value")

    def __init__(self, name: bytes, payload: bytes | None, px: int | None, value: Any) -> None:
        self.name = name
        self.payload = payload
        self.px = px
        self.value = value


class WriteBackQueue:
    """See the module docstring. ``send(entries, forced)`` writes one batch
    to Redis or raises ``CacheError``; ``forced`` is an explicit flush,
    which tries Redis even when its breaker is open."""

    def __init__(
        self,
        send: Callable[[list[Entry], bool], None],
        *,
        name: str,
        interval_s: float,
        batch: int,
        max_pending: int,
        pending_timeout_s: float,
    ) -> None:
        self._send = send
        self.name = name
        self.interval_s = interval_s
        self.batch = batch
        self.max_pending = max_pending
        self.pending_timeout_s = pending_timeout_s
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[Key, Entry] = {}  # waiting
        self._inflight: dict[Key, Entry] = {}  # being sent
        self._flush_lock = threading.Lock()  # one batch at a time
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"langcluster-flusher:{name}", daemon=True
        )
        self._thread.start()
        _OPEN.add(self)

    def __len__(self) -> int:
        return len(self._pending) + len(self._inflight)

    def queued(self, key: Key) -> Entry | None:
        """The queued write of ``key``, if any."""
        if not (self._pending or self._inflight):
            return None
        with self._cond:
            return self._pending.get(key) or self._inflight.get(key)

    # -------------------------------------------------------------- put

    def _has_room(self, entries: Mapping[Key, Entry]) -> bool:
        new = sum(1 for k in entries if k not in self._pending)
        used = len(self._pending) + len(self._inflight)
        return new == 0 or used + new <= self.max_pending or used == 0

    def _put(self, entries: Mapping[Key, Entry], then: Callable[[], None]) -> None:
        self._pending.update(entries)
        then()
        if len(self._pending) >= self.batch:
            self._wake.set()

    def put(self, entries: Mapping[Key, Entry], then: Callable[[], None]) -> None:
        """Queues ``entries`` and calls ``then()`` in the same critical
        section (so two writers' L1 changes follow their queue order),
        waiting for room up to ``pending_timeout_s``."""
        deadline = time.monotonic() + self.pending_timeout_s
        with self._cond:
            while not self._has_room(entries):
                self._wake.set()
                left = deadline - time.monotonic()
                timed_out = left <= 0 or not self._cond.wait(left)
                if timed_out and not self._has_room(entries):
                    raise CacheError(
                        f"redis ({self.name}): the write-back queue is full "
                        f"(max_pending={self.max_pending}) and was not drained within "
                        f"pending_timeout_s={self.pending_timeout_s}; nothing was written"
                    )
            self._put(entries, then)

    def try_put(self, entries: Mapping[Key, Entry], then: Callable[[], None]) -> bool:
        """``put`` if there is room now; False (nothing done) otherwise."""
        with self._cond:
            if not self._has_room(entries):
                return False
            self._put(entries, then)
            return True

    def drop_all(self) -> None:
        """Forgets every queued write, once any batch in flight has landed."""
        with self._flush_lock, self._cond:
            self._pending.clear()
            self._cond.notify_all()

    # ------------------------------------------------------------ flush

    def _flush_once(self, forced: bool = False) -> None:
        """Sends what is queued, in batches. On a failure the unsent writes
        go back to the queue (behind any newer write of the same key) and
        CacheError is raised."""
        with self._flush_lock:
            with self._cond:
                if not self._pending:
                    return
                self._inflight, self._pending = self._pending, {}
            try:
                while True:
                    with self._cond:
                        keys = list(self._inflight)[: self.batch]
                        entries = [self._inflight[k] for k in keys]
                    if not entries:
                        return
                    self._send(entries, forced)
                    with self._cond:
                        for k in keys:
                            del self._inflight[k]
                        self._cond.notify_all()
            finally:
                with self._cond:
                    if self._inflight:  # not sent: back in the queue
                        for k, entry in self._inflight.items():
                            self._pending.setdefault(k, entry)
                        self._inflight = {}

    def flush(self) -> None:
        """Sends every queued write now, even while the breaker is open;
        raises CacheError if Redis fails (the writes stay queued)."""
        while True:
            self._flush_once(forced=True)
            with self._cond:
                if not self._pending:
                    return

    def wake(self) -> None:
        """Lets the thread try now (Redis is back)."""
        self._wake.set()

    def _run(self) -> None:
        backoff = self.interval_s
        while not self._closing.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            try:
                self._flush_once()
                backoff = self.interval_s
            except CacheError as error:
                backoff = min(max(backoff * 2, 0.05), 1.0)
                _log.debug("redis (%s): flush failed, retrying: %s", self.name, error)
            except Exception:  # pragma: no cover - a bug; keep flushing
                _log.exception("redis (%s): flush failed", self.name)

    def close(self) -> None:
        """Stops the thread, then flushes (raising CacheError if Redis
        fails; the writes stay queued and ``flush()`` may be called again)."""
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()
        _OPEN.discard(self)


class Enqueue(Effect):
    """A write-back write: queued in the calling thread (waiting for room
    if the queue is full); from a loop, at once if there is room, else the
    wait happens in a worker thread so the loop keeps running."""

    __slots__ = ("entries", "queue", "then")

    def __init__(
        self, queue: WriteBackQueue, entries: Mapping[Key, Entry], then: Callable[[], None]
    ) -> None:
        self.queue = queue
        self.entries = entries
        self.then = then

    def run(self) -> None:
        self.queue.put(self.entries, self.then)

    async def arun(self) -> None:
        if not self.queue.try_put(self.entries, self.then):
            await asyncio.to_thread(self.queue.put, self.entries, self.then)


_OPEN: weakref.WeakSet[WriteBackQueue] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """The daemon flusher dies with the interpreter: flush what is queued."""
    for queue in list(_OPEN):
        try:
            queue.flush()
        except CacheError as error:
            _log.error("redis (%s): queued writes lost at exit: %s", queue.name, error)
