"""The vocabulary's duration rule, enforced: every duration a component
takes refuses inf, NaN, a negative number, an absurd one and a bool, with an
error that names it (inf made timeouts never fire and polls never happen)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest

import langcluster as lc
from langcluster.testing import SimulatedServer

BAD = [math.inf, -math.inf, math.nan, -1, 1e300, True]


def _redis(**kw: Any) -> Any:
    return lc.RedisCache("redis://127.0.0.1:9/0", **kw)


def _layered(**kw: Any) -> Any:
    return lc.LayeredCache(lc.MemoryCache(10), _redis(), invalidation=False, **kw)


def _health(**kw: Any) -> Any:
    return lc.HealthMonitor(lc.NodeRegistry(), lc.TcpCheck(), **kw)


# Each component, made with one keyword changed.
MAKERS: dict[str, Callable[..., Any]] = {
    "StaticDiscovery": lc.StaticDiscovery,
    "EtcdDiscovery": lambda **kw: lc.EtcdDiscovery("svc", **kw),
    "ConsulDiscovery": lambda **kw: lc.ConsulDiscovery("svc", **kw),
    "TcpCheck": lc.TcpCheck,
    "HttpCheck": lc.HttpCheck,
    "HealthMonitor": _health,
    "HealthConfig": lambda **kw: lc.HealthConfig(lc.TcpCheck(), **kw),
    "RedisCache": _redis,
    "LayeredCache": _layered,
    "FailoverManager": lambda **kw: lc.FailoverManager(lc.RoundRobin(), **kw),
    "FailoverConfig": lc.FailoverConfig,
    "Backoff": lc.Backoff,
    "CircuitBreaker": lc.CircuitBreaker,
    "BreakerConfig": lc.BreakerConfig,
    "MemoryCache": lambda **kw: lc.MemoryCache(10, **kw),
    "Adaptive": lc.Adaptive,
    "SimulatedServer": lambda **kw: SimulatedServer("s", **kw),
}
COMPONENTS: dict[str, Callable[..., Any]] = {
    "StaticDiscovery": lc.StaticDiscovery,
    "EtcdDiscovery": lc.EtcdDiscovery,
    "ConsulDiscovery": lc.ConsulDiscovery,
    "TcpCheck": lc.TcpCheck,
    "HttpCheck": lc.HttpCheck,
    "HealthMonitor": lc.HealthMonitor,
    "HealthConfig": lc.HealthMonitor,
    "RedisCache": lc.RedisCache,
    "LayeredCache": lc.LayeredCache,
    "FailoverManager": lc.FailoverManager,
    "FailoverConfig": lc.FailoverManager,
    "Backoff": lc.Backoff,
    "CircuitBreaker": lc.BreakerConfig,  # its Python signature is **settings
    "BreakerConfig": lc.BreakerConfig,
    "MemoryCache": lc.MemoryCache,
    "Adaptive": lc.Adaptive,
    "SimulatedServer": SimulatedServer,
}
BREAKER_DURATIONS = ["slow_call_duration_s", "open_timeout_s", "max_open_timeout_s"]


def durations(name: str) -> list[str]:
    if name in ("CircuitBreaker", "BreakerConfig"):
        return BREAKER_DURATIONS
    target = COMPONENTS[name]
    params = inspect.signature(target).parameters
    return [p for p in params if p.endswith("_s") or p in ("ttl", "l1_ttl")]


CASES = [(name, param, bad) for name in MAKERS for param in durations(name) for bad in BAD]


def test_every_component_is_covered() -> None:
    assert all(durations(name) for name in MAKERS)
    assert len(CASES) > 150


@pytest.mark.parametrize(("component", "param", "bad"), CASES)
def test_a_bad_duration_is_refused_by_name(component: str, param: str, bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)) as refused:
        MAKERS[component](**{param: bad})
    assert param in str(refused.value)
