"""One source for the sync and async faces of a component: I/O-free flows.

A flow is a generator that holds every decision of an operation and does no
I/O itself: it yields an ``Effect`` for each piece of I/O it needs (a Redis
command, a sleep, a call of the user's function) and receives the result.
``drive(flow)`` runs it in the calling thread, ``await adrive(flow)`` on the
running event loop; the sync and async methods of a class are one line each
around the same flow. An effect that raises is thrown back into the flow at
its ``yield``, so the flow's ``try``/``except``/``finally`` treat I/O errors
as inline code would, and may yield further effects while handling them
(releasing a lock, say).

httpx writes its authentication flows this way; here the same pattern
carries the Redis tier, the layered cache and the failover manager.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["Call", "Effect", "Flow", "InThread", "Sleep", "adrive", "drive"]

T = TypeVar("T")


class Effect(abc.ABC):
    """One piece of I/O a flow asks for: ``run`` does it in the calling
    thread, ``arun`` on the running event loop."""

    __slots__ = ()

    @abc.abstractmethod
    def run(self) -> Any: ...

    @abc.abstractmethod
    async def arun(self) -> Any: ...


Flow = Generator[Effect, Any, T]


def drive(flow: Flow[T]) -> T:
    """Runs ``flow`` to its end in the calling thread; returns its value."""
    send = flow.send
    try:
        effect = send(None)
        while True:
            try:
                result = effect.run()
            except BaseException as error:
                effect = flow.throw(error)
            else:
                effect = send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def adrive(flow: Flow[T]) -> T:
    """Runs ``flow`` to its end on the running event loop; returns its value."""
    send = flow.send
    try:
        effect = send(None)
        while True:
            try:
                result = await effect.arun()
            except BaseException as error:
                effect = flow.throw(error)
            else:
                effect = send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class Sleep(Effect):
    """Waits ``seconds``: ``time.sleep`` in a thread, ``asyncio.sleep`` on a loop."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self) -> None:
        time.sleep(self.seconds)

    async def arun(self) -> None:
        await asyncio.sleep(self.seconds)


class Call(Effect):
    """Calls a user's function; on a loop, awaits what it returns when that
    is awaitable, so one flow serves sync and async callbacks."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn = fn
        self.args = args

    def run(self) -> Any:
        return self.fn(*self.args)

    async def arun(self) -> Any:
        result = self.fn(*self.args)
        if inspect.isawaitable(result):
            result = await result
        return result


class InThread(Call):
    """A blocking call: made directly in a thread, in a worker thread from a
    loop (so the loop keeps running)."""

    __slots__ = ()

    async def arun(self) -> Any:
        return await asyncio.to_thread(self.fn, *self.args)
