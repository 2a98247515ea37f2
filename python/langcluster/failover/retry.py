"""When a failed call may be retried, and after how long: ``Backoff``, the
retry budget (Finagle's: retries against the calls of the last seconds), and
``Plan``, the bookkeeping of one call's attempts."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from langcluster._checks import fraction, seconds
from langcluster._http import LIBRARIES
from langcluster.errors import CircuitOpenError, NoAvailableNode, NodeBusy
from langcluster.failover.events import FailoverEventKind as Kind
from langcluster.types import Key

if TYPE_CHECKING:
    from langcluster.failover.manager import FailoverManager

__all__ = ["Backoff", "Plan", "RetryBudget"]

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``n`` (1, 2, ...): ``base_s * multiplier**(n-1)``
    capped at ``max_s``, less a random part of up to ``jitter`` of it
    (``1.0``, the default, is full jitter: a uniform draw below the cap;
    ``0`` no jitter)."""

    base_s: float = 0.02
    max_s: float = 1.0
    multiplier: float = 2.0
    jitter: float = 1.0

    def __post_init__(self) -> None:
        seconds("base_s", self.base_s, zero=True)
        seconds("max_s", self.max_s, zero=True)
        if isinstance(self.multiplier, bool) or not isinstance(self.multiplier, int | float):
            raise TypeError(f"multiplier: must be a number, got {type(self.multiplier).__name__}")
        if not 1 <= self.multiplier <= 1000:
            raise ValueError(f"multiplier: must be from 1 to 1000, got {self.multiplier!r}")
        fraction("jitter", self.jitter)

    def delay(self, retry: int, rng: random.Random) -> float:
        try:
            grown = self.base_s * self.multiplier ** max(0, retry - 1)
        except OverflowError:  # a long run of retries: far past any cap
            grown = math.inf
        return min(self.max_s, grown) * (1 - self.jitter * rng.random())


# Errors of attempts that never reached a server: the connection was
# refused, or could not be made in time. A retry after one is not charged to
# the retry budget.
UNSENT: tuple[type[BaseException], ...] = (
    ConnectionRefusedError,
    *(error for lib in LIBRARIES for error in (lib.ConnectError, lib.ConnectTimeout)),
)


class RetryBudget:
    """Finagle's retry budget: each call deposits, each retry withdraws, and
    both expire after ``window_s``. Within a window the retries may be
    ``ratio`` of the calls made plus ``min_per_s`` a second (``ratio``
    ``None``: no limit). The budget is what the traffic has earned, not what
    is in flight at the instant: when a node dies with many calls on it,
    their retries are paid for by the calls of the seconds before, so a
    node's death costs no call; when every node fails, the attempts in a
    window stay within ``(1 + ratio)`` x the calls plus ``min_per_s`` x
    ``window_s``. A retry after an attempt that never reached a server
    (``UNSENT``: a refused connection, a connect timeout) is not charged:
    it loaded no server, so it is no amplification."""

    SLOTS = 10

    def __init__(
        self, ratio: float | None, min_per_s: float, window_s: float, clock: Callable[[], float]
    ) -> None:
        self.ratio = ratio
        self.reserve = min_per_s * window_s
        self._now = clock
        self._width = window_s / self.SLOTS
        self._ticks = [-(1 << 62)] * self.SLOTS  # the time slot each count is of
        self._calls = [0] * self.SLOTS
        self._retries = [0] * self.SLOTS
        self._lock = threading.Lock()

    def _slot(self) -> tuple[int, int]:
        """The current slot (cleared when it was of an earlier window) and
        its tick."""
        tick = math.floor(self._now() / self._width)
        at = tick % self.SLOTS
        if self._ticks[at] != tick:
            self._ticks[at], self._calls[at], self._retries[at] = tick, 0, 0
        return at, tick

    def _in_window(self, counts: list[int], tick: int) -> int:
        return sum(n for t, n in zip(self._ticks, counts, strict=True) if t > tick - self.SLOTS)

    def call_started(self) -> None:
        with self._lock:
            at, _ = self._slot()
            self._calls[at] += 1

    def try_retry(self) -> bool:
        """Withdraws one retry, or says the window's budget is spent."""
        if self.ratio is None:
            return True
        with self._lock:
            at, tick = self._slot()
            earned = self.ratio * self._in_window(self._calls, tick) + self.reserve
            if self._in_window(self._retries, tick) + 1 > earned:
                return False
            self._retries[at] += 1
            return True


class Plan:
    """The bookkeeping of one call's attempts: which nodes were tried, which
    refused (an open breaker is not an attempt), whether another attempt is
    allowed, and when."""

    def __init__(self, manager: FailoverManager, key: Key | None) -> None:
        self.manager = manager
        self.key = key
        self.tried: set[str] = set()
        self.refusals = 0
        self.last_error: BaseException | None = None
        manager._count("calls")
        manager._budget.call_started()
        manager._revive_due()

    def next_delay(self) -> float | None:
        """0 for the first attempt and after a refusal; a backoff delay
        before a retry; None when no attempt is left."""
        attempts = len(self.tried) - self.refusals
        if not attempts or isinstance(self.last_error, CircuitOpenError):
            return 0.0
        m = self.manager
        if attempts >= m.max_attempts:
            return None
        # A retry after an attempt no server took is free.
        if not isinstance(self.last_error, UNSENT) and not m._budget.try_retry():
            m._count("budget_exhausted")
            m._emit(Kind.BUDGET_EXHAUSTED, error=self.last_error)
            return None
        m._count("retries")
        detail = f"retry {attempts} of {m.max_attempts - 1}"
        m._emit(Kind.RETRY, error=self.last_error, detail=detail)
        return m.backoff.delay(attempts, m._rng) or 1e-9

    def next_node(self) -> Any:
        node = self.manager._choose(self.key, self.tried)
        if node is None:
            m = self.manager
            m._count("all_nodes_down")
            m._emit(Kind.ALL_NODES_DOWN, error=self.last_error)
            error = NoAvailableNode(
                "no node is available: every breaker is open or every node was tried"
            )
            error.__cause__ = self.last_error
            raise error
        self.tried.add(node.id)
        return node

    def refused(self, error: CircuitOpenError) -> None:
        self.refusals += 1
        self.last_error = error

    def failed(self, node: Any, error: BaseException) -> None:
        """Records a failed attempt, or re-raises an error not to retry."""
        m = self.manager
        if not isinstance(error, m.retry_on) or isinstance(error, CircuitOpenError):
            m._count("failures")
            raise error
        self.last_error = error
        if not isinstance(error, NodeBusy):  # told as node_busy already
            m._emit(Kind.NODE_FAILED, node, error)

    def succeeded(self, result: T) -> T:
        self.manager._count("successes")
        return result

    def give_up(self) -> BaseException:
        self.manager._count("failures")
        assert self.last_error is not None
        return self.last_error
