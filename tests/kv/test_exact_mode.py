"""Exact mode end to end: two simulated servers publish vLLM-format KV
events from their real caches; a Cluster with ``kv_events=True`` follows
them, learns their cache sizes, routes chats through the transport, and
its record agrees with what the servers hold, before and after one of them
restarts cold in the middle."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import langcluster as lc
from langcluster.integrations.openai_body import chat_text
from langcluster.testing import SimulatedServer
from langcluster.testing.fleet import held_prefix
from langcluster.testing.openai_api import tokenize
from tests.support.helpers import eventually

SYSTEMS = [f"You are assistant number {g}. Answer briefly. " * 6 for g in range(6)]


def messages(g: int, user: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEMS[g]},
        {"role": "user", "content": f"Question {user} about topic {g}: " * 4},
    ]


WRONG: list[Any] = []


def disagreements(cluster: lc.Cluster, servers: list[SimulatedServer], sample: list[Any]) -> int:
    """(server, prompt) pairs where the record and the server's cache
    disagree on how many leading blocks are held."""
    WRONG.clear()
    for msgs in sample:
        text = chat_text(msgs)
        router = cluster.balancer.depths(text)  # type: ignore[attr-defined]
        for s in servers:
            held = held_prefix(s.cache.ids(text), s.cache.blocks)
            if router[s.node_id] != held:
                WRONG.append((s.node_id, router[s.node_id], held))
    return len(WRONG)


async def agree(cluster: lc.Cluster, servers: list[SimulatedServer], sample: list[Any]) -> None:
    try:
        await eventually(lambda: disagreements(cluster, servers, sample) == 0)
    except AssertionError:
        raise AssertionError(f"(node, record, server) that disagree: {WRONG}") from None


@pytest.mark.asyncio
async def test_the_record_follows_two_servers_through_a_restart() -> None:
    servers = [
        await SimulatedServer(f"s{i}", kv_events=True, cache_blocks=24, latency_s=0.001).start()
        for i in range(2)
    ]
    cluster = lc.Cluster(
        service="chat",
        nodes=[s.node() for s in servers],
        balancer="prefix_aware",
        balancer_options={"tokenizer": tokenize, "seed": 1},
        kv_events=True,
    )
    try:
        async with cluster:
            balancer: Any = cluster.balancer
            await eventually(lambda: all(n["capacity"] == 24 for n in balancer.stats().values()))
            transport = lc.AsyncClusterTransport(cluster, key="auto")
            async with httpx.AsyncClient(transport=transport, base_url="http://chat") as client:

                async def ask(g: int, user: int) -> None:
                    body = {"model": "m", "messages": messages(g, user)}
                    answer = await client.post("/v1/chat/completions", json=body)
                    assert answer.status_code == 200

                sample = [messages(g, u) for g in range(6) for u in range(3)]
                for u in range(3):
                    for g in range(6):
                        await ask(g, u)
                # Each server evicted: its cache holds 24 blocks of many more.
                assert all(len(s.cache.blocks) == 24 for s in servers)
                await agree(cluster, servers, sample)
                events = balancer.prefix_stats()["events"]
                assert events["removed"] > 0
                assert events["refused"] == 0

                await servers[0].restart()
                # The cold server answers again (the record still sends it
                # the groups it held); its first events tell the router it
                # restarted, and the old record goes.
                subscriber = cluster._kv.subscribers["s0"]
                for user in range(10, 60):
                    for g in range(6):
                        await ask(g, user)
                    if subscriber.stats()["restarts"]:
                        break
                assert subscriber.stats()["restarts"] == 1
                await agree(cluster, servers, sample)
                assert balancer.prefix_stats()["events"]["refused"] == 0
    finally:
        for s in servers:
            await s.kill()


@pytest.mark.asyncio
async def test_cache_sizes_are_learned_from_what_vllm_and_sglang_report() -> None:
    from langcluster.kv.capacity import kv_tokens, read_metrics_tokens, read_server_info_tokens

    server = await SimulatedServer("s0", cache_blocks=300, block_tokens=16).start()
    try:
        async with httpx.AsyncClient() as client:
            assert await kv_tokens(server.node(), client) == 4800
            node = server.node(metadata={"kv_tokens": 1024})
            assert await kv_tokens(node, client) == 1024
            gone = lc.Node("x", "127.0.0.1", 1)
            assert await kv_tokens(gone, client) is None
    finally:
        await server.kill()
    assert (
        read_metrics_tokens('vllm:cache_config_info{block_size="32",num_gpu_blocks="10"} 1') == 320
    )
    assert read_metrics_tokens("vllm:other 1") is None
    assert read_server_info_tokens(b'{"max_total_num_tokens": 9}') == 9
    for bad in (b"[", b"[]", b'{"max_total_num_tokens": true}', b'{"max_total_num_tokens": -1}'):
        assert read_server_info_tokens(bad) is None


@pytest.mark.asyncio
async def test_a_node_without_a_publisher_is_left_alone_and_a_removed_one_is_stopped() -> None:
    from langcluster.kv import KvEvents

    server = await SimulatedServer("s0", kv_events=True).start()
    balancer = lc.PrefixAware([server.node(), lc.Node("plain", "127.0.0.1", 1)])
    kv = KvEvents(balancer, learn_capacity=False)
    try:
        await kv.sync([server.node(), lc.Node("plain", "127.0.0.1", 1)])
        assert set(kv.subscribers) == {"s0"}
        await kv.sync([lc.Node("plain", "127.0.0.1", 1)])
        assert kv.subscribers == {}
        with pytest.raises(TypeError, match=r"^balancer: KV events need a PrefixAware"):
            KvEvents(lc.RoundRobin())
        with pytest.raises(ValueError, match=r"^kv_events: needs the prefix_aware"):
            lc.Cluster(service="x", kv_events=True)
    finally:
        await kv.close()
        await server.kill()
