"""The Cluster facade over real loopback HTTP servers: wiring, failover,
events, the cache, the sync face, config files and their errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import langcluster as lc
from langcluster.testing import SimulatedServer


async def servers(n: int, **kwargs: Any) -> list[SimulatedServer]:
    return [await SimulatedServer(f"s{i}", seed=i, **kwargs).start() for i in range(n)]


def asker(client: httpx.AsyncClient) -> Any:
    async def ask(node: lc.Node) -> str:
        response = await client.post(
            f"http://{node.address}:{node.port}/v1/completions", json={"prompt": "hi"}
        )
        response.raise_for_status()
        return str(response.json()["node"])

    return ask


FAST_BREAKER = lc.BreakerConfig(
    window_size=4, minimum_calls=2, open_timeout_s=0.3, max_open_timeout_s=0.5
)


@pytest.mark.asyncio
async def test_calls_fail_over_when_a_server_dies_and_events_tell_the_story() -> None:
    backends = await servers(3, latency_s=0.002)
    client = httpx.AsyncClient(timeout=1.0)
    cluster = lc.Cluster(
        service="t", nodes=[s.node() for s in backends], balancer="round_robin",
        breaker=FAST_BREAKER,
    )  # fmt: skip
    events: list[lc.ClusterEvent] = []

    async def collect() -> None:
        async for event in cluster.events():
            events.append(event)

    async with cluster:
        collector = asyncio.create_task(collect())
        await asyncio.sleep(0)
        served = [await cluster.call(asker(client)) for _ in range(30)]
        assert set(served) == {"s0", "s1", "s2"}
        await backends[1].kill()
        served = [await cluster.call(asker(client)) for _ in range(60)]  # none fails
        assert "s1" not in served[-20:]
        stats = cluster.stats()
        assert stats["nodes"]["s1"]["breaker"] in ("open", "half_open")
        assert stats["calls"]["errors"] == 0
        assert stats["failover"]["retries"] >= 1
        await asyncio.sleep(0.05)
        collector.cancel()
    kinds = {(e.source, e.kind, e.node_id) for e in events}
    assert ("failover", "breaker_opened", "s1") in kinds
    assert ("failover", "node_failed", "s1") in kinds
    await client.aclose()
    for backend in backends:
        await backend.kill()


@pytest.mark.asyncio
async def test_health_checks_take_a_dead_server_out_and_bring_it_back() -> None:
    backends = await servers(2)
    cluster = lc.Cluster(
        service="t", nodes=[s.node() for s in backends],
        health=lc.HealthConfig(lc.TcpCheck(timeout_s=0.1), interval_s=0.1, timeout_s=0.05,
                               rise=1, fall=1),
    )  # fmt: skip
    async with cluster:
        deadline = time.monotonic() + 3
        while cluster.registry.get("s0").status is not lc.NodeStatus.HEALTHY:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await backends[0].kill()
        while cluster.registry.get("s0").status is not lc.NodeStatus.UNHEALTHY:  # type: ignore[union-attr]
            assert time.monotonic() < deadline + 3
            await asyncio.sleep(0.02)
        assert cluster.stats()["nodes"]["s0"]["available"] is False
        assert {cluster.pick().id for _ in range(10)} == {"s1"}
        await backends[0].start()
        while cluster.registry.get("s0").status is not lc.NodeStatus.HEALTHY:  # type: ignore[union-attr]
            assert time.monotonic() < deadline + 6
            await asyncio.sleep(0.02)
        assert "health" in cluster.stats()["nodes"]["s0"]
    for backend in backends:
        await backend.kill()


@pytest.mark.asyncio
async def test_cache_key_serves_repeats_from_the_cache() -> None:
    backends = await servers(1)
    client = httpx.AsyncClient()
    calls = 0

    async def ask(node: lc.Node) -> str:
        nonlocal calls
        calls += 1
        return await asker(client)(node)

    async with lc.Cluster(
        service="t", nodes=[backends[0].node()], cache=lc.MemoryCache(100)
    ) as cluster:
        assert await cluster.call(ask, cache_key="same prompt") == "s0"
        assert await cluster.call(ask, cache_key="same prompt") == "s0"
        assert calls == 1
        assert cluster.stats()["calls"]["cache_hits"] == 1
    await client.aclose()
    await backends[0].kill()


@pytest.mark.asyncio
async def test_close_stops_every_task_and_deregisters_what_it_registered() -> None:
    discovery = lc.StaticDiscovery([lc.Node("other", "127.0.0.1", 1)])
    me = lc.Node("me", "127.0.0.1", 2)
    before = set(asyncio.all_tasks())
    cluster = lc.Cluster(
        service="t", discovery=discovery, register=me,
        health=lc.HealthConfig(lc.TcpCheck(), interval_s=0.5, timeout_s=0.1),
    )  # fmt: skip
    await cluster.astart()
    assert {n.id for n in await discovery.nodes()} == {"other", "me"}
    await asyncio.sleep(0.05)
    assert {n.id for n in cluster.registry.nodes()} == {"other", "me"}
    assert set(asyncio.all_tasks()) - before  # discovery follower, health scheduler
    await cluster.aclose()
    await asyncio.sleep(0)
    assert set(asyncio.all_tasks()) - before == set()
    assert [n.id for n in await discovery.nodes()] == ["other"]


def test_the_sync_face() -> None:
    async def boot() -> list[SimulatedServer]:
        return await servers(2)

    loop = asyncio.new_event_loop()
    backends = loop.run_until_complete(boot())
    import threading

    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        with lc.Cluster(service="t", nodes=[s.node() for s in backends]) as cluster:

            def ask(node: lc.Node) -> str:
                response = httpx.post(
                    f"http://{node.address}:{node.port}/v1/completions", json={"prompt": "x"}
                )
                response.raise_for_status()
                return str(response.json()["node"])

            got = {cluster.call_sync(ask) for _ in range(20)}
            assert got == {"s0", "s1"}
            assert cluster.stats()["calls"]["calls"] == 20
    finally:
        for backend in backends:
            asyncio.run_coroutine_threadsafe(backend.kill(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()


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


def run_module(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langcluster", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_the_demo_runs_and_reports_in_json() -> None:
    started = time.monotonic()
    done = run_module("demo", "--json", "--duration", "6")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    result = json.loads(done.stdout)
    assert result["requests"] > 200
    assert result["success_rate"] >= 0.99
    assert 0 < result["cache_hit_ratio"] < 1
    assert result["breaker_opens"] + result["health_flips"] >= 1  # the chaos was seen
    assert set(result["per_node"]) == {f"gpu-{i}" for i in range(5)}


def test_the_demo_in_plain_logs() -> None:
    done = run_module("demo", "--no-live", "--duration", "4")
    assert done.returncode == 0, done.stderr
    assert "chaos: gpu-1 is killed" in done.stdout
    assert "success rate" in done.stdout


@pytest.mark.services
def test_the_demo_on_real_redis_and_etcd(redis_server: Any, etcd_server: Any) -> None:
    done = run_module(
        "demo", "--json", "--duration", "4",
        "--redis", f"redis://{redis_server.url}/0", "--etcd", f"http://{etcd_server.url}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["success_rate"] >= 0.99
    assert result["cache_hit_ratio"] > 0


def test_the_bench_command_prints_ratios() -> None:
    done = run_module("bench", "--number", "2000", "--repeat", "1")
    assert done.returncode == 0, done.stderr
    for row in ("floor: next(itertools.cycle)", "langcluster RoundRobin",
                "pure Python round robin", "cachebox", "pybreaker"):  # fmt: skip
        assert row in done.stdout
    assert "x first row" in done.stdout
