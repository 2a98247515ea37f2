"""``Cluster``: one object that wires discovery -> registry -> health
monitor -> balancer -> per-node breakers -> failover, with an optional
cache in front, as the design's data flow shows."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from langcluster._aio import cancel_and_wait
from langcluster._checks import text
from langcluster._core import (
    Adaptive,
    Balancer,
    ConsistentHash,
    LeastConnections,
    MemoryCache,
    PowerOfTwoChoices,
    Random,
    RoundRobin,
    WeightedRoundRobin,
)
from langcluster._counters import Counters
from langcluster._events import Broadcast
from langcluster._sentinel import MISSING
from langcluster.breaker import BreakerConfig
from langcluster.cache import Cache, LayeredCache, RedisCache
from langcluster.discovery import Discovery, StaticDiscovery
from langcluster.failover import FailoverConfig, FailoverEvent, FailoverEventKind, FailoverManager
from langcluster.health import HealthCheck, HealthConfig, HealthMonitor
from langcluster.node import Node, NodeStatus
from langcluster.registry import NodeEvent, NodeEventKind, NodeRegistry
from langcluster.types import BalancerName, Key

__all__ = ["BALANCERS", "Cluster", "ClusterEvent", "ClusterEventSource"]

T = TypeVar("T")
_log = logging.getLogger(__name__)

BALANCERS: dict[BalancerName, type[Balancer]] = {
    "round_robin": RoundRobin,
    "weighted_round_robin": WeightedRoundRobin,
    "least_connections": LeastConnections,
    "consistent_hash": ConsistentHash,
    "adaptive": Adaptive,
    "random": Random,
    "power_of_two_choices": PowerOfTwoChoices,
}


class ClusterEventSource(str, enum.Enum):
    """Which part of a cluster an event comes from."""

    NODE = "node"  # the registry: discovery, health, draining
    FAILOVER = "failover"  # the failover manager: breakers, retries, priority levels

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ClusterEvent:
    """One event of ``Cluster.events()``: a ``NodeEventKind`` from the
    registry (health flips arrive as ``status_changed``) or a
    ``FailoverEventKind`` from the failover manager. ``node_id`` is None for
    cluster-wide events; ``at`` a ``time.time()`` timestamp."""

    source: ClusterEventSource
    kind: NodeEventKind | FailoverEventKind
    node_id: str | None
    detail: str
    at: float = field(default_factory=time.time)


class Cluster:
    """The whole of langcluster for one service, in one object.

        async with Cluster(service="llm", discovery=StaticDiscovery(nodes)) as cluster:
            answer = await cluster.call(lambda node: ask(node, prompt), cache_key=prompt)

    - ``discovery`` (or ``nodes``, a fixed list) says where the nodes are;
      ``balancer`` picks among them (a ``BalancerName`` with
      ``balancer_options``, or a balancer); ``health`` (a ``HealthConfig``,
      or just a ``HealthCheck``) checks them; ``breaker`` and ``failover``
      set the failover manager (``breaker`` overrides ``failover.breaker``);
      ``cache`` (any langcluster cache) answers ``call(..., cache_key=...)``
      without a call; ``register`` is this process's own node, announced
      through the discovery while the cluster runs.
    - ``start`` (or ``async with``) reads the discovery's nodes once,
      follows its changes in a background task, registers ``register``, and
      starts the health monitor. ``close`` stops every task it started,
      deregisters what it registered, closes the discovery, and closes the
      cache if ``close_cache`` (``from_config`` sets it for the cache it
      builds).
    - A sync application uses ``start()`` / ``close()`` (or ``with``): the
      cluster then runs its tasks on an event loop in a thread of its own,
      and ``call_sync`` runs calls in the caller's thread.
    - ``events()`` is one async stream of ``ClusterEvent`` (``subscribe``
      takes a callback): node events from the registry, and breaker and
      failover events from the failover manager.
    - ``stats()`` is one view of it all; ``Cluster.from_config`` builds the
      same from a mapping or a TOML file.
    """

    def __init__(
        self,
        *,
        service: str,
        discovery: Discovery | None = None,
        nodes: Iterable[Node] | None = None,
        balancer: BalancerName | Balancer = "adaptive",
        balancer_options: Mapping[str, Any] | None = None,
        health: HealthConfig | HealthCheck | None = None,
        breaker: BreakerConfig | None = None,
        failover: FailoverConfig | None = None,
        cache: Cache | None = None,
        close_cache: bool = False,
        register: Node | None = None,
    ) -> None:
        text("service", service)
        if discovery is not None and nodes is not None:
            raise ValueError("nodes: give either discovery or nodes, not both")
        if discovery is None:
            discovery = StaticDiscovery(nodes or ())
        if not isinstance(discovery, Discovery):
            raise TypeError(f"discovery: {type(discovery).__name__} is not a Discovery")
        if isinstance(balancer, str):
            kind = BALANCERS.get(balancer)
            if kind is None:
                raise ValueError(
                    f"balancer: must be one of {', '.join(BALANCERS)} or a balancer, "
                    f"got {balancer!r}"
                )
            factory: Any = kind
            chosen: Balancer = factory([], **dict(balancer_options or {}))
        elif not isinstance(balancer, Balancer):
            raise TypeError(
                f"balancer: must be a name or a balancer, got {type(balancer).__name__}"
            )
        elif balancer_options:
            raise ValueError("balancer_options: only with a balancer given by name")
        else:
            chosen = balancer
        if health is not None and not isinstance(health, HealthConfig):
            health = HealthConfig(health)
        if failover is None:
            failover = FailoverConfig()
        if not isinstance(failover, FailoverConfig):
            raise TypeError(f"failover: must be a FailoverConfig, got {type(failover).__name__}")
        if cache is not None and not isinstance(cache, MemoryCache | RedisCache | LayeredCache):
            raise TypeError(f"cache: must be a langcluster cache, got {type(cache).__name__}")
        if register is not None and not isinstance(register, Node):
            raise TypeError(f"register: must be a Node, got {type(register).__name__}")
        self.service = service
        self.discovery = discovery
        self.registry = NodeRegistry()
        self.balancer = chosen
        settings = failover.as_dict()
        if breaker is not None:
            settings["breaker"] = breaker
        self.failover = FailoverManager(chosen, **settings)
        self.health: HealthMonitor | None = None
        if health is not None:
            self.health = HealthMonitor(self.registry, **health.as_dict())
        self.cache = cache
        self.close_cache = close_cache
        self.register_node = register
        self._unbind: Callable[[], None] | None = None
        self._follow: asyncio.Task[None] | None = None
        self._registered = False
        self._started = False
        self._events: Broadcast[ClusterEvent] = Broadcast(_log)
        self._unsubscribe: list[Callable[[], None]] = []
        self._calls = Counters("calls", "cache_hits", "errors")  # call_sync runs in many threads
        self._count = self._calls.add
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ lifecycle

    async def astart(self) -> Cluster:
        """Starts discovery, registration and health checks (idempotent)."""
        if self._started:
            return self
        self._started = True
        self._unbind = self.registry.bind(self.balancer)
        self._unsubscribe.append(self.registry.subscribe(self._on_node))
        self._unsubscribe.append(self.failover.subscribe(self._on_failover))
        try:
            self.registry.sync(await self.discovery.nodes())
            if self.register_node is not None:
                await self.discovery.register(self.register_node)
                self._registered = True
            self._follow = self.registry.attach(self.discovery)
            if self.health is not None:
                await self.health.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Stops every task the cluster started, deregisters what it
        registered, and closes the discovery (and the cache it built)."""
        if self.health is not None:
            await self.health.stop()
            close = getattr(self.health.check, "aclose", None)
            if close is not None:  # an HttpCheck's pooled client on this loop
                await close()
        if self._follow is not None:
            await cancel_and_wait(self._follow)
            self._follow = None
        if self._registered and self.register_node is not None:
            self._registered = False
            with contextlib.suppress(Exception):
                await self.discovery.deregister(self.register_node.id)
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        if self._unbind is not None:
            self._unbind()
            self._unbind = None
        await self.discovery.close()
        if self.close_cache and self.cache is not None:
            if isinstance(self.cache, LayeredCache):
                await self.cache.aclose()
            elif isinstance(self.cache, RedisCache):
                await self.cache.aclose()
                self.cache.close()
        self._started = False

    async def __aenter__(self) -> Cluster:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> Cluster:
        """For sync applications: runs the cluster's tasks on an event loop
        in a thread of its own."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"langcluster:{self.service}", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop
        try:
            asyncio.run_coroutine_threadsafe(self.astart(), loop).result()
        except BaseException:
            self._stop_thread()
            raise
        return self

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result(timeout=30)
        finally:
            self._stop_thread()

    def _stop_thread(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        if loop is not None:
            loop.close()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- calls

    def pick(self, key: Key | None = None) -> Any:
        """A node from the balancer (with ``key`` for consistent hashing)."""
        return self.balancer.pick(key)

    async def call(
        self,
        fn: Callable[[Any], Awaitable[T]],
        *,
        key: Key | None = None,
        cache_key: Key | None = None,
        ttl: float | None = None,
    ) -> T:
        """Awaits ``fn(node)`` through failover. With ``cache_key`` and a
        cache, a cached result is returned without a call, and a new one is
        stored (with ``ttl``)."""
        self._count("calls")
        if cache_key is not None and self.cache is not None:
            found = await self._cache_get(cache_key)
            if found is not MISSING:
                self._count("cache_hits")
                return found  # type: ignore[no-any-return]
        try:
            result = await self.failover.call(fn, key=key)
        except Exception:
            self._count("errors")
            raise
        if cache_key is not None and self.cache is not None:
            await self._cache_set(cache_key, result, ttl)
        return result

    def call_sync(
        self,
        fn: Callable[[Any], T],
        *,
        key: Key | None = None,
        cache_key: Key | None = None,
        ttl: float | None = None,
    ) -> T:
        """The blocking twin of ``call``."""
        self._count("calls")
        cache = self.cache
        if cache_key is not None and cache is not None:
            found = cache.get(cache_key, MISSING)
            if found is not MISSING:
                self._count("cache_hits")
                return found  # type: ignore[no-any-return]
        try:
            result = self.failover.call_sync(fn, key=key)
        except Exception:
            self._count("errors")
            raise
        if cache_key is not None and cache is not None:
            cache.set(cache_key, result, ttl)
        return result

    async def _cache_get(self, key: Any) -> Any:
        cache = self.cache
        if isinstance(cache, MemoryCache):
            return cache.get(key, MISSING)
        assert cache is not None
        return await cache.aget(key, MISSING)

    async def _cache_set(self, key: Any, value: Any, ttl: float | None) -> None:
        cache = self.cache
        if isinstance(cache, MemoryCache):
            cache.set(key, value, ttl)
        elif cache is not None:
            await cache.aset(key, value, ttl)

    # --------------------------------------------------------------- events

    def _on_node(self, event: NodeEvent) -> None:
        if (
            self.health is not None
            and event.kind is NodeEventKind.STATUS_CHANGED
            and event.node.status is NodeStatus.HEALTHY
        ):
            # A node whose checks pass again leaves ejection (Envoy's
            # successful_active_health_check_uneject_host): its breaker goes
            # half-open, and trial calls tell whether it serves.
            self.failover.revive(event.node.id)
        detail = f"status {event.node.status.value}"
        self._events.emit(
            ClusterEvent(ClusterEventSource.NODE, event.kind, event.node.id, detail, event.at)
        )

    def _on_failover(self, event: FailoverEvent) -> None:
        node_id = getattr(event.node, "id", None)
        detail = event.detail or (f"{type(event.error).__name__}" if event.error else "")
        self._events.emit(
            ClusterEvent(ClusterEventSource.FAILOVER, event.kind, node_id, detail, event.at)
        )

    def subscribe(self, callback: Callable[[ClusterEvent], object]) -> Callable[[], None]:
        """Calls ``callback(event)`` for every event; returns a function that
        unsubscribes. A raising callback is logged."""
        return self._events.subscribe(callback)

    def events(self, maxsize: int = 1000) -> AsyncIterator[ClusterEvent]:
        """Node, health, breaker and failover events from now on, in one
        stream; a consumer that falls behind by ``maxsize`` loses the
        oldest."""
        return self._events.stream(maxsize)

    # ---------------------------------------------------------------- stats

    def stats(self) -> dict[str, Any]:
        """Per node: status, picks, in flight, EWMA latency, breaker state;
        the call, failover and cache counters."""
        balancer = self.balancer.stats()
        failover = self.failover.stats()
        health = self.health.status() if self.health is not None else {}
        nodes = {}
        for node in self.registry.nodes():
            entry: dict[str, Any] = {"status": node.status.value}
            entry.update(balancer.get(node.id, {}))
            entry["breaker"] = failover["nodes"].get(node.id, {}).get("breaker", "closed")
            if node.id in health:
                entry["health"] = dataclasses.asdict(health[node.id])
            nodes[node.id] = entry
        out: dict[str, Any] = {
            "service": self.service,
            "nodes": nodes,
            "calls": self._calls.snapshot(),
            "failover": {k: v for k, v in failover.items() if k != "nodes"},
        }
        if self.cache is not None:
            out["cache"] = self.cache.stats()
        return out

    # --------------------------------------------------------------- config

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | Path) -> Cluster:
        """A cluster from a mapping or a TOML file (the fields are in
        docs/user-guide.md). A bad field raises ValueError or TypeError
        naming it (``breaker.window_size: ...``). The cluster closes the
        cache it builds."""
        from langcluster.cluster.config import load

        return load(config)
