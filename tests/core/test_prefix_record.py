"""PrefixAware's record and queues through its Python API: capacities per
node, forgetting a node, the prefill work it counts as load (on an injected
clock), time to first token reported back, tokenizers, and the KV events of
exact mode applied by hand."""

from __future__ import annotations

from typing import Any

import pytest

import langcluster as lc
from langcluster.testing.fleet import KvEvent, SimClock
from langcluster.testing.kv_publisher import encode_events
from langcluster.testing.openai_api import tokenize


def nodes(n: int) -> list[lc.Node]:
    return [lc.Node(f"n{i}", "10.0.0.1", 8000 + i) for i in range(n)]


def group(g: int, user: int = 0, blocks: int = 8) -> str:
    """A prompt of ``blocks`` 64-byte blocks, all but the last shared by ``g``."""
    shared = "".join(f"[group {g} block {i}]".ljust(64, ".") for i in range(blocks - 1))
    return shared + f"[user {user}]".ljust(64, ".")


def test_new_prefixes_spread_evenly_through_a_full_record() -> None:
    b = lc.PrefixAware(nodes(8), max_blocks=800, prefill_weight=0, seed=4)
    counts: dict[str, int] = {}
    repeats, last = 0, ""
    for g in range(10_000):
        node = b.pick(group(g, blocks=4)).id
        if g >= 400:
            counts[node] = counts.get(node, 0) + 1
            repeats += node == last
        last = node
    assert b.prefix_stats()["blocks"] == 800
    assert all(abs(n / 1200 - 1) < 0.1 for n in counts.values()), counts
    assert repeats < 1.3 * 1200, "the same node twice in a row about 1 in 8, not more"


def test_each_node_holds_at_most_its_capacity() -> None:
    b = lc.PrefixAware(nodes(2), node_blocks=16, prefill_weight=0, seed=1)
    for g in range(20):
        b.pick(group(g))
    assert [s["blocks"] for s in b.stats().values()] == [16, 16]
    assert [s["capacity"] for s in b.stats().values()] == [16, 16]
    b.set_node_blocks("n0", 40)
    assert b.stats()["n0"]["capacity"] == 40
    b.set_node_blocks("n0", 0)
    assert b.stats()["n0"]["capacity"] == 16
    with pytest.raises(KeyError, match=r"node_id: no node with id 'zz'"):
        b.set_node_blocks("zz", 4)
    with pytest.raises(ValueError, match=r"^blocks: "):
        b.set_node_blocks("n0", -1)
    with pytest.raises(TypeError, match=r"^blocks: "):
        b.set_node_blocks("n0", 1.5)


def test_a_node_forgotten_is_cold_and_the_others_keep_their_record() -> None:
    b = lc.PrefixAware(nodes(2), prefill_weight=0, seed=2)
    homes = {g: b.pick(group(g)).id for g in range(6)}
    kept = {g: h for g, h in homes.items() if h == "n1"}
    b.forget("n0")
    assert b.stats()["n0"]["blocks"] == 0
    for g, home in kept.items():
        assert b.depths(group(g, user=9))[home] == 7
    with pytest.raises(KeyError, match=r"node_id: no node with id 'zz'"):
        b.forget("zz")


def test_prefill_work_is_load_until_it_decays_on_the_injected_clock() -> None:
    clock = SimClock()
    b = lc.PrefixAware(nodes(2), clock=clock, balance_abs=1, prefill_decay_s=1.0, seed=3)
    long = group(1, blocks=40)
    home = b.pick(long).id
    assert b.stats()[home]["prefill_blocks"] == pytest.approx(40)
    # At once, 40 blocks of prefill queued (4 mean prompts of load) make
    # the holder overloaded: the same prefix goes to the other node.
    other = b.pick(group(1, user=1, blocks=40)).id
    assert other != home
    clock.now_s = 1.0
    assert b.stats()[home]["prefill_blocks"] == pytest.approx(40 / 2.718281828, rel=1e-6)
    clock.now_s = 30.0
    assert b.stats()[home]["prefill_blocks"] < 1e-6
    # Both hold the prefix now, idle: the next one costs one block of work.
    chosen = b.pick(group(1, user=2, blocks=40)).id
    assert b.stats()[chosen]["prefill_blocks"] == pytest.approx(1)


def test_a_clock_that_fails_or_lies_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match=r"^clock: "):
        lc.PrefixAware(clock=5)
    with pytest.raises(ValueError, match=r"^clock: must return"):
        lc.PrefixAware(clock=lambda: -1.0)
    with pytest.raises(TypeError, match=r"^clock: "):
        lc.PrefixAware(clock=lambda: "now")
    values = iter([0.0, float("nan")])
    b = lc.PrefixAware(nodes(1), clock=lambda: next(values))
    with pytest.raises(ValueError, match=r"^clock: "):
        b.pick("x" * 64)


def test_time_to_first_token_is_kept_per_node() -> None:
    b = lc.PrefixAware(nodes(2))
    assert b.stats()["n0"]["ttft_s"] is None
    b.begin("n0")
    assert b.end("n0", 1.0, ttft_s=0.5) is True
    b.begin("n0")
    b.end("n0", 1.0, True, ttft_s=1.5)
    assert b.stats()["n0"]["ttft_s"] == pytest.approx(0.5 + 0.2 * 1.0)
    assert b.stats()["n0"]["successes"] == 2
    assert b.end("gone", 1.0, ttft_s=0.1) is False
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^ttft_s: "):
            b.end("n0", 1.0, ttft_s=bad)
    with pytest.raises(TypeError, match=r"^ttft_s: "):
        b.end("n0", 1.0, ttft_s="fast")


class HfEncoding:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids


class HfTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer``'s shape: ``encode`` returns
    an encoding with ``.ids``."""

    def encode(self, text: str) -> HfEncoding:
        return HfEncoding(tokenize(text))


@pytest.mark.parametrize(
    "tokenizer",
    [
        tokenize,
        HfTokenizer(),
        lambda text: {"input_ids": tokenize(text)},
        lambda t: tuple(tokenize(t)),
    ],
    ids=["callable", "hf-tokenizers", "transformers", "tuple"],
)
def test_a_tokenizer_maps_text_to_the_servers_token_blocks(tokenizer: Any) -> None:
    b = lc.PrefixAware(nodes(3), tokenizer=tokenizer)
    assert b.settings["tokenizer"] is True
    text = group(5)
    home = b.pick(text).id
    # 16 four-byte tokens a block: the same blocks as the text's 64 bytes.
    assert b.depths(tokenize(text))[home] == 8
    assert b.depths(text)[home] == 8
    # Bytes are read as they are, without the tokenizer: the simulated
    # servers' token ids packed are the text's bytes, so they match too.
    assert b.depths(text.encode())[home] == 8
    assert b.depths(("other " * 40).encode())[home] == 0


def test_a_hugging_face_tokenizer_works_as_it_is() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(64)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    b = lc.PrefixAware(nodes(3), tokenizer=tokenizer, token_block_size=4)
    shared = " ".join(f"w{i}" for i in range(32))
    home = b.pick(shared + " w40 w41 w42 w43").id
    assert b.pick(shared + " w50 w51 w52 w53").id == home
    ids = tokenizer.encode(shared).ids
    assert b.depths(ids)[home] == 8  # 32 tokens, 4 a block: the same blocks
    assert b.prefix_stats()["matched_blocks"] == 8


def test_a_tokenizer_that_returns_no_token_ids_is_named() -> None:
    b = lc.PrefixAware(nodes(1), tokenizer=lambda text: 42)
    with pytest.raises(TypeError, match=r"^tokenizer: must be to return token ids"):
        b.pick("hello " * 40)
    b = lc.PrefixAware(nodes(1), tokenizer=lambda text: [1, -2])
    with pytest.raises(ValueError, match=r"^tokenizer\(prompt\)\[1\]: "):
        b.pick("hello")
    with pytest.raises(TypeError, match=r"^tokenizer: "):
        lc.PrefixAware(tokenizer=3)


def test_kv_events_applied_by_hand_are_what_a_pick_matches() -> None:
    b = lc.PrefixAware(nodes(2), tokenizer=tokenize)
    text = group(7)
    ids = tokenize(text)
    blocks = [ids[i : i + 16] for i in range(0, len(ids), 16)]
    by_id = {100 + i: blk for i, blk in enumerate(blocks)}
    stored = KvEvent("stored", tuple(by_id), None)
    done = b.apply_kv_events("n1", encode_events([stored], tokens=by_id.__getitem__))
    assert done["stored"] == 8
    assert b.depths(text) == {"n0": 0, "n1": 8}
    assert b.pick(group(7, user=3)).id == "n1"
    b.apply_kv_events("n1", encode_events([KvEvent("removed", (106, 107))], array=True))
    assert b.depths(text)["n1"] == 6
    b.apply_kv_events("n1", encode_events([KvEvent("cleared")]))
    assert b.depths(text)["n1"] == 0
    events = b.prefix_stats()["events"]
    assert (events["batches"], events["removed"], events["cleared"]) == (3, 2, 1)


def test_kv_events_that_are_not_a_batch_are_refused_by_name() -> None:
    b = lc.PrefixAware(nodes(1))
    with pytest.raises(TypeError, match=r"^data: must be bytes"):
        b.apply_kv_events("n0", bytearray(b"\x90"))
    with pytest.raises(ValueError, match=r"^data: "):
        b.apply_kv_events("n0", b"\x92\x00")
    with pytest.raises(KeyError, match=r"node_id: no node with id 'zz'"):
        b.apply_kv_events("zz", encode_events([KvEvent("cleared")]))
    assert b.prefix_stats()["events"]["refused"] == 1


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("node_blocks", 0, ValueError),
        ("node_blocks", 2**40, ValueError),
        ("prefill_weight", -1, ValueError),
        ("prefill_decay_s", 0, ValueError),
        ("choices", 0, ValueError),
        ("choices", 5000, ValueError),
        ("node_blocks", "many", TypeError),
    ],
)
def test_new_settings_out_of_range_are_refused_by_name(
    option: str, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=rf"^{option}: "):
        lc.PrefixAware(nodes(1), **{option: value})


def test_settings_name_every_option() -> None:
    b = lc.PrefixAware(node_blocks=100, prefill_weight=2, prefill_decay_s=0.5, choices=2, decay_s=3)
    s = b.settings
    assert (s["node_blocks"], s["prefill_weight"], s["prefill_decay_s"]) == (100, 2.0, 0.5)
    assert (s["choices"], s["decay_s"], s["tokenizer"]) == (2, 3.0, False)
    d = lc.PrefixAware().settings
    assert (d["node_blocks"], d["choices"], d["min_match"]) == (None, None, 0.1)


@pytest.mark.asyncio
async def test_a_cluster_forgets_a_node_its_health_checks_saw_go_down_and_come_back() -> None:
    cluster = lc.Cluster(
        service="chat", nodes=nodes(2), balancer="prefix_aware",
        # Checks that never run in the test: the statuses are set by hand.
        health=lc.HealthConfig(lc.CallableCheck(lambda node: True), interval_s=3600),
    )  # fmt: skip
    async with cluster:
        balancer: Any = cluster.balancer
        for g in range(8):
            balancer.pick(group(g))
        held = {n: s["blocks"] for n, s in balancer.stats().items()}
        assert all(held.values())
        cluster.registry.set_status("n0", lc.NodeStatus.HEALTHY)
        assert balancer.stats()["n0"]["blocks"] == held["n0"], "healthy all along: kept"
        cluster.registry.set_status("n0", lc.NodeStatus.UNHEALTHY)
        assert balancer.stats()["n0"]["blocks"] == held["n0"], "down: kept, it may come back warm"
        cluster.registry.set_status("n0", lc.NodeStatus.HEALTHY)
        assert balancer.stats()["n0"]["blocks"] == 0, "back after being down: restarted cold"
        assert balancer.stats()["n1"]["blocks"] == held["n1"]
