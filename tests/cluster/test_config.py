"""Cluster.from_config: a TOML file or a mapping, and errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

import langcluster as lc
from tests.support.simulated import asker, servers

CONFIG = """
service = "chat"
balancer = { kind = "consistent_hash", load_factor = 1.25 }

[discovery]
kind = "static"
nodes = [
  { id = "a", address = "127.0.0.1", port = 9001, weight = 2 },
  { id = "b", address = "127.0.0.1", port = 9002 },
]

[health]
kind = "tcp"
interval_s = 2.0
timeout_s = 0.5

[breaker]
window_size = 10
open_timeout_s = 2.0

[failover]
max_attempts = 2
backoff = { base_s = 0.01, max_s = 0.1 }

[cache]
kind = "memory"
capacity = 500
ttl = 60
"""


@pytest.mark.asyncio
async def test_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(CONFIG)
    cluster = lc.Cluster.from_config(path)
    assert isinstance(cluster.balancer, lc.ConsistentHash)
    assert isinstance(cluster.cache, lc.MemoryCache)
    assert cluster.cache.capacity == 500
    assert cluster.failover.max_attempts == 2
    async with cluster:
        assert cluster.pick("prompt prefix") is cluster.pick("prompt prefix")
        assert {n.id for n in cluster.registry.nodes()} == {"a", "b"}
        assert cluster.registry.get("a").weight == 2  # type: ignore[union-attr]


GOOD_NODE = {"id": "a", "address": "h"}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "service"),
        ({"service": "x", "balancer": "fastest"}, "balancer: must be one of"),
        ({"service": "x", "balancer": {"kind": "consistent_hash", "vnodes": 0}}, "balancer.vnodes"),
        ({"service": "x", "breaker": {"window_size": 0}}, "breaker.window_size"),
        (
            {"service": "x", "breaker": {"windw_size": 5}},
            "breaker.windw_size: not a setting",
        ),
        ({"service": "x", "discovery": {"kind": "zookeeper"}}, "discovery.kind"),
        (
            {"service": "x", "discovery": {"nodes": [{"id": "a", "address": "h"}, {"port": 1}]}},
            "discovery.nodes[1]",
        ),
        ({"service": "x", "health": {"kind": "http", "path": "health"}}, "health.path"),
        ({"service": "x", "health": {"interval_s": 1, "timeout_s": 2}}, "health.timeout_s"),
        ({"service": "x", "failover": {"max_attempts": 0}}, "failover.max_attempts"),
        ({"service": "x", "failover": {"backoff": {"base_s": -1}}}, "failover.backoff.base_s"),
        ({"service": "x", "cache": {"kind": "memory", "capacity": 0}}, "cache.capacity"),
        ({"service": "x", "cache": {"kind": "memory", "url": "redis://x"}}, "cache.url"),
        ({"service": "x", "cache": {"kind": "layered", "mode": "sideways"}}, "cache.mode"),
        (
            {"service": "x", "shared_state": {"redis": "redis://h", "trial_s": 0}},
            "shared_state.trial_s",
        ),
        ({"service": "x", "shared_state": {"url": "redis://h"}}, "shared_state.url: unknown"),
        ({"service": "x", "extra": 1}, "extra: unknown field"),
        ({"service": "x", "breaker": 3}, "breaker: must be a table"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        lc.Cluster.from_config(config)


def test_bad_files_and_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config: cannot read"):
        lc.Cluster.from_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("service = ")
    with pytest.raises(ValueError, match="not valid TOML"):
        lc.Cluster.from_config(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="service"):
        lc.Cluster(service="")
    with pytest.raises(ValueError, match="balancer"):
        lc.Cluster(service="x", balancer="nope")
    with pytest.raises(TypeError, match="discovery"):
        lc.Cluster(service="x", discovery=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nodes"):
        lc.Cluster(service="x", discovery=lc.StaticDiscovery(), nodes=[])
    with pytest.raises(TypeError, match="cache"):
        lc.Cluster(service="x", cache={})  # type: ignore[arg-type]


@pytest.mark.services
@pytest.mark.asyncio
async def test_etcd_and_a_layered_cache_from_config(etcd_server: Any, redis_server: Any) -> None:
    backends = await servers(2)
    announcer = lc.EtcdDiscovery("cfg-svc", endpoints=[f"http://{etcd_server.url}"])
    for backend in backends:
        await announcer.register(backend.node())
    cluster = lc.Cluster.from_config(
        {
            "service": "cfg-svc",
            "discovery": {"kind": "etcd", "endpoints": [f"http://{etcd_server.url}"]},
            "cache": {"kind": "layered", "url": f"redis://{redis_server.url}/0",
                      "namespace": "cfg", "capacity": 100, "mode": "write_back"},
        }
    )  # fmt: skip
    client = httpx.AsyncClient()
    async with cluster:
        assert {n.id for n in cluster.registry.nodes()} == {"s0", "s1"}
        first = await cluster.call(asker(client), cache_key="p")
        assert await cluster.call(asker(client), cache_key="p") == first
        assert isinstance(cluster.cache, lc.LayeredCache)
        assert cluster.cache.stats()["l1_hits"] >= 1
    await client.aclose()
    await announcer.close()
    for backend in backends:
        await backend.kill()


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_bytes(b'service = "\xff\xfe"\n')
    with pytest.raises(ValueError, match=r"^config: .*cluster\.toml is not UTF-8"):
        lc.Cluster.from_config(path)


def test_duplicate_node_ids_are_refused_by_name() -> None:
    nodes = [{"id": "a", "address": "h1"}, {"id": "a", "address": "h2"}]
    with pytest.raises(ValueError, match=r"^discovery\.nodes\[1\]\.id: duplicate node id 'a'"):
        lc.Cluster.from_config({"service": "s", "discovery": {"kind": "static", "nodes": nodes}})
