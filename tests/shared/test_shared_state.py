"""SharedState: ejections shared between clusters through a real Redis, its
messages (signed, versioned, refused when malformed), and its life without
Redis."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st

import langcluster as lc
from langcluster.shared.messages import MAX_PAYLOAD, Kind, Message, decode, encode
from langcluster.testing import SimulatedServer
from tests.support.helpers import ManualClock, eventually, redis_url

BREAKER = lc.BreakerConfig(window_size=4, minimum_calls=2, open_timeout_s=0.4)
KEY = b"a key every worker has"


# --------------------------------------------------------------- messages


def test_a_message_goes_and_comes_back_signed_or_not() -> None:
    message = Message(Kind.EJECT, "gpu-ü", 1_700_000_000_123, b"12345678")
    assert decode(encode(message, None), None) == message
    assert decode(encode(message, KEY), KEY) == message
    assert decode(encode(message, KEY), None) == message  # read, not checked
    assert len(encode(message, KEY)) < 64


def test_a_keyed_receiver_refuses_unsigned_forged_and_tampered_messages() -> None:
    message = Message(Kind.EJECT, "gpu-0", 1, b"12345678")
    assert decode(encode(message, None), KEY) is None
    assert decode(encode(message, b"another key"), KEY) is None
    signed = bytearray(encode(message, KEY))
    signed[12] ^= 1  # the deadline
    assert decode(bytes(signed), KEY) is None


def test_other_versions_and_malformed_messages_are_refused() -> None:
    good = encode(Message(Kind.CLOSE, "n", 0, b"12345678"), None)
    assert decode(good[:2] + bytes([2]) + good[3:], None) is None  # version 2
    assert decode(good[:-1], None) is None
    assert decode(good + b"x", None) is None
    assert decode(good[:3] + bytes([9]) + good[4:], None) is None  # an unknown kind
    with pytest.raises(ValueError, match=r"^node_id:"):
        encode(Message(Kind.EJECT, "n" * 2000, 0, b"12345678"), None)


def test_a_journal_travels_as_a_payload_that_the_signature_covers() -> None:
    message = Message(Kind.ROUTES, "", 0, b"12345678", b"LCJ\x01" + bytes(range(200)))
    assert decode(encode(message, KEY), KEY) == message
    signed = bytearray(encode(message, KEY))
    signed[40] ^= 1  # in the payload
    assert decode(bytes(signed), KEY) is None
    with pytest.raises(ValueError, match=r"^payload:"):
        encode(Message(Kind.ROUTES, "", 0, b"12345678", bytes(MAX_PAYLOAD + 1)), None)


@given(data=st.binary(max_size=200), key=st.one_of(st.none(), st.just(KEY)))
def test_any_bytes_decode_to_a_message_or_none(data: bytes, key: bytes | None) -> None:
    found = decode(data, key)
    assert found is None or isinstance(found, Message)


# ------------------------------------------------------------- the clusters


def worker(
    fleet: list[SimulatedServer],
    url: str,
    clock: ManualClock | None = None,
    breaker: lc.BreakerConfig = BREAKER,
    **options: Any,
) -> lc.Cluster:
    """A cluster as one worker process has it; ``clock`` drives its breakers."""
    shared = lc.SharedState(url, namespace="test", signing_key=KEY, **options)
    return lc.Cluster(
        service="chat", nodes=[s.node() for s in fleet], balancer="round_robin",
        breaker=breaker, failover=lc.FailoverConfig(clock=clock), shared_state=shared,
    )  # fmt: skip


async def connected(*clusters: lc.Cluster) -> None:
    await eventually(lambda: all(c.shared_state.connected for c in clusters))  # type: ignore[union-attr]


async def until_open(cluster: lc.Cluster, client: httpx.AsyncClient) -> None:
    """Calls until the cluster's breaker for s0 opens."""
    while cluster.failover.breaker("s0").state != "open":
        await ask(client, 1)


async def until_closed(cluster: lc.Cluster, client: httpx.AsyncClient) -> None:
    """Calls (trials, the open time being over) until s0's breaker closes."""
    for _ in range(50):
        if cluster.failover.breaker("s0").state == "closed":
            return
        await ask(client, 1)
    raise AssertionError("the trials never closed the breaker")


async def ask(client: httpx.AsyncClient, n: int) -> None:
    for _ in range(n):
        response = await client.post("http://chat/v1/completions", json={"prompt": "hi"})
        assert response.status_code == 200


@pytest.mark.asyncio
@pytest.mark.services
async def test_a_node_one_worker_finds_dead_is_out_for_the_other_until_a_trial_passes(
    fleet: list[SimulatedServer], redis_server: Any
) -> None:
    url = redis_url(redis_server)
    clock = ManualClock()
    a, b = worker(fleet, url, clock), worker(fleet, url, clock)
    async with a, b:
        await connected(a, b)
        client_a = httpx.AsyncClient(transport=lc.AsyncClusterTransport(a))
        client_b = httpx.AsyncClient(transport=lc.AsyncClusterTransport(b))
        dead = fleet[0]
        await dead.kill()
        await until_open(a, client_a)
        await eventually(lambda: b.failover.breaker("s0").state == "open")
        await ask(client_b, 12)  # none of them goes to the dead node
        assert b.balancer.stats()["s0"]["failures"] == 0
        assert b.stats()["shared"]["applied"] >= 1
        await dead.start()
        clock.advance(BREAKER.open_timeout_s)
        await until_closed(a, client_a)  # the open time is over: trials pass
        applied = b.stats()["shared"]["applied"]
        # b holds the node out for an hour on a's word: only a's word that
        # it is back (a message applied) closes b's breaker now.
        await eventually(lambda: b.failover.breaker("s0").state == "closed")
        assert b.stats()["shared"]["applied"] > applied
        assert b.balancer.stats()["s0"]["failures"] == 0
        await client_a.aclose()
        await client_b.aclose()


@pytest.mark.asyncio
@pytest.mark.services
async def test_when_the_ejecting_worker_dies_another_takes_the_trial_permit(
    fleet: list[SimulatedServer], redis_server: Any
) -> None:
    url = redis_url(redis_server)
    a, b = worker(fleet, url, trial_s=0.3), worker(fleet, url, trial_s=0.3)
    await a.astart()
    async with b:
        await connected(a, b)
        client_a = httpx.AsyncClient(transport=lc.AsyncClusterTransport(a))
        await fleet[0].kill()
        await until_open(a, client_a)
        await eventually(lambda: b.failover.breaker("s0").state == "open")
        await client_a.aclose()
        await a.aclose()  # the worker that held the permit is gone
        await fleet[0].start()
        client_b = httpx.AsyncClient(transport=lc.AsyncClusterTransport(b))
        # The permit lapses (trial_s, in Redis's time): B takes it, and trials.
        await eventually(lambda: b.failover.breaker("s0").state == "half_open")
        await until_closed(b, client_b)
        assert b.stats()["shared"]["trials_won"] >= 1
        await client_b.aclose()


@pytest.mark.asyncio
@pytest.mark.services
async def test_a_message_without_the_key_ejects_nothing(
    fleet: list[SimulatedServer], redis_server: Any
) -> None:
    url = redis_url(redis_server)
    async with worker(fleet, url) as cluster:
        await connected(cluster)
        raw = redis.asyncio.from_url(url)
        forged = encode(
            Message(Kind.EJECT, "s0", int(time.time() * 1000) + 60_000, b"attacker"), None
        )
        for data in (forged, b"garbage", b""):
            await raw.publish("test:shared:chat:ejections", data)
        await eventually(lambda: cluster.stats()["shared"]["refused"] == 3)
        assert cluster.failover.breaker("s0").state == "closed"
        await raw.aclose()


@pytest.mark.asyncio
@pytest.mark.services
async def test_without_redis_every_call_goes_on_and_the_ejection_is_told_on_return(
    fleet: list[SimulatedServer], redis_restartable: Any
) -> None:
    url = redis_url(redis_restartable)
    # The ejection must still be in force when Redis is back, however long a
    # busy machine takes to restart it and the worker to reconnect (up to 2 s
    # apart): it lasts 30 s, not the 0.4 s of the other tests' breakers.
    held = lc.BreakerConfig(window_size=4, minimum_calls=2, open_timeout_s=30.0)
    a = worker(fleet, url, breaker=held, timeout_s=0.2)
    b = worker(fleet, url, breaker=held, timeout_s=0.2)
    async with a, b:
        await connected(a, b)
        redis_restartable.kill()
        await eventually(lambda: not a.shared_state.connected)  # type: ignore[union-attr]
        client_a = httpx.AsyncClient(transport=lc.AsyncClusterTransport(a))
        await fleet[0].kill()
        await until_open(a, client_a)  # no call fails because Redis is gone
        await ask(client_a, 6)
        await eventually(lambda: a.stats()["shared"]["publish_failures"] >= 1)
        assert b.failover.breaker("s0").state == "closed"  # B could not be told
        redis_restartable.start()
        await eventually(lambda: b.failover.breaker("s0").state == "open", timeout_s=10)
        assert a.stats()["shared"]["redis_errors"] >= 1
        await client_a.aclose()


@pytest.mark.asyncio
@pytest.mark.services
async def test_one_worker_that_blames_every_node_empties_no_other_workers_rotation(
    fleet: list[SimulatedServer], redis_server: Any
) -> None:
    # A worker whose loop stalled sees every call time out and opens every
    # breaker; the others take at most max_ejected (half) of the nodes out on
    # its word (one of three here), count the rest as capped, and go on.
    url = redis_url(redis_server)
    a, b = worker(fleet, url), worker(fleet, url)
    async with a, b:
        await connected(a, b)
        for node in ("s0", "s1", "s2"):
            a.failover.breaker(node).open_for(30.0)
        await eventually(lambda: b.stats()["shared"]["ejections_capped"] >= 2)
        assert len(b.failover.taken_out()) == 1
        client_b = httpx.AsyncClient(transport=lc.AsyncClusterTransport(b))
        await ask(client_b, 6)  # b's calls all answer
        await client_b.aclose()


@pytest.mark.parametrize(
    ("redis_arg", "options", "named"),
    [(3, {}, "redis"), ("redis://x", {"namespace": ""}, "namespace"),
     ("redis://x", {"signing_key": 5}, "signing_key"),
     ("redis://x", {"timeout_s": 0}, "timeout_s"), ("redis://x", {"trial_s": -1}, "trial_s"),
     ("redis://x", {"max_ejected": 1.5}, "max_ejected")],
)  # fmt: skip
def test_bad_settings_are_refused_by_name(
    redis_arg: Any, options: dict[str, Any], named: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=f"^{named}:"):
        lc.SharedState(redis_arg, **options)
    with pytest.raises(TypeError, match=r"^shared_state:"):
        lc.Cluster(service="x", shared_state="redis://x")  # type: ignore[arg-type]


def checked(fleet: list[SimulatedServer], url: str, **options: Any) -> lc.Cluster:
    shared = lc.SharedState(url, namespace="test", signing_key=KEY, **options)
    health = lc.HealthConfig(lc.HttpCheck("/health"), interval_s=0.3, timeout_s=0.2, rise=1, fall=2)
    return lc.Cluster(
        service="chat", nodes=[s.node() for s in fleet], balancer="round_robin",
        health=health, shared_state=shared,
    )  # fmt: skip


def holds(cluster: lc.Cluster) -> bool:
    lease = cluster.shared_state._lease  # type: ignore[union-attr]
    return lease is not None and lease.holder


@pytest.mark.asyncio
@pytest.mark.services
async def test_one_process_checks_the_others_follow_and_one_takes_over(
    fleet: list[SimulatedServer], redis_server: Any
) -> None:
    url = redis_url(redis_server)
    a, b = checked(fleet, url), checked(fleet, url)
    await a.astart()
    async with b:
        await eventually(lambda: holds(a) != holds(b))
        holder, follower = (a, b) if holds(a) else (b, a)
        before, held, followed = (
            fleet[1].health_checks,
            holder.health.checks_run,
            follower.health.checks_run,  # type: ignore[union-attr]
        )
        await eventually(lambda: holder.health.checks_run >= held + 15)  # type: ignore[union-attr]
        assert follower.health.checks_run == followed  # type: ignore[union-attr]
        assert fleet[1].health_checks - before <= 7  # five rounds of one checker, not two
        await fleet[0].kill()
        await eventually(lambda: follower.registry.get("s0").status is lc.NodeStatus.UNHEALTHY)  # type: ignore[union-attr]
        assert follower.health.checks_run < holder.health.checks_run  # type: ignore[union-attr]
        await fleet[0].start()
        await eventually(lambda: follower.registry.get("s0").status is lc.NodeStatus.HEALTHY)  # type: ignore[union-attr]
        await holder.aclose()
        leases = follower.stats()["shared"]["health_leases"]
        await eventually(lambda: holds(follower))  # its lease lapsed: the follower checks now
        assert follower.stats()["shared"]["health_leases"] == leases + 1
    if a is not holder:
        await a.aclose()


@pytest.mark.asyncio
@pytest.mark.services
async def test_each_kind_of_sharing_can_be_switched_off(
    fleet: list[SimulatedServer], redis_server: Any
) -> None:
    url = redis_url(redis_server)
    on, off = worker(fleet, url), worker(fleet, url, share_ejections=False)
    unchecked = checked(fleet, url, share_health=False)
    async with on, off, unchecked:
        await connected(on, off)
        raw = redis.asyncio.from_url(url)
        later = int(time.time() * 1000) + 60_000
        await raw.publish(
            "test:shared:chat:ejections",
            encode(Message(Kind.EJECT, "s1", later, b"elsewhere"), KEY),
        )
        await eventually(lambda: on.failover.breaker("s1").state == "open")
        await eventually(lambda: off.stats()["shared"]["received"] >= 1)
        assert off.failover.breaker("s1").state == "closed"
        assert unchecked.shared_state._lease is None  # type: ignore[union-attr]
        await raw.aclose()
