"""The fuzz targets of what comes over the wire: request bodies routed by
the httpx transports, the journals of picks routers share, and the KV
event batches servers publish. Run through ``targets.py`` (see there)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st

import langcluster as lc
from langcluster.testing.fleet import KvEvent
from langcluster.testing.kv_publisher import encode_events
from tests.fuzz.inputs import EXTREME, GOOD_NODES, NUMBERS, TEXT, call, keywords

TRANSPORT_OPTIONS = keywords(lc.AsyncClusterTransport, skip={"cluster"})
OPENAI_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"]
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["messages", "prompt", "input", "role", "content", "type", "text"]),
                TEXT,
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=24,
)


INNER = httpx.AsyncHTTPTransport()


def _json(value: Any) -> bytes:
    try:
        return json.dumps(value, allow_nan=True).encode()
    except (TypeError, ValueError, OverflowError):
        return b"{"


@given(
    options=st.dictionaries(st.sampled_from(TRANSPORT_OPTIONS), EXTREME, max_size=3),
    path=st.sampled_from(OPENAI_PATHS),
    body=st.one_of(st.binary(max_size=64), JSONISH.map(_json)),
    session=st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126))),
)
def transport(options: dict[str, Any], path: str, body: bytes, session: str | None) -> None:
    nodes = [lc.Node(f"n{i}", "127.0.0.1", 8000 + i) for i in range(3)]
    for kind in (lc.PrefixAware, lc.ConsistentHash, lc.RoundRobin):
        balancer = kind(nodes)
        cluster = lc.Cluster(service="fuzz", balancer=balancer)
        # httpx's own transport makes an SSL context, dear enough to share.
        given = {"transport": INNER, **options}
        made = call(lc.AsyncClusterTransport, TRANSPORT_OPTIONS, cluster, **given)
        for routed in (made, lc.AsyncClusterTransport(cluster, transport=INNER)):
            if routed is None:
                continue
            headers = {"x-session-id": session} if session is not None else {}
            request = httpx.Request("POST", f"http://chat{path}", headers=headers, content=body)
            key = routed._router.routing_key(request, body)  # never refuses a body
            assert balancer.pick(key) in nodes


TEXT_PART = st.builds(
    lambda t, extra: {"type": "text", "text": t, **extra},
    TEXT,
    st.dictionaries(st.sampled_from(["cache_control", "x"]), JSONISH, max_size=1),
)
OTHER_PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["image_url", "text", 5]), "image_url": JSONISH}
)
PART = st.one_of(TEXT, TEXT_PART, OTHER_PART)
MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.one_of(st.sampled_from(["system", "user", "assistant"]), TEXT, JSONISH),
            "content": st.one_of(TEXT, st.none(), st.lists(PART, max_size=3), PART, JSONISH),
            "name": TEXT,
        },
    ),
    TEXT,
    JSONISH,
)
PLAIN = st.recursive(
    st.one_of(TEXT, st.integers(), NUMBERS), lambda inner: st.lists(inner, max_size=4)
)


@given(
    messages=st.lists(MESSAGE, max_size=5),
    plain=PLAIN,
    field=st.sampled_from(["messages", "prompt", "input"]),
    ascii_only=st.booleans(),
    extra=st.dictionaries(TEXT, JSONISH, max_size=2),
)
def prompts(
    messages: list[Any], plain: Any, field: str, ascii_only: bool, extra: dict[str, Any]
) -> None:
    """The prompt read in Rust is the prompt read in Python, whenever the
    Rust reader reads one (the rest it leaves to Python)."""
    from langcluster._core import read_prompt_fast
    from langcluster.integrations.openai_body import read_slowly

    value = messages if field == "messages" else plain
    try:
        body = json.dumps({**extra, field: value}, ensure_ascii=ascii_only).encode(
            "utf-8", "surrogatepass"
        )
    except (TypeError, ValueError, OverflowError):
        return
    fast = read_prompt_fast(field, body)
    slow = read_slowly(field, body)
    if fast is not None:
        assert slow is not None, body
        assert (fast[0], fast[0][: fast[1]]) == (slow.whole, slow.head), body


def _journal() -> bytes:
    """A journal of a few picks, for the mutations of ``journals``."""
    router = lc.PrefixAware(GOOD_NODES, seed=1)
    router.keep_journal(1 << 16)
    for group in range(3):
        router.pick(f"group {group}. " * 20)
    return router.take_journal()


JOURNAL = _journal()


@given(
    flips=st.lists(st.tuples(st.integers(0, len(JOURNAL) - 1), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, len(JOURNAL)),
    tail=st.binary(max_size=64),
    data=EXTREME,
    max_bytes=st.one_of(NUMBERS, EXTREME),
)
def journals(
    flips: list[tuple[int, int]], cut: int, tail: bytes, data: Any, max_bytes: Any
) -> None:
    router = lc.PrefixAware(GOOD_NODES, seed=2)
    mutated = bytearray(JOURNAL)
    for at, byte in flips:
        mutated[at] = byte
    merged = call(router.merge_journal, ["data"], bytes(mutated[:cut]) + tail)
    assert merged is None or 0 <= merged <= 3 + len(tail)
    call(router.merge_journal, ["data"], data)
    call(router.keep_journal, ["max_bytes"], max_bytes)
    router.pick("group 0. " * 20)
    assert isinstance(router.take_journal(), bytes)
    router.prefix_stats()


def _batches() -> list[bytes]:
    """Well-formed batches of both encodings, for the mutations of ``kv_batches``."""
    events = [
        KvEvent("stored", (1, 2, 3), None),
        KvEvent("stored", (4,), 3),
        KvEvent("removed", (2, 9)),
        KvEvent("cleared"),
    ]
    return [encode_events(events, ts=1.0, array=array) for array in (False, True)]


BATCHES = _batches()
MSGPACK_BYTES = st.sampled_from([0xC0, 0x90, 0x80, 0xDC, 0xDD, 0xDE, 0xDF, 0xC4, 0xD9, 0xCF, 0xD3])


@given(
    which=st.sampled_from(BATCHES),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.one_of(MSGPACK_BYTES, st.integers(0, 255))),
                   max_size=6),
    cut=st.integers(0, 10_000),
    tail=st.binary(max_size=32),
    node_id=st.one_of(st.sampled_from(["n0", "n1", "zz"]), EXTREME),
    data=EXTREME,
)  # fmt: skip
def kv_batches(
    which: bytes, flips: list[tuple[int, int]], cut: int, tail: bytes, node_id: Any, data: Any
) -> None:
    router = lc.PrefixAware(GOOD_NODES, seed=3)
    before = router.prefix_stats()["blocks"]
    mutated = bytearray(which)
    for at, byte in flips:
        mutated[at % len(mutated)] = byte
    payload = bytes(mutated[: cut % (len(mutated) + 1)]) + tail
    done = call(router.apply_kv_events, ["node_id", "data"], "n0", payload)
    if done is None:
        assert router.prefix_stats()["blocks"] == before, "a refused batch changed the record"
    call(router.apply_kv_events, ["node_id", "data"], node_id, data)
    router.pick("after " * 40)
    stats = router.prefix_stats()
    assert stats["blocks"] <= stats["max_blocks"]
