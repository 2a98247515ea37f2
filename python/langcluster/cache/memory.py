"""The in-memory cache and the ``cached`` decorator.

``MemoryCache`` lives in the Rust core. ``cached`` wraps a function in a
``CachedFunction`` whose hit path is Rust too; only a miss comes back here,
to ``Flights``, which makes sure that concurrent callers of one missing key
compute it once (``LayeredCache.get_or_set`` uses it too).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from langcluster._core import CachedFunction, MemoryCache, wrap_cached
from langcluster._sentinel import MISSING

__all__ = ["CachedFunction", "Flights", "MemoryCache", "cached"]

P = ParamSpec("P")
R = TypeVar("R")


class FlightKey(Protocol):
    """What single flight needs of a key: hashable, comparable, and able to
    look its value up (a caller may have stored it meanwhile) and store it."""

    def __hash__(self) -> int: ...
    def __eq__(self, other: object, /) -> bool: ...
    def lookup(self, default: Any) -> Any: ...
    def store(self, value: Any) -> None: ...


class _LeaderGone(Exception):
    """The task computing a key was cancelled; a waiter takes over."""


class _Flight:
    __slots__ = ("done", "error", "owner", "value")

    def __init__(self, owner: int) -> None:
        self.owner = owner
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class Flights:
    """Single flight for one decorated function.

    Threads: the first caller of a missing key computes it; the others wait
    on an event (outside the GIL) and get its value or its exception.
    Asyncio: the same with a future per key and event loop; a waiter that is
    cancelled leaves the computation running for the others, and if the
    computing task itself is cancelled a waiter starts over. A call that
    comes back to its own key while computing it (recursion) computes
    directly instead of waiting on itself. Exceptions are never cached.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[FlightKey, _Flight] = {}
        self._loops: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop,
            dict[FlightKey, tuple[asyncio.Future[Any], asyncio.Task[Any]]],
        ] = weakref.WeakKeyDictionary()

    def run(
        self,
        fn: Callable[..., Any],
        token: FlightKey,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
    ) -> Any:
        me = threading.get_ident()
        with self._lock:
            flight = self._threads.get(token)
            leader = flight is None
            if flight is None:
                flight = self._threads[token] = _Flight(me)
        if not leader:
            if flight.owner == me:
                return fn(*args, **(kwargs or {}))
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            value = token.lookup(MISSING)
            if value is MISSING:
                value = fn(*args, **(kwargs or {}))
                token.store(value)
            flight.value = value
            return value
        except BaseException as error:
            flight.error = error
            raise
        finally:
            with self._lock:
                del self._threads[token]
            flight.done.set()

    async def arun(
        self,
        fn: Callable[..., Awaitable[Any]],
        token: FlightKey,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        while True:
            flights = self._loops.setdefault(loop, {})
            found = flights.get(token)
            if found is None:
                break
            future, owner = found
            if owner is me:
                return await fn(*args, **(kwargs or {}))
            try:
                return await asyncio.shield(future)
            except _LeaderGone:
                continue
        future = loop.create_future()
        flights[token] = (future, cast("asyncio.Task[Any]", me))
        try:
            value = token.lookup(MISSING)
            if value is MISSING:
                value = await fn(*args, **(kwargs or {}))
                token.store(value)
        except asyncio.CancelledError:
            future.set_exception(_LeaderGone())
            future.exception()  # retrieved: no "never retrieved" warning
            raise
        except BaseException as error:
            future.set_exception(error)
            future.exception()
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del flights[token]


def cached(
    cache: MemoryCache,
    *,
    ttl: float | None = None,
    key_fn: Callable[..., Any] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Caches a function's results in ``cache``, keyed by its arguments.

    Works on plain and ``async def`` functions. Arguments must be str, bytes,
    int, float, bool, None or tuples of them (``f(1)`` and ``f(True)`` are
    different calls; keyword arguments are sorted, so their order does not
    matter); for anything else pass ``key_fn``, a function of the same
    arguments that returns such a value. ``ttl`` (seconds) overrides the
    cache's default for these entries.

    Concurrent calls with the same missing arguments run the function once
    and share its result; an exception is not cached and is raised in every
    caller that waited for it. The wrapper has ``invalidate(*args, **kwargs)``
    and ``cache``; wrapping a coroutine function gives a coroutine function.
    Methods are not supported directly: use ``key_fn`` and a
    plain function, since ``self`` is not a valid key.
    """
    if not isinstance(cache, MemoryCache):
        raise TypeError(f"cache: must be a MemoryCache, got {type(cache).__name__}")
    if key_fn is not None and not callable(key_fn):
        raise TypeError("key_fn: must be callable or None")

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if not callable(fn):
            raise TypeError(f"cached: expected a function, got {type(fn).__name__}")
        is_async = inspect.iscoroutinefunction(fn)
        wrapper = wrap_cached(fn, cache, Flights(), ttl=ttl, key_fn=key_fn, is_async=is_async)
        if not is_async:
            functools.update_wrapper(wrapper, fn)
            return cast("Callable[P, R]", wrapper)

        # A coroutine function stays one: calling it returns a coroutine, as
        # asyncio.create_task and frameworks that inspect functions expect.
        @functools.wraps(fn)
        async def coroutine(*args: Any, **kwargs: Any) -> Any:
            return await wrapper(*args, **kwargs)

        coroutine.invalidate = wrapper.invalidate  # type: ignore[attr-defined]
        coroutine.cache = cache  # type: ignore[attr-defined]
        return cast("Callable[P, R]", coroutine)

    return decorate
