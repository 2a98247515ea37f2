"""Hit ratio of every policy and peer on the same request traces.

    python benches/hit_ratio.py [--requests N] [--runs R] [--quick]

Each trace is replayed as `get`, then `set` on a miss (the usual read-through
pattern). Traces are generated from a fixed seed, so every run and every
contender sees the same requests:

- zipf-1k / 10k / 100k: Zipf s=0.99 over 1M keys, at capacities 1k, 10k, 100k.
- loop: keys 0..999 cycled, capacity 500 (LRU and FIFO always miss).
- zipf+scans: Zipf s=0.99 over 100k keys, capacity 5k; every 20k requests a
  scan of 10k keys never seen before or again.
- zipf-shift: Zipf s=0.99 over 100k keys whose popularity order is redrawn
  over fresh keys every n/10 requests, capacity 2k: the case where LFU
  without aging collapses (yesterday's favourites keep their counts).
- recency: recency-heavy traffic (most requests revisit one of the last few
  hundred distinct keys, geometrically weighted towards the newest),
  capacity 500: the case where LRU is hard to beat.

Each trace is generated R times from different seeds (the caches' own hash
seeds differ per instance or per process too), and the table gives the mean
hit ratio in percent, then the spread between runs, and checks the targets:
tinylfu within 1 point of the better of theine and moka-py on every trace,
and within 3 points of LRU on the recency trace.
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


def zipf_with_scans(requests: int, seed: int = 2) -> list[int]:
    base = zipf(100_000, requests, seed=seed)
    out: list[int] = []
    fresh = 10_000_000
    for i, key in enumerate(base):
        out.append(key)
        if i % 20_000 == 19_999:
            out.extend(range(fresh, fresh + 10_000))
            fresh += 10_000
    return out


def zipf_shifting(requests: int, period: int, seed: int = 5) -> list[int]:
    rng = random.Random(seed)
    keys = 100_000
    weights = list(itertools.accumulate(1.0 / (rank**0.99) for rank in range(1, keys + 1)))
    out: list[int] = []
    for start in range(0, requests, period):
        ids = list(range(start * 10, start * 10 + keys))
        rng.shuffle(ids)
        out += [ids[r] for r in rng.choices(range(keys), cum_weights=weights, k=period)]
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


def traces(n: int, run: int) -> list[tuple[str, int, list[int]]]:
    zipf_trace = zipf(1_000_000, n, seed=1 + 10 * run)
    return [
        ("zipf-1k", 1_000, zipf_trace),
        ("zipf-10k", 10_000, zipf_trace),
        ("zipf-100k", 100_000, zipf_trace),
        ("loop", 500, loop(1000, n // 2)),
        ("zipf+scans", 5_000, zipf_with_scans(n // 2, seed=2 + 10 * run)),
        ("zipf-shift", 2_000, zipf_shifting(n // 2, n // 10, seed=5 + 10 * run)),
        ("recency", 500, recency(n // 2, seed=3 + 10 * run)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tenth of the requests, one run")
    opts = parser.parse_args()
    n = opts.requests // 10 if opts.quick else opts.requests
    runs = 1 if opts.quick else opts.runs
    contenders = [_ours(p) for p in ("tinylfu", "lru", "lfu", "fifo")] + _peers()

    results: dict[tuple[str, str], list[float]] = {}
    names: list[tuple[str, int]] = []
    for run in range(runs):
        for name, capacity, trace in traces(n, run):
            if run == 0:
                names.append((name, capacity))
            for c in contenders:
                results.setdefault((name, c.name), []).append(replay(c, capacity, trace))
        print(f"run {run + 1}/{runs} done", file=sys.stderr, flush=True)

    def mean(name: str, contender: str) -> float:
        values = results[(name, contender)]
        return sum(values) / len(values)

    print(f"requests per trace: {n:,} (the last four: {n // 2:,}); mean of {runs} runs\n")
    print("| trace | capacity | " + " | ".join(c.name for c in contenders) + " |")
    print("|---|---:|" + "---:|" * len(contenders))
    for name, capacity in names:
        cells = " | ".join(f"{mean(name, c.name):.1f}" for c in contenders)
        print(f"| {name} | {capacity:,} | {cells} |")
    spread = max(max(v) - min(v) for v in results.values())
    print(f"\nlargest spread between runs of one cell: {spread:.1f} points\n")

    ours = "langcluster tinylfu"
    peers = [c.name for c in contenders if c.name.startswith(("theine", "moka"))]
    for name, _ in names:
        if peers:
            best = max(mean(name, p) for p in peers)
            gap = mean(name, ours) - best
            verdict = "met" if gap >= -1.0 else "MISSED"
            print(f"- {name}: tinylfu {gap:+.1f} vs the better of theine/moka-py ({verdict})")
    gap = mean("recency", ours) - mean("recency", "langcluster lru")
    print(f"- recency: tinylfu {gap:+.1f} vs LRU ({'met' if gap >= -3.0 else 'MISSED'})")
    gap = mean("zipf-shift", "langcluster lfu") - mean("zipf-shift", "langcluster lru")
    print(f"- zipf-shift: lfu {gap:+.1f} vs LRU (aging keeps LFU from collapsing)")


if __name__ == "__main__":
    main()
