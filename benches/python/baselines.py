"""Thread-safe pure-Python versions of the balancers, written the way a
careful engineer would without langcluster: the comparison the Rust core has
to beat. Each takes a list of objects with `.id` and `.weight`."""

from __future__ import annotations

import bisect
import hashlib
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


class PrefixAware(_Loaded):
    """Prefix-aware routing as a careful engineer would write it in Python:
    chained blake2b hashes of 64-byte blocks, one dict per node of the block
    hashes sent there (a shared LRU), the deepest match among nodes not
    overloaded, else the least loaded."""

    def __init__(self, nodes: list[Any], max_blocks: int = 1 << 18) -> None:
        super().__init__(nodes)
        self.held: dict[str, dict[bytes, None]] = {n.id: {} for n in nodes}
        self.lru: dict[tuple[str, bytes], None] = {}
        self.max_blocks = max_blocks

    def pick(self, prompt: str) -> Any:
        data = prompt.encode()
        hashes, prev = [], b""
        for i in range(0, len(data) - 63, 64):
            prev = hashlib.blake2b(prev + data[i : i + 64], digest_size=8).digest()
            hashes.append(prev)
        with self.lock:
            mean = sum(self.in_flight.values()) / len(self.nodes)
            limit = max(1.5 * mean, mean + 8)
            best, best_key = self.nodes[0], (1, 0)
            for n in self.nodes:
                if self.in_flight[n.id] > limit:
                    continue
                held, depth = self.held[n.id], 0
                for h in hashes:
                    if h not in held:
                        break
                    depth += 1
                key = (-depth, self.in_flight[n.id])
                if key < best_key:
                    best, best_key = n, key
            for h in reversed(hashes):
                self.lru.pop((best.id, h), None)
                self.lru[(best.id, h)] = None
                self.held[best.id][h] = None
            while len(self.lru) > self.max_blocks:
                node_id, h = next(iter(self.lru))
                del self.lru[(node_id, h)]
                del self.held[node_id][h]
            return best
