"""The layered cache against its floor and its peers, in one run, on a
redis-server this script starts on a free loopback port.

    python benches/python/layered_report.py [--number N] [--repeat R]

- L1 hit, sync: ``LayeredCache.get`` against ``MemoryCache.get`` and
  ``dict.get`` (target: at most 3x ``MemoryCache.get``).
- L1 hit, async: ``await LayeredCache.aget`` against cashews' client-side
  cache (its in-process copy of a Redis value) and aiocache's memory cache
  on the same hit (target: at least 3x faster than both).
- ``get_many`` of 1,000 keys from L2: round trips (MGET calls counted by
  Redis) and time, against 1,000 single GETs.
- Write throughput: write-back ``set`` against write-through ``set`` on the
  same local Redis (target: at least 20x).
- Invalidation: how long after one cache's ``set`` returns another's L1
  copy is gone (pub/sub), median and p99 of 200 (target: p99 under 100 ms).

Each ns figure is the best of R repeats of N calls; ratios are taken
within the run.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

import langcluster as lc


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            url = f"redis://127.0.0.1:{port}/0"
            client = redis.Redis.from_url(url)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            client.close()
            yield url
        finally:
            proc.terminate()
            proc.wait()


def sync_ns(fn: Callable[..., Any], arg: Any, number: int, repeat: int) -> float:
    times = timeit.repeat("f(a)", globals={"f": fn, "a": arg}, number=number, repeat=repeat)
    return min(times) / number * 1e9


async def async_ns(
    fn: Callable[[Any], Awaitable[Any]], arg: Any, number: int, repeat: int
) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            await fn(arg)
        best = min(best, time.perf_counter() - started)
    return best / number * 1e9


def layered(url: str, namespace: str, **kwargs: Any) -> lc.LayeredCache:
    return lc.LayeredCache(
        lc.MemoryCache(20_000), lc.RedisCache(url, namespace=namespace), **kwargs
    )


def l1_hits(url: str, number: int, repeat: int) -> None:
    cache = layered(url, "bench-l1")
    key = "prompt:1234"
    cache.set(key, "answer")
    plain = {key: "answer"}
    rows = {
        "`dict.get` (floor)": sync_ns(plain.get, key, number, repeat),
        "`MemoryCache.get`": sync_ns(cache.l1.get, key, number, repeat),
        "`LayeredCache.get`": sync_ns(cache.get, key, number, repeat),
    }
    base = rows["`MemoryCache.get`"]
    print("### L1 hit, sync\n")
    print("| call | ns | x MemoryCache.get |\n|---|---:|---:|")
    for name, ns in rows.items():
        print(f"| {name} | {ns:.1f} | {ns / base:.2f} |")
    cache.close()


async def async_hits(url: str, number: int, repeat: int) -> None:
    from aiocache import Cache as AioCache
    from cashews import Cache as Cashews

    key = "prompt:1234"
    ours = layered(url, "bench-async")
    await ours.aset(key, "answer")
    cashews = Cashews()
    cashews.setup(url, client_side=True)
    await cashews.set(key, "answer")
    await cashews.get(key)  # now in its client-side copy
    aio = AioCache(AioCache.MEMORY)
    await aio.set(key, "answer")

    async def noop(_: Any) -> None:
        return None

    rows = {
        "`await` of a no-op coroutine (floor)": await async_ns(noop, key, number, repeat),
        "langcluster `LayeredCache.aget`": await async_ns(ours.aget, key, number, repeat),
        "cashews client-side `get`": await async_ns(cashews.get, key, number // 10, repeat),
        "aiocache memory `get`": await async_ns(aio.get, key, number // 10, repeat),
    }
    mine = rows["langcluster `LayeredCache.aget`"]
    print("\n### L1 hit, async\n")
    print("| call | ns | x langcluster |\n|---|---:|---:|")
    for name, ns in rows.items():
        print(f"| {name} | {ns:.1f} | {ns / mine:.2f} |")
    await cashews.close()
    await aio.close()
    await ours.aclose()


def many_from_l2(url: str) -> None:
    writer, reader = layered(url, "bench-many"), layered(url, "bench-many")
    keys = [f"k{i}" for i in range(1000)]
    writer.set_many({k: {"text": "x" * 100, "i": i} for i, k in enumerate(keys)})
    raw = redis.Redis.from_url(url)

    def mgets() -> int:
        return int(raw.info("commandstats").get("cmdstat_mget", {"calls": 0})["calls"])

    times, singles = [], []
    for _ in range(7):
        reader.l1.clear()
        before = mgets()
        started = time.perf_counter()
        got = reader.get_many(keys)
        times.append(time.perf_counter() - started)
        calls = mgets() - before
        assert len(got) == 1000
        reader.l1.clear()
        started = time.perf_counter()
        for k in keys:
            reader.l2.get(k)
        singles.append(time.perf_counter() - started)
    print("\n### get_many of 1,000 keys from L2\n")
    print("| how | MGET calls | ms (best of 7) |\n|---|---:|---:|")
    print(f"| `LayeredCache.get_many` | {calls} | {min(times) * 1e3:.2f} |")
    print(f"| 1,000 single `get` | 0 | {min(singles) * 1e3:.2f} |")
    raw.close()
    writer.close()
    reader.close()


def write_throughput(url: str) -> None:
    results = {}
    for mode, n in (("write_through", 3_000), ("write_back", 100_000)):
        cache = layered(url, f"bench-{mode}", mode=mode, max_pending=200_000)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for i in range(n):
                cache.set(f"k{i % 5000}", i)  # 5,000 hot keys, as a cache sees them
            best = min(best, time.perf_counter() - started)  # until the last ack
        cache.flush()
        results[mode] = n / best
        cache.close()
    print("\n### set throughput against a local Redis\n")
    print("| mode | sets/s | x write-through |\n|---|---:|---:|")
    for mode, rate in results.items():
        print(f"| {mode} | {rate:,.0f} | {rate / results['write_through']:.1f} |")
    # What write-back actually got into Redis per second, flushing included.
    cache = layered(url, "bench-drain", mode="write_back", max_pending=200_000)
    started = time.perf_counter()
    for i in range(50_000):
        cache.set(f"d{i}", i)
    cache.flush()
    drained = 50_000 / (time.perf_counter() - started)
    print(f"| write-back, 50,000 distinct keys incl. the final flush | {drained:,.0f} | "
          f"{drained / results['write_through']:.1f} |")  # fmt: skip
    cache.close()


def invalidation(url: str) -> None:
    """Two caches on one Redis, as two processes would have."""
    one, two = layered(url, "bench-inval"), layered(url, "bench-inval")

    def gone(deadline_s: float = 5.0) -> float:
        started = time.perf_counter()
        while two.l1.get("k") is not None:
            if time.perf_counter() - started > deadline_s:
                raise SystemExit("an L1 copy was never invalidated")
            time.sleep(0.0001)
        return time.perf_counter() - started

    delays = []
    for i in range(200):
        one.set("k", i)
        gone()  # the invalidation of this write has passed
        assert two.get("k") == i  # two holds it in L1 now
        one.set("k", -i)
        delays.append(gone())
    delays.sort()
    print("\n### invalidation of another cache's L1 copy\n")
    print("| median ms | p99 ms |\n|---:|---:|")
    median, p99 = delays[len(delays) // 2], delays[int(0.99 * len(delays))]
    print(f"| {median * 1e3:.3f} | {p99 * 1e3:.3f} |")
    print("\n0 ms: the copy was gone by the time `set` returned.")
    one.close()
    two.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    opts = parser.parse_args()
    print(
        f"langcluster {lc.__version__}, CPython {platform.python_version()}, "
        f"{platform.machine()}, redis-server on loopback\n"
    )
    with redis_server() as url:
        l1_hits(url, opts.number, opts.repeat)
        asyncio.run(async_hits(url, opts.number // 4, opts.repeat))
        many_from_l2(url)
        write_throughput(url)
        invalidation(url)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
