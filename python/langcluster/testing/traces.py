"""Request traces in the Mooncake format, to replay real or generated
traffic through the fleet simulation (``langcluster.testing.fleet``).

One request a line, as JSON::

    {"timestamp": 1520, "input_length": 6021, "output_length": 212, "hash_ids": [7, 8, 41, 42]}

``timestamp`` is the arrival in milliseconds, ``hash_ids`` one id per
``block_tokens`` (512) tokens of the prompt, the last block possibly
partial; two requests share an id only where they share the whole prompt
up to and including that block (the ids are prefix-chained, as a server's
block hashes are). Public production traces (Mooncake's conversation,
tool-agent and synthetic traces) come in this format; ``read_trace`` reads
them and anything else written so.

``synthesize`` writes seeded traces of three shapes that prefix-aware
routers meet in production:

- ``conversation``: chats over a few shared system prompts (Zipf
  popularity); each turn's prompt is the last one, its answer and a new
  message; users think between turns.
- ``agent``: tool-using agents: a long tool-definition prompt per agent
  kind, then many quick steps each appending a tool call and its result.
- ``hot-template``: single-shot prompts, half of them on two hot templates,
  the rest over a long tail of cold templates, each with its own suffix.

``TraceReplay(records)`` is a workload for ``simulate``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from langcluster.testing.fleet import Request

__all__ = [
    "SHAPES",
    "TraceRecord",
    "TraceReplay",
    "live_reused_blocks",
    "read_trace",
    "synthesize",
    "write_trace",
]

BLOCK_TOKENS = 512
"""Tokens per hash id in the Mooncake format."""

MAX_IDS = 1 << 16
"""The most hash ids one request may carry (32 M tokens at 512 a block)."""


@dataclass(frozen=True)
class TraceRecord:
    """One request of a trace."""

    timestamp_ms: int
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "timestamp": self.timestamp_ms,
                "input_length": self.input_length,
                "output_length": self.output_length,
                "hash_ids": list(self.hash_ids),
            },
            separators=(",", ":"),
        )


def _field(obj: dict[str, object], name: str, where: str, low: int) -> int:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {name}: must be a number, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{where}: {name}: must be a whole number, got {value!r}")
        value = int(value)
    if not low <= value < 2**63:
        raise ValueError(f"{where}: {name}: must be from {low} to 2**63-1, got {value}")
    return value


def _record(line: str, where: str) -> TraceRecord:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not JSON ({error.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: must be a JSON object, got {type(obj).__name__}")
    ids = obj.get("hash_ids")
    if not isinstance(ids, list) or len(ids) > MAX_IDS:
        raise ValueError(f"{where}: hash_ids: must be a list of at most {MAX_IDS} ints")
    for i, h in enumerate(ids):
        if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < 2**63:
            raise ValueError(f"{where}: hash_ids[{i}]: must be an int from 0 to 2**63-1")
    return TraceRecord(
        timestamp_ms=_field(obj, "timestamp", where, 0),
        input_length=_field(obj, "input_length", where, 1),
        output_length=_field(obj, "output_length", where, 0),
        hash_ids=tuple(ids),
    )


def read_trace(
    source: str | Path | Iterable[str], *, limit: int | None = None
) -> list[TraceRecord]:
    """The records of a JSON-lines trace (a path, or lines), in arrival
    order (a trace out of order is sorted by timestamp, stably). Blank lines
    are skipped; anything else that is not a record raises ValueError naming
    the line and the field. ``limit`` stops after that many records."""
    if isinstance(source, (str, Path)):
        name = str(source)
        with open(source, encoding="utf-8") as f:
            lines: Iterable[str] = list(f)
    else:
        name, lines = "trace", source
    out: list[TraceRecord] = []
    for number, line in enumerate(lines, 1):
        if limit is not None and len(out) >= limit:
            break
        if line.strip():
            out.append(_record(line, f"{name}:{number}"))
    out.sort(key=lambda r: r.timestamp_ms)
    return out


def write_trace(records: Iterable[TraceRecord], path: str | Path) -> None:
    """Writes ``records`` as a JSON-lines trace."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(r.to_json() + "\n")


def live_reused_blocks(records: Sequence[TraceRecord]) -> float:
    """The blocks a cache must hold to serve every reuse, averaged over the
    trace's span: each id seen by two requests or more is live from its
    first request to its last. The working set that a cache pressure is
    measured against."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    seen: dict[int, int] = {}
    for r in records:
        for h in r.hash_ids:
            first.setdefault(h, r.timestamp_ms)
            last[h] = r.timestamp_ms
            seen[h] = seen.get(h, 0) + 1
    if not records:
        return 0.0
    span = max(1, records[-1].timestamp_ms - records[0].timestamp_ms)
    lived = sum(last[h] - first[h] for h, n in seen.items() if n > 1)
    return lived / span


@dataclass
class TraceReplay:
    """A trace as a workload: each record arrives at its timestamp (divided
    by ``speedup``), open loop, as a prompt of one block per hash id.
    ``block_tokens`` is the tokens per id (512 in the Mooncake format): the
    servers' ``ServerModel.block_tokens`` should be the same."""

    records: Sequence[TraceRecord]
    speedup: float = 1.0
    block_tokens: int = BLOCK_TOKENS

    def __post_init__(self) -> None:
        if not (self.speedup > 0 and math.isfinite(self.speedup)):
            raise ValueError(f"speedup: must be a number above 0, got {self.speedup!r}")

    @property
    def distinct_prefix_tokens(self) -> int:
        """The live reused content (``live_reused_blocks``), in tokens."""
        return int(live_reused_blocks(self.records) * self.block_tokens)

    def arrivals(self) -> Iterator[Request]:
        start = self.records[0].timestamp_ms if self.records else 0
        for r in self.records:
            if r.hash_ids:
                at = (r.timestamp_ms - start) / 1000.0 / self.speedup
                yield Request(at, r.hash_ids, max(1, r.output_length))

    def follow_up(self, done: Request, now_s: float) -> Request | None:
        return None


# ------------------------------------------------------------------ synthesis


class _Ids:
    """Hash ids of prompts built token by token: full blocks keep their id,
    the partial last block gets a new one each time it is extended."""

    def __init__(self) -> None:
        self.next = 0

    def fresh(self, n: int) -> list[int]:
        out = list(range(self.next, self.next + n))
        self.next += n
        return out

    def extend(self, ids: list[int], tokens: int, more: int) -> tuple[list[int], int]:
        """The ids of a prompt of ``tokens`` tokens (``ids``) once ``more``
        tokens are appended."""
        full = tokens // BLOCK_TOKENS
        total = tokens + more
        return ids[:full] + self.fresh(math.ceil(total / BLOCK_TOKENS) - full), total


def _lognormal(rng: random.Random, mean: float, sigma: float, low: int, high: int) -> int:
    mu = math.log(mean) - sigma * sigma / 2
    return int(min(high, max(low, rng.lognormvariate(mu, sigma))))


def _zipf(rng: random.Random, n: int, s: float) -> int:
    weights = [1.0 / (k + 1) ** s for k in range(n)]
    return rng.choices(range(n), weights)[0]


def _prefixes(
    rng: random.Random, ids: _Ids, n: int, low: int, high: int
) -> list[tuple[list[int], int]]:
    """``n`` shared prefixes (system prompts, tool definitions, templates)
    of ``low`` to ``high`` tokens, cut to whole blocks: their ids and tokens."""
    out = []
    for _ in range(n):
        tokens = rng.randrange(low, high + 1)
        out.append((ids.fresh(tokens // BLOCK_TOKENS), tokens - tokens % BLOCK_TOKENS))
    return out


def _conversation(rng: random.Random, ids: _Ids, rate: float, sessions: int) -> list[TraceRecord]:
    systems = _prefixes(rng, ids, 16, 1024, 4096)
    out = []
    now = 0.0
    for _ in range(sessions):
        now += rng.expovariate(rate)
        prefix, tokens = systems[_zipf(rng, len(systems), 1.1)]
        prompt, tokens = ids.extend(list(prefix), tokens, _lognormal(rng, 900, 1.0, 50, 16000))
        at = now
        for _ in range(min(12, 1 + int(rng.expovariate(1 / 3.0)))):
            answer = _lognormal(rng, 350, 0.7, 16, 2000)
            out.append(TraceRecord(int(at * 1000), tokens, answer, tuple(prompt)))
            at += answer * 0.02 + rng.expovariate(1 / 25.0)
            user = _lognormal(rng, 300, 1.0, 10, 8000)
            prompt, tokens = ids.extend(prompt, tokens, answer + user)
    return out


def _agent(rng: random.Random, ids: _Ids, rate: float, sessions: int) -> list[TraceRecord]:
    kinds = _prefixes(rng, ids, 6, 4096, 8192)
    out = []
    now = 0.0
    for _ in range(sessions):
        now += rng.expovariate(rate)
        prefix, tokens = kinds[_zipf(rng, len(kinds), 0.8)]
        prompt, tokens = ids.extend(list(prefix), tokens, _lognormal(rng, 400, 0.6, 50, 4000))
        at = now
        for _ in range(rng.randrange(4, 21)):
            call = _lognormal(rng, 90, 0.5, 10, 600)
            out.append(TraceRecord(int(at * 1000), tokens, call, tuple(prompt)))
            at += call * 0.02 + rng.expovariate(1 / 1.5)
            result = _lognormal(rng, 700, 1.0, 20, 12000)
            prompt, tokens = ids.extend(prompt, tokens, call + result)
    return out


def _hot_template(rng: random.Random, ids: _Ids, rate: float, sessions: int) -> list[TraceRecord]:
    templates = _prefixes(rng, ids, 2, 2048, 4096) + _prefixes(rng, ids, 200, 512, 3072)
    out = []
    now = 0.0
    for _ in range(sessions):
        now += rng.expovariate(rate)
        k = rng.randrange(2) if rng.random() < 0.5 else 2 + _zipf(rng, 200, 0.9)
        prefix, tokens = templates[k]
        prompt, tokens = ids.extend(list(prefix), tokens, _lognormal(rng, 300, 0.8, 20, 4000))
        output = _lognormal(rng, 200, 0.6, 8, 1500)
        out.append(TraceRecord(int(now * 1000), tokens, output, tuple(prompt)))
    return out


SHAPES = {"conversation": _conversation, "agent": _agent, "hot-template": _hot_template}
"""The shapes ``synthesize`` writes."""


def synthesize(shape: str, *, sessions: int, rate: float, seed: int = 0) -> list[TraceRecord]:
    """A seeded trace of ``shape`` (one of ``SHAPES``): ``sessions``
    conversations, agent tasks or single prompts starting at ``rate`` per
    second (Poisson), in arrival order."""
    make = SHAPES.get(shape)
    if make is None:
        raise ValueError(f"shape: must be one of {sorted(SHAPES)}, got {shape!r}")
    if not isinstance(sessions, int) or sessions < 1:
        raise ValueError(f"sessions: must be an int of at least 1, got {sessions!r}")
    if not (isinstance(rate, (int, float)) and rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate: must be a number above 0, got {rate!r}")
    records = make(random.Random(seed), _Ids(), float(rate), sessions)
    records.sort(key=lambda r: r.timestamp_ms)
    return records
