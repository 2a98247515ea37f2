"""The lifecycle contract of a Cluster, as hooks that run in odd orders
exercise it: start and close are idempotent and thread-safe; calls are
refused before start and after close; close drains calls in flight, then
cancels them; a closed cluster does not start again; a sync cluster
dropped without close warns and stops its thread; no constructor blocks a
running event loop."""

from __future__ import annotations

import asyncio
import gc
import threading
import warnings
from typing import Any

import pytest

import langcluster as lc
from langcluster.cache import invalidation
from langcluster.cache.coherence import Coherence
from tests.support.helpers import eventually, wait_until


def cluster(service: str = "life") -> lc.Cluster:
    return lc.Cluster(service=service, nodes=[lc.Node("a", "10.0.0.1", 80)])


def loop_threads(service: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"langcluster:{service}"]


async def node_id(node: Any) -> str:
    return str(node.id)


def test_eight_threads_starting_and_closing_at_once_make_one_loop_and_leave_none() -> None:
    before = set(threading.enumerate())
    c = cluster("eight")
    barrier = threading.Barrier(8)

    def at_once(action: Any) -> None:
        barrier.wait()
        action()

    for action in (c.start, c.close):
        threads = [threading.Thread(target=at_once, args=(action,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        if action == c.start:
            for thread in threads:
                thread.join(10)
            assert len(loop_threads("eight")) == 1
            assert c.call_sync(lambda node: node.id) == "a"
        else:
            for thread in threads:
                thread.join(10)
            assert not any(thread.is_alive() for thread in threads)
    assert loop_threads("eight") == []
    # Nor any other: the loop's executor threads are joined before close returns.
    assert [t.name for t in threading.enumerate() if t not in before] == []


@pytest.mark.asyncio
async def test_the_sync_start_in_async_code_says_to_use_astart() -> None:
    c = cluster("async-start")
    with pytest.raises(RuntimeError, match=r"^start: .*use `await cluster.astart\(\)`"):
        await c.start()  # type: ignore[misc]
    assert loop_threads("async-start") == []
    async with c:
        assert await c.call(node_id) == "a"


def test_calls_before_start_and_after_close_say_so() -> None:
    c = cluster()
    with pytest.raises(lc.ClusterNotRunning, match="is not started") as before:
        c.call_sync(lambda node: node.id)
    assert before.value.state == "new"
    with c:
        assert c.call_sync(lambda node: node.id) == "a"
    with pytest.raises(lc.ClusterNotRunning, match="is closed") as after:
        c.call_sync(lambda node: node.id)
    assert after.value.state == "closed"
    assert isinstance(after.value, lc.LangClusterError)


def test_a_closed_cluster_does_not_start_again() -> None:
    c = cluster()
    c.start()
    c.close()
    c.close()  # idempotent
    with pytest.raises(lc.ClusterNotRunning, match="does not start again"):
        c.start()
    never = cluster()
    never.close()  # closing a cluster never started closes it too
    with pytest.raises(lc.ClusterNotRunning):
        never.start()


@pytest.mark.asyncio
async def test_astart_and_aclose_are_safe_from_concurrent_tasks() -> None:
    c = cluster()
    await asyncio.gather(*(c.astart() for _ in range(8)))
    assert await c.call(node_id) == "a"
    await asyncio.gather(*(c.aclose() for _ in range(8)))
    with pytest.raises(lc.ClusterNotRunning, match="is closed"):
        await c.call(node_id)
    with pytest.raises(lc.ClusterNotRunning, match="does not start again"):
        await c.astart()


@pytest.mark.asyncio
async def test_close_waits_for_calls_in_flight_and_refuses_new_ones() -> None:
    c = await cluster().astart()
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(node: Any) -> str:
        entered.set()
        await release.wait()
        return str(node.id)

    call = asyncio.create_task(c.call(slow))
    await entered.wait()
    closing = asyncio.create_task(c.aclose(drain_timeout_s=30))
    await eventually(lambda: c._state.value == "closing")
    with pytest.raises(lc.ClusterNotRunning, match="is closing"):
        await c.call(node_id)
    assert not closing.done()  # draining: the call in flight may finish
    release.set()
    assert await call == "a"
    await closing


@pytest.mark.asyncio
async def test_close_cancels_the_calls_that_outlast_the_drain() -> None:
    c = await cluster().astart()
    entered = asyncio.Event()

    async def forever(node: Any) -> str:
        entered.set()
        await asyncio.Event().wait()
        return "never"

    call = asyncio.create_task(c.call(forever))
    await entered.wait()
    await c.aclose(drain_timeout_s=0)
    with pytest.raises(asyncio.CancelledError):
        await call


def test_a_sync_cluster_dropped_without_close_warns_and_stops_its_thread() -> None:
    c = cluster("dropped")
    c.start()
    assert len(loop_threads("dropped")) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del c
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught), caught
    assert wait_until(lambda: loop_threads("dropped") == [], 10)


def test_a_closed_sync_cluster_is_collected_without_a_warning() -> None:
    c = cluster("closed")
    c.start()
    c.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del c
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.asyncio
async def test_a_layered_cache_made_in_a_running_loop_does_not_wait_for_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(
        invalidation.Invalidations, "wait_subscribed", lambda self, timeout_s: waits.append(1)
    )
    # Nothing listens on port 1: the subscriber retries in the background.
    l2 = lc.RedisCache("redis://127.0.0.1:1/0", socket_timeout_s=2.0)
    cache = lc.LayeredCache(lc.MemoryCache(10), l2)
    assert waits == []  # it never waited (it used to, for twice the socket timeout)
    assert not cache.stats()["subscribed"]
    cache.close()


def test_an_l1_not_listening_to_invalidations_keeps_nothing() -> None:
    l1 = lc.MemoryCache(10)
    coherence = Coherence(l1)
    coherence.listening = False
    coherence.fill({"k": ("from redis", None)}, coherence.seq)
    coherence.begin(["w"])
    coherence.finish({"w": "written"}, None)
    # Another process's write of either would go unheard.
    assert "k" not in l1
    assert "w" not in l1
    coherence.listening = True
    coherence.fill({"k": ("from redis", None)}, coherence.seq)
    assert l1["k"] == "from redis"
