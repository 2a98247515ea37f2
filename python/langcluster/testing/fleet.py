"""A discrete-event simulation of a fleet of LLM servers with prefix (KV)
caches, to measure a router before it meets real traffic.

No server runs: each simulated server has an LRU cache of prompt blocks,
runs at most ``slots`` requests at once (the rest wait), computes prefills
one at a time (a prefill costs ``prefill_base_s`` plus
``prefill_per_token_s`` for each token not already cached), then decodes
``decode_per_token_s`` per output token. Arrivals are given by a workload
(``langcluster.testing.workloads``); the router sees every request in time
order: ``pick`` on arrival, ``started`` when the request is sent, and
``finished`` when its last token is out.

    result = simulate(workload, router, servers=8, model=ServerModel(...))
    result.hit_rate, result.ttft_p99_s

A router is any object with ``pick(request, fleet) -> int`` (a server
index; ``fleet`` is the live view of every server, which only an oracle
should read), and optionally ``started(server, request)``,
``first_token(server, request, ttft_s)`` (as a streaming client sees it),
``finished(server, request, latency_s)``, ``set_available(server, up)`` and
``kv_events(server, events)``: what the server's cache did, as vLLM's KV
events say it (``KvEvent``s, in order, at once). ``BalancerRouter`` adapts
any langcluster balancer, and feeds a ``PrefixAware`` the events when
asked to (exact mode).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Container, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "BalancerRouter",
    "Fleet",
    "KvEvent",
    "Outage",
    "Request",
    "Result",
    "Router",
    "Server",
    "ServerModel",
    "SimClock",
    "Workload",
    "held_prefix",
    "prompt_bytes",
    "prompt_text",
    "simulate",
    "stored_events",
]


@dataclass(frozen=True)
class ServerModel:
    """One server's capacity and speed."""

    slots: int = 32
    cache_blocks: int = 4096
    block_tokens: int = 16
    prefill_base_s: float = 0.005
    prefill_per_token_s: float = 0.00005
    decode_per_token_s: float = 0.01


@dataclass(eq=False)
class Request:
    """A prompt as a sequence of block ids (equal ids mean an equal prefix up
    to and including that block), and how many tokens it wants back."""

    arrival_s: float
    blocks: tuple[int, ...]
    output_tokens: int
    conversation: int = -1
    turn: int = 0
    # Filled in by the simulation.
    server: int = -1
    attempt: int = 0
    hit_blocks: int = 0
    ttft_s: float = math.nan  # measured requests only (after the warm-up)
    first_token_s: float = math.nan  # every request, as a client sees it
    done_s: float = math.nan


class Workload(Protocol):
    """Requests in arrival order, and follow-ups to finished ones."""

    def arrivals(self) -> Iterable[Request]: ...

    def follow_up(self, done: Request, now_s: float) -> Request | None: ...


class Router(Protocol):
    def pick(self, request: Request, fleet: Fleet) -> int: ...


def held_prefix(blocks: Sequence[Hashable], held: Container[Any]) -> int:
    """How many of ``blocks``, from the first, are in ``held``."""
    n = 0
    for b in blocks:
        if b not in held:
            break
        n += 1
    return n


def prompt_bytes(blocks: Sequence[int], block_bytes: int = 64) -> bytes:
    """The prompt as bytes for a router that reads text: one ``block_bytes``
    block per block id, so equal ids give equal blocks."""
    return b"".join(b.to_bytes(8, "little") * (block_bytes // 8) for b in blocks)


def prompt_text(blocks: Sequence[int]) -> str:
    """The prompt as text, for a router and a server that read text (a
    ``SimulatedServer``): 64 bytes, 16 four-byte tokens, per block id, so
    equal ids give equal blocks."""
    return "".join(f"{b:016x}" * 4 for b in blocks)


@dataclass(frozen=True)
class KvEvent:
    """One KV cache event of a simulated server: ``stored`` (``blocks``
    now cached, in prompt order, after the cached block ``parent``, None at
    the start of a prompt), ``removed`` (``blocks`` evicted) or
    ``cleared`` (the whole cache, as at a restart)."""

    kind: str
    blocks: tuple[int, ...] = ()
    parent: int | None = None


def stored_events(blocks: Sequence[int], new: Sequence[bool]) -> list[KvEvent]:
    """The ``stored`` events of a prompt's ``blocks`` that were not cached
    (``new``): one per run, each after the block before it."""
    out, start = [], None
    for i, fresh in enumerate([*new, False]):
        if fresh and start is None:
            start = i
        elif not fresh and start is not None:
            parent = blocks[start - 1] if start else None
            out.append(KvEvent("stored", tuple(blocks[start:i]), parent))
            start = None
    return out


class Server:
    """One simulated server: its cache, its queues, its counters. With
    ``events`` on, ``admit`` and ``clear`` keep what the cache did in
    ``events`` until taken."""

    def __init__(self, index: int, model: ServerModel) -> None:
        self.index = index
        self.model = model
        self.cache: OrderedDict[int, None] = OrderedDict()
        self.waiting: deque[Request] = deque()
        self.prefills: deque[Request] = deque()
        self.prefilling: Request | None = None
        self.decoding: set[Request] = set()
        self.prefill_ends_s = 0.0
        self.running = 0
        self.up = True
        self.served = 0
        self.prompt_tokens = 0
        self.hit_tokens = 0
        self.events: list[KvEvent] | None = None

    def cached_prefix(self, blocks: Sequence[int]) -> int:
        """How many leading blocks are in the cache (without touching them)."""
        return held_prefix(blocks, self.cache)

    def prefill_s(self, blocks: Sequence[int], hit: int) -> float:
        m = self.model
        return m.prefill_base_s + m.prefill_per_token_s * (len(blocks) - hit) * m.block_tokens

    def admit(self, blocks: Sequence[int]) -> int:
        """Looks the prompt up and caches it, evicting the least recent. The
        last block is touched first, so a prompt's first blocks are evicted
        last (as vLLM frees a sequence's blocks from its end)."""
        hit = self.cached_prefix(blocks)
        cache = self.cache
        new = [b not in cache for b in blocks] if self.events is not None else None
        for b in reversed(blocks):
            if b in cache:
                cache.move_to_end(b)
            else:
                cache[b] = None
        evicted = []
        while len(cache) > self.model.cache_blocks:
            evicted.append(cache.popitem(last=False)[0])
        if self.events is not None and new is not None:
            self.events += stored_events(blocks, new)
            if evicted:
                self.events.append(KvEvent("removed", tuple(evicted)))
        return hit

    def clear(self) -> None:
        """Empties the cache, as a restart does."""
        self.cache.clear()
        if self.events is not None:
            self.events.append(KvEvent("cleared"))

    def queued_prefill_s(self, now_s: float) -> float:
        """Prefill work ahead of a new request, from the real cache."""
        ahead = max(0.0, self.prefill_ends_s - now_s) if self.prefilling else 0.0
        for r in itertools.chain(self.prefills, self.waiting):
            ahead += self.prefill_s(r.blocks, self.cached_prefix(r.blocks))
        return ahead


@dataclass
class Fleet:
    """The servers, and the time now."""

    servers: list[Server]
    now_s: float = 0.0


@dataclass(frozen=True)
class Outage:
    """Server ``server`` goes down at ``down_s`` and comes back cold at ``up_s``."""

    server: int
    down_s: float
    up_s: float


@dataclass
class Result:
    """What one run measured (requests that arrived before ``warmup_s`` are
    left out of every figure)."""

    requests: list[Request]
    servers: list[Server]
    pick_s: list[float] = field(default_factory=list)

    def measured(self) -> list[Request]:
        return [r for r in self.requests if not math.isnan(r.ttft_s)]

    @property
    def hit_rate(self) -> float:
        done = self.measured()
        total = sum(len(r.blocks) for r in done)
        return sum(r.hit_blocks for r in done) / total if total else 0.0

    def ttft_quantile(self, q: float) -> float:
        values = sorted(r.ttft_s for r in self.measured())
        if not values:
            return math.nan
        return values[min(len(values) - 1, int(q * len(values)))]

    @property
    def ttft_p50_s(self) -> float:
        return self.ttft_quantile(0.50)

    @property
    def ttft_p99_s(self) -> float:
        return self.ttft_quantile(0.99)

    def goodput(self, ttft_target_s: float) -> float:
        """Requests per second answered within the TTFT target."""
        done = self.measured()
        if not done:
            return 0.0
        span = max(r.arrival_s for r in done) - min(r.arrival_s for r in done)
        good = sum(1 for r in done if r.ttft_s <= ttft_target_s)
        return good / span if span > 0 else 0.0

    @property
    def load_spread(self) -> float:
        """Requests of the busiest server over the mean (1.0 is even)."""
        counts = [s.served for s in self.servers]
        mean = sum(counts) / len(counts)
        return max(counts) / mean if mean else 1.0

    @property
    def pick_us(self) -> float:
        return 1e6 * sum(self.pick_s) / len(self.pick_s) if self.pick_s else 0.0

    def windows(self, width_s: float) -> Iterator[tuple[float, list[Request]]]:
        """The measured requests grouped by arrival in windows of ``width_s``."""
        groups: dict[int, list[Request]] = {}
        for r in self.measured():
            groups.setdefault(int(r.arrival_s // width_s), []).append(r)
        for k in sorted(groups):
            yield k * width_s, groups[k]


_ARRIVE, _PREFILLED, _DONE, _DOWN, _UP = range(5)


def _call(router: object, name: str, *args: Any) -> None:
    hook: Callable[..., Any] | None = getattr(router, name, None)
    if hook is not None:
        hook(*args)


def simulate(
    workload: Workload,
    router: Router,
    *,
    servers: int,
    model: ServerModel,
    warmup_s: float = 0.0,
    outages: Sequence[Outage] = (),
) -> Result:
    """Runs the workload to its end through ``router``; see the module doc."""
    fleet = Fleet([Server(i, model) for i in range(servers)])
    if hasattr(router, "kv_events"):
        for server in fleet.servers:
            server.events = []
    events: list[tuple[float, int, int, Any]] = []
    order = itertools.count()
    result = Result([], fleet.servers)

    def push(at_s: float, kind: int, payload: Any) -> None:
        heapq.heappush(events, (at_s, next(order), kind, payload))

    for request in workload.arrivals():
        push(request.arrival_s, _ARRIVE, request)
    for outage in outages:
        push(outage.down_s, _DOWN, outage.server)
        push(outage.up_s, _UP, outage.server)

    def route(request: Request) -> None:
        started = time.perf_counter()
        s = router.pick(request, fleet)
        result.pick_s.append(time.perf_counter() - started)
        server = fleet.servers[s]
        if not server.up:
            raise RuntimeError(f"router picked server {s}, which is down")
        request.server = s
        request.attempt += 1
        _call(router, "started", s, request)
        server.waiting.append(request)
        admit(server)

    def admit(server: Server) -> None:
        while server.running < server.model.slots and server.waiting:
            server.running += 1
            server.prefills.append(server.waiting.popleft())
        if server.prefilling is None and server.prefills:
            request = server.prefills.popleft()
            request.hit_blocks = server.admit(request.blocks)
            if server.events:
                done, server.events = server.events, []
                _call(router, "kv_events", server.index, done)
            server.prefilling = request
            server.prefill_ends_s = fleet.now_s + server.prefill_s(
                request.blocks, request.hit_blocks
            )
            push(server.prefill_ends_s, _PREFILLED, (request, request.attempt))

    while events:
        now, _, kind, payload = heapq.heappop(events)
        fleet.now_s = now
        if kind == _ARRIVE:
            result.requests.append(payload)
            route(payload)
        elif kind == _PREFILLED:
            request, attempt = payload
            if attempt != request.attempt:
                continue  # its server went down meanwhile
            server = fleet.servers[request.server]
            server.prefilling = None
            server.decoding.add(request)
            request.first_token_s = now - request.arrival_s
            if request.arrival_s >= warmup_s:
                request.ttft_s = request.first_token_s
            _call(router, "first_token", request.server, request, request.first_token_s)
            decode_s = request.output_tokens * model.decode_per_token_s
            push(now + decode_s, _DONE, (request, attempt))
            admit(server)
        elif kind == _DONE:
            request, attempt = payload
            if attempt != request.attempt or request not in fleet.servers[request.server].decoding:
                continue  # lost with its server
            server = fleet.servers[request.server]
            server.decoding.discard(request)
            request.done_s = now
            server.running -= 1
            server.served += 1
            tokens = len(request.blocks) * model.block_tokens
            server.prompt_tokens += tokens
            server.hit_tokens += request.hit_blocks * model.block_tokens
            _call(router, "finished", request.server, request, now - request.arrival_s)
            admit(server)
            follow = workload.follow_up(request, now)
            if follow is not None:
                push(follow.arrival_s, _ARRIVE, follow)
        elif kind == _DOWN:
            server = fleet.servers[payload]
            server.up = False
            _call(router, "set_available", payload, False)
            # Requests that had no first token yet are sent again; those
            # decoding are lost with the server, as their clients would see.
            again = list(server.waiting) + list(server.prefills)
            if server.prefilling is not None:
                again.append(server.prefilling)
            for request in server.decoding:
                _call(router, "finished", payload, request, None)
            server.waiting.clear()
            server.prefills.clear()
            server.prefilling = None
            server.decoding.clear()
            server.running = 0
            server.clear()
            for request in again:
                _call(router, "finished", payload, request, None)
                request.hit_blocks = 0
                route(request)
        elif kind == _UP:
            fleet.servers[payload].up = True
            back = fleet.servers[payload]
            if back.events:
                done, back.events = back.events, []
                _call(router, "kv_events", payload, done)
            _call(router, "set_available", payload, True)
    return result


class SimClock:
    """The simulation's time as a balancer's ``clock=`` reads it (seconds):
    a ``BalancerRouter`` given it keeps it at the time of each pick."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


class BalancerRouter:
    """A langcluster balancer as a simulated router: servers are nodes named
    ``s0``, ``s1``...; ``prompt`` turns a request into what ``pick`` takes
    (None for balancers that take no key). ``clock`` (the one given to the
    balancer) follows the simulation's time: give one to a ``PrefixAware``
    (``PrefixAware(clock=clock)``), whose prefill load fades with time, or it
    reads the wall clock while the simulation runs hours in seconds. With ``exact``, the servers'
    KV events reach the balancer (a ``PrefixAware`` whose blocks are the
    prompts' blocks: ``prompt_bytes``' 64 bytes, or 16 token ids, a block)
    as vLLM would publish them. Each request's time to first token goes
    back to the balancer with its end when it takes one (``PrefixAware``)."""

    def __init__(
        self,
        balancer: Any,
        servers: int,
        prompt: Callable[[Request], object] | None = None,
        *,
        clock: SimClock | None = None,
        exact: bool = False,
    ) -> None:
        self.balancer = balancer
        self.prompt = prompt
        self.clock = clock
        self.ids = [f"s{i}" for i in range(servers)]
        self.ttft = hasattr(balancer, "apply_kv_events")
        if exact:
            self.kv_events = self._kv_events
        balancer.update([_Node(i) for i in self.ids])

    def pick(self, request: Request, fleet: Fleet) -> int:
        if self.clock is not None:
            self.clock.now_s = fleet.now_s
        node = (
            self.balancer.pick()
            if self.prompt is None
            else self.balancer.pick(self.prompt(request))
        )
        return int(node.id[1:])

    def started(self, server: int, request: Request) -> None:
        self.balancer.begin(self.ids[server])

    def finished(self, server: int, request: Request, latency_s: float | None) -> None:
        if latency_s is None:
            self.balancer.release(self.ids[server])
        elif self.ttft and not math.isnan(request.first_token_s):
            self.balancer.end(self.ids[server], latency_s, ttft_s=request.first_token_s)
        else:
            self.balancer.end(self.ids[server], latency_s)

    def set_available(self, server: int, up: bool) -> None:
        self.balancer.set_available(self.ids[server], up)

    def _kv_events(self, server: int, events: list[KvEvent]) -> None:
        from langcluster.testing.kv_publisher import encode_events

        self.balancer.apply_kv_events(self.ids[server], encode_events(events))


@dataclass(frozen=True)
class _Node:
    id: str
    weight: float = 1.0
