"""Byte hit ratio of caches bounded by weight, on a trace whose values vary
in size as LLM answers do.

    python benches/weighted_hit_ratio.py [--requests N] [--runs R]

The trace: Zipf s=0.99 over 100,000 keys; each key's value has a fixed size
drawn from a log-normal distribution (median 2 KB, sigma 1.2, clipped to
100 B .. 100 KB, so a few answers are fifty times the median). It is replayed
as `get`, then `set` on a miss, with the value's size as its weight. The
capacities are totals of bytes.

Figures: the byte hit ratio (bytes served from the cache over bytes
requested: what a response cache saves) and the request hit ratio, in
percent, mean of R runs from different seeds. Contenders: langcluster with a
weigher (tinylfu and lru), moka-py with its weigher, and, for reference,
langcluster without a weigher at a count capacity of the same bytes over the
mean size (which then holds anything from a fraction to many times its
budget in bytes: its `bytes held` column says how much).
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
from collections.abc import Callable
from typing import Any

from langcluster import MemoryCache

KEYS = 100_000


def trace(requests: int, seed: int) -> tuple[list[int], list[int]]:
    """(the keys requested, the size of each key's value)."""
    rng = random.Random(seed)
    sizes = [
        min(100_000, max(100, int(math.exp(rng.gauss(math.log(2_000), 1.2))))) for _ in range(KEYS)
    ]
    weights = list(itertools.accumulate(1.0 / (rank**0.99) for rank in range(1, KEYS + 1)))
    ids = list(range(KEYS))
    rng.shuffle(ids)
    keys = [ids[r] for r in rng.choices(range(KEYS), cum_weights=weights, k=requests)]
    return keys, sizes


def weigh(key: object, value: int) -> int:
    return value


class Contender:
    def __init__(
        self, name: str, make: Callable[[int, float], Any], held: Callable[[Any], int]
    ) -> None:
        self.name, self.make, self.held = name, make, held


def contenders() -> list[Contender]:
    found = [
        Contender(
            "langcluster tinylfu + weigher",
            lambda cap, mean: MemoryCache(cap, policy="tinylfu", weigher=weigh),
            lambda c: c.stats()["weighted_size"],
        ),
        Contender(
            "langcluster lru + weigher",
            lambda cap, mean: MemoryCache(cap, policy="lru", weigher=weigh),
            lambda c: c.stats()["weighted_size"],
        ),
    ]
    try:
        import moka_py

        def moka(cap: int, mean: float) -> Any:
            return moka_py.Moka(cap, weigher=weigh)

        def moka_held(c: Any) -> int:
            c.run_pending_tasks()
            return int(c.weighted_size())

        found.append(Contender("moka-py + weigher", moka, moka_held))
    except ImportError:
        print("moka-py not installed: skipped", file=sys.stderr)
    found.append(
        Contender(
            "langcluster tinylfu, count only",
            lambda cap, mean: MemoryCache(max(1, int(cap / mean)), policy="tinylfu"),
            lambda c: sum(c.get(k) or 0 for k in c),
        )
    )
    return found


def replay(
    contender: Contender, capacity: int, keys: list[int], sizes: list[int]
) -> tuple[float, float, int]:
    mean = sum(sizes[k] for k in keys) / len(keys)
    cache = contender.make(capacity, mean)
    hit_bytes = total_bytes = hits = 0
    get, store = cache.get, cache.set
    for key in keys:
        size = sizes[key]
        total_bytes += size
        if get(key) is None:
            store(key, size)
        else:
            hits += 1
            hit_bytes += size
    return 100.0 * hit_bytes / total_bytes, 100.0 * hits / len(keys), contender.held(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    capacities = [5_000_000, 20_000_000, 80_000_000]
    everyone = contenders()
    results: dict[tuple[int, str], list[tuple[float, float, int]]] = {}
    for run in range(opts.runs):
        keys, sizes = trace(opts.requests, seed=7 + 10 * run)
        for capacity in capacities:
            for c in everyone:
                results.setdefault((capacity, c.name), []).append(replay(c, capacity, keys, sizes))
        print(f"run {run + 1}/{opts.runs} done", file=sys.stderr, flush=True)
    print(f"requests: {opts.requests:,}; mean of {opts.runs} runs\n")
    print("| capacity | cache | byte hit % | request hit % | bytes held at the end |")
    print("|---:|---|---:|---:|---:|")
    for capacity in capacities:
        for c in everyone:
            rows = results[(capacity, c.name)]
            byte_hit = sum(r[0] for r in rows) / len(rows)
            request_hit = sum(r[1] for r in rows) / len(rows)
            held = sum(r[2] for r in rows) // len(rows)
            print(
                f"| {capacity / 1e6:.0f} MB | {c.name} | {byte_hit:.1f} | {request_hit:.1f} | "
                f"{held / 1e6:.1f} MB |"
            )


if __name__ == "__main__":
    main()
