"""Observers: what sees each call and each attempt as it happens (metrics,
traces). A component keeps a tuple of them and pays one truth test per call
when there is none."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["FAILED", "Hooks", "Observer", "Observers", "failed", "guarded"]

_log = logging.getLogger("langcluster.metrics")


Hooks = tuple[Callable[..., Any], Callable[..., None]]


class Observer:
    """Receives the calls of a ``Cluster`` and the attempts of its
    ``FailoverManager`` as they happen. Override what you need; a method
    should be quick, since it runs on the call's path; one that raises is
    logged and the call goes on.

    - ``call_began(service)`` returns a token handed back to ``call_ended``.
    - ``call_ended(token, outcome, error)``: ``outcome`` is ``"success"``,
      ``"cache_hit"`` or ``"error"`` (``error`` is the exception).
    - ``attempt_began(node, reason)`` (``reason``: ``"first"``, ``"retry"``
      or ``"hedge"``) returns a token for ``attempt_ended(token, node,
      error)``; ``error`` is ``None`` for a success. Only observers whose
      ``attempts`` is true are told of attempts.
    """

    attempts = False

    def call_hooks(self) -> Hooks:
        """``(call_began, call_ended)`` as the call path will call them: by
        default the two methods; an observer may hand faster callables with
        the same behaviour."""
        return self.call_began, self.call_ended

    def attempt_hooks(self) -> Hooks:
        """``(attempt_began, attempt_ended)``, as ``call_hooks``."""
        return self.attempt_began, self.attempt_ended

    def call_began(self, service: str) -> Any:
        return None

    def call_ended(self, token: Any, outcome: str, error: BaseException | None) -> None:
        return None

    def attempt_began(self, node: Any, reason: str) -> Any:
        return None

    def attempt_ended(self, token: Any, node: Any, error: BaseException | None) -> None:
        return None


FAILED = object()  # the token of a hook that raised: its end is not called


class Observers:
    """The observers of a component, replaced whole on each change so that
    a call reads them without a lock. ``calls`` and ``attempts`` are
    ``(began, ended)`` pairs, or None when nobody watches: with one
    observer, its own bound methods (no layer in between); with several, a
    fan-out that keeps one failing observer from the others."""

    __slots__ = ("_lock", "all", "attempts", "calls")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.all: tuple[Observer, ...] = ()
        self.calls: Hooks | None = None
        self.attempts: Hooks | None = None

    def add(self, observer: Observer) -> Callable[[], None]:
        if not isinstance(observer, Observer):
            raise TypeError(
                f"observer: must be a langcluster.metrics.Observer, got {type(observer).__name__}"
            )
        with self._lock:
            self._set((*self.all, observer))

        def remove() -> None:
            with self._lock:
                self._set(tuple(o for o in self.all if o is not observer))

        return remove

    def _set(self, observers: tuple[Observer, ...]) -> None:
        self.all = observers
        self.calls = _fan([o.call_hooks() for o in observers])
        self.attempts = _fan([o.attempt_hooks() for o in observers if o.attempts])


def _fan(hooks: list[Hooks]) -> Hooks | None:
    """One pair of hooks for several: each observer's own when there is
    one, else a fan-out that keeps a failing observer from the others."""
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def fan_began(*args: Any) -> list[Any]:
        return [guarded(began, *args) for began, _ in hooks]

    def fan_ended(tokens: list[Any], *args: Any) -> None:
        for (_, ended), token in zip(hooks, tokens, strict=True):
            if token is not FAILED:
                guarded(ended, token, *args)

    return fan_began, fan_ended


def guarded(hook: Callable[..., Any], *args: Any) -> Any:
    """``hook(*args)``; one that raises is logged, and gives FAILED."""
    try:
        return hook(*args)
    except Exception:
        return failed(hook)


def failed(hook: Callable[..., Any]) -> Any:
    """Logs the exception ``hook`` raised (call it in the ``except``);
    FAILED. The hot paths inline ``guarded`` as try/except, which costs
    nothing until a hook raises."""
    _log.exception("a metrics observer failed in %s", getattr(hook, "__qualname__", hook))
    return FAILED
