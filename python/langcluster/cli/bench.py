"""``python -m langcluster bench``: a short run of the hot paths against the
floor, a pure-Python version and the peers that are installed (``pip
install 'langcluster[bench]'`` for all of them), with ratios. The full
benchmarks, with their methods, are in ``benches/`` and docs/benchmarks.md.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import platform
import threading
import timeit
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import langcluster as lc
from langcluster.types import Policy

Case = tuple[str, str, Callable[[], tuple[Callable[..., Any], tuple[Any, ...]]]]
KEY = "conversation-1234:system-prompt-v2"


def _nodes(n: int = 8) -> list[lc.Node]:
    return [lc.Node(f"node-{i}", "127.0.0.1", 9000 + i) for i in range(n)]


class _PureRoundRobin:
    """What one writes without the library: a list, an index and a lock."""

    def __init__(self, nodes: list[Any]) -> None:
        self.nodes, self.i, self.lock = nodes, 0, threading.Lock()

    def pick(self) -> Any:
        with self.lock:
            node = self.nodes[self.i % len(self.nodes)]
            self.i += 1
        return node


class _PureRing:
    """A consistent-hash ring with bisect, 160 points per node."""

    def __init__(self, nodes: list[Any]) -> None:
        points = sorted(
            (int.from_bytes(hashlib.md5(f"{n.id}-{v}".encode()).digest()[:8], "big"), n)
            for n in nodes
            for v in range(160)
        )
        self.keys = [p for p, _ in points]
        self.owners = [n for _, n in points]

    def pick(self, key: str) -> Any:
        h = int.from_bytes(hashlib.md5(key.encode()).digest()[:8], "big")
        i = bisect.bisect(self.keys, h) % len(self.keys)
        return self.owners[i]


class _PureLru:
    def __init__(self, capacity: int) -> None:
        self.data: OrderedDict[Any, Any] = OrderedDict()
        self.capacity, self.lock = capacity, threading.Lock()

    def get(self, key: Any, default: Any = None) -> Any:
        with self.lock:
            try:
                self.data.move_to_end(key)
            except KeyError:
                return default
            return self.data[key]

    def set(self, key: Any, value: Any) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            if len(self.data) > self.capacity:
                self.data.popitem(last=False)


class _PureBreaker:
    """A closed breaker's bookkeeping in Python: a lock and two counters."""

    def __init__(self) -> None:
        self.lock, self.ok, self.failed = threading.Lock(), 0, 0

    def call(self, fn: Callable[[], Any]) -> Any:
        with self.lock:
            pass  # the state check
        try:
            result = fn()
        except Exception:
            with self.lock:
                self.failed += 1
            raise
        with self.lock:
            self.ok += 1
        return result


def _filled(cache: Any, put: Callable[[Any, Any, Any], None]) -> Any:
    for i in range(10_000):
        put(cache, f"user:{i}:profile", i)
    return cache


def _get(cache: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    return cache.get, ("user:1234:profile",)


def _peer(module: str, make: Callable[[Any], tuple[Callable[..., Any], tuple[Any, ...]]]) -> Any:
    def build() -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return make(__import__(module))

    return build


def _noop() -> None:
    return None


def _memory(policy: Policy) -> Any:
    return _get(_filled(lc.MemoryCache(20_000, policy=policy), lambda c, k, v: c.set(k, v)))


def _pure_lru() -> Any:
    return _get(_filled(_PureLru(20_000), lambda c, k, v: c.set(k, v)))


def _cachebox(m: Any) -> Any:
    return _get(_filled(m.LRUCache(20_000), lambda c, k, v: c.insert(k, v)))


def _cachetools(m: Any) -> Any:
    return _get(_filled(m.LRUCache(20_000), lambda c, k, v: c.__setitem__(k, v)))


def _uhashring(m: Any) -> Any:
    return m.HashRing(nodes=[n.id for n in _nodes(100)]).get_node, (KEY,)


def _ring() -> Any:
    return lc.ConsistentHash(_nodes(100)).pick, (KEY,)


def _breaker() -> Any:
    return lc.CircuitBreaker().call, (_noop,)


def _pybreaker(m: Any) -> Any:
    return m.CircuitBreaker().call, (_noop,)


def cases() -> list[Case]:
    plain = {f"user:{i}:profile": i for i in range(10_000)}
    hit = "user:1234:profile"
    return [
        ("pick", "floor: next(itertools.cycle)", lambda: (next, (itertools.cycle(_nodes()),))),
        ("pick", "langcluster RoundRobin", lambda: (lc.RoundRobin(_nodes()).pick, ())),
        ("pick", "pure Python round robin", lambda: (_PureRoundRobin(_nodes()).pick, ())),
        ("pick", "langcluster Adaptive (P2C + EWMA)", lambda: (lc.Adaptive(_nodes()).pick, ())),
        ("hash", "langcluster ConsistentHash", _ring),
        ("hash", "pure Python ring (bisect)", lambda: (_PureRing(_nodes(100)).pick, (KEY,))),
        ("hash", "uhashring", _peer("uhashring", _uhashring)),
        ("cache get", "floor: dict.get", lambda: (plain.get, (hit,))),
        ("cache get", "langcluster MemoryCache lru", lambda: _memory("lru")),
        ("cache get", "langcluster MemoryCache tinylfu", lambda: _memory("tinylfu")),
        ("cache get", "pure Python LRU (OrderedDict + lock)", _pure_lru),
        ("cache get", "cachebox LRUCache (Rust)", _peer("cachebox", _cachebox)),
        ("cache get", "cachetools LRUCache", _peer("cachetools", _cachetools)),
        ("breaker call", "floor: the bare call", lambda: (_noop, ())),
        ("breaker call", "langcluster CircuitBreaker.call", _breaker),
        ("breaker call", "pure Python breaker", lambda: (_PureBreaker().call, (_noop,))),
        ("breaker call", "pybreaker", _peer("pybreaker", _pybreaker)),
    ]  # fmt: skip


def measure(fn: Callable[..., Any], args: tuple[Any, ...], number: int, repeat: int) -> float:
    names = [f"a{i}" for i in range(len(args))]
    env = {"f": fn, **dict(zip(names, args, strict=True))}
    best = min(timeit.repeat(f"f({', '.join(names)})", globals=env, number=number, repeat=repeat))
    return best / number * 1e9


def run(number: int, repeat: int) -> list[tuple[str, str, float | None]]:
    rows: list[tuple[str, str, float | None]] = []
    for group, name, build in cases():
        try:
            fn, args = build()
        except ImportError:
            rows.append((group, name, None))
            continue
        rows.append((group, name, measure(fn, args, number, repeat)))
    return rows


def table(rows: list[tuple[str, str, float | None]]) -> str:
    lines = [
        "| hot path | contender | ns/call | x first row | x langcluster |",
        "|---|---|---:|---:|---:|",
    ]
    groups: dict[str, list[tuple[str, float | None]]] = {}
    for group, name, ns in rows:
        groups.setdefault(group, []).append((name, ns))
    for group, entries in groups.items():
        base = entries[0][1]
        ours = next((ns for name, ns in entries if name.startswith("langcluster")), None)
        for name, ns in entries:
            if ns is None:
                lines.append(f"| {group} | {name} | not installed: langcluster[bench] | | |")
                continue
            vs_base = f"{ns / base:.2f}" if base else ""
            vs_ours = f"{ns / ours:.2f}" if ours else ""
            lines.append(f"| {group} | {name} | {ns:.1f} | {vs_base} | {vs_ours} |")
    return "\n".join(lines)


def cli(args: Any) -> int:
    if args.number < 1 or args.repeat < 1:
        raise SystemExit("--number and --repeat: must be at least 1")
    print(
        f"langcluster {lc.__version__}, CPython {platform.python_version()}, "
        f"{platform.machine()}; best of {args.repeat} x {args.number:,} calls per row"
    )
    print()
    print(table(run(args.number, args.repeat)))
    print()
    print("x first row: against the group's first row (the floor, or langcluster for hashing).")
    print("x langcluster: above 1 means slower than langcluster. Full figures: docs/benchmarks.md")
    return 0
