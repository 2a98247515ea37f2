"""NodeRegistry: membership, status, events to listeners and watchers, and
balancers kept in step by bind()."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

import langcluster as lc
from langcluster import Node, NodeEvent, NodeEventKind, NodeRegistry, NodeStatus


def node(i: int, **kwargs: object) -> Node:
    return Node(f"n{i}", f"10.0.0.{i}", 8000, **kwargs)  # type: ignore[arg-type]


def test_register_get_update_deregister_with_events() -> None:
    registry = NodeRegistry()
    events: list[NodeEvent] = []
    registry.subscribe(events.append)
    registry.register(node(1))
    registry.register(node(2, weight=2))
    assert len(registry) == 2
    assert "n1" in registry
    assert registry.get("n2").weight == 2  # type: ignore[union-attr]
    assert registry.register(node(1)) is None  # no change, no event
    updated = registry.update("n2", weight=5, metadata={"gpu": "a100"})
    assert (updated.weight, updated.metadata) == (5, {"gpu": "a100"})
    first = registry.get("n1")
    registry.set_status("n1", "unhealthy")
    assert first is registry.get("n1")
    assert first.status is NodeStatus.UNHEALTHY
    assert registry.set_status("n1", NodeStatus.UNHEALTHY) is None
    assert registry.deregister("n2") is updated
    assert registry.deregister("n2") is None
    assert [e.kind for e in events] == [
        NodeEventKind.ADDED,
        NodeEventKind.ADDED,
        NodeEventKind.UPDATED,
        NodeEventKind.STATUS_CHANGED,
        NodeEventKind.REMOVED,
    ]
    status_event = events[3]
    assert status_event.previous is not None
    assert status_event.previous.status is NodeStatus.UNKNOWN
    assert status_event.node.status is NodeStatus.UNHEALTHY
    assert events[2].previous is not None
    assert events[2].previous.weight == 2


def test_nodes_healthy_only() -> None:
    registry = NodeRegistry([node(1), node(2), node(3)])
    registry.set_status("n1", "healthy")
    registry.set_status("n2", "unhealthy")
    registry.set_status("n3", "draining")
    assert [n.id for n in registry.nodes(healthy_only=True)] == ["n1"]
    assert len(registry.nodes()) == 3


def test_registering_a_known_node_with_a_new_status_changes_it_in_place() -> None:
    registry = NodeRegistry([node(1)])
    original = registry.get("n1")
    event = registry.register(node(1, status="healthy"))
    assert event is not None
    assert event.kind is NodeEventKind.STATUS_CHANGED
    assert registry.get("n1") is original


def test_bad_input_is_named() -> None:
    registry = NodeRegistry()
    with pytest.raises(TypeError, match="node"):
        registry.register("n1")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="node_id"):
        registry.update("missing", weight=2)
    with pytest.raises(KeyError, match="node_id"):
        registry.set_status("missing", "healthy")
    registry.register(node(1))
    with pytest.raises(ValueError, match="sleepy"):
        registry.set_status("n1", "sleepy")
    with pytest.raises(TypeError, match="balancer"):
        registry.bind([])  # type: ignore[arg-type]


def test_a_raising_listener_is_logged_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = NodeRegistry()
    seen: list[str] = []
    registry.subscribe(lambda e: 1 / 0)
    registry.subscribe(lambda e: seen.append(e.node.id))
    with caplog.at_level(logging.ERROR, logger="langcluster.registry"):
        registry.register(node(1))
    assert seen == ["n1"]
    assert "listener raised" in caplog.text


def test_unsubscribe() -> None:
    registry = NodeRegistry()
    seen: list[NodeEvent] = []
    unsubscribe = registry.subscribe(seen.append)
    registry.register(node(1))
    unsubscribe()
    registry.register(node(2))
    assert len(seen) == 1


def test_bind_keeps_a_balancer_in_step_within_one_event() -> None:
    registry = NodeRegistry([node(1), node(2)])
    balancer = lc.RoundRobin()
    unbind = registry.bind(balancer)
    assert sorted(n.id for n in balancer.nodes) == ["n1", "n2"]
    registry.set_status("n1", "unhealthy")
    assert {balancer.pick().id for _ in range(10)} == {"n2"}
    registry.set_status("n1", "healthy")
    assert {balancer.pick().id for _ in range(10)} == {"n1", "n2"}
    registry.register(node(3))
    assert len(balancer) == 3
    registry.update("n3", weight=4)
    assert next(n for n in balancer.nodes if n.id == "n3").weight == 4
    registry.deregister("n2")
    assert sorted(n.id for n in balancer.nodes) == ["n1", "n3"]
    unbind()
    registry.deregister("n3")
    assert len(balancer) == 2


def test_events_arrive_in_order_across_threads() -> None:
    registry = NodeRegistry([node(i) for i in range(8)])
    balancer = lc.RoundRobin()
    registry.bind(balancer)

    def flap(i: int) -> None:
        for k in range(500):
            registry.set_status(f"n{i}", "unhealthy" if k % 2 == 0 else "healthy")

    threads = [threading.Thread(target=flap, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every node ended healthy, and the balancer agrees.
    stats = balancer.stats()
    assert all(stats[f"n{i}"]["available"] for i in range(8))


@pytest.mark.asyncio
async def test_watch_coalesces_per_node_for_a_slow_consumer() -> None:
    registry = NodeRegistry()
    seen: list[tuple[str, str]] = []
    started = asyncio.Event()

    async def consume() -> None:
        watch = registry.watch()
        started.set()
        async for event in watch:
            seen.append((event.node.id, event.kind.value))
            if event.node.id == "n9":
                return

    consumer = asyncio.create_task(consume())
    await started.wait()
    await asyncio.sleep(0)  # the consumer is now waiting on its first event
    registry.register(node(1))
    for k in range(100):  # a burst the consumer does not keep up with
        registry.set_status("n1", "unhealthy" if k % 2 == 0 else "healthy")
    registry.register(node(9))
    await asyncio.wait_for(consumer, 1)
    # The 100 flaps of n1 reach the consumer as at most its latest event.
    assert seen[-1] == ("n9", "added")
    assert len(seen) <= 3
    assert registry.get("n1").status is NodeStatus.HEALTHY  # type: ignore[union-attr]
