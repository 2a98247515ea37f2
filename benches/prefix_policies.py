"""Reference implementations of the routers PrefixAware is measured
against, as their projects describe them, for the fleet simulation.

Each keeps the router-local state its original keeps (in-flight counts it
counts itself, its own index of what it sent where) and reads the fleet's
real state only where the original scrapes it (llm-d reads each server's
waiting queue) or where it is the point (the oracle).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence

from langcluster.testing.fleet import Fleet, Request, Server, held_prefix


class Local:
    """In-flight counts and availability, as the router itself counts them."""

    def __init__(self, servers: int, seed: int = 1) -> None:
        self.n = servers
        self.load = [0] * servers
        self.up = [True] * servers
        self.rng = random.Random(seed)

    def started(self, s: int, request: Request) -> None:
        self.load[s] += 1

    def finished(self, s: int, request: Request, latency_s: float | None) -> None:
        self.load[s] -= 1

    def set_available(self, s: int, up: bool) -> None:
        self.up[s] = up

    def live(self) -> list[int]:
        return [s for s in range(self.n) if self.up[s]]

    def least_loaded(self, among: Sequence[int]) -> int:
        low = min(self.load[s] for s in among)
        return self.rng.choice([s for s in among if self.load[s] == low])

    def entries(self) -> int:
        return 0


class BlockLru:
    """One worker's record of blocks sent to it, least recent first."""

    def __init__(self, capacity: int | None) -> None:
        self.blocks: OrderedDict[int, None] = OrderedDict()
        self.capacity = capacity

    def match(self, blocks: Sequence[int]) -> int:
        return held_prefix(blocks, self.blocks)

    def insert(self, blocks: Sequence[int]) -> None:
        held = self.blocks
        # The last block first, so the prefix is the most recent.
        for b in reversed(blocks):
            if b in held:
                held.move_to_end(b)
            else:
                held[b] = None
        self.trim()

    def trim(self, capacity: int | None = None) -> None:
        limit = self.capacity if capacity is None else capacity
        if limit is not None:
            while len(self.blocks) > limit:
                self.blocks.popitem(last=False)


class SglangCacheAware(Local):
    """SGLang router's ``cache_aware``: if the in-flight counts are
    imbalanced ((max - min) > ``balance_abs`` and max > ``balance_rel`` x
    min) the shortest queue; otherwise the worker whose tree matches the
    deepest if the matched fraction exceeds ``cache_threshold``, else the
    least loaded. Trees grow freely and are cut to ``max_tree_size``
    characters (64 per block) every ``eviction_interval_s``."""

    def __init__(
        self,
        servers: int,
        cache_threshold: float,
        balance_abs: int,
        balance_rel: float,
        max_tree_size: int,
        eviction_interval_s: float,
    ) -> None:
        super().__init__(servers)
        self.threshold = cache_threshold
        self.abs = balance_abs
        self.rel = balance_rel
        self.max_blocks = max(1, max_tree_size // 64)
        self.interval = eviction_interval_s
        self.next_eviction = eviction_interval_s
        self.trees = [BlockLru(None) for _ in range(servers)]

    def pick(self, request: Request, fleet: Fleet) -> int:
        while fleet.now_s >= self.next_eviction:
            for tree in self.trees:
                tree.trim(self.max_blocks)
            self.next_eviction += self.interval
        live = self.live()
        loads = [self.load[s] for s in live]
        if max(loads) - min(loads) > self.abs and max(loads) > self.rel * min(loads):
            chosen = self.least_loaded(live)
        else:
            depth = {s: self.trees[s].match(request.blocks) for s in live}
            best = max(depth.values())
            if best / len(request.blocks) > self.threshold:
                chosen = self.rng.choice([s for s in live if depth[s] == best])
            else:
                chosen = self.least_loaded(live)
        self.trees[chosen].insert(request.blocks)
        return chosen

    def entries(self) -> int:
        return sum(len(t.blocks) for t in self.trees)


class LlmdPrefixLoad(Local):
    """llm-d's scheduler with the prefix scorer and the load-aware scorer at
    weights 1:1: prefix score = leading blocks held / blocks (at most 256,
    from a per-pod LRU of 31,250 blocks); load score 0.5 for an empty
    waiting queue, falling to 0 at 128 waiting (scraped from the server);
    the highest total wins, ties at random."""

    def __init__(self, servers: int, pod_blocks: int = 31_250, max_blocks: int = 256) -> None:
        super().__init__(servers)
        self.pods = [BlockLru(pod_blocks) for _ in range(servers)]
        self.max_blocks = max_blocks

    def pick(self, request: Request, fleet: Fleet) -> int:
        blocks = request.blocks[: self.max_blocks]
        scores = {}
        for s in self.live():
            prefix = self.pods[s].match(blocks) / len(blocks)
            waiting = len(fleet.servers[s].waiting)
            scores[s] = prefix + 0.5 * max(0.0, 1.0 - waiting / 128)
        top = max(scores.values())
        chosen = self.rng.choice([s for s, v in scores.items() if v == top])
        self.pods[chosen].insert(blocks)
        return chosen

    def entries(self) -> int:
        return sum(len(p.blocks) for p in self.pods)


class DynamoCost(Local):
    """NVIDIA Dynamo's KV router: cost = blocks to prefill (not held) +
    active blocks (of requests in flight there, as the router counts them);
    the lowest wins (temperature 0), ties at random. Its index mirrors each
    engine's cache at the engine's capacity."""

    def __init__(self, servers: int, cache_blocks: int) -> None:
        super().__init__(servers)
        self.index = [BlockLru(cache_blocks) for _ in range(servers)]
        self.active = [0] * servers

    def started(self, s: int, request: Request) -> None:
        super().started(s, request)
        self.active[s] += len(request.blocks)

    def finished(self, s: int, request: Request, latency_s: float | None) -> None:
        super().finished(s, request, latency_s)
        self.active[s] -= len(request.blocks)

    def set_available(self, s: int, up: bool) -> None:
        super().set_available(s, up)
        if not up:
            self.index[s].trim(0)  # its KV events stop, and say it was cleared

    def pick(self, request: Request, fleet: Fleet) -> int:
        n = len(request.blocks)
        cost = {s: n - self.index[s].match(request.blocks) + self.active[s] for s in self.live()}
        low = min(cost.values())
        chosen = self.rng.choice([s for s, v in cost.items() if v == low])
        self.index[chosen].insert(request.blocks)
        return chosen

    def entries(self) -> int:
        return sum(len(i.blocks) for i in self.index)


class Oracle(Local):
    """Sees every server's real cache and queues, and sends each request
    where its own time to first token would be shortest now: the wait for
    a slot, the prefill work queued ahead, and its own prefill."""

    def pick(self, request: Request, fleet: Fleet) -> int:
        best, best_s = -1, float("inf")
        for s in self.live():
            server = fleet.servers[s]
            estimate = self.ttft_s(server, request, fleet.now_s)
            if estimate < best_s or (estimate == best_s and self.rng.random() < 0.5):
                best, best_s = s, estimate
        return best

    @staticmethod
    def ttft_s(server: Server, request: Request, now_s: float) -> float:
        m = server.model
        wait = 0.0
        if server.running >= m.slots:
            decode_s = request.output_tokens * m.decode_per_token_s
            wait = (len(server.waiting) + 1) * decode_s / m.slots
        own = server.prefill_s(request.blocks, server.cached_prefix(request.blocks))
        return wait + server.queued_prefill_s(now_s) + own
