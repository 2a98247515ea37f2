"""Delivering to an asyncio consumer from any thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def call_in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Runs ``fn(*args)`` now when called on ``loop``'s own thread, else
    schedules it there; does nothing once the loop is closed."""
    if running_loop() is loop:
        fn(*args)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(fn, *args)


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """Cancels a background task and waits until it has stopped. It cancels
    again until the task is done: on Python 3.11, ``asyncio.wait_for`` can
    swallow a cancellation that lands just as the awaited thing finishes,
    and a loop around it would then run on."""
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    if task is not None and not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as lost
