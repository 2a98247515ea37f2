"""What the one-source flows cost (docs/benchmarks.md, "The cost of one
source for sync and async"): ns per call of the hot paths that avoid flows
and of the ones that use them, and instructions per call under callgrind.

    python benches/python/flow_cost.py                 # starts its own redis-server
    python benches/python/flow_cost.py --callgrind     # instruction counts (valgrind)

To compare with another build, install it into a second virtualenv and run
the same file with that interpreter: the script imports only names that
every layout of the package has had.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from typing import Any

import langcluster as lc

try:
    from langcluster.cache import LayeredCache, RedisCache
except ImportError:  # the flat layout before the subpackages
    from langcluster.layered import LayeredCache  # type: ignore[no-redef]
    from langcluster.redis_cache import RedisCache  # type: ignore[no-redef]


def ns(stmt: str, env: dict[str, Any], number: int) -> float:
    return min(timeit.repeat(stmt, globals=env, number=number, repeat=7)) / number * 1e9


def timings(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    plain = {f"k{i}": i for i in range(1000)}
    out["dict.get"] = ns("f('k5')", {"f": plain.get}, 200_000)
    memory = lc.MemoryCache(10_000)
    for i in range(1000):
        memory.set(f"k{i}", i)
    out["MemoryCache.get hit"] = ns("f('k5')", {"f": memory.get}, 200_000)
    nodes = [lc.Node(f"n{i}", "h", 1) for i in range(8)]
    out["next(itertools.cycle)"] = ns("f(c)", {"f": next, "c": itertools.cycle(nodes)}, 200_000)
    out["RoundRobin.pick"] = ns("f()", {"f": lc.RoundRobin(nodes).pick}, 200_000)
    out["Adaptive.pick"] = ns("f()", {"f": lc.Adaptive(nodes).pick}, 200_000)
    out["CircuitBreaker.call"] = ns("f(g)", {"f": lc.CircuitBreaker().call, "g": int}, 200_000)
    layered = LayeredCache(
        lc.MemoryCache(1000), RedisCache(url, namespace="fc"), invalidation=False
    )
    layered.set("k", 1)
    out["LayeredCache.get L1 hit"] = ns("f('k')", {"f": layered.get}, 200_000)
    manager = lc.FailoverManager(lc.RoundRobin(nodes[:3]))
    out["FailoverManager.call_sync"] = ns("f(w)", {"f": manager.call_sync, "w": id}, 50_000)

    async def work(node: Any) -> int:
        return 1

    async def calls(n: int) -> None:
        for _ in range(n):
            await manager.call(work)

    best = []
    for _ in range(7):
        started = time.perf_counter()
        asyncio.run(calls(20_000))
        best.append(time.perf_counter() - started)
    out["await FailoverManager.call"] = min(best) / 20_000 * 1e9
    redis_cache = RedisCache(url, namespace="fc2")
    redis_cache.set("x", 1)
    out["RedisCache.get"] = ns("f('x')", {"f": redis_cache.get}, 2000)
    layered.close()
    redis_cache.close()
    return out


def loop(what: str, url: str, n: int) -> None:
    """`n` calls of one path: what callgrind counts."""
    if what == "failover":
        manager = lc.FailoverManager(lc.RoundRobin([lc.Node(f"n{i}", "h", 1) for i in range(3)]))
        for _ in range(n):
            manager.call_sync(id)
    else:
        cache = RedisCache(url, namespace="fc3")
        cache.set("x", 1)
        for _ in range(n):
            cache.get("x")


def instructions(what: str, url: str, n: int) -> int:
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         __file__, "--loop", what, "--redis", url, "--n", str(n)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(done.stderr.split("Collected : ")[1].split()[0])


def redis_server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    workdir = tempfile.mkdtemp(prefix="langcluster-bench-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="a Redis URL (default: start a redis-server)")
    parser.add_argument("--callgrind", action="store_true", help="instructions per call")
    parser.add_argument("--loop", choices=["failover", "redis"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1000, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    proc = None
    url = opts.redis
    if url is None and opts.loop is None:
        proc, url = redis_server()
    try:
        if opts.loop:
            loop(opts.loop, url, opts.n)
        elif opts.callgrind:
            per_call = {
                what: (instructions(what, url, n + 1000) - instructions(what, url, 1000)) // n
                for what, n in (("failover", 10_000), ("redis", 2000))
            }
            print(json.dumps(per_call))
        else:
            print(json.dumps({k: round(v, 1) for k, v in timings(url).items()}, indent=1))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
