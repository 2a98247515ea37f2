"""The fleet simulation: its server model by hand-worked examples, its
workloads, outages, and the comparison script on a small configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import langcluster as lc
from langcluster.testing.fleet import (
    BalancerRouter,
    Fleet,
    Outage,
    Request,
    ServerModel,
    prompt_bytes,
    simulate,
)
from langcluster.testing.workloads import GroupedUsers, MultiTurn, SharedPrefix

ROOT = Path(__file__).resolve().parents[2]
MODEL = ServerModel(
    slots=1, cache_blocks=6, block_tokens=16,
    prefill_base_s=0.01, prefill_per_token_s=0.001, decode_per_token_s=0.1,
)  # fmt: skip


class Given:
    """A workload of fixed requests."""

    def __init__(self, *requests: Request) -> None:
        self.requests = requests

    def arrivals(self) -> Any:
        return iter(self.requests)

    def follow_up(self, done: Request, now_s: float) -> Request | None:
        return None


class To:
    """A router that sends everything to one server, and logs its hooks."""

    def __init__(self, server: int = 0) -> None:
        self.server = server
        self.log: list[tuple[Any, ...]] = []

    def pick(self, request: Request, fleet: Fleet) -> int:
        return self.server if fleet.servers[self.server].up else 1 - self.server

    def started(self, s: int, request: Request) -> None:
        self.log.append(("started", s))

    def finished(self, s: int, request: Request, latency_s: float | None) -> None:
        self.log.append(("finished", s, latency_s is None))

    def set_available(self, s: int, up: bool) -> None:
        self.log.append(("available", s, up))


def test_a_prefill_costs_its_uncached_tokens_and_a_repeat_hits() -> None:
    first = Request(0.0, (1, 2, 3, 4), output_tokens=3)
    again = Request(1.0, (1, 2, 3, 4), output_tokens=3)
    result = simulate(Given(first, again), To(), servers=1, model=MODEL)
    assert first.ttft_s == pytest.approx(0.01 + 64 * 0.001)
    assert first.done_s == pytest.approx(first.ttft_s + 0.3)
    assert again.hit_blocks == 4
    assert again.ttft_s == pytest.approx(0.01)
    assert result.hit_rate == pytest.approx(0.5)


def test_requests_wait_for_a_free_slot_and_prefills_run_one_at_a_time() -> None:
    a = Request(0.0, (1,), output_tokens=2)
    b = Request(0.0, (2,), output_tokens=2)
    simulate(Given(a, b), To(), servers=1, model=MODEL)
    one = 0.01 + 16 * 0.001
    assert a.ttft_s == pytest.approx(one)
    # One slot: b starts when a has decoded its 2 tokens.
    assert b.ttft_s == pytest.approx(one + 0.2 + one)


def test_the_cache_evicts_the_least_recent_and_keeps_prefixes() -> None:
    r1 = Request(0.0, (1, 2, 3, 4), output_tokens=1)
    r2 = Request(1.0, (7, 8, 9, 10), output_tokens=1)
    r3 = Request(2.0, (1, 2, 3, 4), output_tokens=1)
    simulate(Given(r1, r2, r3), To(), servers=1, model=MODEL)
    # Room for 6: r2's 4 and the first 2 of r1 (its last blocks went first).
    assert r3.hit_blocks == 2


def test_an_outage_resends_what_had_no_first_token_and_comes_back_cold() -> None:
    requests = [Request(0.01 * i, (100 + i, 200 + i), output_tokens=5) for i in range(4)]
    late = Request(5.0, (100, 200), output_tokens=1)
    router = To(0)
    result = simulate(
        Given(*requests, late), router, servers=2, model=MODEL,
        outages=[Outage(0, 0.05, 4.0)],
    )  # fmt: skip
    assert ("available", 0, False) in router.log
    assert ("available", 0, True) in router.log
    # Request 0 was decoding when server 0 died: lost, released, not resent.
    assert requests[0].server == 0
    assert requests[0].done_s != requests[0].done_s
    assert all(r.server == 1 for r in requests[1:])
    assert late.server == 0
    assert late.hit_blocks == 0, "the server came back with an empty cache"
    assert sum(1 for e in router.log if e[0] == "started") == 8
    assert len(result.measured()) == 5


def test_workloads_are_seeded_and_shaped_as_described() -> None:
    a = list(SharedPrefix(10, groups=4, prompts_per_group=3, seed=1).arrivals())
    b = list(SharedPrefix(10, groups=4, prompts_per_group=3, seed=1).arrivals())
    assert [(r.arrival_s, r.blocks) for r in a] == [(r.arrival_s, r.blocks) for r in b]
    assert len(a) == 12
    assert all(len(r.blocks) == 128 + 8 for r in a)
    assert len({r.blocks[:128] for r in a}) == 4
    chat = MultiTurn(5, conversations=2, turns=3)
    first = next(iter(chat.arrivals()))
    second = chat.follow_up(first, 1.0)
    assert second is not None
    assert second.blocks[: len(first.blocks)] == first.blocks
    assert len(second.blocks) == len(first.blocks) + (64 + 512) // 16
    grouped = list(GroupedUsers(10, groups=3, users_per_group=2, queries_per_user=2).arrivals())
    assert len(grouped) == 12
    assert len({r.blocks[:375] for r in grouped}) == 3


def test_a_langcluster_balancer_routes_in_the_simulation() -> None:
    workload = SharedPrefix(20, groups=4, prompts_per_group=6)
    model = ServerModel(cache_blocks=1024)
    router = BalancerRouter(lc.PrefixAware(), 4, lambda r: prompt_bytes(r.blocks))
    result = simulate(workload, router, servers=4, model=model)
    # Each group's first prompt misses; the other five hit its 128 blocks.
    assert result.hit_rate == pytest.approx(4 * 5 * 128 / (24 * 136))
    assert sum(s.served for s in result.servers) == 24
    assert router.balancer.prefix_stats()["matched_blocks"] == 4 * 5 * 128


def test_the_comparison_runs_small_and_states_its_verdicts() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benches" / "prefix_routing.py"), "--small", "--seeds", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 8 |")]
    policies = {"PrefixAware", "PrefixAware exact", "oracle", "sglang 0.5/32/1.1", "dynamo cost"}
    assert policies <= {row.split("|")[4].strip() for row in rows}
    workloads = {row.split("|")[2].strip() for row in rows}
    assert {"shared-prefix", "trace conversation", "trace agent"} <= workloads
    verdicts = [line for line in done.stdout.splitlines() if "ours p99" in line]
    assert len(verdicts) == 12
    assert "every goal met in" in done.stdout
    assert "Server 0 down" in done.stdout


def test_a_seeded_run_replays_exactly() -> None:
    def run() -> list[tuple[int, int, float]]:
        router = BalancerRouter(lc.PrefixAware(seed=3), 4, lambda r: prompt_bytes(r.blocks))
        workload = MultiTurn(4, conversations=24, turns=3, seed=5)
        result = simulate(workload, router, servers=4, model=ServerModel(cache_blocks=200))
        return [(r.server, r.hit_blocks, r.ttft_s) for r in result.requests]

    first = run()
    assert len(first) == 72
    assert run() == first


def test_a_shared_system_prompt_never_starves_the_node_that_lacks_it() -> None:
    # The demo's workload for two simulated minutes: every chat shares one
    # system prompt, a server dies and comes back cold. A node that missed
    # the shared prefix once must take work when the others queue, or the
    # rest queue without end (seconds to first token, and no more hits).
    from langcluster.cli.demo import simulated

    result = simulated(120.0, 7)
    ours, rr = result["prefix_aware"], result["round_robin"]
    assert ours["token_hit_rate"] > rr["token_hit_rate"] + 0.2
    assert ours["ttft_p50_ms"] < 2 * rr["ttft_p50_ms"]
    assert ours["ttft_p99_ms"] < 2 * rr["ttft_p99_ms"]
