"""``Cluster``: one object that wires discovery -> registry -> health
monitor -> balancer -> per-node breakers -> failover, with an optional
cache in front, as the design's data flow shows."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from langcluster._aio import cancel_and_wait, running_loop
from langcluster._checks import seconds, text
from langcluster._core import Balancer, MemoryCache, PrefixAware
from langcluster._counters import Counters
from langcluster._events import Broadcast, weak_callback
from langcluster._flow import adrive, drive
from langcluster._observe import Observer, Observers
from langcluster.breaker import BreakerConfig
from langcluster.cache import Cache, LayeredCache, RedisCache
from langcluster.cluster.balancers import BALANCERS, choose_balancer
from langcluster.cluster.calls import call_flow
from langcluster.cluster.events import ClusterEvent, ClusterEventSource
from langcluster.cluster.lifecycle import InFlight, LoopThread, Parts, abandoned
from langcluster.cluster.lifecycle import State as _State
from langcluster.discovery import Discovery, StaticDiscovery
from langcluster.errors import ClusterNotRunning
from langcluster.failover import FailoverConfig, FailoverEvent, FailoverManager
from langcluster.health import HealthCheck, HealthConfig, HealthMonitor
from langcluster.node import Node, NodeStatus
from langcluster.registry import NodeEvent, NodeEventKind, NodeRegistry
from langcluster.shared import SharedState
from langcluster.shared.parts import SharedParts
from langcluster.types import BalancerName, Key

__all__ = ["BALANCERS", "Cluster"]

T = TypeVar("T")
_log = logging.getLogger(__name__)


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
      through the discovery while the cluster runs; ``shared_state`` (a
      ``SharedState``) shares node ejections with the service's other
      processes through Redis.
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
        shared_state: SharedState | None = None,
        kv_events: bool = False,
    ) -> None:
        text("service", service)
        if discovery is not None and nodes is not None:
            raise ValueError("nodes: give either discovery or nodes, not both")
        if discovery is None:
            discovery = StaticDiscovery(nodes or ())
        if not isinstance(discovery, Discovery):
            raise TypeError(f"discovery: {type(discovery).__name__} is not a Discovery")
        chosen = choose_balancer(balancer, balancer_options)
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
        if shared_state is not None and not isinstance(shared_state, SharedState):
            raise TypeError(
                f"shared_state: must be a SharedState, got {type(shared_state).__name__}"
            )
        if not isinstance(kv_events, bool):
            raise TypeError(f"kv_events: must be True or False, got {type(kv_events).__name__}")
        if kv_events and not isinstance(chosen, PrefixAware):
            raise ValueError("kv_events: needs the prefix_aware balancer")
        self.service = service
        self.discovery = discovery
        self.kv_events = kv_events
        self._kv: Any = None
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
        self.shared_state = shared_state
        self._unbind: Callable[[], None] | None = None
        self._registered = False
        self._state = _State.NEW
        self._transition: asyncio.Future[None] | None = None  # a start or close under way
        self._home: asyncio.AbstractEventLoop | None = None  # the loop the tasks run on
        self._lifecycle = threading.Lock()  # sync start() and close() across threads
        self._flight = InFlight()
        self._parts = Parts(self.health)
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._events: Broadcast[ClusterEvent] = Broadcast(_log)
        self._unsubscribe: list[Callable[[], None]] = []
        self._calls = Counters("calls", "cache_hits", "errors")  # call_sync runs in many threads
        self._count = self._calls.add
        self._observers = Observers()

    # ------------------------------------------------------------ lifecycle

    async def astart(self) -> Cluster:
        """Starts discovery, registration and health checks. Idempotent, and
        safe from concurrent tasks (they wait for one start). A cluster whose
        start failed is closed; a closed cluster does not start again."""
        while self._state is _State.STARTING and self._transition is not None:
            await asyncio.shield(self._transition)
        if self._state is _State.RUNNING:
            return self
        if self._state is not _State.NEW:
            raise ClusterNotRunning(
                f"cluster {self.service!r} is {self._state.value}: a closed cluster does "
                "not start again; make a new Cluster",
                state=self._state.value,
            )
        loop = asyncio.get_running_loop()
        self._state, self._transition, self._home = _State.STARTING, loop.create_future(), loop
        self._parts.loop = loop
        if self._finalizer is None:
            self._finalizer = weakref.finalize(self, abandoned, self.service, self._parts)
        try:
            self._unbind = self.registry.bind(self.balancer)
            self._unsubscribe.append(self.registry.subscribe(weak_callback(self._on_node)))
            self._unsubscribe.append(self.failover.subscribe(self._on_failover))
            self.registry.sync(await self.discovery.nodes())
            if self.shared_state is not None:
                await self.shared_state._attach(self._shared_parts())
            if self.register_node is not None:
                await self.discovery.register(self.register_node)
                self._registered = True
            self._parts.follow = self.registry.attach(self.discovery)
            if self.kv_events:
                from langcluster.kv import KvEvents

                self._kv = KvEvents(self.balancer)
                self._parts.kv_follow = await self._kv.follow(self.registry, self.service)
            if self.health is not None:
                await self.health.start()
        except BaseException:
            await self._teardown()
            self._finished(_State.CLOSED)
            raise
        self._finished(_State.RUNNING)
        return self

    async def aclose(self, *, drain_timeout_s: float = 10.0) -> None:
        """Stops the cluster: new calls are refused (``ClusterNotRunning``),
        calls in flight get ``drain_timeout_s`` to finish, and those still
        running then are cancelled (a call in a thread, ``call_sync``, cannot
        be: it is left to finish). Then every task the cluster started is
        stopped, what it registered is deregistered, and the discovery (and
        the cache, with ``close_cache``) is closed. Idempotent, and safe from
        concurrent tasks; on another loop than the cluster's, it runs there."""
        seconds("drain_timeout_s", drain_timeout_s, zero=True)
        while self._state in (_State.STARTING, _State.CLOSING) and self._transition is not None:
            await asyncio.shield(self._transition)
        if self._state is _State.CLOSED:
            return
        home = self._home
        if home is not None and home is not asyncio.get_running_loop() and not home.is_closed():
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self.aclose(drain_timeout_s=drain_timeout_s), home)
            )
            return
        self._state, self._transition = _State.CLOSING, asyncio.get_running_loop().create_future()
        try:
            await self._drain(drain_timeout_s)
            await self._teardown()
        finally:
            self._finished(_State.CLOSED)
            if self._finalizer is not None:
                self._finalizer.detach()

    def _finished(self, state: _State) -> None:
        self._state = state
        if self._transition is not None and not self._transition.done():
            self._transition.set_result(None)
        self._transition = None

    async def _drain(self, timeout_s: float) -> None:
        """Waits for the calls in flight, then cancels the async ones left."""
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, self._flight.wait_idle, timeout_s):
            return
        for task in self._flight.tasks():
            task.get_loop().call_soon_threadsafe(task.cancel, "the cluster is closing")
        await loop.run_in_executor(None, self._flight.wait_idle, 1.0)

    async def _teardown(self) -> None:
        """Stops what ``astart`` started, whatever part of it ran."""
        if self.health is not None:
            await self.health.stop()
            close = getattr(self.health.check, "aclose", None)
            if close is not None:  # an HttpCheck's pooled client on this loop
                await close()
        await cancel_and_wait(self._parts.follow)
        self._parts.follow = None
        await cancel_and_wait(self._parts.kv_follow)
        self._parts.kv_follow = None
        if self._kv is not None:
            await self._kv.close()
            self._kv = None
        if self.shared_state is not None:
            await self.shared_state._detach()
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

    async def __aenter__(self) -> Cluster:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> Cluster:
        """For sync applications: runs the cluster's tasks on an event loop
        in a thread of its own. Idempotent and thread-safe. A cluster
        dropped without ``close()`` warns (``ResourceWarning``) and stops
        its thread when collected, or at exit. In async code (a running
        event loop here), RuntimeError: use ``await cluster.astart()``."""
        if running_loop() is not None:
            raise RuntimeError(
                "start: this is the sync start, and an event loop is running here; "
                "use `await cluster.astart()` or `async with cluster`"
            )
        with self._lifecycle:
            if self._state is _State.RUNNING:
                return self
            runner = LoopThread(f"langcluster:{self.service}")
            try:
                runner.run(self.astart())
            except BaseException:
                runner.stop()
                raise
            self._parts.runner = runner
        return self

    def close(self, *, drain_timeout_s: float = 10.0) -> None:
        """``aclose`` for sync applications (and for a cluster never
        started). Idempotent and thread-safe."""
        with self._lifecycle:
            runner = self._parts.runner
            if runner is not None:
                try:
                    runner.run(self.aclose(drain_timeout_s=drain_timeout_s))
                finally:
                    runner.stop()
                    self._parts.runner = None
            elif self._state is not _State.CLOSED:
                home = self._home
                if home is not None and not home.is_closed():
                    raise RuntimeError(
                        "close: this cluster runs on an event loop (it was started with "
                        "astart); use await cluster.aclose()"
                    )
                asyncio.run(self.aclose(drain_timeout_s=drain_timeout_s))

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _not_running(self) -> ClusterNotRunning:
        if self._state in (_State.NEW, _State.STARTING):
            return ClusterNotRunning(
                f"cluster {self.service!r} is not started: use `async with cluster`, "
                "`await cluster.astart()` or `cluster.start()` first",
                state="new",
            )
        return ClusterNotRunning(
            f"cluster {self.service!r} is {self._state.value}", state=self._state.value
        )

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
        stored (with ``ttl``). Raises ``ClusterNotRunning`` before ``start``
        and once ``close`` has begun."""
        if self._state is not _State.RUNNING:
            raise self._not_running()
        task = asyncio.current_task()
        self._flight.enter(task)
        try:
            return await adrive(call_flow(self, fn, key, cache_key, ttl))
        finally:
            self._flight.leave(task)

    def call_sync(
        self,
        fn: Callable[[Any], T],
        *,
        key: Key | None = None,
        cache_key: Key | None = None,
        ttl: float | None = None,
    ) -> T:
        """The blocking twin of ``call``."""
        if self._state is not _State.RUNNING:
            raise self._not_running()
        flight = self._flight
        flight.enter_sync()
        try:
            return drive(call_flow(self, fn, key, cache_key, ttl))  # type: ignore[no-any-return]
        finally:
            flight.leave_sync()

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Tells ``observer`` (a ``langcluster.metrics.Observer``) of every
        call as it begins and ends, and of every attempt when its
        ``attempts`` is true; returns a function that stops it. This is how
        ``langcluster.metrics`` records; with no observer a call pays one
        test."""
        remove_call = self._observers.add(observer)
        remove_attempts = self.failover.observe(observer)

        def remove() -> None:
            remove_call()
            remove_attempts()

        return remove

    # --------------------------------------------------------------- events

    def _on_node(self, event: NodeEvent) -> None:
        if (
            self.health is not None
            and event.kind is NodeEventKind.STATUS_CHANGED
            and event.node.status is NodeStatus.HEALTHY
            and event.previous is not None
            and event.previous.status is NodeStatus.UNHEALTHY
        ):
            # A node whose checks pass again leaves ejection (Envoy's
            # successful_active_health_check_uneject_host): its breaker goes
            # half-open, and trial calls tell whether it serves. A first
            # passing check (from unknown) is no recovery: an ejection made
            # before it, here or by another process, stands.
            self.failover.revive(event.node.id)
            if isinstance(self.balancer, PrefixAware):
                # Down, then up: most likely restarted, its cache cold.
                with contextlib.suppress(KeyError):
                    self.balancer.forget(event.node.id)
        elif event.kind is NodeEventKind.REMOVED:
            self.failover.forget(event.node.id)  # a node that left takes its state along
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
        if self.shared_state is not None:
            out["shared"] = self.shared_state.stats()
        return out

    def _shared_parts(self) -> SharedParts:
        """What the shared state works on: these parts, not the cluster."""
        campaign = getattr(self.discovery, "campaign", None)
        return SharedParts(
            service=self.service, failover=self.failover, registry=self.registry,
            balancer=self.balancer, health=self.health,
            campaign=campaign if callable(campaign) else None,
        )  # fmt: skip

    # --------------------------------------------------------------- config

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | Path) -> Cluster:
        """A cluster from a mapping or a TOML file (the fields are in
        docs/user-guide.md). A bad field raises ValueError or TypeError
        naming it (``breaker.window_size: ...``). The cluster closes the
        cache it builds."""
        from langcluster.cluster.config import load

        return load(config)
