"""µs per registry operation with 10,000 nodes registered, unbound and with
a bound balancer.

    python benches/python/registry_report.py
"""

from __future__ import annotations

import platform
import timeit

import langcluster as lc

N = 10_000


def us(stmt: str, env: dict[str, object], number: int) -> float:
    return min(timeit.repeat(stmt, globals=env, number=number, repeat=5)) / number * 1e6


def main() -> None:
    print(f"langcluster {lc.__version__}, CPython {platform.python_version()}; {N:,} nodes\n")
    nodes = [lc.Node(f"n{i}", f"10.0.{i // 256}.{i % 256}", 8000) for i in range(N)]
    registry = lc.NodeRegistry(nodes)
    extra = [lc.Node(f"x{i}", "10.9.0.1", 8000) for i in range(60_000)]
    it = iter(extra)
    env = {"r": registry, "it": it, "lc": lc}
    flip = "r.set_status('n7', 'unhealthy'); r.set_status('n7', 'healthy')"
    rows = [
        ("get(id)", us("r.get('n5000')", env, 200_000)),
        ("register(new node)", us("r.register(next(it))", env, 10_000)),
        ("set_status", us(flip, env, 20_000) / 2),
        ("deregister + register", us("r.register(r.deregister('n9'))", env, 10_000)),
    ]
    # A fresh registry of N nodes for the bound figures.
    registry = lc.NodeRegistry([lc.Node(n.id, n.address, n.port) for n in nodes])
    env["r"] = registry
    registry.bind(lc.RoundRobin())
    rows.append(("set_status, balancer bound", us(flip, env, 2_000) / 2))
    rows.append(
        (
            "register(new node), balancer bound: rebuilds its node set",
            us("r.register(next(it))", env, 50),
        )
    )
    print("| operation | µs |")
    print("|---|---:|")
    for name, t in rows:
        print(f"| {name} | {t:.2f} |")


if __name__ == "__main__":
    main()
