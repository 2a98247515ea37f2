"""Hedging: a second attempt on another node when the first is slow; the
first success wins and the other attempt is cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from langcluster._flow import Effect, adrive, drive
from langcluster.failover.events import FailoverEventKind as Kind

if TYPE_CHECKING:
    from langcluster.failover.manager import FailoverManager
    from langcluster.failover.retry import Plan

__all__ = ["Hedged"]

_log = logging.getLogger(__name__)


class Hedged(Effect):
    """An attempt that ``call`` may hedge. In a thread there is no second
    attempt to race: it is a plain attempt."""

    __slots__ = ("fn", "manager", "node", "plan", "reason")

    def __init__(
        self,
        manager: FailoverManager,
        node: Any,
        fn: Callable[[Any], Any],
        plan: Plan,
        reason: str,
    ) -> None:
        self.manager = manager
        self.node = node
        self.fn = fn
        self.plan = plan
        self.reason = reason

    def run(self) -> Any:
        return drive(self.manager._attempt(self.node, self.fn, self.reason))

    async def arun(self) -> Any:
        return await hedged(self.manager, self.node, self.fn, self.plan, self.reason)


async def hedged(
    manager: FailoverManager, node: Any, fn: Callable[[Any], Any], plan: Plan, reason: str
) -> Any:
    """The first answer of one attempt, and of a second on another node
    if the first is slower than ``hedge_after_s``."""
    first = asyncio.ensure_future(adrive(manager._attempt(node, fn, reason)))
    done, _ = await asyncio.wait({first}, timeout=manager.hedge_after_s)
    if done:
        return first.result()
    other = manager._choose(plan.key, plan.tried)
    if other is None:
        return await first
    plan.tried.add(other.id)
    manager._count("hedges")
    manager._emit(Kind.HEDGE, other, detail=f"{node.id} slower than {manager.hedge_after_s} s")
    second = asyncio.ensure_future(adrive(manager._attempt(other, fn, "hedge")))
    pending = {first, second}
    error: BaseException | None = None
    winner: asyncio.Future[Any] | None = None
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is None:
                    if winner is None:
                        winner = task
                    else:  # both answered at once: the other answer is not used
                        await _discard(task.result())
                else:
                    error = task.exception()
            if winner is not None:
                return winner.result()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            for late in await asyncio.gather(*pending, return_exceptions=True):
                if not isinstance(late, BaseException):
                    await _discard(late)  # answered before the cancellation reached it
    assert error is not None
    raise error


async def _discard(answer: Any) -> None:
    """Closes the answer of the attempt that lost, when it can be closed (an
    httpx response, say), so that its connection is not held until it is
    collected."""
    try:
        if hasattr(answer, "aclose"):
            await answer.aclose()
        elif hasattr(answer, "close"):
            answer.close()
    except Exception:
        _log.debug("closing a hedged attempt's unused answer failed", exc_info=True)
