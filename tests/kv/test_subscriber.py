"""KvEventSubscriber against a real ZeroMQ publisher that speaks vLLM's
protocol (``langcluster.testing.kv_publisher``): batches in sequence, a gap
filled by replay, a gap that cannot be filled, a publisher that restarts,
a router that starts late, and hostile frames."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

import langcluster as lc
from langcluster.kv import KvEventSubscriber
from langcluster.testing.fleet import KvEvent
from langcluster.testing.kv_publisher import KvPublisher, block_tokens, encode_events
from tests.support.helpers import eventually

EMPTY = encode_events([])


def stored(first: int, n: int, parent: int | None = None) -> bytes:
    return encode_events([KvEvent("stored", tuple(range(first, first + n)), parent)])


def prompt(first: int, n: int) -> list[int]:
    """The token ids of blocks ``first..first+n`` (as ``stored`` names them)."""
    return [t for b in range(first, first + n) for t in block_tokens(b)]


OPEN: list[KvEventSubscriber] = []


@pytest_asyncio.fixture
async def publisher() -> AsyncIterator[KvPublisher]:
    pub = await KvPublisher().start()
    yield pub
    await pub.close()
    while OPEN:  # the subscribers of a test that failed midway
        await OPEN.pop().close()


def router() -> lc.PrefixAware:
    return lc.PrefixAware([lc.Node("s0", "127.0.0.1", 1)])


async def connected(pub: KvPublisher, sub: KvEventSubscriber) -> None:
    """Publishes empty batches until the subscriber has taken one in (and
    caught up before it): past ZeroMQ's slow joiner, later batches arrive
    in order."""
    for _ in range(400):
        before = sub.last
        await pub.publish(EMPTY)
        for _ in range(10):
            await asyncio.sleep(0.005)
            if sub.last != before:
                return
    raise AssertionError("the subscriber never connected")


async def subscribed(b: lc.PrefixAware, pub: KvPublisher, **options: object) -> KvEventSubscriber:
    sub = KvEventSubscriber(
        b,
        "s0",
        pub.endpoint,
        replay_endpoint=pub.replay_endpoint,
        **options,  # type: ignore[arg-type]
    )
    OPEN.append(sub)
    await sub.start()
    await connected(pub, sub)
    return sub


@pytest.mark.asyncio
async def test_batches_in_sequence_build_the_record(publisher: KvPublisher) -> None:
    b = router()
    sub = await subscribed(b, publisher)
    await publisher.publish(stored(10, 4))
    await publisher.publish(stored(14, 2, parent=13))
    await eventually(lambda: b.depths(prompt(10, 6))["s0"] == 6)
    assert sub.stats()["gaps"] == sub.stats()["refused"] == 0
    await sub.close()


@pytest.mark.asyncio
async def test_a_gap_is_filled_from_the_replay_socket(publisher: KvPublisher) -> None:
    b = router()
    sub = await subscribed(b, publisher)
    before = sub.stats()
    await publisher.publish(stored(10, 4), send=False)  # lost on the way
    await publisher.publish(stored(14, 2, parent=13))
    await eventually(lambda: b.depths(prompt(10, 6))["s0"] == 6)
    s = {k: v - before[k] for k, v in sub.stats().items()}
    assert (s["gaps"], s["replayed"], s["lost"]) == (1, 1, 0)
    await sub.close()


@pytest.mark.asyncio
async def test_a_gap_the_replay_cannot_fill_forgets_the_node() -> None:
    pub = await KvPublisher(replay_endpoint=None).start()
    b = router()
    sub = KvEventSubscriber(b, "s0", pub.endpoint, replay_timeout_s=0.2)
    await sub.start()
    await connected(pub, sub)
    await pub.publish(stored(10, 4))
    await eventually(lambda: b.depths(prompt(10, 4))["s0"] == 4)
    # A removal lost for good: the record cannot know what went, so the
    # node is forgotten and rebuilt from what follows.
    await pub.publish(encode_events([KvEvent("removed", (12, 13))]), send=False)
    await pub.publish(stored(50, 2))
    await eventually(lambda: sub.stats()["lost"] == 1)
    assert b.depths(prompt(10, 4))["s0"] == 0
    assert b.depths(prompt(50, 2))["s0"] == 2
    await sub.close()
    await pub.close()


@pytest.mark.asyncio
async def test_a_publisher_that_restarts_makes_the_node_forgotten(publisher: KvPublisher) -> None:
    b = router()
    sub = await subscribed(b, publisher)
    await publisher.publish(stored(10, 4))
    await eventually(lambda: b.depths(prompt(10, 4))["s0"] == 4)
    publisher.restart_sequence()  # a new server process: cold, counting from 0
    await publisher.publish(stored(70, 3))
    await eventually(lambda: b.depths(prompt(70, 3))["s0"] == 3)
    assert sub.stats()["restarts"] == 1
    assert b.depths(prompt(10, 4))["s0"] == 0
    await sub.close()


@pytest.mark.asyncio
async def test_a_router_that_starts_late_learns_what_the_server_holds(
    publisher: KvPublisher,
) -> None:
    for i in range(5):
        await publisher.publish(stored(100 + 10 * i, 3))
    b = router()
    sub = await subscribed(b, publisher)
    for i in range(5):
        assert b.depths(prompt(100 + 10 * i, 3))["s0"] == 3
    assert sub.stats()["replayed"] >= 5  # and the empty batches before it connected
    await sub.close()


@pytest.mark.asyncio
async def test_hostile_frames_are_counted_and_dropped(publisher: KvPublisher) -> None:
    b = router()
    sub = await subscribed(b, publisher, max_message_bytes=4096)
    blocks = b.prefix_stats()["blocks"]
    refused = sub.stats()["refused"]
    seq = publisher.sequence
    await publisher.send_raw([b"", b"\x00"])
    await publisher.send_raw([b"", b"\x00\x01", b"\x90"])
    await publisher.send_raw([b"", seq.to_bytes(8, "big"), b"\xc1 not msgpack"])
    await publisher.send_raw([b"", (seq + 1).to_bytes(8, "big"), stored(1, 3)[:-5]])
    await publisher.send_raw([b"", (-5).to_bytes(8, "big", signed=True), EMPTY])
    await eventually(lambda: sub.stats()["refused"] >= refused + 5)
    assert b.prefix_stats()["blocks"] == blocks
    # Too large a frame is dropped by ZeroMQ before it is read.
    await publisher.send_raw([b"", (seq + 2).to_bytes(8, "big"), b"\x90" * 10_000])
    publisher.sequence = seq + 3
    await connected(publisher, sub)
    await publisher.publish(stored(20, 2))
    await eventually(lambda: b.depths(prompt(20, 2))["s0"] == 2)
    assert b.prefix_stats()["events"]["refused"] >= 2
    await sub.close()


def test_a_subscriber_needs_a_prefix_aware_balancer_and_names_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"^balancer: must be a PrefixAware"):
        KvEventSubscriber(lc.RoundRobin(), "s0", "tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match=r"^node_id: "):
        KvEventSubscriber(router(), "", "tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match=r"^replay_timeout_s: "):
        KvEventSubscriber(router(), "s0", "tcp://127.0.0.1:1", replay_timeout_s=0)
