"""Memory that follows use: what a MemoryCache costs empty and as it fills.

    python benches/cache_memory.py [--capacity N] [--fill N]

Builds `MemoryCache(capacity)` with the default policy, then fills it with
`fill` integer keys (values None, so the figures are the cache's own), and
prints, empty and at each tenth of the fill: seconds taken, the process's
resident memory growth and `memory_usage()`. A capacity is a bound users
rarely expect to reach; what it costs before it is reached is the point.
"""

from __future__ import annotations

import argparse
import time

import langcluster as lc


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=10**8, help="the bound (default 10**8)")
    parser.add_argument("--fill", type=int, default=10**6, help="entries to add (default 10**6)")
    args = parser.parse_args()
    base = rss_mb()
    started = time.perf_counter()
    cache = lc.MemoryCache(args.capacity)
    print(f"capacity {args.capacity:,}")
    print("| entries | seconds | RSS growth MB | memory_usage() MB |")
    print("|---|---|---|---|")

    def row(entries: int) -> None:
        took = time.perf_counter() - started
        usage = cache.memory_usage() / 1e6
        print(f"| {entries:,} | {took:.2f} | {rss_mb() - base:.1f} | {usage:.2f} |", flush=True)

    row(0)
    step = max(1, args.fill // 10)
    for start in range(0, args.fill, step):
        stop = min(args.fill, start + step)
        cache.set_many(dict.fromkeys(range(start, stop)))
        row(len(cache))


if __name__ == "__main__":
    main()
