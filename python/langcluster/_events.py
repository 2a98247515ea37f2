"""Delivering a component's events to its listeners: callbacks, called in
the thread that emits, and async streams, each a bounded queue on its
consumer's loop that drops its oldest event when the consumer falls behind
(and counts it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

from langcluster._aio import call_in_loop
from langcluster._checks import count

__all__ = ["Broadcast", "weak_callback"]

E = TypeVar("E")


class _Stream(Generic[E]):
    """One ``stream()`` consumer: a bounded queue on its event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[E] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _put(self, event: E) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    def push(self, event: E) -> None:
        call_in_loop(self.loop, self._put, event)


def weak_callback(method: Callable[[E], object]) -> Callable[[E], object]:
    """A callback that calls the bound ``method`` while its object lives,
    and does nothing after: a subscription that does not keep its
    subscriber alive (a ``Cluster`` dropped without ``close`` can then be
    collected, and its finalizer stop what it started)."""
    ref = weakref.WeakMethod(method)

    def call(event: E) -> object:
        bound = ref()
        return None if bound is None else bound(event)

    return call


class Broadcast(Generic[E]):
    """The listeners of one component's events. A callback that raises is
    logged on ``log`` and never stops the others or the emitter."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[E], object]] = []
        self._streams: weakref.WeakSet[_Stream[E]] = weakref.WeakSet()

    def subscribe(self, callback: Callable[[E], object]) -> Callable[[], None]:
        """Calls ``callback(event)`` for every event; returns a function that
        unsubscribes."""
        if not callable(callback):
            raise TypeError(f"callback: must be callable, got {type(callback).__name__}")
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    async def stream(self, maxsize: int = 1000) -> AsyncIterator[E]:
        """Every event from the first iteration on, through a queue of
        ``maxsize``; a consumer that falls behind loses the oldest ones."""
        count("maxsize", maxsize)
        stream: _Stream[E] = _Stream(asyncio.get_running_loop(), maxsize)
        self._streams.add(stream)
        try:
            while True:
                yield await stream.queue.get()
        finally:
            self._streams.discard(stream)

    def emit(self, event: E) -> None:
        """Hands ``event`` to every callback, then to every stream."""
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(event)
            except Exception:
                self._log.exception("an event listener raised on %r", event)
        for stream in list(self._streams):
            stream.push(event)
