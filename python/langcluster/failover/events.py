"""What a ``FailoverManager`` tells its listeners."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from langcluster.types import NodeLike

__all__ = ["FailoverEvent", "FailoverEventKind"]


class FailoverEventKind(str, enum.Enum):
    """The kinds of ``FailoverEvent``; a ``str`` enum, equal to its value."""

    NODE_FAILED = "node_failed"  # an attempt failed with a retryable error
    NODE_BUSY = "node_busy"  # a node asked for a pause (Retry-After): out until then
    LATE_FAILURE = "late_failure"  # an answer already handed over broke (a stream)
    BREAKER_OPENED = "breaker_opened"  # the node leaves the rotation
    BREAKER_HALF_OPEN = "breaker_half_open"  # trial calls may go to the node
    BREAKER_CLOSED = "breaker_closed"  # the node is back for good
    FAILOVER = "failover"  # a lower priority level came into use
    FAILBACK = "failback"  # a lower priority level went out of use
    RETRY = "retry"  # a call moves on to another attempt
    HEDGE = "hedge"  # a second attempt races a slow first one
    BUDGET_EXHAUSTED = "budget_exhausted"  # a retry was refused by the budget
    ALL_NODES_DOWN = "all_nodes_down"  # no node was left to try

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FailoverEvent:
    """Something the manager saw or did. ``node`` is the node object (None
    for cluster-wide events), ``error`` the exception if there was one,
    ``at`` a ``time.time()`` timestamp."""

    kind: FailoverEventKind
    node: NodeLike | None = None
    error: BaseException | None = None
    at: float = field(default_factory=time.time)
    detail: str = ""
