"""PrefixAware through its Python API: affinity, spill, the record's bound,
prompts of every accepted kind, refusals by name, and its place in Cluster."""

from __future__ import annotations

import pytest

import langcluster as lc
from langcluster import Node


def make_nodes(n: int) -> list[Node]:
    return [Node(f"n{i}", f"10.0.0.{i}", 8000) for i in range(n)]


def prompt(group: int, user: int, shared: int = 2048, own: int = 512) -> str:
    """A shared system prompt for the group, then the user's own text."""
    system = (f"[system {group}] " * shared)[:shared]
    question = (f"<user {user} of {group}> " * own)[:own]
    return system + question


def test_prompts_sharing_a_prefix_go_where_it_is_held() -> None:
    b = lc.PrefixAware(make_nodes(4))
    homes = {g: b.pick(prompt(g, 0)).id for g in range(8)}
    for g in range(8):
        for user in range(1, 6):
            assert b.pick(prompt(g, user)).id == homes[g]
    assert len(set(homes.values())) > 1, "new prefixes spread over idle nodes"
    s = b.prefix_stats()
    assert s["prompts"] == 48
    assert s["prompt_blocks"] == 48 * 40
    assert s["matched_blocks"] == 40 * 32
    assert s["match_rate"] == pytest.approx(40 * 32 / (48 * 40))
    assert sum(node["blocks"] for node in b.stats().values()) == s["blocks"]


def test_an_overloaded_holder_spills_to_the_least_loaded() -> None:
    b = lc.PrefixAware(make_nodes(3), balance_abs=2)
    home = b.pick(prompt(1, 0)).id
    for _ in range(6):
        b.begin(home)
    other = b.pick(prompt(1, 1)).id
    assert other != home
    assert b.prefix_stats()["spills"] == 1
    for _ in range(6):
        b.end(home, 0.1)
    assert b.pick(prompt(1, 2)).id in {home, other}


def test_acquire_picks_by_prompt_and_holds_the_request() -> None:
    b = lc.PrefixAware(make_nodes(3))
    with b.acquire(prompt(5, 0)) as node:
        assert b.stats()[node.id]["in_flight"] == 1
        # The holder is busy with one request; at this load it keeps the prefix.
        assert b.pick(prompt(5, 1)) is node
    assert b.stats()[node.id]["in_flight"] == 0
    assert b.stats()[node.id]["successes"] == 1


@pytest.mark.asyncio
async def test_acquire_works_in_async_code() -> None:
    b = lc.PrefixAware(make_nodes(2))
    async with b.acquire(prompt(9, 0)) as node:
        assert b.stats()[node.id]["in_flight"] == 1
    assert b.pick(prompt(9, 1)) is node


def test_token_ids_bytes_and_ints_are_prompts() -> None:
    b = lc.PrefixAware(make_nodes(4))
    tokens = list(range(1000, 1000 + 64 * 16))
    home = b.pick(tokens).id
    assert b.pick(tuple(tokens)).id == home
    packed = b"".join(t.to_bytes(4, "little") for t in tokens)
    assert b.pick(packed).id == home, "token blocks hash as their packed ids"
    assert b.prefix_stats()["prompt_blocks"] == 3 * 64
    number = 10**70
    assert b.pick(number).id == b.pick(str(number)).id
    # Nothing, or less than one block: the least loaded, nothing recorded.
    b.pick()
    b.pick("short")
    assert b.prefix_stats()["prompts"] == 5


def test_prompts_of_the_wrong_kind_are_refused_by_name() -> None:
    b = lc.PrefixAware(make_nodes(2))
    for bad in (1.5, {"a": 1}, object(), bytearray(b"x" * 100)):
        with pytest.raises(TypeError, match=r"^prompt: must be a str, bytes, int or a list"):
            b.pick(bad)
        with pytest.raises(TypeError, match=r"^prompt"):
            b.acquire(bad)
    with pytest.raises(TypeError, match=r"^prompt\[1\]: must be an int"):
        b.pick([1, "2", 3])
    with pytest.raises(TypeError, match=r"^prompt\[0\]: must be an int"):
        b.pick([True])
    for bad_id in (-1, 2**32, 10**30):
        with pytest.raises(ValueError, match=r"^prompt\[2\]: must be a token id"):
            b.pick([1, 2, bad_id])
    assert b.prefix_stats()["prompts"] == 0


def test_only_the_blocks_it_reads_are_looked_at() -> None:
    b = lc.PrefixAware(make_nodes(2), max_prompt_blocks=4)
    # Items past 4 blocks of 16 tokens are never read, so never refused.
    b.pick([7] * 64 + ["not a token"])
    b.pick("x" * 10_000_000)
    assert b.prefix_stats()["prompt_blocks"] == 8


def test_the_record_stays_within_max_blocks() -> None:
    b = lc.PrefixAware(make_nodes(4), max_blocks=500, shards=4)
    for g in range(300):
        b.pick(prompt(g, g))
    s = b.prefix_stats()
    assert s["blocks"] == 500
    assert s["evictions"] == 300 * 40 - 500
    assert s["max_blocks"] == 500
    assert 0 < s["bytes"] < 200_000


def test_a_removed_node_loses_its_record_and_a_returning_one_is_cold() -> None:
    nodes = make_nodes(2)
    b = lc.PrefixAware(nodes)
    home = b.pick(prompt(1, 0))
    b.set_available(home.id, False)
    assert b.stats()[home.id]["blocks"] == 40, "kept while unavailable"
    b.set_available(home.id, True)
    b.update([n for n in nodes if n is not home])
    b.update(nodes)
    assert b.stats()[home.id]["blocks"] == 0


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("block_size", 0, ValueError),
        ("token_block_size", 4096, ValueError),
        ("max_blocks", -5, ValueError),
        ("max_prompt_blocks", 0, ValueError),
        ("balance_rel", 0.5, ValueError),
        ("balance_abs", float("nan"), ValueError),
        ("min_match", 2, ValueError),
        ("shards", 0, ValueError),
        ("decay_s", 0, ValueError),
        ("block_size", "64", TypeError),
        ("load", 1, TypeError),
        ("load", "queue", ValueError),
    ],
)
def test_settings_out_of_range_are_refused_by_name(
    option: str, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=rf"^{option}: "):
        lc.PrefixAware(make_nodes(1), **{option: value})


def test_settings_report_what_is_in_force() -> None:
    b = lc.PrefixAware(block_size=32, max_blocks=1000, load="latency")
    assert b.settings["block_size"] == 32
    assert b.settings["max_blocks"] == 1000
    assert b.settings["load"] == "latency"
    assert b.settings["token_block_size"] == 16


def test_a_seed_replays_the_same_choices() -> None:
    def run(seed: int | None) -> list[str]:
        b = lc.PrefixAware(make_nodes(4), seed=seed)
        # Ties everywhere: no load, and prompts of one block that match nothing.
        return [b.pick(f"{i:064d}").id for i in range(200)] + [b.pick().id for _ in range(50)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert lc.PrefixAware(seed=7).settings["seed"] == 7
    assert lc.PrefixAware().settings["seed"] is None
    with pytest.raises(ValueError, match=r"^seed: must be an int from 0 to 2\*\*64-1"):
        lc.PrefixAware(seed=-1)


def test_use_latency_steers_away_from_a_slow_node() -> None:
    b = lc.PrefixAware(make_nodes(2), load="latency", balance_abs=0.5)
    home = b.pick(prompt(1, 0)).id
    other = "n1" if home == "n0" else "n0"
    b.begin(home)
    b.end(home, 5.0)
    b.begin(other)
    b.end(other, 0.01)
    # Same in-flight count (0), but the holder answers 500x slower: with
    # latency its load counts as about 1 request, over the mean + 0.5.
    assert b.pick(prompt(2, 0)).id == other


@pytest.mark.asyncio
async def test_a_cluster_routes_calls_by_prompt() -> None:
    cluster = lc.Cluster(
        service="llm",
        nodes=make_nodes(3),
        balancer="prefix_aware",
        balancer_options={"max_blocks": 10_000},
    )
    assert isinstance(cluster.balancer, lc.PrefixAware)
    assert cluster.balancer.settings["max_blocks"] == 10_000
    async with cluster:
        first = await cluster.call(lambda node: node.id, key=prompt(3, 0))
        again = await cluster.call(lambda node: node.id, key=prompt(3, 1))
        assert first == again


def test_the_config_file_names_it() -> None:
    cluster = lc.Cluster.from_config(
        {
            "service": "llm",
            "balancer": {"kind": "prefix_aware", "balance_rel": 2.0},
            "discovery": {"kind": "static", "nodes": [{"id": "a", "address": "h"}]},
        }
    )
    assert isinstance(cluster.balancer, lc.PrefixAware)
    assert cluster.balancer.settings["balance_rel"] == 2.0
    with pytest.raises(ValueError, match=r"^balancer\.min_match"):
        lc.Cluster.from_config(
            {"service": "x", "balancer": {"kind": "prefix_aware", "min_match": 5}}
        )
