"""StaticDiscovery: a list or a file re-read on change; registry.attach."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

import langcluster as lc
from langcluster import DiscoveryError, NodeRegistry, StaticDiscovery


def write(path: Path, nodes: list[dict[str, object]]) -> None:
    path.write_text(json.dumps({"nodes": nodes}))
    # Make the change visible to a stat() check even within one clock tick.
    stamp = path.stat().st_mtime + 1
    os.utime(path, (stamp, stamp))


@pytest.mark.asyncio
async def test_a_list_and_register_deregister() -> None:
    d = StaticDiscovery([lc.Node("a", "127.0.0.1", 1)])
    assert isinstance(d, lc.Discovery)
    await d.register(lc.Node("b", "127.0.0.1", 2))
    assert sorted(n.id for n in await d.nodes()) == ["a", "b"]
    await d.deregister("a")
    assert [n.id for n in await d.nodes()] == ["b"]
    await d.close()


@pytest.mark.asyncio
async def test_a_file_is_re_read_and_bad_records_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "nodes.json"
    write(path, [{"id": "a", "address": "127.0.0.1", "port": 8000}])
    d = StaticDiscovery(file=path, poll_s=0.01)
    snapshots = d.watch()
    assert [n.id for n in await anext(snapshots)] == ["a"]
    with caplog.at_level(logging.WARNING, logger="langcluster.discovery.static"):
        write(
            path,
            [
                {"id": "a", "address": "127.0.0.1", "port": 8000},
                {"id": "b", "address": "127.0.0.1", "port": 99999},
                {"id": "c", "address": "127.0.0.1", "port": 8002, "weight": 2},
            ],
        )
        nodes = await asyncio.wait_for(anext(snapshots), 1)
    assert sorted(n.id for n in nodes) == ["a", "c"]
    assert "skipping record 1" in caplog.text
    assert "port" in caplog.text
    # A file that does not parse keeps the last good list.
    with caplog.at_level(logging.ERROR, logger="langcluster.discovery.static"):
        path.write_text("{not json")
        os.utime(path, (path.stat().st_mtime + 2,) * 2)
        assert sorted(n.id for n in await d.nodes()) == ["a", "c"]
    assert "keeping the last good node list" in caplog.text
    await d.close()


def test_a_missing_or_broken_file_at_start_is_a_discovery_error(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match=r"nodes\.json"):
        StaticDiscovery(file=tmp_path / "nodes.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[")
    with pytest.raises(DiscoveryError):
        StaticDiscovery(file=bad)
    with pytest.raises(ValueError, match="poll_s"):
        StaticDiscovery(poll_s=0)


def test_toml_files(tmp_path: Path) -> None:
    path = tmp_path / "nodes.toml"
    path.write_text('[[nodes]]\nid = "t1"\naddress = "10.0.0.1"\nport = 9000\nweight = 3\n')
    d = StaticDiscovery(file=path)
    nodes = asyncio.run(d.nodes())
    assert [(n.id, n.weight) for n in nodes] == [("t1", 3)]


@pytest.mark.asyncio
async def test_attach_keeps_a_registry_and_its_balancer_in_step(tmp_path: Path) -> None:
    path = tmp_path / "nodes.json"
    write(path, [{"id": "a", "address": "127.0.0.1", "port": 1}])
    d = StaticDiscovery(file=path, poll_s=0.01)
    registry = NodeRegistry()
    balancer = lc.RoundRobin()
    registry.bind(balancer)
    task = registry.attach(d)
    try:
        for _ in range(100):
            if len(balancer) == 1:
                break
            await asyncio.sleep(0.01)
        registry.set_status("a", "healthy")
        write(
            path,
            [
                {"id": "a", "address": "127.0.0.1", "port": 1},
                {"id": "b", "address": "127.0.0.1", "port": 2},
            ],
        )
        for _ in range(100):
            if len(balancer) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(n.id for n in balancer.nodes) == ["a", "b"]
        # Discovery does not reset health that the registry already knows.
        assert registry.get("a").status is lc.NodeStatus.HEALTHY  # type: ignore[union-attr]
    finally:
        task.cancel()
        await d.close()


@pytest.mark.asyncio
async def test_a_file_nested_too_deep_or_with_duplicate_ids_keeps_the_last_good_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps({"nodes": [{"id": "a", "address": "h"}]}))
    d = StaticDiscovery(file=path, poll_s=0.01)
    assert [n.id for n in await d.nodes()] == ["a"]
    with caplog.at_level(logging.ERROR, logger="langcluster.discovery.static"):
        path.write_text('{"nodes": ' + "[" * 100_000 + "]" * 100_000 + "}")
        os.utime(path, (1, 1))
        assert [n.id for n in await d.nodes()] == ["a"]
        path.write_text(json.dumps({"nodes": [{"id": "b", "address": "h"}] * 2}))
        os.utime(path, (2, 2))
        assert [n.id for n in await d.nodes()] == ["a"]
    assert "duplicate node id 'b'" in caplog.text
    await d.close()
    duplicate = tmp_path / "dup.json"
    duplicate.write_text(json.dumps([{"id": "x", "address": "h"}, {"id": "x", "address": "h"}]))
    with pytest.raises(DiscoveryError, match="duplicate node id 'x'"):
        StaticDiscovery(file=duplicate)


def test_duplicate_ids_in_a_list_are_refused_by_position() -> None:
    with pytest.raises(ValueError, match=r"^nodes\[1\]\.id: duplicate node id 'a'"):
        StaticDiscovery([lc.Node("a", "h1"), lc.Node("a", "h2")])
    with pytest.raises(TypeError, match=r"^nodes\[0\]: must be a Node"):
        StaticDiscovery([{"id": "a"}])  # type: ignore[list-item]
