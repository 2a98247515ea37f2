"""The Rust balancers through their Python API."""

from __future__ import annotations

import asyncio
import collections
import itertools
import math

import pytest

import langcluster as lc
from langcluster import Node, NodeStatus

ALL = [
    lc.RoundRobin,
    lc.WeightedRoundRobin,
    lc.LeastConnections,
    lc.PowerOfTwoChoices,
    lc.Adaptive,
    lc.Random,
    lc.ConsistentHash,
]
KEYLESS = [cls for cls in ALL if cls is not lc.ConsistentHash]


def make_nodes(n: int, **kw) -> list[Node]:
    return [Node(f"n{i}", f"10.0.0.{i}", 8000, **kw) for i in range(n)]


def pick(b: lc.Balancer, i: int = 0) -> Node:
    return b.pick(f"key-{i}") if isinstance(b, lc.ConsistentHash) else b.pick()


@pytest.mark.parametrize("cls", ALL)
def test_pick_returns_the_very_node_object_given(cls):
    nodes = make_nodes(4)
    b = cls(nodes)
    for i in range(20):
        got = pick(b, i)
        assert any(got is n for n in nodes)


@pytest.mark.parametrize("cls", ALL)
def test_any_object_with_an_id_is_a_node(cls):
    class Backend:
        def __init__(self, id: str) -> None:
            self.id = id

    backends = [Backend("x"), Backend("y")]
    assert pick(cls(backends)) in backends


def test_round_robin_is_exact():
    nodes = make_nodes(3)
    b = lc.RoundRobin(nodes)
    assert [b.pick().id for _ in range(7)] == ["n0", "n1", "n2", "n0", "n1", "n2", "n0"]


def test_weighted_round_robin_interleaves_5_1_1():
    b = lc.WeightedRoundRobin(
        [Node("a", "h", weight=5), Node("b", "h", weight=1), Node("c", "h", weight=1)]
    )
    assert " ".join(b.pick().id for _ in range(7)) == "a a b a c a a"


def test_least_connections_prefers_the_idle_node():
    b = lc.LeastConnections(make_nodes(3))
    b.begin("n0")
    b.begin("n2")
    assert b.pick().id == "n1"


def test_consistent_hash_is_stable_and_types_agree():
    nodes = make_nodes(10)
    a, b = lc.ConsistentHash(nodes), lc.ConsistentHash(list(reversed(nodes)))
    for k in range(200):
        assert a.pick(f"user-{k}").id == b.pick(f"user-{k}").id
    assert a.pick(42) is a.pick("42")
    assert a.pick("prompt") is a.pick(b"prompt")
    assert a.pick(2**100) is a.pick(str(2**100))


def test_consistent_hash_values_are_fixed_across_processes_and_versions():
    # The ring positions come from XXH3 of the ids: these routes must never
    # change, or every deployed fleet would lose its affinity on upgrade.
    b = lc.ConsistentHash(make_nodes(5))
    routes = [b.pick(f"user-{k}").id for k in range(8)]
    assert routes == ROUTES_OF_FIVE_NODES


# Recorded once at 160 vnodes; a change here breaks affinity for every user.
ROUTES_OF_FIVE_NODES = ["n0", "n1", "n0", "n3", "n1", "n3", "n2", "n3"]


def test_consistent_hash_needs_a_key():
    b = lc.ConsistentHash(make_nodes(2))
    with pytest.raises(TypeError, match=r"^key:"):
        b.pick()


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("bad", [1.5, None.__class__, [1], True, object()])
def test_a_key_that_is_not_str_bytes_or_int_is_a_type_error_naming_key(cls, bad):
    b = cls(make_nodes(2))
    with pytest.raises(TypeError, match=r"^key: must be str, bytes or int"):
        b.pick(bad)


@pytest.mark.parametrize("cls", ALL)
def test_bad_node_sets_name_the_argument(cls):
    with pytest.raises(ValueError, match="duplicate node id 'a'"):
        cls([Node("a", "h"), Node("a", "h")])

    class Raw:
        def __init__(self, id: object, weight: object = 1) -> None:
            self.id = id
            self.weight = weight

    with pytest.raises(ValueError, match=r"^nodes\[1\]\.id: must be a non-empty string"):
        cls([Raw("a"), Raw("")])
    with pytest.raises(TypeError, match=r"^nodes\[0\]\.id: must be a str, got int"):
        cls([Raw(7)])
    with pytest.raises(TypeError, match=r"^nodes\[0\]: must be a node \(an object with an `id`\)"):
        cls([object()])
    for w in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"^nodes\[0\]\.weight: must be a number above 0"):
            cls([Raw("a", w)])
    with pytest.raises(TypeError, match=r"^nodes\[0\]\.weight: must be a number, got str"):
        cls([Raw("a", "heavy")])
    with pytest.raises(TypeError, match=r"^nodes: must be an iterable"):
        cls(42)


@pytest.mark.parametrize("cls", ALL)
def test_a_refused_update_keeps_the_old_node_set(cls):
    b = cls(make_nodes(2))
    with pytest.raises(ValueError, match="duplicate"):
        b.update([Node("z", "h"), Node("z", "h")])
    assert len(b) == 2
    assert "n0" in b


@pytest.mark.parametrize("cls", ALL)
def test_no_available_node_is_a_langcluster_error(cls):
    b = cls([])
    with pytest.raises(lc.NoAvailableNode):
        pick(b)
    b.update(make_nodes(2))
    b.set_available("n0", False)
    b.set_available("n1", False)
    with pytest.raises(lc.LangClusterError):
        pick(b)
    assert b.available_count == 0


@pytest.mark.parametrize("cls", ALL)
def test_unavailable_nodes_are_skipped_until_they_return(cls):
    b = cls(make_nodes(3))
    assert b.set_available("n1", False) is True
    assert b.set_available("n1", False) is False
    assert all(pick(b, i).id != "n1" for i in range(100))
    b.set_available("n1", True)
    assert any(pick(b, i).id == "n1" for i in range(300))


def test_set_available_for_an_unknown_node_is_a_key_error():
    with pytest.raises(KeyError, match="node_id: no node with id 'nope'"):
        lc.RoundRobin(make_nodes(1)).set_available("nope", True)


def test_node_status_sets_availability():
    nodes = make_nodes(3)
    nodes[1].status = NodeStatus.UNHEALTHY
    nodes[2].status = NodeStatus.DRAINING
    b = lc.RoundRobin(nodes)
    assert {b.pick().id for _ in range(10)} == {"n0"}
    nodes[1].status = NodeStatus.HEALTHY
    b.update(nodes)
    assert {b.pick().id for _ in range(10)} == {"n0", "n1"}


def test_unknown_status_keeps_availability_across_updates():
    nodes = make_nodes(2)
    b = lc.RoundRobin(nodes)
    b.set_available("n1", False)
    b.update(nodes)  # status UNKNOWN: not a statement about health
    assert {b.pick().id for _ in range(10)} == {"n0"}


@pytest.mark.parametrize("cls", ALL)
def test_update_keeps_counters_of_nodes_that_stay(cls):
    b = cls(make_nodes(3))
    b.begin("n1")
    b.begin("n1")
    b.update([Node("n1", "h"), Node("n9", "h")])
    stats = b.stats()
    assert set(stats) == {"n1", "n9"}
    assert stats["n1"]["in_flight"] == 2
    assert stats["n9"]["in_flight"] == 0


def test_end_for_a_node_removed_meanwhile_is_ignored():
    b = lc.LeastConnections(make_nodes(2))
    b.begin("n1")
    b.update(make_nodes(1))
    assert b.end("n1", 0.01) is False
    assert b.end("n0", 0.01) is True


def test_end_refuses_a_bad_latency_by_name():
    b = lc.Adaptive(make_nodes(1))
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"^latency_s:"):
            b.end("n0", bad)


def test_acquire_counts_in_flight_and_reports_the_outcome():
    b = lc.LeastConnections(make_nodes(2))
    with b.acquire() as node:
        assert b.stats()[node.id]["in_flight"] == 1
    s = b.stats()[node.id]
    assert (s["in_flight"], s["successes"], s["failures"]) == (0, 1, 0)
    assert s["ewma_latency_s"] is not None

    with pytest.raises(RuntimeError), b.acquire() as node:
        raise RuntimeError("model server said 500")
    s = b.stats()[node.id]
    assert (s["in_flight"], s["failures"]) == (0, 1)


def test_acquire_releases_without_an_outcome_on_cancellation():
    b = lc.LeastConnections(make_nodes(1))
    with pytest.raises(KeyboardInterrupt), b.acquire():
        raise KeyboardInterrupt
    s = b.stats()["n0"]
    assert (s["in_flight"], s["successes"], s["failures"]) == (0, 0, 0)


def test_acquire_works_with_async_with_and_cancellation():
    b = lc.Adaptive(make_nodes(3))

    async def main() -> None:
        async with b.acquire() as node:
            assert isinstance(node, Node)
            await asyncio.sleep(0)
        task = asyncio.create_task(held())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def held() -> None:
        async with b.acquire():
            await asyncio.sleep(10)

    asyncio.run(main())
    stats = b.stats()
    assert sum(s["in_flight"] for s in stats.values()) == 0
    assert sum(s["successes"] for s in stats.values()) == 1
    assert sum(s["failures"] for s in stats.values()) == 0


def test_a_lease_cannot_be_entered_twice_at_once():
    b = lc.RoundRobin(make_nodes(1))
    lease = b.acquire()
    with lease, pytest.raises(RuntimeError, match="already entered"), lease:
        pass


def test_acquire_with_a_key_routes_like_pick():
    b = lc.ConsistentHash(make_nodes(8))
    for k in range(50):
        with b.acquire(f"p{k}") as node:
            assert node is b.pick(f"p{k}")


def test_bounded_load_spreads_a_hot_key():
    b = lc.ConsistentHash(make_nodes(8), load_factor=1.25)
    leases = [b.acquire("hot") for _ in range(80)]
    for lease in leases:
        lease.__enter__()
    assert max(s["in_flight"] for s in b.stats().values()) <= math.ceil(1.25 * 80 / 8)
    for lease in leases:
        lease.__exit__(None, None, None)


def test_consistent_hash_options_are_checked_by_name():
    with pytest.raises(ValueError, match=r"^vnodes:"):
        lc.ConsistentHash(make_nodes(1), vnodes=0)
    with pytest.raises(ValueError, match=r"^load_factor:"):
        lc.ConsistentHash(make_nodes(1), load_factor=0.5)
    b = lc.ConsistentHash(make_nodes(1), vnodes=40, load_factor=1.5)
    assert (b.vnodes, b.load_factor) == (40, 1.5)


def test_adaptive_decay_is_checked_by_name():
    with pytest.raises(ValueError, match=r"^decay_s:"):
        lc.Adaptive(make_nodes(1), decay_s=0)


def test_adaptive_moves_traffic_off_a_slow_node():
    b = lc.Adaptive(make_nodes(4))
    for _ in range(100):
        n = b.pick()
        b.begin(n.id)
        b.end(n.id, 0.010)
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(400):
        n = b.pick()
        b.begin(n.id)
        b.end(n.id, 0.5 if n.id == "n3" else 0.010)
        counts[n.id] += 1
    assert counts["n3"] <= 3


@pytest.mark.parametrize("cls", KEYLESS)
def test_repr_len_contains_and_nodes(cls):
    nodes = make_nodes(3)
    b = cls(nodes)
    assert repr(b) == f"{cls.__name__}(nodes=3, available=3)"
    assert len(b) == 3
    assert "n2" in b
    assert "zz" not in b
    assert 3 not in b
    assert b.nodes == nodes
    assert isinstance(b, lc.Balancer)


def test_the_base_class_cannot_be_instantiated():
    with pytest.raises(TypeError):
        lc.Balancer()


def test_random_and_p2c_spread_over_all_nodes():
    for cls in (lc.Random, lc.PowerOfTwoChoices):
        b = cls(make_nodes(4))
        counts = collections.Counter(b.pick().id for _ in range(4000))
        assert set(counts) == {"n0", "n1", "n2", "n3"}
        assert min(counts.values()) > 700


def test_weighted_random_follows_weights():
    b = lc.Random([Node("a", "h", weight=1), Node("b", "h", weight=3)])
    counts = collections.Counter(b.pick().id for _ in range(20_000))
    assert 0.70 < counts["b"] / 20_000 < 0.80


def test_stats_fields():
    b = lc.RoundRobin(make_nodes(2))
    for _ in range(3):
        b.pick()
    s = b.stats()
    assert s["n0"]["picks"] == 2
    assert s["n1"]["picks"] == 1
    assert set(s["n0"]) == {
        "picks",
        "in_flight",
        "successes",
        "failures",
        "ewma_latency_s",
        "available",
        "weight",
    }


def test_floor_itertools_cycle_matches_round_robin_order():
    nodes = make_nodes(5)
    b = lc.RoundRobin(nodes)
    assert [b.pick() for _ in range(12)] == list(itertools.islice(itertools.cycle(nodes), 12))


@pytest.mark.parametrize("cls", [*ALL, lc.PrefixAware])
def test_an_end_without_a_begin_records_its_outcome_and_in_flight_stays_at_zero(cls):
    b = cls(make_nodes(2))
    node = b.nodes[0].id
    assert b.end(node, 0.1) is True
    assert b.end(node, 0.1, False) is True
    stats = b.stats()[node]
    assert (stats["in_flight"], stats["successes"], stats["failures"]) == (0, 1, 1)
    assert b.end("gone", 0.1) is False
