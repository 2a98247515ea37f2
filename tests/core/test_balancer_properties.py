"""Hypothesis properties: the Rust balancers against simple Python models."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

import langcluster as lc
from langcluster import Node

ids = st.text(alphabet="abcdefghij", min_size=1, max_size=3)
id_sets = st.lists(ids, min_size=0, max_size=12, unique=True)

KEYED = (lc.ConsistentHash,)
CLASSES = [
    lc.RoundRobin,
    lc.WeightedRoundRobin,
    lc.LeastConnections,
    lc.PowerOfTwoChoices,
    lc.Adaptive,
    lc.Random,
    lc.ConsistentHash,
]


def nodes_of(names: list[str]) -> list[Node]:
    return [Node(n, "h") for n in names]


@given(
    cls=st.sampled_from(CLASSES),
    first=id_sets,
    updates=st.lists(id_sets, min_size=1, max_size=5),
    keys=st.lists(
        st.one_of(st.text(max_size=8), st.integers(), st.binary(max_size=8)),
        min_size=1,
        max_size=20,
    ),
)
def test_a_removed_node_is_never_returned_after_update(cls, first, updates, keys):
    b = cls(nodes_of(first))
    for names in updates:
        current = nodes_of(names)
        b.update(current)
        allowed = {id(n) for n in current}
        for k in keys:
            if not current:
                break
            got = b.pick(k) if cls in KEYED else b.pick()
            assert id(got) in allowed


@given(
    names=st.lists(ids, min_size=1, max_size=10, unique=True),
    picks=st.integers(min_value=1, max_value=60),
)
def test_round_robin_is_exact(names, picks):
    nodes = nodes_of(names)
    b = lc.RoundRobin(nodes)
    start = nodes.index(b.pick())
    got = [b.pick() for _ in range(picks)]
    assert got == [nodes[(start + 1 + i) % len(nodes)] for i in range(picks)]


@given(weights=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=6))
def test_weighted_round_robin_gives_each_node_its_weight_per_cycle(weights):
    nodes = [Node(f"n{i}", "h", weight=w) for i, w in enumerate(weights)]
    b = lc.WeightedRoundRobin(nodes)
    total = sum(weights)
    seq = [b.pick().id for _ in range(total * 3)]
    for i, w in enumerate(weights):
        assert seq.count(f"n{i}") == 3 * w


@given(names=st.lists(ids, min_size=2, max_size=10, unique=True), down=st.data())
def test_consistent_hash_moves_only_the_keys_of_a_node_taken_out(names, down):
    victim = down.draw(st.sampled_from(names))
    b = lc.ConsistentHash(nodes_of(names))
    keys = [f"k{i}" for i in range(300)]
    before = {k: b.pick(k).id for k in keys}
    b.set_available(victim, False)
    for k in keys:
        after = b.pick(k).id
        assert after == before[k] or before[k] == victim
        assert after != victim


@given(ops=st.lists(st.tuples(st.sampled_from(["begin", "end"]), st.integers(0, 3)), max_size=60))
def test_in_flight_matches_a_counter_model_and_never_goes_negative(ops):
    b = lc.LeastConnections(nodes_of(["a", "b", "c", "d"]))
    model = dict.fromkeys("abcd", 0)
    for op, i in ops:
        node = "abcd"[i]
        if op == "begin":
            b.begin(node)
            model[node] += 1
        else:
            b.end(node, 0.001)
            model[node] = max(0, model[node] - 1)
    assert {k: v["in_flight"] for k, v in b.stats().items()} == model
