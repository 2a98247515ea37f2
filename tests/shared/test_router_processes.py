"""Four PrefixAware router processes in front of four simulated servers
with prefix caches, replaying one workload from the simulator, each request
dealt to a router at random (as a load balancer in front of them would): the
servers' token hit rate, with the routers sharing their prefix index through
Redis, is at least 0.9 of what one router gets; without sharing, less."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from langcluster.testing.workloads import SharedPrefix
from tests.support import routers, workers
from tests.support.helpers import redis_url
from tests.support.simulated import ServersInThread

SERVERS = 4


def workload() -> list[tuple[float, tuple[int, ...]]]:
    """SGLang's shared-prefix shape, small: 16 groups of 8 prompts, a
    512-token system prompt each, 64-token questions, over about 2.5 s."""
    shape = SharedPrefix(
        rate=50.0, groups=16, prompts_per_group=8, system_tokens=512, question_tokens=64, seed=3
    )
    return [(r.arrival_s, r.blocks) for r in shape.arrivals()]


def replay(n_routers: int, url: str | None) -> tuple[float, list[dict[str, Any]]]:
    """The servers' token hit rate over the workload, sent by ``n_routers``
    processes, and their reports."""
    requests = workload()
    deal = random.Random(7)
    shares: list[list[tuple[float, tuple[int, ...]]]] = [[] for _ in range(n_routers)]
    for request in requests:
        shares[deal.randrange(n_routers)].append(request)
    ready = workers.SPAWN.Queue()
    schedules = [workers.SPAWN.Queue() for _ in range(n_routers)]
    with ServersInThread(SERVERS, latency_s=0.0) as fleet:
        ports = [s.port for s in fleet.servers]
        args = [(ports, url, ready, schedule) for schedule in schedules]
        with workers.spawned(routers.route, args):
            for _ in range(n_routers):
                assert ready.get(timeout=60)[0] == "ready"
            start = time.time() + 0.5
            for schedule, share in zip(schedules, shares, strict=True):
                schedule.put((start, share))
            reports = [ready.get(timeout=60)[1] for _ in range(n_routers)]
        cached = sum(s.cached_tokens for s in fleet.servers)
        prompt = sum(s.prompt_tokens for s in fleet.servers)
    assert sum(r["sent"] for r in reports) == len(requests)
    assert all(r["failed"] == 0 for r in reports)
    return cached / prompt, reports


@pytest.mark.services
def test_four_routers_sharing_their_index_hit_the_caches_as_one_router_does(
    redis_server: Any,
) -> None:
    one, _ = replay(1, None)
    alone, _ = replay(4, None)
    shared, reports = replay(4, redis_url(redis_server))
    merged = sum(r["shared"]["routes_merged"] for r in reports)
    print(
        f"token hit rate: one router {one:.3f}; four routers sharing {shared:.3f} "
        f"({shared / one:.2f} of one), not sharing {alone:.3f} ({alone / one:.2f} of one); "
        f"picks merged {merged}"
    )
    assert shared >= 0.9 * one
    assert alone < shared
    assert merged >= len(workload())  # each pick reached the other routers
