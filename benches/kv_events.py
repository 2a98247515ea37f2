"""Exact mode measured: how fast PrefixAware takes in KV events, and how
closely its record agrees with what the servers hold.

    python benches/kv_events.py               # all three parts (about a minute)

1. Ingestion: vLLM-format batches (msgpack; 16 tokens a block; chains of
   32 blocks stored, and as many removed, as a server at steady state
   sends) applied with ``apply_kv_events`` from Python, blocks per second;
   then the same batches through ZeroMQ, a publisher to a subscriber.
2. Agreement in the fleet simulation: every 10th pick, for a recent prompt,
   whether the record and each server agree on how many leading blocks the
   server holds; at steady state, and in the second after a server comes
   back cold.
3. Agreement live: two simulated servers publishing over ZeroMQ, chats
   through the transport, one server restarted cold: the time until the
   record agrees with both caches again.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx

import langcluster as lc
from langcluster.integrations.openai_body import chat_text
from langcluster.kv import KvEventSubscriber
from langcluster.testing import SimulatedServer
from langcluster.testing.fleet import (
    BalancerRouter,
    Fleet,
    KvEvent,
    Outage,
    Request,
    ServerModel,
    SimClock,
    held_prefix,
    prompt_bytes,
    simulate,
)
from langcluster.testing.kv_publisher import KvPublisher, encode_events
from langcluster.testing.openai_api import tokenize
from langcluster.testing.workloads import MultiTurn

CHAIN = 32


def steady_batches(n: int, per_batch: int) -> tuple[list[bytes], int]:
    """``n`` batches, each storing ``per_batch`` chains of 32 blocks and
    removing as many blocks stored before; and the blocks they touch."""
    out, alive, next_id, blocks = [], [], 0, 0
    for _ in range(n):
        events = []
        for _ in range(per_batch):
            chain = tuple(range(next_id, next_id + CHAIN))
            next_id += CHAIN
            events.append(KvEvent("stored", chain, None))
            alive.append(chain)
            blocks += CHAIN
        if len(alive) > 4 * per_batch:
            gone = [b for chain in alive[:per_batch] for b in chain]
            del alive[:per_batch]
            events.append(KvEvent("removed", tuple(gone)))
            blocks += len(gone)
        out.append(encode_events(events, ts=0.0))
    return out, blocks


def ingestion() -> None:
    batches, blocks = steady_batches(400, 16)
    size = sum(len(b) for b in batches) / len(batches)
    print(f"\n## Ingestion ({len(batches)} batches of {size / 1024:.0f} KiB, {blocks:,} blocks)\n")
    print("| path | blocks/s | µs/batch |")
    print("|---|---:|---:|")
    rates = []
    for _ in range(5):
        b = lc.PrefixAware([lc.Node("s0", "h", 1)], max_blocks=1 << 20)
        started = time.perf_counter()
        for batch in batches:
            b.apply_kv_events("s0", batch)
        rates.append(time.perf_counter() - started)
    best = min(rates)
    print(f"| apply_kv_events from Python (best of 5) | {blocks / best:,.0f} "
          f"| {1e6 * best / len(batches):.1f} |")  # fmt: skip
    took = asyncio.run(through_zmq(batches))
    print(f"| publisher -> ZeroMQ -> subscriber -> record | {blocks / took:,.0f} "
          f"| {1e6 * took / len(batches):.1f} |")  # fmt: skip


async def through_zmq(batches: list[bytes]) -> float:
    pub = await KvPublisher().start()
    b = lc.PrefixAware([lc.Node("s0", "h", 1)], max_blocks=1 << 20)
    sub = await KvEventSubscriber(
        b, "s0", pub.endpoint, replay_endpoint=pub.replay_endpoint
    ).start()
    while sub.last is None:  # past ZeroMQ's slow joiner
        await pub.publish(encode_events([]))
        await asyncio.sleep(0.01)
    start_batches = sub.stats()["batches"]
    started = time.perf_counter()
    for batch in batches:
        await pub.publish(batch)
    while sub.stats()["batches"] - start_batches < len(batches):
        await asyncio.sleep(0.001)
    took = time.perf_counter() - started
    await sub.close()
    await pub.close()
    return took


class Sampling(BalancerRouter):
    """An exact-mode router that checks, every 10th pick, a recent prompt
    against every server's real cache."""

    def __init__(self, servers: int, model: ServerModel) -> None:
        self.sim_clock = SimClock()
        balancer = lc.PrefixAware(node_blocks=model.cache_blocks, seed=1, clock=self.sim_clock)
        super().__init__(
            balancer, servers, lambda r: prompt_bytes(r.blocks), clock=self.sim_clock, exact=True
        )
        self.recent: list[Request] = []
        self.samples: list[tuple[float, int, int]] = []  # time, agreeing, compared
        self.picks = 0
        self.rng = random.Random(5)

    def pick(self, request: Request, fleet: Fleet) -> int:
        self.picks += 1
        if self.picks % 10 == 0 and self.recent:
            probe = self.rng.choice(self.recent)
            depths = self.balancer.depths(prompt_bytes(probe.blocks))
            agree = total = 0
            for s in fleet.servers:
                if s.up:
                    total += 1
                    agree += depths[f"s{s.index}"] == s.cached_prefix(probe.blocks)
            self.samples.append((fleet.now_s, agree, total))
        self.recent = [*self.recent[-199:], request]
        return super().pick(request, fleet)


def agreement_simulated() -> None:
    servers, workload = 8, MultiTurn(8, conversations=512, seed=1)
    blocks = 64 * 5 * (512 + 64) // 16 // 2 // servers
    model = ServerModel(cache_blocks=blocks)
    span = max(r.arrival_s for r in MultiTurn(8, conversations=512, seed=1).arrivals())
    down, up = span / 3, span / 2
    router = Sampling(servers, model)
    simulate(workload, router, servers=servers, model=model, outages=[Outage(0, down, up)])
    steady = [(a, t) for at, a, t in router.samples if 10 < at < down or at > up + 1]
    after = [(a, t) for at, a, t in router.samples if up <= at < up + 1]
    rate = sum(a for a, _ in steady) / sum(t for _, t in steady)
    print("\n## Agreement in the fleet simulation (multi-turn, 8 servers, pressure 2)\n")
    print(f"- steady state: {100 * rate:.2f} % of {sum(t for _, t in steady):,} "
          "(server, prompt) pairs sampled agree")  # fmt: skip
    if after:
        rate = sum(a for a, _ in after) / sum(t for _, t in after)
        print(f"- in the second after server 0 came back cold: {100 * rate:.2f} % "
              f"of {sum(t for _, t in after)}")  # fmt: skip
    stats = router.balancer.prefix_stats()["events"]
    print(f"- events: {stats}")


def messages(g: int, user: int) -> list[dict[str, str]]:
    system = f"You are assistant number {g}. Answer briefly. " * 6
    return [{"role": "system", "content": system}, {"role": "user", "content": f"Q{user} " * 20}]


def disagree(balancer: Any, servers: list[SimulatedServer], sample: list[Any]) -> int:
    wrong = 0
    for msgs in sample:
        text = chat_text(msgs)
        depths = balancer.depths(text)
        for s in servers:
            wrong += depths[s.node_id] != held_prefix(s.cache.ids(text), s.cache.blocks)
    return wrong


async def agreement_live() -> None:
    servers = [
        await SimulatedServer(f"s{i}", kv_events=True, cache_blocks=48, latency_s=0.001).start()
        for i in range(2)
    ]
    cluster = lc.Cluster(
        service="chat", nodes=[s.node() for s in servers], balancer="prefix_aware",
        balancer_options={"tokenizer": tokenize, "seed": 1}, kv_events=True,
    )  # fmt: skip
    sample = [messages(g, u) for g in range(8) for u in range(3)]
    async with cluster:
        transport = lc.AsyncClusterTransport(cluster, key="auto")
        async with httpx.AsyncClient(transport=transport, base_url="http://chat") as client:
            for u in range(3):
                for g in range(8):
                    body = {"model": "m", "messages": messages(g, u)}
                    await client.post("/v1/chat/completions", json=body)
            await asyncio.sleep(0.2)
            before = disagree(cluster.balancer, servers, sample)
            times = []
            for round_ in range(5):
                await servers[0].restart()
                restarted = time.perf_counter()
                user = 100 + 10 * round_
                while (
                    disagree(cluster.balancer, servers, sample)
                    and time.perf_counter() - restarted < 10
                ):
                    for g in range(8):
                        body = {"model": "m", "messages": messages(g, user)}
                        await client.post("/v1/chat/completions", json=body)
                    user += 1
                    await asyncio.sleep(0.01)
                times.append(time.perf_counter() - restarted)
    for s in servers:
        await s.kill()
    print("\n## Agreement live (two simulated servers over ZeroMQ, one restarted cold 5 times)\n")
    print(f"- before the restarts: {before} of {2 * len(sample)} (server, prompt) pairs disagree")
    print(f"- time until every sampled pair agrees again: median {statistics.median(times):.3f} s, "
          f"max {max(times):.3f} s")  # fmt: skip


def main() -> None:
    ingestion()
    agreement_simulated()
    asyncio.run(agreement_live())


if __name__ == "__main__":
    main()
