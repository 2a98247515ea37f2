"""``Cluster``: one object that wires discovery -> registry -> health
monitor -> balancer -> per-node breakers -> failover (and, optionally, a
cache in front), as the design's data flow shows.

    async with Cluster(service="llm", discovery=StaticDiscovery(nodes)) as cluster:
        answer = await cluster.call(lambda node: ask(node, prompt), cache_key=prompt)

- ``start`` (or ``async with``) reads the discovery's nodes once, follows
  its changes in a background task, registers ``register`` (this process's
  own node, if given), and starts the health monitor. ``close`` stops every
  task it started, deregisters what it registered, closes the discovery,
  and closes the cache if the cluster built it (``from_config``).
- A sync application uses ``start()`` / ``close()`` (or ``with``): the
  cluster then runs its tasks on an event loop in a thread of its own, and
  ``call_sync`` runs calls in the caller's thread.
- ``events()`` is one async stream of ``ClusterEvent``: node events from the
  registry (discovery and health flips), and breaker and failover events
  from the failover manager.
- ``Cluster.from_config`` builds the same from a mapping or a TOML file;
  a bad field raises ``ValueError`` naming it (``breaker.window_size: ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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
from langcluster._loops import cancel_and_wait
from langcluster.discovery import Discovery, StaticDiscovery, node_from_record
from langcluster.errors import DiscoveryError
from langcluster.failover import Backoff, BreakerConfig, FailoverEvent, FailoverManager
from langcluster.health import HealthCheck, HealthMonitor, HttpCheck, TcpCheck
from langcluster.layered import LayeredCache
from langcluster.node import Node
from langcluster.redis_cache import RedisCache
from langcluster.registry import NodeEvent, NodeRegistry

__all__ = ["BALANCERS", "Cluster", "ClusterEvent", "FailoverConfig", "HealthConfig"]

_T = TypeVar("_T")
_MISSING: Any = object()

BALANCERS: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin,
    "weighted_round_robin": WeightedRoundRobin,
    "least_connections": LeastConnections,
    "consistent_hash": ConsistentHash,
    "adaptive": Adaptive,
    "random": Random,
    "power_of_two": PowerOfTwoChoices,
}


@dataclass(frozen=True)
class FailoverConfig:
    """The failover manager's settings (see ``FailoverManager``)."""

    max_attempts: int = 3
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: Backoff = field(default_factory=Backoff)
    retry_budget: float | None = 0.2
    min_retries: int = 3
    hedge_after_s: float | None = None
    priority: Callable[[Any], int] | Mapping[str, int] | None = None
    overprovisioning: float = 1.4


@dataclass(frozen=True)
class HealthConfig:
    """The health monitor's settings (see ``HealthMonitor``)."""

    check: HealthCheck
    interval_s: float = 5.0
    timeout_s: float = 1.0
    rise: int = 2
    fall: int = 2
    jitter: float = 0.1


@dataclass(frozen=True)
class ClusterEvent:
    """One event of ``Cluster.events()``.

    ``source`` is ``"node"`` (the registry: added, removed, updated,
    status_changed; health flips arrive as status_changed) or ``"failover"``
    (breaker_opened, breaker_closed, retry, failover, ...: the
    ``FailoverEvent`` kinds). ``node_id`` is None for cluster-wide events.
    """

    source: str
    kind: str
    node_id: str | None
    detail: str
    at: float  # time.time()


class Cluster:
    """See the module docstring."""

    def __init__(
        self,
        *,
        service: str,
        discovery: Discovery | None = None,
        nodes: Iterable[Node] | None = None,
        balancer: str | Balancer = "adaptive",
        health: HealthConfig | HealthCheck | None = None,
        breaker: BreakerConfig | None = None,
        failover: FailoverConfig | None = None,
        cache: MemoryCache | RedisCache | LayeredCache | None = None,
        register: Node | None = None,
        balancer_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(service, str) or not service:
            raise ValueError(f"service: must be a non-empty str, got {service!r}")
        if discovery is not None and nodes is not None:
            raise ValueError("nodes: give either discovery or nodes, not both")
        if discovery is None:
            discovery = StaticDiscovery(nodes or ())
        for method in ("nodes", "watch", "register", "deregister", "close"):
            if not callable(getattr(discovery, method, None)):
                raise TypeError(f"discovery: {type(discovery).__name__} has no {method}()")
        if isinstance(balancer, str):
            kind = BALANCERS.get(balancer)
            if kind is None:
                raise ValueError(
                    f"balancer: must be one of {', '.join(sorted(BALANCERS))} or a "
                    f"balancer object, got {balancer!r}"
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
            health = HealthConfig(check=health)
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
        self.failover = FailoverManager(
            chosen,
            breaker=breaker,
            max_attempts=failover.max_attempts,
            retry_on=failover.retry_on,
            backoff=failover.backoff,
            retry_budget=failover.retry_budget,
            min_retries=failover.min_retries,
            hedge_after_s=failover.hedge_after_s,
            priority=failover.priority,
            overprovisioning=failover.overprovisioning,
        )
        self.health: HealthMonitor | None = None
        if health is not None:
            self.health = HealthMonitor(
                self.registry,
                health.check,
                interval_s=health.interval_s,
                timeout_s=health.timeout_s,
                rise=health.rise,
                fall=health.fall,
                jitter=health.jitter,
            )
        self.cache = cache
        self.register_node = register
        self._owns_cache = False
        self._unbind: Callable[[], None] | None = None
        self._follow: asyncio.Task[None] | None = None
        self._registered = False
        self._started = False
        self._streams: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[ClusterEvent]]] = []
        self._lock = threading.Lock()
        self._unsubscribe: list[Callable[[], None]] = []
        self._calls = {"calls": 0, "cache_hits": 0, "errors": 0}
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
        if self._owns_cache and self.cache is not None:
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

    def pick(self, key: str | bytes | int | None = None) -> Any:
        """A node from the balancer (with ``key`` for consistent hashing)."""
        return self.balancer.pick(key)

    async def call(
        self,
        fn: Callable[[Any], Awaitable[_T]],
        *,
        key: str | bytes | int | None = None,
        cache_key: str | bytes | int | None = None,
        ttl: float | None = None,
    ) -> _T:
        """Awaits ``fn(node)`` through failover. With ``cache_key`` and a
        cache, a cached result is returned without a call, and a new one is
        stored (with ``ttl``)."""
        self._count("calls")
        if cache_key is not None and self.cache is not None:
            found = await self._cache_get(cache_key)
            if found is not _MISSING:
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
        fn: Callable[[Any], _T],
        *,
        key: str | bytes | int | None = None,
        cache_key: str | bytes | int | None = None,
        ttl: float | None = None,
    ) -> _T:
        """The blocking twin of ``call``."""
        self._count("calls")
        cache = self.cache
        if cache_key is not None and cache is not None:
            found = cache.get(cache_key, _MISSING)
            if found is not _MISSING:
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

    def _count(self, name: str) -> None:
        with self._lock:  # call_sync may run in many threads
            self._calls[name] += 1

    async def _cache_get(self, key: Any) -> Any:
        cache = self.cache
        if isinstance(cache, MemoryCache):
            return cache.get(key, _MISSING)
        assert cache is not None
        return await cache.aget(key, _MISSING)

    async def _cache_set(self, key: Any, value: Any, ttl: float | None) -> None:
        cache = self.cache
        if isinstance(cache, MemoryCache):
            cache.set(key, value, ttl)
        elif cache is not None:
            await cache.aset(key, value, ttl)

    # --------------------------------------------------------------- events

    def _publish(self, event: ClusterEvent) -> None:
        with self._lock:
            streams = list(self._streams)
        for loop, queue in streams:
            with contextlib.suppress(RuntimeError):  # a closed loop
                loop.call_soon_threadsafe(_push, queue, event)

    def _on_node(self, event: NodeEvent) -> None:
        detail = f"status {event.node.status.value}"
        self._publish(ClusterEvent("node", event.kind.value, event.node.id, detail, time.time()))

    def _on_failover(self, event: FailoverEvent) -> None:
        node_id = getattr(event.node, "id", None)
        detail = event.detail or (f"{type(event.error).__name__}" if event.error else "")
        self._publish(ClusterEvent("failover", event.kind, node_id, detail, event.time))

    async def events(self, maxsize: int = 1000) -> AsyncIterator[ClusterEvent]:
        """Node, health, breaker and failover events from now on, in one
        stream; a consumer that falls behind by ``maxsize`` loses the
        oldest."""
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize: must be an int >= 1, got {maxsize!r}")
        queue: asyncio.Queue[ClusterEvent] = asyncio.Queue(maxsize)
        entry = (asyncio.get_running_loop(), queue)
        with self._lock:
            self._streams.append(entry)
        try:
            while True:
                yield await queue.get()
        finally:
            with self._lock:
                self._streams.remove(entry)

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
            "calls": self._calls_snapshot(),
            "failover": {k: v for k, v in failover.items() if k != "nodes"},
        }
        if self.cache is not None:
            out["cache"] = self.cache.stats()
        return out

    def _calls_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    # --------------------------------------------------------------- config

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | Path) -> Cluster:
        """A cluster from a mapping or a TOML file; see docs/user-guide.md
        for the fields. A bad field raises ValueError naming it."""
        if isinstance(config, str | Path):
            path = Path(config)
            try:
                tomllib: Any = importlib.import_module("tomllib")
            except ImportError:  # Python 3.10
                raise ValueError("config: a TOML file needs Python 3.11+; pass a mapping") from None
            try:
                config = tomllib.loads(path.read_text(encoding="utf-8"))
            except OSError as error:
                raise ValueError(f"config: cannot read {path}: {error}") from error
            except tomllib.TOMLDecodeError as error:
                raise ValueError(f"config: {path} is not valid TOML: {error}") from error
        if not isinstance(config, Mapping):
            raise TypeError(f"config: must be a mapping or a path, got {type(config).__name__}")
        return _build(dict(config))


def _push(queue: asyncio.Queue[ClusterEvent], event: ClusterEvent) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(event)


# ------------------------------------------------------------------ config


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.pop(name, None)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: must be a table, got {type(value).__name__}")
    return dict(value)


def _apply(name: str, build: Callable[..., _T], fields: dict[str, Any]) -> _T:
    """`build(**fields)`, with any error renamed to `name.field`."""
    try:
        return build(**fields)
    except TypeError as error:
        text = str(error)
        if "unexpected keyword argument" in text:
            bad = text.rsplit("'", 2)[-2]
            raise ValueError(f"{name}.{bad}: unknown field") from None
        raise ValueError(f"{name}: {text}") from None
    except ValueError as error:
        text = str(error)
        own = name.rsplit(".", 1)[-1] + "."
        if text.startswith(own):  # the class named itself already
            text = text[len(own) :]
        raise ValueError(f"{name}.{text}" if ":" in text else f"{name}: {text}") from None


def _kind(section: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    kind = section.pop("kind", default)
    if kind not in allowed:
        raise ValueError(f"{name}.kind: must be one of {', '.join(allowed)}, got {kind!r}")
    return str(kind)


def _nodes(records: Any) -> list[Node]:
    if not isinstance(records, list):
        raise ValueError("discovery.nodes: must be a list of tables")
    out = []
    for i, record in enumerate(records):
        try:
            out.append(node_from_record(record))
        except (TypeError, ValueError, DiscoveryError) as error:
            raise ValueError(f"discovery.nodes[{i}]: {error}") from None
    return out


def _build(config: dict[str, Any]) -> Cluster:
    service = config.pop("service", None)
    if not isinstance(service, str) or not service:
        raise ValueError(f"service: must be a non-empty str, got {service!r}")
    balancer = config.pop("balancer", "adaptive")
    balancer_options: dict[str, Any] = {}
    if isinstance(balancer, Mapping):
        balancer_options = dict(balancer)
        balancer = balancer_options.pop("kind", "adaptive")
    if balancer not in BALANCERS:
        raise ValueError(
            f"balancer: must be one of {', '.join(sorted(BALANCERS))}, got {balancer!r}"
        )

    d = _section(config, "discovery")
    kind = _kind(d, "discovery", ("static", "etcd", "consul"), "static")
    discovery: Discovery
    if kind == "static":
        nodes = _nodes(d.pop("nodes", []))
        discovery = _apply("discovery", StaticDiscovery, {"nodes": nodes, **d})
    elif kind == "etcd":
        from langcluster.etcd import EtcdDiscovery

        discovery = _apply("discovery", EtcdDiscovery, {"service": service, **d})
    else:
        from langcluster.consul_discovery import ConsulDiscovery

        discovery = _apply("discovery", ConsulDiscovery, {"service": service, **d})

    h = _section(config, "health")
    health = None
    if h:
        check_kind = _kind(h, "health", ("http", "tcp"), "http")
        check_fields: dict[str, Any] = {
            k: h.pop(k) for k in ("path", "expect_status", "method") if k in h
        }
        if "check_timeout_s" in h:
            check_fields["timeout_s"] = h.pop("check_timeout_s")
        check: HealthCheck = (
            _apply("health", HttpCheck, check_fields)
            if check_kind == "http"
            else _apply("health", TcpCheck, check_fields)
        )
        health = _apply("health", HealthConfig, {"check": check, **h})
        _apply("health", HealthMonitor, {"registry": NodeRegistry(), "check": check, **h})

    b = _section(config, "breaker")
    breaker = _apply("breaker", BreakerConfig, b) if b else None

    f = _section(config, "failover")
    if "backoff" in f:
        f["backoff"] = _apply("failover.backoff", Backoff, dict(f["backoff"]))
    failover = _apply("failover", FailoverConfig, f)
    settings = {f.name: getattr(failover, f.name) for f in dataclasses.fields(failover)}
    _apply("failover", FailoverManager, {"balancer": RoundRobin([]), **settings})

    c = _section(config, "cache")
    cache: MemoryCache | RedisCache | LayeredCache | None = None
    if c:
        cache_kind = _kind(c, "cache", ("memory", "redis", "layered"), "memory")
        memory_fields: dict[str, Any] = {
            k: c.pop(k) for k in ("capacity", "policy", "shards") if k in c
        }
        redis_fields: dict[str, Any] = {
            k: c.pop(k)
            for k in ("url", "namespace", "serializer", "signing_key", "ttl_jitter",
                      "socket_timeout_s", "cluster")
            if k in c
        }  # fmt: skip
        ttl = c.pop("ttl", None)
        if cache_kind == "memory":
            if redis_fields:
                raise ValueError(f"cache.{next(iter(redis_fields))}: only for redis caches")
            cache = _apply(
                "cache", MemoryCache, {"capacity": 10_000, **memory_fields, "ttl": ttl, **c}
            )
        elif cache_kind == "redis":
            cache = _apply("cache", RedisCache, {**redis_fields, "ttl": ttl, **c})
        else:
            l1 = _apply("cache", MemoryCache, {"capacity": 10_000, **memory_fields})
            l2 = _apply("cache", RedisCache, {**redis_fields, "ttl": ttl})
            cache = _apply("cache", LayeredCache, {"l1": l1, "l2": l2, **c})

    register = config.pop("register", None)
    register_node = None
    if register is not None:
        try:
            register_node = node_from_record(register)
        except (TypeError, ValueError, DiscoveryError) as error:
            raise ValueError(f"register: {error}") from None

    if config:
        raise ValueError(f"{next(iter(config))}: unknown field")
    cluster = _apply(
        "balancer",
        Cluster,
        {
            "service": service, "discovery": discovery, "balancer": balancer,
            "balancer_options": balancer_options or None, "health": health,
            "breaker": breaker, "failover": failover, "cache": cache,
            "register": register_node,
        },
    )  # fmt: skip
    cluster._owns_cache = cache is not None
    return cluster
