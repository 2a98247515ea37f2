"""What must be recorded as calls happen (it is in no ``stats()``): the
number and duration of ``Cluster`` calls by outcome, as histograms that
the Rust core times and fills without a lock."""

from __future__ import annotations

from typing import Any

from langcluster._core import CallTimer
from langcluster._observe import Hooks, Observer
from langcluster.metrics.catalog import CALL_BUCKETS

__all__ = ["OUTCOMES", "CallRecorder", "cumulative"]

OUTCOMES = ("success", "error", "cache_hit")


class CallRecorder(Observer):
    """Records each call's outcome and duration. Its hooks are the core
    timer's own methods, so a call pays two calls into Rust and no Python
    frame."""

    def __init__(self) -> None:
        self._timer = CallTimer(CALL_BUCKETS, OUTCOMES)

    def call_hooks(self) -> Hooks:
        return self._timer.began, self._timer.ended

    def call_began(self, service: str) -> Any:
        return self._timer.began(service)

    def call_ended(self, token: Any, outcome: str, error: BaseException | None) -> None:
        self._timer.ended(token, outcome, error)

    def snapshot(self) -> dict[str, tuple[list[int], float]]:
        """``(counts per bucket, sum)`` by outcome."""
        return dict(self._timer.snapshot())


def cumulative(counts: list[int]) -> list[tuple[float, int]]:
    """``(upper bound, count at or below it)`` for each bucket, ending with +Inf."""
    out, total = [], 0
    for bound, n in zip((*CALL_BUCKETS, float("inf")), counts, strict=True):
        total += n
        out.append((bound, total))
    return out
