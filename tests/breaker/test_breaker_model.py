"""The breaker against a Python model of its state machine, driven by a fake
clock, for count and time windows."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from langcluster import CircuitBreaker

NS = 1_000_000_000


@dataclass
class Model:
    window: str
    size: int
    minimum: int
    threshold: float
    open_ns: int
    trials_max: int
    state: str = "closed"
    deadline_ns: int = 0
    outcomes: deque[tuple[int, bool]] = field(default_factory=deque)  # (second, failed)
    out: int = 0
    ok: int = 0
    failed: int = 0

    def totals(self, now_ns: int) -> tuple[int, int]:
        if self.window == "count":
            kept = list(self.outcomes)[-self.size :]
        else:
            second = now_ns // NS
            kept = [o for o in self.outcomes if second - self.size < o[0] <= second]
        return len(kept), sum(1 for _, f in kept if f)

    def tripped(self, calls: int, failures: int) -> bool:
        return failures >= self.threshold * calls

    def open(self, now_ns: int) -> None:
        self.state = "open"
        self.deadline_ns = math.ceil((now_ns + self.open_ns) / 1_000_000) * 1_000_000

    def close(self) -> None:
        self.state = "closed"
        self.outcomes.clear()

    def allow(self, now_ns: int) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open":
            if now_ns < self.deadline_ns:
                return False
            self.state, self.out, self.ok, self.failed = "half_open", 0, 0, 0
        if self.out + self.ok + self.failed < self.trials_max:
            self.out += 1
            return True
        return False

    def record(self, now_ns: int, failed: bool) -> None:
        if self.state == "closed":
            self.outcomes.append((now_ns // NS, failed))
            calls, failures = self.totals(now_ns)
            if calls >= self.minimum and self.tripped(calls, failures):
                self.open(now_ns)
        elif self.state == "half_open":
            self.out = max(0, self.out - 1)
            self.ok += not failed
            self.failed += failed
            done = self.ok + self.failed
            if done >= self.trials_max:
                if self.tripped(done, self.failed):
                    self.open(now_ns)
                else:
                    self.close()


class BreakerMachine(RuleBasedStateMachine):
    window = "count"

    def __init__(self) -> None:
        super().__init__()
        self.now_s = 100.0
        self.model = Model(
            window=self.window,
            size=6 if self.window == "count" else 3,
            minimum=3,
            threshold=0.5,
            open_ns=2 * NS,
            trials_max=2,
        )
        self.breaker = CircuitBreaker(
            "model",
            window=self.window,
            window_size=self.model.size,
            minimum_calls=self.model.minimum,
            failure_rate_threshold=self.model.threshold,
            open_timeout_s=2.0,
            max_open_timeout_s=None,  # the model's open time is exact
            half_open_max_calls=self.model.trials_max,
            clock=lambda: self.now_s,
        )

    def now_ns(self) -> int:
        return int(self.now_s * 1e9)

    @rule(dt=st.sampled_from([0.0, 0.001, 0.25, 0.5, 1.0, 1.999, 2.0, 3.5]))
    def advance(self, dt: float) -> None:
        self.now_s += dt

    @rule()
    def allow(self) -> None:
        assert self.breaker.allow() == self.model.allow(self.now_ns())

    @rule(failed=st.booleans())
    def record(self, failed: bool) -> None:
        if failed:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        self.model.record(self.now_ns(), failed)

    @invariant()
    def agree(self) -> None:
        metrics = self.breaker.metrics()
        assert metrics["state"] == self.model.state
        if self.model.state == "closed":
            assert (metrics["calls"], metrics["failures"]) == self.model.totals(self.now_ns())
        if self.model.state == "open":
            expected = max(0, self.model.deadline_ns - self.now_ns()) / 1e9
            assert abs(metrics["retry_after_s"] - expected) < 1e-6


class TimeWindowMachine(BreakerMachine):
    window = "time"


TestCountWindowModel = BreakerMachine.TestCase
TestTimeWindowModel = TimeWindowMachine.TestCase
