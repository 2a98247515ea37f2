"""Traces in the Mooncake format: read, written, generated (seeded),
replayed through the fleet simulation; and the KV events the simulated
servers' caches publish."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

import langcluster as lc
from langcluster.testing import SimulatedServer
from langcluster.testing.fleet import (
    BalancerRouter,
    KvEvent,
    Server,
    ServerModel,
    prompt_bytes,
    simulate,
)
from langcluster.testing.openai_api import tokenize
from langcluster.testing.traces import (
    SHAPES,
    TraceRecord,
    TraceReplay,
    live_reused_blocks,
    read_trace,
    synthesize,
    write_trace,
)

LINES = [
    '{"timestamp": 0, "input_length": 1000, "output_length": 10, "hash_ids": [1, 2]}',
    "",
    '{"timestamp": 1500, "input_length": 1500, "output_length": 5, "hash_ids": [1, 2, 3]}',
    '{"timestamp": 700, "input_length": 600, "output_length": 0, "hash_ids": [9, 10]}',
]


def test_a_trace_is_read_in_arrival_order_and_written_back(tmp_path: Path) -> None:
    records = read_trace(LINES)
    assert [r.timestamp_ms for r in records] == [0, 700, 1500]
    assert records[2] == TraceRecord(1500, 1500, 5, (1, 2, 3))
    path = tmp_path / "t.jsonl"
    write_trace(records, path)
    assert read_trace(path) == records
    assert read_trace(path, limit=2) == records[:2]
    assert json.loads(path.read_text().splitlines()[0])["hash_ids"] == [1, 2]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("not json", r"^trace:1: not JSON"),
        ("[1, 2]", r"^trace:1: must be a JSON object"),
        ('{"timestamp": 0, "input_length": 5, "output_length": 1}', r"^trace:1: hash_ids: "),
        ('{"timestamp": -1, "input_length": 5, "output_length": 1, "hash_ids": []}',
         r"^trace:1: timestamp: must be from 0"),
        ('{"timestamp": 0, "input_length": 0, "output_length": 1, "hash_ids": []}',
         r"^trace:1: input_length: "),
        ('{"timestamp": 0, "input_length": 5, "output_length": 1.5, "hash_ids": []}',
         r"^trace:1: output_length: must be a whole number"),
        ('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1, "x"]}',
         r"^trace:1: hash_ids\[1\]: "),
        ('{"timestamp": true, "input_length": 5, "output_length": 1, "hash_ids": []}',
         r"^trace:1: timestamp: must be a number"),
    ],
)  # fmt: skip
def test_a_line_that_is_not_a_record_is_named_with_its_field(line: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        read_trace([line])


def test_generated_traces_are_seeded_and_prefix_chained() -> None:
    for shape in SHAPES:
        one = synthesize(shape, sessions=40, rate=2.0, seed=3)
        assert one == synthesize(shape, sessions=40, rate=2.0, seed=3)
        assert one != synthesize(shape, sessions=40, rate=2.0, seed=4)
        assert [r.timestamp_ms for r in one] == sorted(r.timestamp_ms for r in one)
        for r in one:
            assert len(r.hash_ids) == -(-r.input_length // 512)
        # An id means one prefix: the same id is always preceded by the same ids.
        before: dict[int, tuple[int, ...]] = {}
        for r in one:
            for i, h in enumerate(r.hash_ids):
                assert before.setdefault(h, r.hash_ids[:i]) == r.hash_ids[:i]
    with pytest.raises(ValueError, match=r"^shape: "):
        synthesize("poetry", sessions=1, rate=1.0)
    with pytest.raises(ValueError, match=r"^sessions: "):
        synthesize("agent", sessions=0, rate=1.0)
    with pytest.raises(ValueError, match=r"^rate: "):
        synthesize("agent", sessions=1, rate=float("nan"))


def test_conversations_grow_turn_by_turn_and_templates_are_shared() -> None:
    chats = synthesize("conversation", sessions=30, rate=1.0, seed=1)
    reused = [r for r in chats if r.hash_ids[0] in {x.hash_ids[0] for x in chats if x is not r}]
    assert len(reused) > len(chats) / 2, "system prompts are shared"
    hot = synthesize("hot-template", sessions=400, rate=10.0, seed=1)
    firsts = [r.hash_ids[0] for r in hot]
    top_two = sorted({f: firsts.count(f) for f in firsts}.values())[-2:]
    assert 0.4 < sum(top_two) / len(hot) < 0.6, "two hot templates take half the traffic"


def test_live_reused_blocks_count_reuse_over_time() -> None:
    records = read_trace(LINES)
    # Blocks 1 and 2 are seen twice, from t=0 to t=1500: both live all along.
    assert live_reused_blocks(records) == pytest.approx(2.0)
    assert live_reused_blocks([]) == 0.0


def test_a_trace_replays_through_the_fleet() -> None:
    records = synthesize("agent", sessions=6, rate=2.0, seed=2)
    replay = TraceReplay(records, speedup=4.0)
    arrivals = list(replay.arrivals())
    assert len(arrivals) == len(records)
    assert arrivals[-1].arrival_s == pytest.approx(
        (records[-1].timestamp_ms - records[0].timestamp_ms) / 4000
    )
    router = BalancerRouter(lc.PrefixAware(seed=1), 4, lambda r: prompt_bytes(r.blocks))
    model = ServerModel(block_tokens=512, cache_blocks=200)
    result = simulate(TraceReplay(records), router, servers=4, model=model)
    assert len(result.measured()) == len(records)
    assert result.hit_rate > 0.3, "agent steps reuse their task's prefix"
    with pytest.raises(ValueError, match=r"^speedup: "):
        TraceReplay(records, speedup=0)


def test_a_simulated_cache_reports_what_it_stored_and_evicted() -> None:
    server = Server(0, ServerModel(cache_blocks=4))
    server.events = []
    server.admit((1, 2, 3))
    server.admit((1, 2, 7, 8))
    assert server.events == [
        KvEvent("stored", (1, 2, 3), None),
        KvEvent("stored", (7, 8), 2),
        KvEvent("removed", (3,)),
    ]
    server.clear()
    assert server.events[-1] == KvEvent("cleared")


@pytest.mark.asyncio
async def test_a_simulated_server_answers_what_routers_ask_of_it() -> None:
    server = await SimulatedServer("s0", cache_blocks=300).start()
    base = f"http://127.0.0.1:{server.port}"
    messages = [{"role": "user", "content": "hello there"}]
    try:
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(base + "/metrics")).text
            assert 'vllm:cache_config_info{block_size="16",num_gpu_blocks="300"} 1.0' in metrics
            info = (await client.get(base + "/get_server_info")).json()
            assert info["max_total_num_tokens"] == 300 * 16
            assert (await client.get(base + "/model_info")).json()["model_path"] == "simulated"
            body = {"model": "simulated", "messages": messages}
            tokens = (await client.post(base + "/tokenize", json=body)).json()
            rendered = (await client.post(base + "/v1/chat/completions/render", json=body)).json()
            assert tokens["tokens"] == rendered["token_ids"] == tokenize("<|user|>\nhello there\n")
            assert tokens["count"] == len(tokens["tokens"])
            bad = await client.post(base + "/tokenize", content=b"[")
            assert bad.status_code == 400
    finally:
        await server.kill()
