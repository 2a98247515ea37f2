"""PrefixAware routers of one service share what they route through
SharedState: a prefix one router sent to a node, the others send there too."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio

import langcluster as lc
from langcluster.shared.messages import Kind, Message, encode
from langcluster.testing import SimulatedServer
from tests.support.helpers import eventually, redis_url, shared_stats

KEY = b"the routers' key"


def router(fleet: list[SimulatedServer], url: str, **options: Any) -> lc.Cluster:
    shared = lc.SharedState(url, namespace="prefixes", signing_key=KEY, **options)
    return lc.Cluster(
        service="chat", nodes=[s.node() for s in fleet], balancer="prefix_aware",
        shared_state=shared,
    )  # fmt: skip


def prompt(group: int, user: int) -> str:
    """A long prefix of the group's, then a question of the user's."""
    return f"system prompt of group {group}. " * 40 + f"question {user}"


def homes(cluster: lc.Cluster, user: int) -> list[str]:
    return [cluster.balancer.pick(prompt(g, user)).id for g in range(12)]  # type: ignore[attr-defined]


@pytest.mark.asyncio
@pytest.mark.services
async def test_a_router_sends_a_prefix_where_another_router_sent_it(
    fleet: list[SimulatedServer], redis_server: Any
) -> None:
    url = redis_url(redis_server)
    a, b = router(fleet, url), router(fleet, url)
    async with a, b:
        await eventually(lambda: shared_stats(a)["connected"] and shared_stats(b)["connected"])
        first = homes(a, 0)
        assert len(set(first)) == 3, "twelve new prefixes are spread over the three nodes"
        await eventually(lambda: shared_stats(b)["routes_merged"] >= 12)
        assert homes(b, 1) == first
        # a counts a publish once Redis has answered it, which can be after
        # b has received and merged it: wait for the count, not assert it.
        await eventually(lambda: shared_stats(a)["routes_published"] >= 1)
        # And back: what b routed, a merges.
        await eventually(lambda: shared_stats(a)["routes_merged"] >= 12)
        assert b.balancer.prefix_stats()["match_rate"] > 0.9  # type: ignore[attr-defined]


@pytest.mark.asyncio
@pytest.mark.services
async def test_forged_and_malformed_journals_are_refused_and_counted(
    fleet: list[SimulatedServer], redis_server: Any
) -> None:
    url = redis_url(redis_server)
    a = router(fleet, url)
    async with a:
        await eventually(lambda: shared_stats(a)["connected"])
        other = lc.PrefixAware([s.node() for s in fleet])
        other.keep_journal(1 << 16)
        other.pick(prompt(1, 0))
        journal = other.take_journal()
        raw = redis.asyncio.from_url(url)
        channel = "prefixes:shared:chat:routes"
        unsigned = Message(Kind.ROUTES, "", 0, b"intruder", journal)
        await raw.publish(channel, encode(unsigned, None))  # no key: refused
        signed_garbage = Message(Kind.ROUTES, "", 0, b"confused", journal[:-3])
        await raw.publish(channel, encode(signed_garbage, KEY))  # signed, but cut
        await eventually(lambda: shared_stats(a)["refused"] >= 2)
        assert a.balancer.prefix_stats()["blocks"] == 0  # type: ignore[attr-defined]
        await raw.publish(channel, encode(Message(Kind.ROUTES, "", 0, b"friendly", journal), KEY))
        await eventually(lambda: shared_stats(a)["routes_merged"] == 1)
        await raw.aclose()


@pytest.mark.asyncio
@pytest.mark.services
async def test_prefix_sharing_can_be_switched_off(
    fleet: list[SimulatedServer], redis_server: Any
) -> None:
    url = redis_url(redis_server)
    a, b = router(fleet, url), router(fleet, url, share_prefixes=False)
    async with a, b:
        await eventually(lambda: shared_stats(a)["connected"] and shared_stats(b)["connected"])
        homes(b, 0)
        assert b.balancer.take_journal() == b""  # type: ignore[attr-defined]  # none kept
        homes(a, 0)
        await eventually(lambda: shared_stats(a)["routes_published"] >= 1)
        assert shared_stats(b)["routes_merged"] == 0
        assert shared_stats(b)["received"] == 0  # not even subscribed


@pytest.mark.asyncio
@pytest.mark.services
async def test_a_router_that_starts_late_reads_back_what_the_others_routed(
    fleet: list[SimulatedServer], redis_server: Any
) -> None:
    url = redis_url(redis_server)
    early = router(fleet, url)
    async with early:
        await eventually(lambda: shared_stats(early)["connected"])
        first = homes(early, 0)
        await eventually(lambda: shared_stats(early)["routes_published"] >= 1)
        late, forgetful = router(fleet, url), router(fleet, url, prefix_history_s=0)
        async with late, forgetful:
            await eventually(lambda: shared_stats(late)["connected"])
            await eventually(lambda: shared_stats(forgetful)["connected"])
            # No pick since they started: what the late one knows, it read back.
            assert shared_stats(late)["routes_merged"] == 12
            assert homes(late, 1) == first
            assert shared_stats(forgetful)["routes_merged"] == 0
