"""The failover manager: a call runs on a balancer-picked node, behind that
node's circuit breaker, and moves to another node when it fails.

Asyncio first (``await manager.call(fn)``), with a sync twin
(``manager.call_sync(fn)``). ``fn(node)`` does the work on the node it is
given. What the manager does around it:

- **Breakers per node.** Each node gets a ``CircuitBreaker`` built from
  ``breaker`` (a ``BreakerConfig``). A node whose breaker opens is taken out
  of the balancer's rotation at once; when its open time is over it is put
  back, its breaker admits a few trial calls, and their outcome closes the
  breaker (back in rotation for good) or reopens it for longer.
- **Retries on another node**, for exceptions in ``retry_on``, after a
  ``Backoff`` delay with full jitter, at most ``max_attempts`` attempts in
  all, and only within the **retry budget**: over the last 10 seconds,
  retries may be at most ``retry_budget`` of the calls (but ``min_retries``
  are always allowed), as Envoy's ``retry_budget`` does, so that a failing
  cluster is not hammered by retries.
- **Priority groups.** With ``priority`` (a function of the node, or a
  mapping of node ids, to a level; 0 is the primary level), nodes of a
  level are in rotation only while the levels before it are not healthy
  enough: a level is enough when its share of healthy nodes times
  ``overprovisioning`` (1.4, as Envoy) reaches 1. Backups come in when
  primaries fail (a ``failover`` event) and leave when they recover
  (``failback``).
- **Hedging** (async only, for idempotent calls): with ``hedge_after_s``, a
  call that has not answered by then is started again on another node; the
  first success wins and the other attempt is cancelled.
- **Events**: ``subscribe(callback)`` and ``async for event in
  manager.events()`` receive ``FailoverEvent`` objects: ``node_failed``,
  ``breaker_opened``, ``breaker_half_open``, ``breaker_closed``,
  ``failover``, ``failback``, ``retry``, ``hedge``, ``budget_exhausted``,
  ``all_nodes_down``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from langcluster._core import Balancer
from langcluster._loops import call_in_loop
from langcluster.breaker import CircuitBreaker
from langcluster.errors import CircuitOpenError, NoAvailableNode

__all__ = ["EVENT_KINDS", "Backoff", "BreakerConfig", "FailoverEvent", "FailoverManager"]

_T = TypeVar("_T")
_log = logging.getLogger("langcluster.failover")

# Every FailoverEvent.kind the manager emits.
EVENT_KINDS = frozenset(
    {
        "node_failed",
        "breaker_opened",
        "breaker_half_open",
        "breaker_closed",
        "failover",
        "failback",
        "retry",
        "hedge",
        "budget_exhausted",
        "all_nodes_down",
    }
)


@dataclass(frozen=True)
class BreakerConfig:
    """The settings of each node's breaker (see ``CircuitBreaker``), with
    defaults for model servers: judge the last 20 calls once 5 are in, open
    for 5 s, then up to 60 s when trials keep failing."""

    failure_rate_threshold: float = 0.5
    slow_call_rate_threshold: float = 1.0
    slow_call_duration_s: float | None = None
    window: str = "count"
    window_size: int = 20
    minimum_calls: int = 5
    open_timeout_s: float = 5.0
    half_open_max_calls: int = 2
    max_open_timeout_s: float | None = 60.0
    record: tuple[type[BaseException], ...] = (Exception,)
    ignore: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        self.make("check")  # a bad field fails here, named, not at first use

    def make(self, name: str, clock: Callable[[], float] | None = None) -> CircuitBreaker:
        return CircuitBreaker(
            name,
            failure_rate_threshold=self.failure_rate_threshold,
            slow_call_rate_threshold=self.slow_call_rate_threshold,
            slow_call_duration_s=self.slow_call_duration_s,
            window=self.window,
            window_size=self.window_size,
            minimum_calls=self.minimum_calls,
            open_timeout_s=self.open_timeout_s,
            half_open_max_calls=self.half_open_max_calls,
            max_open_timeout_s=self.max_open_timeout_s,
            record=self.record,
            ignore=self.ignore,
            clock=clock,
        )


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``n`` (1, 2, ...): ``base_s * multiplier**(n-1)``
    capped at ``max_s``; with ``jitter`` (full jitter) a uniform draw below
    that."""

    base_s: float = 0.02
    max_s: float = 1.0
    multiplier: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        for name in ("base_s", "max_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"backoff.{name}: must be a number >= 0, got {value!r}")
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ValueError(f"backoff.multiplier: must be >= 1, got {self.multiplier!r}")

    def delay(self, retry: int, rng: random.Random) -> float:
        ceiling = min(self.max_s, self.base_s * self.multiplier ** max(0, retry - 1))
        return rng.uniform(0, ceiling) if self.jitter else ceiling


@dataclass(frozen=True)
class FailoverEvent:
    """Something the manager saw or did. ``node`` is the node object (None
    for cluster-wide events), ``error`` the exception if there was one,
    ``time`` a ``time.time()`` timestamp."""

    kind: str
    node: Any = None
    error: BaseException | None = None
    time: float = field(default_factory=time.time)
    detail: str = ""


class _RetryBudget:
    """Calls and retries over a sliding window of 1-second buckets."""

    def __init__(self, ratio: float | None, min_retries: int, window_s: int = 10) -> None:
        self.ratio = ratio
        self.min_retries = min_retries
        self.window_s = window_s
        self.buckets: deque[list[int]] = deque()  # [second, calls, retries]
        self.lock = threading.Lock()

    def _bucket(self, now: float) -> list[int]:
        second = int(now)
        while self.buckets and self.buckets[0][0] <= second - self.window_s:
            self.buckets.popleft()
        if not self.buckets or self.buckets[-1][0] != second:
            self.buckets.append([second, 0, 0])
        return self.buckets[-1]

    def note_call(self) -> None:
        with self.lock:
            self._bucket(time.monotonic())[1] += 1

    def try_retry(self) -> bool:
        if self.ratio is None:
            return True
        with self.lock:
            bucket = self._bucket(time.monotonic())
            calls = sum(b[1] for b in self.buckets)
            retries = sum(b[2] for b in self.buckets)
            if retries >= max(self.min_retries, self.ratio * calls):
                return False
            bucket[2] += 1
            return True


class _Subscription:
    """One `events()` consumer: a bounded queue on its event loop. When the
    consumer falls behind, the oldest events are dropped (and counted)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[FailoverEvent] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _put(self, event: FailoverEvent) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    def push(self, event: FailoverEvent) -> None:
        call_in_loop(self.loop, self._put, event)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive int, got {value!r}")
    return value


class FailoverManager:
    """Runs calls on balancer-picked nodes behind per-node circuit breakers,
    retrying on other nodes; see the module docstring."""

    def __init__(
        self,
        balancer: Balancer,
        *,
        breaker: BreakerConfig | None = None,
        max_attempts: int = 3,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        backoff: Backoff | None = None,
        retry_budget: float | None = 0.2,
        min_retries: int = 3,
        hedge_after_s: float | None = None,
        priority: Callable[[Any], int] | Mapping[str, int] | None = None,
        overprovisioning: float = 1.4,
        clock: Callable[[], float] | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(balancer, Balancer):
            raise TypeError(
                f"balancer: must be a langcluster balancer, got {type(balancer).__name__}"
            )
        self.balancer = balancer
        self.breaker_config = breaker if breaker is not None else BreakerConfig()
        if not isinstance(self.breaker_config, BreakerConfig):
            raise TypeError("breaker: must be a BreakerConfig")
        self.max_attempts = _positive_int("max_attempts", max_attempts)
        self.retry_on = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on):
            raise TypeError("retry_on: must be exception classes")
        self.backoff = backoff if backoff is not None else Backoff()
        if retry_budget is not None and not (0 < retry_budget <= 1):
            raise ValueError(f"retry_budget: must be in (0, 1] or None, got {retry_budget!r}")
        if hedge_after_s is not None and not (hedge_after_s > 0 and math.isfinite(hedge_after_s)):
            raise ValueError(
                f"hedge_after_s: must be a positive number or None, got {hedge_after_s!r}"
            )
        if not (overprovisioning >= 1 and math.isfinite(overprovisioning)):
            raise ValueError(f"overprovisioning: must be >= 1, got {overprovisioning!r}")
        self.hedge_after_s = hedge_after_s
        self.overprovisioning = overprovisioning
        self._priority = priority
        self._clock = clock
        self._now = clock or time.monotonic
        self._rng = random.Random(seed)
        self._budget = _RetryBudget(retry_budget, _positive_int("min_retries", min_retries))
        self._lock = threading.RLock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._cooling: dict[str, float] = {}  # node id -> when to put it back
        self._taken_out: set[str] = set()  # nodes this manager took out of rotation
        self._levels_in_use = 1
        self._listeners: list[Callable[[FailoverEvent], object]] = []
        self._subscriptions: weakref.WeakSet[_Subscription] = weakref.WeakSet()
        self._stats = {
            "calls": 0,
            "successes": 0,
            "failures": 0,
            "attempts": 0,
            "retries": 0,
            "hedges": 0,
            "budget_exhausted": 0,
            "all_nodes_down": 0,
        }
        self._sync_availability()

    # ----------------------------------------------------------------- events

    def subscribe(self, callback: Callable[[FailoverEvent], object]) -> Callable[[], None]:
        """Calls ``callback(event)`` for every event; returns a function that
        unsubscribes. A raising callback is logged and never breaks a call."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return unsubscribe

    async def events(self, maxsize: int = 1000) -> AsyncIterator[FailoverEvent]:
        """Every event from the first iteration on, through a queue of
        ``maxsize``; a consumer that falls behind loses the oldest ones."""
        subscription = _Subscription(asyncio.get_running_loop(), _positive_int("maxsize", maxsize))
        self._subscriptions.add(subscription)
        try:
            while True:
                yield await subscription.queue.get()
        finally:
            self._subscriptions.discard(subscription)

    def _emit(
        self, kind: str, node: Any = None, error: BaseException | None = None, detail: str = ""
    ) -> None:
        event = FailoverEvent(kind, node, error, time.time(), detail)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("failover event listener raised")
        for subscription in list(self._subscriptions):
            subscription.push(event)

    # ----------------------------------------------------------- node state

    def breaker(self, node_id: str) -> CircuitBreaker:
        """The breaker of a node (made on first use)."""
        with self._lock:
            found = self._breakers.get(node_id)
            if found is None:
                found = self.breaker_config.make(node_id, self._clock)
                found.on_state_change(
                    lambda old, new, node_id=node_id: self._on_breaker(node_id, old, new)
                )
                self._breakers[node_id] = found
            return found

    def _node(self, node_id: str) -> Any:
        for node in self.balancer.nodes:
            if node.id == node_id:
                return node
        return None

    def _on_breaker(self, node_id: str, old: str, new: str) -> None:
        node = self._node(node_id)
        if new in ("open", "forced_open"):
            retry_after = self.breaker(node_id).metrics()["retry_after_s"]
            with self._lock:
                self._cooling[node_id] = self._now() + retry_after if new == "open" else math.inf
            self._emit("breaker_opened", node, detail=f"{old} -> {new}")
        elif new == "half_open":
            self._emit("breaker_half_open", node)
        elif new in ("closed", "disabled"):
            with self._lock:
                self._cooling.pop(node_id, None)
            self._emit("breaker_closed", node, detail=f"{old} -> {new}")
        self._sync_availability()

    def _level(self, node: Any) -> int:
        if self._priority is None:
            return 0
        if callable(self._priority):
            return int(self._priority(node))
        return int(self._priority.get(node.id, 0))

    def _sync_availability(self) -> None:
        """Puts cooled-down nodes back, then decides which priority levels
        are in use, and tells the balancer what changed."""
        now = self._now()
        with self._lock:
            for node_id, until in list(self._cooling.items()):
                if until <= now:
                    del self._cooling[node_id]
            nodes = self.balancer.nodes
            levels: dict[int, list[Any]] = {}
            for node in nodes:
                levels.setdefault(self._level(node), []).append(node)
            order = sorted(levels)
            in_use = len(order)
            for i, level in enumerate(order):
                members = levels[level]
                healthy = sum(1 for n in members if n.id not in self._cooling)
                if healthy / len(members) * self.overprovisioning >= 1:
                    in_use = i + 1
                    break
            active_levels = set(order[:in_use])
            # Only nodes this manager took out are put back: availability
            # set by others (health checks, the registry) is left alone.
            changes = []
            for node in nodes:
                out = self._level(node) not in active_levels or node.id in self._cooling
                if out and node.id not in self._taken_out:
                    self._taken_out.add(node.id)
                    changes.append((node.id, False))
                elif not out and node.id in self._taken_out:
                    self._taken_out.discard(node.id)
                    changes.append((node.id, True))
            if not order:  # no nodes (yet): nothing to fail over from or back to
                in_use = self._levels_in_use
            previous, self._levels_in_use = self._levels_in_use, in_use
            # Applied under the lock, so that two threads' decisions reach
            # the balancer in the order they were made (the call is a short
            # Rust call that runs no Python code).
            for node_id, want in changes:
                self.balancer.set_available(node_id, want)
        if in_use > previous:
            self._emit("failover", detail=f"priority levels in use: {order[:in_use]}")
        elif in_use < previous:
            self._emit("failback", detail=f"priority levels in use: {order[:in_use]}")

    def _revive_due(self) -> None:
        if self._cooling:
            now = self._now()
            if any(until <= now for until in list(self._cooling.values())):
                self._sync_availability()

    def _choose(self, key: str | bytes | int | None, tried: set[str]) -> Any:
        """A node not tried yet in this call: the balancer's pick, or, when
        it keeps returning tried nodes (a consistent hash of one key), the
        first untried node in rotation."""
        for _ in range(len(self.balancer) + 1):
            try:
                node = self.balancer.pick(key)
            except NoAvailableNode:
                return None
            if node.id not in tried:
                return node
        stats = self.balancer.stats()
        for node in self.balancer.nodes:
            if node.id not in tried and stats.get(node.id, {}).get("available", False):
                return node
        return None

    # ------------------------------------------------------------------ calls

    def _start(self, node: Any) -> tuple[CircuitBreaker, float]:
        breaker = self.breaker(node.id)
        breaker._admit()
        self.balancer.begin(node.id)
        return breaker, time.perf_counter()

    def _finish(
        self, node: Any, breaker: CircuitBreaker, started: float, error: BaseException | None
    ) -> None:
        latency = time.perf_counter() - started
        if error is None:
            self.balancer.end(node.id, latency, True)
        elif isinstance(error, Exception):
            self.balancer.end(node.id, latency, False)
        else:
            self.balancer.release(node.id)
        breaker._report(error, latency)

    async def _attempt(self, node: Any, fn: Callable[[Any], Awaitable[_T]]) -> _T:
        breaker, started = self._start(node)
        try:
            result = await fn(node)
        except BaseException as error:
            self._finish(node, breaker, started, error)
            raise
        self._finish(node, breaker, started, None)
        return result

    def _attempt_sync(self, node: Any, fn: Callable[[Any], _T]) -> _T:
        breaker, started = self._start(node)
        try:
            result = fn(node)
        except BaseException as error:
            self._finish(node, breaker, started, error)
            raise
        self._finish(node, breaker, started, None)
        return result

    async def call(
        self, fn: Callable[[Any], Awaitable[_T]], *, key: str | bytes | int | None = None
    ) -> _T:
        """Awaits ``fn(node)`` on a picked node, failing over as configured."""
        plan = _Plan(self, key)
        while (delay := plan.next_delay()) is not None:
            if delay:
                await asyncio.sleep(delay)
                self._revive_due()
            node = plan.next_node()
            try:
                if self.hedge_after_s is None:
                    self._count("attempts")
                    result = await self._attempt(node, fn)
                else:
                    result = await self._hedged(node, fn, key, plan.tried)
            except CircuitOpenError as error:
                plan.refused(error)
                continue
            except BaseException as error:
                plan.failed(node, error)
                continue
            return plan.succeeded(result)
        raise plan.give_up()

    async def _hedged(
        self,
        node: Any,
        fn: Callable[[Any], Awaitable[_T]],
        key: str | bytes | int | None,
        tried: set[str],
    ) -> _T:
        """The first answer of one attempt, and of a second on another node
        if the first is slower than ``hedge_after_s``."""
        first = asyncio.ensure_future(self._attempt(node, fn))
        self._count("attempts")
        done, _ = await asyncio.wait({first}, timeout=self.hedge_after_s)
        if done:
            return first.result()
        other = self._choose(key, tried)
        if other is None:
            return await first
        tried.add(other.id)
        self._count("hedges")
        self._count("attempts")
        self._emit("hedge", other, detail=f"{node.id} slower than {self.hedge_after_s} s")
        second = asyncio.ensure_future(self._attempt(other, fn))
        pending = {first, second}
        error: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        return task.result()
                    error = task.exception()
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        assert error is not None
        raise error

    def call_sync(self, fn: Callable[[Any], _T], *, key: str | bytes | int | None = None) -> _T:
        """The blocking twin of ``call`` (no hedging)."""
        plan = _Plan(self, key)
        while (delay := plan.next_delay()) is not None:
            if delay:
                time.sleep(delay)
                self._revive_due()
            node = plan.next_node()
            try:
                self._count("attempts")
                result = self._attempt_sync(node, fn)
            except CircuitOpenError as error:
                plan.refused(error)
                continue
            except BaseException as error:
                plan.failed(node, error)
                continue
            return plan.succeeded(result)
        raise plan.give_up()

    def _count(self, name: str) -> None:
        with self._lock:
            self._stats[name] += 1

    def stats(self) -> dict[str, Any]:
        """Counters, and each node's breaker state and availability."""
        with self._lock:
            out: dict[str, Any] = dict(self._stats)
            out["levels_in_use"] = self._levels_in_use
            out["nodes"] = {
                node_id: {"breaker": breaker.state, "taken_out": node_id in self._taken_out}
                for node_id, breaker in self._breakers.items()
            }
        return out

    def taken_out(self) -> list[str]:
        """Ids of the nodes this manager holds out of rotation (open
        breakers, unused priority levels)."""
        with self._lock:
            return sorted(self._taken_out)


class _Plan:
    """The bookkeeping of one call's attempts, shared by the async and the
    sync loop: which nodes were tried, which refused (an open breaker is not
    an attempt), whether another attempt is allowed, and when."""

    def __init__(self, manager: FailoverManager, key: str | bytes | int | None) -> None:
        self.manager = manager
        self.key = key
        self.tried: set[str] = set()
        self.refusals = 0
        self.last_error: BaseException | None = None
        manager._count("calls")
        manager._budget.note_call()
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
        if not m._budget.try_retry():
            m._count("budget_exhausted")
            m._emit("budget_exhausted", error=self.last_error)
            return None
        m._count("retries")
        m._emit("retry", error=self.last_error, detail=f"retry {attempts} of {m.max_attempts - 1}")
        return m.backoff.delay(attempts, m._rng) or 1e-9

    def next_node(self) -> Any:
        node = self.manager._choose(self.key, self.tried)
        if node is None:
            m = self.manager
            m._count("all_nodes_down")
            m._emit("all_nodes_down", error=self.last_error)
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
        m._emit("node_failed", node, error)

    def succeeded(self, result: _T) -> _T:
        self.manager._count("successes")
        return result

    def give_up(self) -> BaseException:
        self.manager._count("failures")
        assert self.last_error is not None
        return self.last_error
