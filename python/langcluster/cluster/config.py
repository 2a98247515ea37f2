"""``Cluster.from_config``: a cluster from a mapping or a TOML file.

Each table goes to the class it configures, and the fields are that class's
own parameters: ``[breaker]`` is a ``BreakerConfig``, ``[failover]`` a
``FailoverConfig`` (``backoff`` a ``Backoff``), ``[health]`` a ``HealthConfig``
and its check, ``[discovery]`` and ``[cache]`` the class their ``kind``
names, ``[shared_state]`` a ``SharedState`` (``redis = "redis://..."``). An
unknown field is refused by name; a bad value raises the class's own error,
whose message starts with the field's name, prefixed with the table's
(``breaker.window_size: ...``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from langcluster import _toml
from langcluster._core import Balancer
from langcluster.breaker import BreakerConfig
from langcluster.cache import Cache, LayeredCache, MemoryCache, RedisCache
from langcluster.cluster.facade import BALANCERS, Cluster
from langcluster.discovery import (
    ConsulDiscovery,
    Discovery,
    EtcdDiscovery,
    StaticDiscovery,
    node_from_record,
)
from langcluster.discovery.base import unique_duplicate
from langcluster.errors import DiscoveryError
from langcluster.failover import Backoff, FailoverConfig
from langcluster.health import HealthCheck, HealthConfig, HealthMonitor, HttpCheck, TcpCheck
from langcluster.node import Node
from langcluster.shared import SharedState

__all__ = ["load"]

T = TypeVar("T")
# A message that starts with an argument's name (the library's convention).
_NAMED = re.compile(r"^[A-Za-z_][\w.\[\]]*: ")


def _read(path: Path) -> dict[str, Any]:
    try:
        return _toml.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"config: cannot read {path}: {error}") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"config: {path} is not UTF-8 text: {error}") from error
    except _toml.TOMLDecodeError as error:
        raise ValueError(f"config: {path} is not valid TOML: {error}") from error


def load(config: Mapping[str, Any] | str | Path) -> Cluster:
    """The cluster a config describes; see the module docstring."""
    if isinstance(config, str | Path):
        config = _read(Path(config))
    if not isinstance(config, Mapping):
        raise TypeError(f"config: must be a mapping or a path, got {type(config).__name__}")
    fields = dict(config)
    service = fields.pop("service", None)
    if not isinstance(service, str) or not service:
        raise ValueError(f"service: must be a non-empty str, got {service!r}")
    balancer = _balancer(fields.pop("balancer", "adaptive"))
    discovery = _discovery(service, _table(fields, "discovery"))
    health = _health(_table(fields, "health"))
    breaker_fields = _table(fields, "breaker")
    breaker = _make("breaker", BreakerConfig, breaker_fields) if breaker_fields else None
    failover = _failover(_table(fields, "failover"))
    cache = _cache(_table(fields, "cache"))
    register = _node("register", fields.pop("register")) if "register" in fields else None
    shared_fields = _table(fields, "shared_state")
    shared = _make("shared_state", SharedState, shared_fields) if shared_fields else None
    for name in fields:
        raise ValueError(f"{name}: unknown field")
    return Cluster(
        service=service, discovery=discovery, balancer=balancer, health=health,
        breaker=breaker, failover=failover, cache=cache, close_cache=cache is not None,
        register=register, shared_state=shared,
    )  # fmt: skip


# ------------------------------------------------------------------ helpers


def _table(fields: dict[str, Any], name: str) -> dict[str, Any]:
    value = fields.pop(name, None)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: must be a table, got {type(value).__name__}")
    return dict(value)


def _kind(table: dict[str, Any], path: str, allowed: tuple[str, ...], default: str) -> str:
    kind = table.pop("kind", default)
    listed = ", ".join(allowed)
    if not isinstance(kind, str):
        raise TypeError(f"{path}.kind: must be one of {listed}, got {type(kind).__name__}")
    if kind not in allowed:
        raise ValueError(f"{path}.kind: must be one of {listed}, got {kind!r}")
    return str(kind)


def _parameters(target: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(target).parameters)


def _make(path: str, target: Callable[..., T], fields: Mapping[str, Any]) -> T:
    """``target(**fields)``: an unknown field, or an error of the target,
    is reported under ``path``."""
    params = inspect.signature(target).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for name in fields:
        if not takes_any and name not in params:
            raise ValueError(f"{path}.{name}: unknown field")
    try:
        return target(**fields)
    except (TypeError, ValueError, DiscoveryError) as error:
        text = str(error)
        where = f"{path}.{text}" if _NAMED.match(text) else f"{path}: {text}"
        raise ValueError(where) from None


def _split(fields: dict[str, Any], path: str, *targets: Callable[..., Any]) -> list[dict[str, Any]]:
    """The fields of each target: a field goes to the first target that
    has a parameter of its name."""
    groups: list[dict[str, Any]] = [{} for _ in targets]
    for name, value in fields.items():
        for group, target in zip(groups, targets, strict=True):
            if name in _parameters(target):
                group[name] = value
                break
        else:
            raise ValueError(f"{path}.{name}: unknown field")
    return groups


def _node(path: str, record: object) -> Node:
    try:
        return node_from_record(record)
    except (TypeError, ValueError, DiscoveryError) as error:
        raise ValueError(f"{path}: {error}") from None


# ----------------------------------------------------------------- sections


def _balancer(value: object) -> Balancer:
    options: dict[str, Any] = {}
    where = "balancer"
    if isinstance(value, Mapping):
        options = dict(value)
        value = options.pop("kind", "adaptive")
        where = "balancer.kind"
    if not isinstance(value, str) or value not in BALANCERS:
        raise ValueError(f"{where}: must be one of {', '.join(BALANCERS)}, got {value!r}")
    return _make("balancer", BALANCERS[value], options)


def _discovery(service: str, table: dict[str, Any]) -> Discovery:
    kind = _kind(table, "discovery", ("static", "etcd", "consul"), "static")
    if kind == "static":
        records = table.pop("nodes", [])
        if not isinstance(records, list):
            raise ValueError("discovery.nodes: must be a list of tables")
        nodes = [_node(f"discovery.nodes[{i}]", r) for i, r in enumerate(records)]
        if (duplicate := unique_duplicate(nodes)) is not None:
            i, node_id = duplicate
            raise ValueError(f"discovery.nodes[{i}].id: duplicate node id {node_id!r}")
        return _make("discovery", StaticDiscovery, {"nodes": nodes, **table})
    if kind == "etcd":
        return _make("discovery", EtcdDiscovery, {"service": service, **table})
    return _make("discovery", ConsulDiscovery, {"service": service, **table})


def _health(table: dict[str, Any]) -> HealthConfig | None:
    if not table:
        return None
    check_kind = _kind(table, "health", ("http", "tcp"), "http")
    check_class: type[HealthCheck] = HttpCheck if check_kind == "http" else TcpCheck
    # `timeout_s` is the monitor's; the check's own is `check_timeout_s`.
    check_timeout = table.pop("check_timeout_s", None)
    for reserved in ("registry", "check"):
        if reserved in table:
            raise ValueError(f"health.{reserved}: unknown field")
    monitor_fields, check_fields = _split(table, "health", HealthMonitor, check_class)
    if check_timeout is not None:
        check_fields["timeout_s"] = check_timeout
    try:
        check = _make("health", check_class, check_fields)
    except ValueError as error:  # the check's timeout_s is the file's check_timeout_s
        raise ValueError(str(error).replace("health.timeout_s", "health.check_timeout_s")) from None
    return _make("health", HealthConfig, {"check": check, **monitor_fields})


def _failover(table: dict[str, Any]) -> FailoverConfig:
    if "backoff" in table:
        backoff = table["backoff"]
        if not isinstance(backoff, Mapping):
            raise ValueError(f"failover.backoff: must be a table, got {type(backoff).__name__}")
        table["backoff"] = _make("failover.backoff", Backoff, dict(backoff))
    return _make("failover", FailoverConfig, table)


def _cache(table: dict[str, Any]) -> Cache | None:
    if not table:
        return None
    kind = _kind(table, "cache", ("memory", "redis", "layered"), "memory")
    if kind == "memory":
        return _make("cache", MemoryCache, {"capacity": 10_000, **table})
    if kind == "redis":
        return _make("cache", RedisCache, table)
    layered, l2, l1 = _split(table, "cache", LayeredCache, RedisCache, MemoryCache)
    return _make(
        "cache",
        LayeredCache,
        {
            "l1": _make("cache", MemoryCache, {"capacity": 10_000, **l1}),
            "l2": _make("cache", RedisCache, l2),
            **layered,
        },
    )
