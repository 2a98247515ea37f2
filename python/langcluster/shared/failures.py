"""Failures in a row on a node, counted over every process of a service
(Envoy's consecutive failures, service-wide): the process whose failure
brings the count to ``consecutive_failures`` opens its breaker for the node,
and so ejects it everywhere, before any one process's breaker would open; a
success anywhere starts the count again."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from langcluster._observe import Observer
from langcluster.errors import NodeBusy

if TYPE_CHECKING:
    from langcluster.shared.state import SharedState

__all__ = ["ConsecutiveFailures", "count_failure"]

_FAILURES_FOR_MS = 10_000  # a count of failures in a row lapses after this quiet time


class ConsecutiveFailures(Observer):
    """Sees each attempt's outcome (in the attempt's thread) and hands the
    ones that change a count to the state's loop: a failure, or a success
    on a node this process had failures on since its last success."""

    attempts = True

    def __init__(self, state: SharedState) -> None:
        self.state = state
        self._suspects: set[str] = set()

    def attempt_ended(self, token: Any, node: Any, error: BaseException | None) -> None:
        node_id = getattr(node, "id", None)
        if not isinstance(node_id, str):
            return
        if error is None:
            if node_id not in self._suspects:
                return
            self._suspects.discard(node_id)
            failed = False
        elif isinstance(error, Exception) and not isinstance(error, NodeBusy):
            self._suspects.add(node_id)
            failed = True
        else:
            return
        loop = self.state._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self.state._enqueue, (node_id, failed))


async def count_failure(state: SharedState, node_id: str, failed: bool) -> None:
    """Counts a failure in Redis (or clears the count after a success); the
    failure that reaches ``consecutive_failures`` opens this process's
    breaker, whose event tells the others."""
    key = f"{state._prefix()}:failures:{node_id}"
    client = state._client
    if not failed:
        await client.delete(key)
        return
    async with client.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.pexpire(key, _FAILURES_FOR_MS)
        count, _ = await pipe.execute()
    if state.consecutive_failures is not None and count >= state.consecutive_failures:
        await client.delete(key)
        assert state._cluster is not None
        manager = state._cluster.failover
        if node_id in manager.balancer and state._may_eject(node_id):
            state._stats.add("ejections_counted")
            open_s = float(manager.breaker_config.as_dict()["open_timeout_s"])
            manager.breaker(node_id).open_for(open_s)  # and the event tells the others
