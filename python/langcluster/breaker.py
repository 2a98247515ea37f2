"""The circuit breaker, and ``BreakerConfig``, its settings held for later.

The state machine, the window and ``call`` live in the Rust core
(``langcluster._core.CircuitBreaker``); the subclass here adds what is most
naturally Python: ``acall``, use as a decorator, and use as a sync or async
context manager.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from langcluster import _core
from langcluster._settings import Settings, typed_like

__all__ = ["BreakerConfig", "CircuitBreaker"]

P = ParamSpec("P")
R = TypeVar("R")


class CircuitBreaker(_core.CircuitBreaker):
    """A circuit breaker after Resilience4j's model, lock-free.

    ``CircuitBreaker(name=None, *, failure_rate_threshold=0.5,
    slow_call_rate_threshold=1.0, slow_call_duration_s=None, window="count",
    window_size=20, minimum_calls=5, open_timeout_s=5.0,
    half_open_max_calls=2, max_open_timeout_s=60.0, record=(Exception,),
    ignore=(), clock=None)``; the defaults suit calls to model servers.

    - Closed, it lets calls through and counts outcomes in a window of the
      last ``window_size`` calls (``window="count"``) or seconds
      (``window="time"``). With at least ``minimum_calls`` in the window, a
      failure rate or slow-call rate at or above its threshold opens it.
    - Open, it refuses calls with ``CircuitOpenError`` (which carries
      ``name`` and ``retry_after_s``) for ``open_timeout_s``; with
      ``max_open_timeout_s`` the time doubles at each reopening in a row, up
      to that cap, with 20 % jitter (``None``: always ``open_timeout_s``).
    - Half-open, it admits ``half_open_max_calls`` trial calls at once; their
      outcomes close it or reopen it.
    - An exception of ``record`` counts as a failure, one of ``ignore`` as
      nothing, any other ``Exception`` as a success (the service answered);
      a ``BaseException`` such as a cancellation counts as nothing.
    - ``clock`` (a function returning seconds) replaces the monotonic clock,
      for tests.

    Use ``call(fn, *args)``, ``await acall(fn, *args)``, ``@breaker`` on a
    function or coroutine function, ``with breaker:`` or ``async with
    breaker:``; or by hand, ``allow()`` then ``record_success`` /
    ``record_failure`` / ``release``, or ``admit()`` then ``report(error)``.
    No lock is held while the guarded call runs. Bad settings raise
    ``ValueError`` or ``TypeError`` naming the setting.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Start times of the calls inside `with` blocks, per task or thread.
        self._starts: ContextVar[tuple[float, ...]] = ContextVar("breaker_starts", default=())

    async def acall(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """Awaits ``fn(*args, **kwargs)`` through the breaker."""
        self.admit()
        started = time.perf_counter() if self._timed else None
        try:
            result = await fn(*args, **kwargs)
        except BaseException as error:
            self.report(error, _since(started))
            raise
        self.report(None, _since(started))
        return result

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorates a function or a coroutine function."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                return await self.acall(fn, *args, **kwargs)

            return cast("Callable[P, R]", guarded_async)

        guarded = self._guard(fn)
        functools.update_wrapper(guarded, fn)
        return cast("Callable[P, R]", guarded)

    def _enter(self) -> None:
        self.admit()
        if self._timed:
            self._starts.set((*self._starts.get(), time.perf_counter()))

    def _exit(self, error: BaseException | None) -> None:
        started = None
        if self._timed:
            starts = self._starts.get()
            if starts:
                started = starts[-1]
                self._starts.set(starts[:-1])
        self.report(error, _since(started))

    def __enter__(self) -> CircuitBreaker:
        self._enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> CircuitBreaker:
        self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)


def _since(started: float | None) -> float | None:
    return None if started is None else time.perf_counter() - started


class BreakerConfig(Settings, check=lambda given: _core.breaker_settings(**given)):
    """The settings of a ``CircuitBreaker``, for the components that make
    breakers of their own (a ``FailoverManager`` makes one per node, a
    ``LayeredCache`` one for Redis): the same keywords and defaults as
    ``CircuitBreaker`` (its settings after ``name``), checked by the same
    code when the config is made. ``make(name)`` builds a breaker."""

    @typed_like(CircuitBreaker)
    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)

    def make(self, name: str | None = None, **overrides: Any) -> CircuitBreaker:
        """A new breaker with these settings (``overrides`` replace some)."""
        return CircuitBreaker(name, **{**self.as_dict(), **overrides})
