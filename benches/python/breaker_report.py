"""ns per guarded call for langcluster's CircuitBreaker and the Python
breakers in one run, as overhead over the bare call, and the wall time of
eight threads each making a 50 ms call through one breaker.

    python benches/python/breaker_report.py [--number N] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import threading
import time
import timeit
from collections.abc import Callable
from typing import Any

import langcluster as lc


def work() -> int:
    return 1


async def awork() -> int:
    return 1


Case = tuple[str, dict[str, Any]]  # a timeit statement and its globals


def ns(case: Case, number: int, repeat: int) -> float:
    stmt, env = case
    return min(timeit.repeat(stmt, globals=env, number=number, repeat=repeat)) / number * 1e9


def sync_cases() -> dict[str, Case]:
    breaker = lc.CircuitBreaker()
    cases: dict[str, Case] = {
        "bare call": ("f()", {"f": work}),
        "langcluster call(f)": ("c(f)", {"c": breaker.call, "f": work}),
        "langcluster allow() + record_success()": (
            "a(); r()",
            {"a": breaker.allow, "r": breaker.record_success},
        ),
        "langcluster @breaker": ("g()", {"g": breaker(work)}),
    }
    try:
        import pybreaker

        pb = pybreaker.CircuitBreaker()
        cases["pybreaker call(f)"] = ("c(f)", {"c": pb.call, "f": work})
    except ImportError:
        pass
    try:
        import circuitbreaker

        cases["circuitbreaker @circuit"] = ("g()", {"g": circuitbreaker.CircuitBreaker()(work)})
    except ImportError:
        pass
    try:
        from purgatory import SyncCircuitBreakerFactory

        factory = SyncCircuitBreakerFactory()
        cases["purgatory @breaker"] = ("g()", {"g": factory(circuit="bench")(work)})
    except ImportError:
        pass
    return cases


def async_cases() -> dict[str, Callable[[], Any]]:
    breaker = lc.CircuitBreaker()
    cases: dict[str, Callable[[], Any]] = {
        "bare await": awork,
        "langcluster await acall(f)": lambda: breaker.acall(awork),
    }
    try:
        import aiobreaker

        ab = aiobreaker.CircuitBreaker()
        cases["aiobreaker await call_async(f)"] = lambda: ab.call_async(awork)
    except ImportError:
        pass
    try:
        from purgatory import AsyncCircuitBreakerFactory

        factory = AsyncCircuitBreakerFactory()
        decorated = factory(circuit="bench")(awork)
        cases["purgatory async @breaker"] = decorated
    except ImportError:
        pass
    return cases


def async_ns(make: Callable[[], Any], number: int, repeat: int) -> float:
    async def loop() -> None:
        for _ in range(number):
            await make()

    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        asyncio.run(loop())
        best = min(best, time.perf_counter() - started)
    return best / number * 1e9


def eight_threads(call: Callable[[], Any]) -> float:
    threads = [threading.Thread(target=call) for _ in range(8)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    opts = parser.parse_args()
    n, r = opts.number, opts.repeat
    print(
        f"langcluster {lc.__version__}, CPython {platform.python_version()}, "
        f"{platform.machine()}; best of {r} x {n:,} calls\n"
    )
    print("| guarded call (sync) | ns | overhead ns | overhead / langcluster call(f) |")
    print("|---|---:|---:|---:|")
    results = {name: ns(fn, n, r) for name, fn in sync_cases().items()}
    bare = results["bare call"]
    ours = results["langcluster call(f)"] - bare
    for name, t in results.items():
        ratio = "" if name == "bare call" else f"{(t - bare) / ours:.1f}x"
        print(f"| {name} | {t:.1f} | {t - bare:.1f} | {ratio} |")

    print("\n| guarded call (async) | ns | overhead ns |")
    print("|---|---:|---:|")
    results = {name: async_ns(fn, n // 4, r) for name, fn in async_cases().items()}
    bare = results["bare await"]
    for name, t in results.items():
        print(f"| {name} | {t:.1f} | {t - bare:.1f} |")

    print("\n| FailoverManager, healthy cluster of 3 | ns per call | overhead ns |")
    print("|---|---:|---:|")
    nodes = [lc.Node(f"n{i}", "127.0.0.1", 9000 + i) for i in range(3)]
    manager = lc.FailoverManager(lc.RoundRobin(nodes))

    async def on_node(node: lc.Node) -> int:
        return 1

    def on_node_sync(node: lc.Node) -> int:
        return 1

    direct = async_ns(lambda: on_node(nodes[0]), n // 4, r)
    managed = async_ns(lambda: manager.call(on_node), n // 4, r)
    print(f"| await fn(node) | {direct:.1f} | |")
    print(f"| await manager.call(fn) | {managed:.1f} | {managed - direct:.1f} |")
    direct = ns(("f(x)", {"f": on_node_sync, "x": nodes[0]}), n, r)
    managed = ns(("c(f)", {"c": manager.call_sync, "f": on_node_sync}), n // 4, r)
    print(f"| fn(node) | {direct:.1f} | |")
    print(f"| manager.call_sync(fn) | {managed:.1f} | {managed - direct:.1f} |")

    print("\n| 8 threads x one 50 ms call through one breaker | wall s |")
    print("|---|---:|")
    breaker = lc.CircuitBreaker()
    print(f"| langcluster | {eight_threads(lambda: breaker.call(time.sleep, 0.05)):.3f} |")
    try:
        import pybreaker

        pb = pybreaker.CircuitBreaker()
        print(f"| pybreaker | {eight_threads(lambda: pb.call(time.sleep, 0.05)):.3f} |")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
