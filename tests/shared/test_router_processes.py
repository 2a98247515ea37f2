"""Four PrefixAware router processes in front of four simulated servers
with prefix caches, replaying one workload from the simulator, each request
dealt to a router at random (as a load balancer in front of them would): the
servers' token hit rate, with the routers sharing their prefix index through
Redis, is at least 0.9 of what one router gets; without sharing, less."""

from __future__ import annotations

from typing import Any

import pytest

from langcluster.testing.workloads import SharedPrefix
from tests.support import routers
from tests.support.helpers import redis_url

SERVERS = 4


def workload() -> list[tuple[float, tuple[int, ...]]]:
    """SGLang's shared-prefix shape, small: 16 groups of 8 prompts, a
    512-token system prompt each, 64-token questions, over about 2.5 s."""
    shape = SharedPrefix(
        rate=50.0, groups=16, prompts_per_group=8, system_tokens=512, question_tokens=64, seed=3
    )
    return [(r.arrival_s, r.blocks) for r in shape.arrivals()]


@pytest.mark.services
def test_four_routers_sharing_their_index_hit_the_caches_as_one_router_does(
    redis_server: Any,
) -> None:
    requests = workload()
    one, _ = routers.replay(requests, 1, None, servers=SERVERS)
    alone, _ = routers.replay(requests, 4, None, servers=SERVERS)
    shared, reports = routers.replay(requests, 4, redis_url(redis_server), servers=SERVERS)
    merged = sum(r["shared"]["routes_merged"] for r in reports)
    print(
        f"token hit rate: one router {one:.3f}; four routers sharing {shared:.3f} "
        f"({shared / one:.2f} of one), not sharing {alone:.3f} ({alone / one:.2f} of one); "
        f"picks merged {merged}"
    )
    assert shared >= 0.9 * one
    assert alone < shared
    assert merged >= len(requests)  # each pick reached the other routers
