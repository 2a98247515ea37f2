"""Thread-safe pure-Python versions of the balancers, written the way a
careful engineer would without langcluster: the comparison the Rust core has
to beat. Each takes a list of objects with `.id` and `.weight`."""

from __future__ import annotations

import bisect
import math
import random
import threading
import time
import zlib
from typing import Any


class RoundRobin:
    def __init__(self, nodes: list[Any]) -> None:
        self.nodes = list(nodes)
        self.i = 0
        self.lock = threading.Lock()

    def pick(self) -> Any:
        with self.lock:
            node = self.nodes[self.i % len(self.nodes)]
            self.i += 1
        return node


class WeightedRoundRobin:
    """nginx's smooth weighted round robin."""

    def __init__(self, nodes: list[Any]) -> None:
        self.nodes = list(nodes)
        self.weights = [n.weight for n in nodes]
        self.current = [0.0] * len(nodes)
        self.total = sum(self.weights)
        self.lock = threading.Lock()

    def pick(self) -> Any:
        with self.lock:
            best = 0
            for i, w in enumerate(self.weights):
                self.current[i] += w
                if self.current[i] > self.current[best]:
                    best = i
            self.current[best] -= self.total
        return self.nodes[best]


class _Loaded:
    def __init__(self, nodes: list[Any]) -> None:
        self.nodes = list(nodes)
        self.in_flight = dict.fromkeys((n.id for n in nodes), 0)
        self.lock = threading.Lock()

    def begin(self, node_id: str) -> None:
        with self.lock:
            self.in_flight[node_id] += 1

    def end(self, node_id: str) -> None:
        with self.lock:
            self.in_flight[node_id] = max(0, self.in_flight[node_id] - 1)


class LeastConnections(_Loaded):
    def pick(self) -> Any:
        with self.lock:
            best = min(self.in_flight[n.id] for n in self.nodes)
            return random.choice([n for n in self.nodes if self.in_flight[n.id] == best])


class PowerOfTwoChoices(_Loaded):
    def pick(self) -> Any:
        a, b = random.sample(self.nodes, 2)
        with self.lock:
            return b if self.in_flight[b.id] < self.in_flight[a.id] else a


class Adaptive(_Loaded):
    """P2C over peak-EWMA latency x (in flight + 1), decayed at read time."""

    def __init__(self, nodes: list[Any], decay_s: float = 10.0) -> None:
        super().__init__(nodes)
        self.decay_s = decay_s
        self.cost = dict.fromkeys((n.id for n in nodes), 0.0)
        self.stamp = dict.fromkeys((n.id for n in nodes), time.monotonic())

    def observe(self, node_id: str, rtt: float) -> None:
        with self.lock:
            now = time.monotonic()
            w = math.exp(-(now - self.stamp[node_id]) / self.decay_s)
            cost = self.cost[node_id]
            self.cost[node_id] = rtt if rtt > cost else cost * w + rtt * (1 - w)
            self.stamp[node_id] = now

    def _load(self, node_id: str, now: float) -> float:
        w = math.exp(-(now - self.stamp[node_id]) / self.decay_s)
        return self.cost[node_id] * w * (self.in_flight[node_id] + 1)

    def pick(self) -> Any:
        a, b = random.sample(self.nodes, 2)
        with self.lock:
            now = time.monotonic()
            return b if self._load(b.id, now) < self._load(a.id, now) else a


class Random:
    def __init__(self, nodes: list[Any]) -> None:
        self.nodes = list(nodes)

    def pick(self) -> Any:
        return random.choice(self.nodes)


class ConsistentHash:
    """A ring of crc32 points with bisect: stable across processes."""

    def __init__(self, nodes: list[Any], vnodes: int = 160) -> None:
        ring = sorted(
            (zlib.crc32(f"{n.id}#{r}".encode()), i)
            for i, n in enumerate(nodes)
            for r in range(vnodes)
        )
        self.points = [p for p, _ in ring]
        self.owners = [nodes[i] for _, i in ring]
        self.lock = threading.Lock()  # held only while the ring is swapped

    def pick(self, key: str) -> Any:
        i = bisect.bisect(self.points, zlib.crc32(key.encode()))
        return self.owners[i % len(self.points)]
