"""EtcdDiscovery against a real etcd-server (v3.4, JSON gateway)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest

import langcluster as lc
from langcluster import DiscoveryError
from langcluster.discovery import EtcdDiscovery

pytestmark = pytest.mark.services


def endpoint(server: object) -> str:
    return f"http://{server.url}"  # type: ignore[attr-defined]


async def next_snapshot(watch: AsyncIterator[list[lc.Node]], timeout: float = 5.0) -> list[str]:
    nodes = await asyncio.wait_for(anext(watch), timeout)
    return sorted(n.id for n in nodes)


@pytest.mark.asyncio
async def test_register_list_deregister(etcd_server: object) -> None:
    d = EtcdDiscovery("llm", endpoints=[endpoint(etcd_server)], ttl_s=5)
    await d.register(lc.Node("gpu-1", "10.0.0.1", 8000, weight=2, metadata={"model": "m"}))
    (node,) = await d.nodes()
    assert (node.id, node.address, node.port, node.weight, node.metadata) == (
        "gpu-1", "10.0.0.1", 8000, 2, {"model": "m"},
    )  # fmt: skip
    await d.deregister("gpu-1")
    assert await d.nodes() == []
    await d.close()


@pytest.mark.asyncio
async def test_a_registration_reaches_another_watcher_within_200_ms(etcd_server: object) -> None:
    watcher = EtcdDiscovery("llm", endpoints=[endpoint(etcd_server)])
    registrant = EtcdDiscovery("llm", endpoints=[endpoint(etcd_server)])
    watch = watcher.watch()
    assert await next_snapshot(watch) == []
    delays = []
    for i in range(5):
        started = time.perf_counter()
        await registrant.register(lc.Node(f"n{i}", "10.0.0.1", 8000 + i))
        ids = await next_snapshot(watch)
        delays.append(time.perf_counter() - started)
        assert f"n{i}" in ids
    assert max(delays) < 0.2, delays
    await registrant.close()  # deregisters its nodes
    for _ in range(5):
        if await next_snapshot(watch) == []:
            break
    await watch.aclose()
    await watcher.close()


@pytest.mark.asyncio
async def test_a_killed_registrant_vanishes_after_its_lease(etcd_server: object) -> None:
    code = (
        "import asyncio, langcluster as lc\n"
        "from langcluster.discovery import EtcdDiscovery\n"
        "async def main():\n"
        f"    d = EtcdDiscovery('llm', endpoints=['{endpoint(etcd_server)}'], ttl_s=2)\n"
        "    await d.register(lc.Node('doomed', '10.0.0.9', 9000))\n"
        "    print('registered', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"registered"
        d = EtcdDiscovery("llm", endpoints=[endpoint(etcd_server)])
        watch = d.watch()
        assert await next_snapshot(watch) == ["doomed"]
        await asyncio.sleep(3)  # alive past one TTL: the keepalive works
        assert [n.id for n in await d.nodes()] == ["doomed"]
        os.kill(proc.pid, signal.SIGKILL)
        # Its lease lapses (TTL 2 s) and the node with it: seen by the watch.
        assert await next_snapshot(watch, timeout=10) == []
        await watch.aclose()
        await d.close()
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.asyncio
async def test_the_watch_survives_an_etcd_restart(etcd_restartable: object) -> None:
    server = etcd_restartable
    d = EtcdDiscovery("llm", endpoints=[endpoint(server)], ttl_s=30)
    watch = d.watch()
    assert await next_snapshot(watch) == []
    await d.register(lc.Node("before", "10.0.0.1", 1))
    assert await next_snapshot(watch) == ["before"]
    pending = asyncio.ensure_future(anext(watch))
    server.stop()  # type: ignore[attr-defined]
    await asyncio.sleep(1)
    server.start()  # type: ignore[attr-defined]
    other = EtcdDiscovery("llm", endpoints=[endpoint(server)], ttl_s=30)
    await other.register(lc.Node("after", "10.0.0.2", 2))
    nodes = await asyncio.wait_for(pending, 15)
    ids = sorted(n.id for n in nodes)
    while ids != ["after", "before"]:
        ids = await next_snapshot(watch, timeout=10)
    await watch.aclose()
    await other.close()
    await d.close()


@pytest.mark.asyncio
async def test_malformed_records_are_skipped_and_logged(
    etcd_server: object, caplog: pytest.LogCaptureFixture
) -> None:
    d = EtcdDiscovery("llm", endpoints=[endpoint(etcd_server)])
    watch = d.watch()
    assert await next_snapshot(watch) == []

    def put(key: str, value: str) -> None:
        httpx.post(
            f"{endpoint(etcd_server)}/v3/kv/put",
            json={
                "key": base64.b64encode(key.encode()).decode(),
                "value": base64.b64encode(value.encode()).decode(),
            },
        ).raise_for_status()

    with caplog.at_level(logging.WARNING, logger="langcluster.discovery.etcd"):
        put("/langcluster/services/llm/bad", "{not json")
        put("/langcluster/services/llm/port", json.dumps({"id": "port", "address": "h", "port": 0}))
        await d.register(lc.Node("good", "10.0.0.1", 1))
        assert await next_snapshot(watch) == ["good"]
    assert "malformed record" in caplog.text
    await watch.aclose()
    await d.close()


@pytest.mark.asyncio
async def test_an_unreachable_etcd_is_a_discovery_error_and_endpoints_fail_over(
    etcd_server: object,
) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    lonely = EtcdDiscovery("llm", endpoints=[dead], timeout_s=0.5)
    with pytest.raises(DiscoveryError, match="unreachable"):
        await lonely.nodes()
    await lonely.close()
    both = EtcdDiscovery("llm", endpoints=[dead, endpoint(etcd_server)])
    await both.register(lc.Node("x", "10.0.0.1", 1))
    assert [n.id for n in await both.nodes()] == ["x"]
    await both.close()


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="service"):
        EtcdDiscovery("a/b")
    with pytest.raises(ValueError, match="prefix"):
        EtcdDiscovery("llm", prefix="/x")
    with pytest.raises(ValueError, match="ttl_s"):
        EtcdDiscovery("llm", ttl_s=1)
