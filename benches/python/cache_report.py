"""ns per cache operation for langcluster and its peers in one run, with
ratios to the floor (a plain dict, a bare function call), plus the memory
overhead per entry.

    python benches/python/cache_report.py [--number N] [--repeat R]

Every cache holds 10,000 str keys and is read at a key it holds (get hit),
at one it does not (get miss), and written at a key it holds (set replace).
Each figure is the best of R repeats of N calls; ratios are within the run.
"""

from __future__ import annotations

import argparse
import functools
import gc
import platform
import resource
import sys
import timeit
from collections.abc import Callable
from typing import Any

import langcluster as lc
from langcluster.cli.bench import _PureLru

KEYS = [f"user:{i}:profile" for i in range(10_000)]
HIT = KEYS[1234]
MISS = "user:absent:profile"
CAPACITY = 20_000


# The pure-Python cache a user would write: OrderedDict under a lock (the
# same one `python -m langcluster bench` measures).
PureLru = _PureLru


def caches() -> dict[str, tuple[Any, Callable[..., Any], Callable[..., Any]]]:
    """name -> (cache, get, set) with the cache filled."""
    found: dict[str, tuple[Any, Callable[..., Any], Callable[..., Any]]] = {}
    d: dict[str, Any] = {}
    found["floor: dict"] = (d, d.get, d.__setitem__)
    for policy in ("tinylfu", "lru"):
        c = lc.MemoryCache(CAPACITY, policy=policy)
        found[f"langcluster {policy}"] = (c, c.get, c.set)
    p = PureLru(CAPACITY)
    found["pure Python (OrderedDict + lock)"] = (p, p.get, p.set)
    try:
        import cachebox

        cb = cachebox.LRUCache(CAPACITY)
        found["cachebox LRU"] = (cb, cb.get, cb.insert)
    except ImportError:
        pass
    try:
        import cachetools

        ct = cachetools.LRUCache(CAPACITY)
        found["cachetools LRU"] = (ct, ct.get, ct.__setitem__)
    except ImportError:
        pass
    try:
        import moka_py

        m = moka_py.Moka(CAPACITY)
        found["moka-py"] = (m, m.get, m.set)
    except ImportError:
        pass
    try:
        import theine

        t = theine.Cache(CAPACITY)
        found["theine"] = (t, t.get, t.set)
    except ImportError:
        pass
    for _, _, set_ in found.values():
        for k in KEYS:
            set_(k, 1)
    return found


def ns(stmt: str, env: dict[str, Any], number: int, repeat: int) -> float:
    return min(timeit.repeat(stmt, globals=env, number=number, repeat=repeat)) / number * 1e9


def decorated(number: int, repeat: int) -> list[tuple[str, float]]:
    def bare(prompt: str, temperature: float) -> str:
        return prompt

    rows = [("floor: bare call", bare)]
    rows.append(("langcluster cached", lc.cached(lc.MemoryCache(CAPACITY))(bare)))
    rows.append(("functools.lru_cache", functools.lru_cache(maxsize=CAPACITY)(bare)))
    try:
        import cachebox

        rows.append(("cachebox cached", cachebox.cached(cachebox.LRUCache(CAPACITY))(bare)))
    except ImportError:
        pass
    try:
        import cachetools

        rows.append(("cachetools cached", cachetools.cached(cachetools.LRUCache(CAPACITY))(bare)))
    except ImportError:
        pass
    try:
        import moka_py

        rows.append(("moka-py cached", moka_py.cached(maxsize=CAPACITY)(bare)))
    except (ImportError, AttributeError):
        pass
    try:
        from theine import Cache, Memoize

        rows.append(("theine Memoize", Memoize(Cache(CAPACITY), timeout=None)(bare)))
    except (ImportError, TypeError):
        pass
    out = []
    for name, fn in rows:
        fn(HIT, 0.7)
        out.append((name, ns("f(k, 0.7)", {"f": fn, "k": HIT}, number, repeat)))
    return out


def memory_per_entry(entries: int = 200_000) -> tuple[float, float]:
    """(bytes the cache's own structures hold per entry, RSS growth per entry
    beyond the key and value objects)."""
    keys = [f"k{i}" for i in range(entries)]
    value = object()
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cache = lc.MemoryCache(entries, policy="tinylfu")
    for k in keys:
        cache[k] = value
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return cache.memory_usage() / entries, (after - before) * 1024 / entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=7)
    opts = parser.parse_args()
    n, r = opts.number, opts.repeat

    print(
        f"langcluster {lc.__version__}, CPython {platform.python_version()}, "
        f"{platform.machine()}; best of {r} x {n:,} calls\n"
    )
    rows = []
    found = caches()
    for name, (_, get, set_) in found.items():
        hit = ns("f(k)", {"f": get, "k": HIT}, n, r)
        miss = ns("f(k)", {"f": get, "k": MISS}, n, r)
        store = ns("f(k, 1)", {"f": set_, "k": HIT}, n, r)
        rows.append((name, hit, miss, store))
    floor = rows[0]
    peer = {name: (hit, store) for name, hit, _, store in rows}
    cachebox = peer.get("cachebox LRU")
    print("| cache | get hit ns | x dict.get | get miss ns | set (replace) ns | x dict store |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, hit, miss, store in rows:
        print(
            f"| {name} | {hit:.1f} | {hit / floor[1]:.2f} | {miss:.1f} | "
            f"{store:.1f} | {store / floor[3]:.2f} |"
        )
    if cachebox:
        ours = peer["langcluster tinylfu"]
        print(
            f"\nlangcluster tinylfu / cachebox LRU: get {ours[0] / cachebox[0]:.2f}, "
            f"set {ours[1] / cachebox[1]:.2f}"
        )
    if "cachetools LRU" in peer:
        ct = peer["cachetools LRU"]
        ours = peer["langcluster tinylfu"]
        print(
            f"cachetools LRU / langcluster tinylfu: get {ct[0] / ours[0]:.1f}x, "
            f"set {ct[1] / ours[1]:.1f}x"
        )

    print("\n| subscript syntax | `c[k]` hit ns | x `d[k]` | `c[k] = v` ns | x `d[k] = v` |")
    print("|---|---:|---:|---:|---:|")
    subscript = [name for name in found if name.startswith(("floor", "langcluster", "cachebox"))]
    base = None
    for name in subscript:
        c = found[name][0]
        read = ns("c[k]", {"c": c, "k": HIT}, n, r)
        write = ns("c[k] = 1", {"c": c, "k": HIT}, n, r)
        base = base or (read, write)
        print(
            f"| {name} | {read:.1f} | {read / base[0]:.2f} | {write:.1f} | {write / base[1]:.2f} |"
        )

    print("\n| decorated call, hit | ns | ns above the bare call |")
    print("|---|---:|---:|")
    results = decorated(n, r)
    bare = results[0][1]
    for name, t in results:
        print(f"| {name} | {t:.1f} | {t - bare:.1f} |")

    structures, rss = memory_per_entry()
    print(
        f"\nmemory overhead per entry (200k entries, tinylfu): {structures:.0f} bytes in the "
        f"cache's structures (memory_usage()), {rss:.0f} bytes of RSS growth"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
