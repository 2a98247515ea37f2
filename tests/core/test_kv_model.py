"""Property test: any sequence of KV events, in either of vLLM's encodings,
leaves PrefixAware's record holding what a simple model of the servers'
caches says a prompt can match."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

import langcluster as lc
from langcluster.testing.fleet import KvEvent
from langcluster.testing.kv_publisher import block_tokens, encode_events

# Block b's parent in a small forest of prompts: 0..2 are roots.
PARENT = {0: None, 1: None, 2: None, 3: 0, 4: 3, 5: 4, 6: 0, 7: 6, 8: 1, 9: 8, 10: 9}
CHAINS = [[0, 3, 4, 5], [0, 6, 7], [1, 8, 9, 10], [2]]
NODES = ["a", "b"]


@st.composite
def operation(draw: st.DrawFn) -> tuple[str, str, tuple[int, ...]]:
    node = draw(st.sampled_from(NODES))
    kind = draw(st.sampled_from(["stored", "stored", "stored", "removed", "cleared"]))
    if kind == "stored":
        chain = draw(st.sampled_from(CHAINS))
        start = draw(st.integers(0, len(chain) - 1))
        end = draw(st.integers(start + 1, len(chain)))
        return node, kind, tuple(chain[start:end])
    if kind == "removed":
        return node, kind, tuple(draw(st.sets(st.sampled_from(list(PARENT)), max_size=3)))
    return node, kind, ()


def server_id(node: str, block: int) -> int:
    """The server's own hash of a block: different on every node."""
    return (1000 if node == "a" else 2000) + block


@given(ops=st.lists(operation(), max_size=25), array=st.booleans())
def test_the_record_matches_the_model_after_any_events(
    ops: list[tuple[str, str, tuple[int, ...]]], array: bool
) -> None:
    b = lc.PrefixAware([lc.Node(n, "h", 1) for n in NODES], token_block_size=16)
    # The model: per node, the blocks the router could place (their parent
    # was known when stored), and the blocks recorded now.
    mapped: dict[str, set[int]] = {n: set() for n in NODES}
    held: dict[str, set[int]] = {n: set() for n in NODES}
    for node, kind, blocks in ops:
        if kind == "stored":
            parent = PARENT[blocks[0]]
            if parent is None or parent in mapped[node]:
                mapped[node] |= set(blocks)
                held[node] |= set(blocks)
            event = KvEvent(
                "stored",
                tuple(server_id(node, x) for x in blocks),
                None if parent is None else server_id(node, parent),
            )
        elif kind == "removed":
            mapped[node] -= set(blocks)
            held[node] -= set(blocks)
            event = KvEvent("removed", tuple(server_id(node, x) for x in blocks))
        else:
            mapped[node].clear()
            held[node].clear()
            event = KvEvent("cleared")

        def tokens(server_hash: int) -> list[int]:
            return block_tokens(server_hash % 1000)

        b.apply_kv_events(node, encode_events([event], array=array, tokens=tokens))
    for chain in CHAINS:
        prompt = [t for x in chain for t in block_tokens(x)]
        depths = b.depths(prompt)
        for node in NODES:
            expected = 0
            for x in chain:
                if x not in held[node]:
                    break
                expected += 1
            assert depths[node] == expected, (node, chain, ops)
    total = sum(len(h) for h in held.values())
    assert b.prefix_stats()["blocks"] == total
