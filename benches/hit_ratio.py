"""Hit ratio of every policy and peer on the same request traces.

    python benches/hit_ratio.py [--requests N] [--quick]

Each trace is replayed as `get`, then `set` on a miss (the usual read-through
pattern). Traces are generated from a fixed seed, so every run and every
contender sees the same requests:

- zipf-1k / 10k / 100k: Zipf s=0.99 over 1M keys, at capacities 1k, 10k, 100k.
- loop: keys 0..999 cycled, capacity 500 (LRU and FIFO always miss).
- zipf+scans: Zipf s=0.99 over 100k keys, capacity 5k; every 20k requests a
  scan of 10k keys never seen before or again.
- recency: recency-heavy traffic (most requests revisit one of the last few
  hundred distinct keys, geometrically weighted towards the newest),
  capacity 500: the case where LRU is hard to beat.

Prints a Markdown table of hit ratios in percent.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from collections.abc import Callable, Iterator
from typing import Any

from langcluster import MemoryCache

Trace = Callable[[], Iterator[int]]


def zipf(keys: int, requests: int, s: float = 0.99, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    weights = list(itertools.accumulate(1.0 / (rank**s) for rank in range(1, keys + 1)))
    ranks = rng.choices(range(keys), cum_weights=weights, k=requests)
    # Popularity rank -> key id, shuffled so that hot keys are not small ints.
    ids = list(range(keys))
    rng.shuffle(ids)
    return [ids[r] for r in ranks]


def loop(keys: int, requests: int) -> list[int]:
    return [i % keys for i in range(requests)]


def zipf_with_scans(requests: int) -> list[int]:
    base = zipf(100_000, requests, seed=2)
    out: list[int] = []
    fresh = 10_000_000
    for i, key in enumerate(base):
        out.append(key)
        if i % 20_000 == 19_999:
            out.extend(range(fresh, fresh + 10_000))
            fresh += 10_000
    return out


def recency(requests: int, seed: int = 3) -> list[int]:
    rng = random.Random(seed)
    recent: list[int] = []
    out: list[int] = []
    next_key = 0
    for _ in range(requests):
        if recent and rng.random() < 0.8:
            back = min(int(rng.expovariate(1 / 60)), len(recent) - 1)
            key = recent[-1 - back]
        else:
            key = next_key
            next_key += 1
        out.append(key)
        if key in recent[-400:]:
            recent.remove(key)
        recent.append(key)
        if len(recent) > 2000:
            del recent[:1000]
    return out


class Contender:
    def __init__(self, name: str, make: Callable[[int], Any], hit: Callable[[Any, int], bool]):
        self.name, self.make, self.hit = name, make, hit


def _ours(policy: str) -> Contender:
    def make(capacity: int) -> Any:
        return MemoryCache(capacity, policy=policy)

    def hit(cache: Any, key: int) -> bool:
        if cache.get(key) is None:
            cache[key] = True
            return False
        return True

    return Contender(f"langcluster {policy}", make, hit)


def _peers() -> list[Contender]:
    peers: list[Contender] = []
    try:
        import theine

        def theine_hit(cache: Any, key: int) -> bool:
            _, found = cache.get(key)
            if not found:
                cache.set(key, True)
            return bool(found)

        peers.append(Contender("theine (W-TinyLFU)", theine.Cache, theine_hit))
    except ImportError:
        print("theine not installed: skipped", file=sys.stderr)
    try:
        import moka_py

        def moka_hit(cache: Any, key: int) -> bool:
            if cache.get(key) is None:
                cache.set(key, True)
                return False
            return True

        peers.append(Contender("moka-py (TinyLFU)", moka_py.Moka, moka_hit))
    except ImportError:
        print("moka-py not installed: skipped", file=sys.stderr)
    try:
        import cachebox

        def cachebox_hit(cache: Any, key: int) -> bool:
            if cache.get(key) is None:
                cache.insert(key, True)
                return False
            return True

        peers.append(Contender("cachebox LFU", cachebox.LFUCache, cachebox_hit))
    except ImportError:
        print("cachebox not installed: skipped", file=sys.stderr)
    return peers


def replay(contender: Contender, capacity: int, trace: list[int]) -> float:
    cache = contender.make(capacity)
    hit = contender.hit
    hits = sum(hit(cache, key) for key in trace)
    return 100.0 * hits / len(trace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="a tenth of the requests")
    opts = parser.parse_args()
    n = opts.requests // 10 if opts.quick else opts.requests

    zipf_trace = zipf(1_000_000, n)
    traces = [
        ("zipf-1k", 1_000, zipf_trace),
        ("zipf-10k", 10_000, zipf_trace),
        ("zipf-100k", 100_000, zipf_trace),
        ("loop", 500, loop(1000, n // 2)),
        ("zipf+scans", 5_000, zipf_with_scans(n // 2)),
        ("recency", 500, recency(n // 2)),
    ]
    contenders = [_ours(p) for p in ("tinylfu", "lru", "lfu", "fifo")] + _peers()

    print(f"requests per trace: {n:,} (loop, scans and recency: {n // 2:,})\n")
    print("| trace | capacity | " + " | ".join(c.name for c in contenders) + " |")
    print("|---|---:|" + "---:|" * len(contenders))
    for name, capacity, trace in traces:
        ratios = [replay(c, capacity, trace) for c in contenders]
        cells = " | ".join(f"{r:.1f}" for r in ratios)
        print(f"| {name} | {capacity:,} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
