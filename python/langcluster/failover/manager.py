"""``FailoverManager`` and ``FailoverConfig``, its settings held for later.

A call is one flow (``langcluster._flow``): pick a node, attempt, and on a
retryable failure back off and pick another; ``call`` drives it on the
running loop (where an attempt may be hedged), ``call_sync`` in the calling
thread.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from langcluster._checks import count, fraction, seconds
from langcluster._core import Balancer, PrefixAware
from langcluster._counters import Counters
from langcluster._events import Broadcast
from langcluster._flow import Call, Flow, Sleep, adrive, drive
from langcluster._observe import FAILED, Observer, Observers, failed
from langcluster._settings import Settings, complete, keyword_parameters, typed_like
from langcluster.breaker import BreakerConfig, CircuitBreaker
from langcluster.errors import CircuitOpenError, NoAvailableNode, NodeBusy
from langcluster.failover.events import FailoverEvent
from langcluster.failover.events import FailoverEventKind as Kind
from langcluster.failover.hedge import Hedged
from langcluster.failover.retry import Backoff, Plan, RetryBudget
from langcluster.types import BreakerState, Key

__all__ = ["FailoverConfig", "FailoverManager"]

T = TypeVar("T")
_log = logging.getLogger(__name__)


class FailoverManager:
    """Runs calls on balancer-picked nodes behind per-node circuit breakers,
    retrying on other nodes.

    ``await manager.call(fn)`` (or ``manager.call_sync(fn)``) runs
    ``fn(node)``, which does the work on the node it is given, on a node the
    balancer picks. What the manager does around it:

    - **Breakers per node.** Each node gets a ``CircuitBreaker`` made from
      ``breaker`` (a ``BreakerConfig``). A node whose breaker opens is taken
      out of the balancer's rotation at once; when its open time is over it
      is put back, its breaker admits a few trial calls, and their outcome
      closes the breaker (back in rotation for good) or reopens it.
    - **Retries on another node**, for exceptions in ``retry_on``, after a
      ``Backoff`` delay with full jitter, at most ``max_attempts`` attempts
      in all, and only within the **retry budget** (Finagle's): over the
      last ``retry_window_s`` the retries may be ``retry_budget`` of the
      calls made, plus ``min_retries_per_s`` a second. The budget is earned
      by traffic, so the calls a dying node had in flight are all retried,
      while a failing cluster sees at most a fifth more attempts than calls
      (plus the minimum), not a multiple. A retry after an attempt no
      server took (a refused connection, a connect timeout) is not charged:
      it adds no load.
    - **Priority groups.** With ``priority`` (a function of the node, or a
      mapping of node ids, to a level; 0 is the primary level), nodes of a
      level are in rotation only while the levels before it are not healthy
      enough: a level is enough when its share of healthy nodes times
      ``overprovisioning`` (1.4, as Envoy) reaches 1. Backups come in when
      primaries fail (a ``failover`` event) and leave when they recover
      (``failback``).
    - **Hedging** (``call`` only, for idempotent calls): with
      ``hedge_after_s``, a call that has not answered by then is started
      again on another node; the first success wins and the other attempt
      is cancelled (an answer it gave anyway is closed, when it has
      ``aclose`` or ``close``: an httpx response, say).
    - **Events**: ``subscribe(callback)`` and ``async for event in
      manager.events()`` receive a ``FailoverEvent`` for each
      ``FailoverEventKind``.

    ``clock`` (seconds) drives the breakers and the cool-down, for tests;
    ``seed`` makes the backoff jitter repeatable.
    """

    def __init__(
        self,
        balancer: Balancer,
        *,
        breaker: BreakerConfig | None = None,
        max_attempts: int = 3,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        backoff: Backoff | None = None,
        retry_budget: float | None = 0.2,
        min_retries_per_s: float = 10.0,
        retry_window_s: float = 10.0,
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
        given = {k: v for k, v in locals().items() if k not in ("self", "balancer")}
        self.config = config = FailoverConfig(**given)
        self.balancer = balancer
        self.breaker_config: BreakerConfig = config.breaker
        self.max_attempts: int = config.max_attempts
        self.retry_on: tuple[type[BaseException], ...] = config.retry_on
        self.backoff: Backoff = config.backoff
        self.hedge_after_s: float | None = config.hedge_after_s
        self.overprovisioning: float = config.overprovisioning
        self._priority = priority
        self._clock = clock
        self._now = clock or time.monotonic
        self._rng = random.Random(seed)
        self._budget = RetryBudget(
            retry_budget, config.min_retries_per_s, config.retry_window_s, self._now
        )
        self._lock = threading.RLock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._cooling: dict[str, float] = {}  # node id -> when to put it back
        self._taken_out: set[str] = set()  # nodes this manager took out of rotation
        self._levels_in_use = 1
        self._events: Broadcast[FailoverEvent] = Broadcast(_log)
        self._stats = Counters(
            "calls", "successes", "failures", "attempts", "retries", "retry_attempts", "hedges",
            "budget_exhausted", "all_nodes_down", "breaker_openings", "busy", "late_failures",
        )  # fmt: skip
        self._observers = Observers()
        self._count = self._stats.add
        self._sync_availability()

    # ----------------------------------------------------------------- events

    def subscribe(self, callback: Callable[[FailoverEvent], object]) -> Callable[[], None]:
        """Calls ``callback(event)`` for every event; returns a function that
        unsubscribes. A raising callback is logged and never breaks a call."""
        return self._events.subscribe(callback)

    def events(self, maxsize: int = 1000) -> AsyncIterator[FailoverEvent]:
        """Every event from the first iteration on, through a queue of
        ``maxsize``; a consumer that falls behind loses the oldest ones."""
        return self._events.stream(maxsize)

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Tells ``observer`` (a ``langcluster.metrics.Observer`` whose
        ``attempts`` is true) of every attempt as it begins and ends;
        returns a function that stops it."""
        return self._observers.add(observer)

    def _emit(
        self, kind: Kind, node: Any = None, error: BaseException | None = None, detail: str = ""
    ) -> None:
        self._events.emit(FailoverEvent(kind, node, error, time.time(), detail))

    # ----------------------------------------------------------- node state

    def breaker(self, node_id: str) -> CircuitBreaker:
        """The breaker of a node (made on first use)."""
        with self._lock:
            found = self._breakers.get(node_id)
            if found is None:
                if len(self._breakers) >= 2 * len(self.balancer) + 16:
                    self._prune()  # nodes came and went without forget()
                found = self.breaker_config.make(node_id, clock=self._clock)
                made = id(found)
                found.on_state_change(lambda old, new: self._on_breaker(node_id, made, old, new))
                self._breakers[node_id] = found
            return found

    def forget(self, node_id: str) -> bool:
        """Drops what the manager holds for a node that has left the
        balancer: its breaker, its cool-down, its place among the nodes
        taken out. A node that comes back under the same id starts afresh
        (closed breaker). Returns False, changing nothing, while the node is
        still in the balancer. ``Cluster`` calls this when discovery removes
        a node; the manager also prunes departed nodes on its own as new
        ones arrive, so its memory follows the live node count."""
        if node_id in self.balancer:
            return False
        with self._lock:
            found = self._breakers.pop(node_id, None) is not None
            self._cooling.pop(node_id, None)
            self._taken_out.discard(node_id)
        return found

    def _prune(self) -> None:
        """Forgets every node no longer in the balancer."""
        live = {node.id for node in self.balancer.nodes}
        with self._lock:
            for node_id in [i for i in self._breakers if i not in live]:
                del self._breakers[node_id]
            for node_id in [i for i in self._cooling if i not in live]:
                del self._cooling[node_id]
            self._taken_out &= live

    def _node(self, node_id: str) -> Any:
        for node in self.balancer.nodes:
            if node.id == node_id:
                return node
        return None

    def _on_breaker(self, node_id: str, made: int, old: BreakerState, new: BreakerState) -> None:
        # A breaker forgotten (its node gone) while a call on it was in
        # flight may still change state: that concerns no live node. (The
        # breaker is alive while it calls this, so no other has its id.)
        if id(self._breakers.get(node_id)) != made:
            return
        node = self._node(node_id)
        if new in ("open", "forced_open"):
            retry_after = self.breaker(node_id).metrics()["retry_after_s"]
            with self._lock:
                self._cooling[node_id] = self._now() + retry_after if new == "open" else math.inf
            self._count("breaker_openings")
            self._emit(Kind.BREAKER_OPENED, node, detail=f"{old} -> {new}")
        elif new == "half_open":
            with self._lock:  # trials may go to it now, however the period ended
                self._cooling.pop(node_id, None)
            self._emit(Kind.BREAKER_HALF_OPEN, node)
        elif new in ("closed", "disabled"):
            with self._lock:
                self._cooling.pop(node_id, None)
            self._emit(Kind.BREAKER_CLOSED, node, detail=f"{old} -> {new}")
        self._sync_availability()

    def revive(self, node_id: str) -> None:
        """The node is healthy again (its health checks pass): if its breaker
        is open, it goes half-open now and the node is back in rotation for
        trial calls, instead of waiting out an open time that failed trials
        may have grown; if it is half-open, its trials start afresh, so a
        trial that failed before the recovery does not reopen it."""
        with self._lock:
            breaker = self._breakers.get(node_id)
        if breaker is not None:
            breaker.half_open()

    def hold_out(self, node_id: str, seconds: float) -> None:
        """Takes a node out of rotation for ``seconds`` without touching its
        breaker: what a server's ``Retry-After`` asks for. A call's function
        does this by raising ``NodeBusy``. A node held out longer already
        (an open breaker) keeps the longer time."""
        seconds = max(0.0, float(seconds))
        with self._lock:
            until = self._now() + seconds
            if self._cooling.get(node_id, -math.inf) < until:
                self._cooling[node_id] = until
        self._count("busy")
        self._emit(Kind.NODE_BUSY, self._node(node_id), detail=f"out for {seconds:g} s")
        self._sync_availability()

    def late_failure(self, node: Any, error: BaseException) -> None:
        """An answer already handed to the caller failed later (a stream
        that broke midway): it counts as a failure against the node's
        breaker and is told as a ``late_failure`` event; nothing is retried."""
        self.breaker(node.id).record_failure()
        self._count("late_failures")
        self._emit(Kind.LATE_FAILURE, node, error)

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
            self._emit(Kind.FAILOVER, detail=f"priority levels in use: {order[:in_use]}")
        elif in_use < previous:
            self._emit(Kind.FAILBACK, detail=f"priority levels in use: {order[:in_use]}")

    def _revive_due(self) -> None:
        if self._cooling:
            now = self._now()
            if any(until <= now for until in list(self._cooling.values())):
                self._sync_availability()

    def _choose(self, key: Key | None, tried: set[str]) -> Any:
        """A node not tried yet in this call: the balancer's pick, or, when
        it keeps returning tried nodes (a consistent hash of one key), the
        first untried node in rotation. A ``PrefixAware`` balancer is told
        which nodes were tried, so a retry goes to the next best holder of
        the prompt (or the least loaded) and is recorded there."""
        if isinstance(self.balancer, PrefixAware):
            try:
                return self.balancer.pick(key, exclude=tried) if tried else self.balancer.pick(key)
            except NoAvailableNode:
                return None
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
        """An attempt on `node` begins: its breaker's permit (or
        CircuitOpenError), and one request in flight on the balancer."""
        breaker = self.breaker(node.id)
        breaker.admit()
        self.balancer.begin(node.id)
        return breaker, time.perf_counter()

    def _finish(
        self, node: Any, breaker: CircuitBreaker, started: float, error: BaseException | None
    ) -> None:
        """An attempt ended: its latency and outcome to the balancer and the
        breaker (a cancellation is no outcome)."""
        latency = time.perf_counter() - started
        if isinstance(error, NodeBusy):  # no outcome: the node asked for a pause
            self.balancer.release(node.id)
            breaker.release()
            self.hold_out(node.id, error.retry_after_s)
            return
        if error is None:
            self.balancer.end(node.id, latency, True)
        elif isinstance(error, Exception):
            self.balancer.end(node.id, latency, False)
        else:
            self.balancer.release(node.id)
        breaker.report(error, latency)

    def _attempt(self, node: Any, fn: Callable[[Any], Any], reason: str) -> Flow[Any]:
        """One attempt on `node`, behind its breaker; ``reason`` is
        ``first``, ``retry`` or ``hedge``, for observers."""
        breaker, started = self._start(node)
        self._count("attempts")
        if reason == "retry":
            self._count("retry_attempts")
        hooks = self._observers.attempts
        token: Any = FAILED
        if hooks is not None:
            try:
                token = hooks[0](node, reason)
            except Exception:
                failed(hooks[0])
        error: BaseException | None = None
        try:
            return (yield Call(fn, node))
        except BaseException as raised:
            error = raised
            raise
        finally:
            self._finish(node, breaker, started, error)
            if token is not FAILED:
                try:
                    hooks[1](token, node, error)  # type: ignore[index]
                except Exception:
                    failed(hooks[1])  # type: ignore[index]

    def _call(self, fn: Callable[[Any], Any], key: Key | None) -> Flow[Any]:
        plan = Plan(self, key)
        while (delay := plan.next_delay()) is not None:
            if delay:
                yield Sleep(delay)
                self._revive_due()
            node = plan.next_node()
            reason = "retry" if len(plan.tried) - plan.refusals > 1 else "first"
            try:
                if self.hedge_after_s is None:
                    result = yield from self._attempt(node, fn, reason)
                else:
                    result = yield Hedged(self, node, fn, plan, reason)
            except CircuitOpenError as error:
                plan.refused(error)
                continue
            except BaseException as error:
                plan.failed(node, error)
                continue
            return plan.succeeded(result)
        raise plan.give_up()

    async def call(self, fn: Callable[[Any], Awaitable[T]], *, key: Key | None = None) -> T:
        """Awaits ``fn(node)`` on a picked node, failing over as configured
        (``key`` routes a consistent hash)."""
        return await adrive(self._call(fn, key))

    def call_sync(self, fn: Callable[[Any], T], *, key: Key | None = None) -> T:
        """``call`` in the calling thread (without hedging)."""
        return drive(self._call(fn, key))  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        """Counters, and each live node's breaker state and availability (a
        node that has left the balancer is not listed, even before its
        breaker is pruned)."""
        out: dict[str, Any] = self._stats.snapshot()
        with self._lock:
            out["levels_in_use"] = self._levels_in_use
            out["nodes"] = {
                node_id: {"breaker": breaker.state, "taken_out": node_id in self._taken_out}
                for node_id, breaker in self._breakers.items()
                if node_id in self.balancer
            }
        return out

    def taken_out(self) -> list[str]:
        """Ids of the nodes this manager holds out of rotation (open
        breakers, unused priority levels)."""
        with self._lock:
            return sorted(self._taken_out)


def _check(given: dict[str, Any]) -> dict[str, Any]:
    """The settings of a FailoverManager, checked and completed."""
    values = complete("FailoverManager", keyword_parameters(FailoverManager, skip=1), given)
    breaker = values["breaker"] if values["breaker"] is not None else BreakerConfig()
    if not isinstance(breaker, BreakerConfig):
        raise TypeError(f"breaker: must be a BreakerConfig, got {type(breaker).__name__}")
    count("max_attempts", values["max_attempts"])
    rate = values["min_retries_per_s"]
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise TypeError(f"min_retries_per_s: must be a number, got {type(rate).__name__}")
    if not (math.isfinite(rate) and 0 <= rate <= 1e6):
        raise ValueError(f"min_retries_per_s: must be a number from 0 to 1e6, got {rate!r}")
    seconds("retry_window_s", values["retry_window_s"])
    retry_on = values["retry_on"]
    retry_on = tuple(retry_on) if isinstance(retry_on, tuple | list) else (retry_on,)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
        raise TypeError(f"retry_on: must be exception classes, got {values['retry_on']!r}")
    backoff = values["backoff"] if values["backoff"] is not None else Backoff()
    if not isinstance(backoff, Backoff):
        raise TypeError(f"backoff: must be a Backoff, got {type(backoff).__name__}")
    budget = values["retry_budget"]
    if budget is not None and fraction("retry_budget", budget) == 0:
        raise ValueError("retry_budget: must be above 0 (None turns the budget off)")
    seconds("hedge_after_s", values["hedge_after_s"], optional=True)
    over = values["overprovisioning"]
    if isinstance(over, bool) or not isinstance(over, int | float):
        raise TypeError(f"overprovisioning: must be a number, got {type(over).__name__}")
    if not 1 <= over <= 100:
        raise ValueError(f"overprovisioning: must be from 1 to 100, got {over!r}")
    seed = values["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed: must be an int or None, got {type(seed).__name__}")
    priority = values["priority"]
    if priority is not None and not (callable(priority) or isinstance(priority, Mapping)):
        raise TypeError(f"priority: must be a function, a mapping or None, got {priority!r}")
    if values["clock"] is not None and not callable(values["clock"]):
        raise TypeError("clock: must be a function returning seconds, or None")
    return {**values, "breaker": breaker, "retry_on": retry_on, "backoff": backoff}


class FailoverConfig(Settings, check=_check):
    """The settings of a ``FailoverManager`` (its keyword arguments, with
    its defaults), for ``Cluster``: checked when made."""

    @typed_like(FailoverManager)
    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
