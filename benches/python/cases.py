"""The benchmark cases, defined once: each is a group (the algorithm), a
contender (floor, langcluster, pure Python, peer) and a zero-argument
callable doing one pick. Used by the pytest-benchmark suite and by report.py."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import baselines

import langcluster as lc

NODES = 8
RING_NODES = 100
KEY = "conversation-1234:system-prompt-v2"


Call = tuple[Callable[..., Any], tuple[Any, ...]]


@dataclass(frozen=True)
class Case:
    group: str
    contender: str  # "floor" | "langcluster" | "pure-python" | a peer's name
    make: Callable[[], Call]  # the function to time and its arguments


def nodes(n: int = NODES, weighted: bool = False) -> list[lc.Node]:
    return [
        lc.Node(f"node-{i}", "127.0.0.1", 9000 + i, weight=(1 + i % 4) if weighted else 1)
        for i in range(n)
    ]


def floor() -> Call:
    return next, (itertools.cycle(nodes()),)


def _warm(b: Any) -> Any:
    """Gives every node a latency sample, as a running service would have."""
    for i, n in enumerate(b.nodes if hasattr(b, "nodes") else []):
        if isinstance(b, lc.Balancer):
            b.begin(n.id)
            b.end(n.id, 0.001 * (1 + i % 5))
        else:
            b.observe(n.id, 0.001 * (1 + i % 5))
    return b


def _peer_uhashring() -> Call:
    from uhashring import HashRing

    ring = HashRing(nodes=[n.id for n in nodes(RING_NODES)])
    return ring.get_node, (KEY,)


def pick(balancer: Any, *args: Any) -> Call:
    return balancer.pick, args


def prompts(n: int = 64, size: int = 8192) -> list[str]:
    """8 KB prompts: 16 system prompts of 6 KB, each with its own questions."""
    systems = [(f"[system prompt {g}] " * 400)[:6144] for g in range(16)]
    return [(systems[i % 16] + f"<question {i}> " * 200)[:size] for i in range(n)]


def pick_prompts(balancer: Any) -> Call:
    """Picks for 64 prompts in turn (the cycle's step is in the floor too)."""
    turn = itertools.cycle(prompts())
    return (lambda: balancer.pick(next(turn))), ()


CASES = [
    Case("floor", "floor", floor),
    Case("round_robin", "langcluster", lambda: pick(lc.RoundRobin(nodes()))),
    Case("round_robin", "pure-python", lambda: pick(baselines.RoundRobin(nodes()))),
    Case(
        "weighted_round_robin",
        "langcluster",
        lambda: pick(lc.WeightedRoundRobin(nodes(weighted=True))),
    ),
    Case(
        "weighted_round_robin",
        "pure-python",
        lambda: pick(baselines.WeightedRoundRobin(nodes(weighted=True))),
    ),
    Case("least_connections", "langcluster", lambda: pick(lc.LeastConnections(nodes()))),
    Case("least_connections", "pure-python", lambda: pick(baselines.LeastConnections(nodes()))),
    Case("power_of_two", "langcluster", lambda: pick(lc.PowerOfTwoChoices(nodes()))),
    Case("power_of_two", "pure-python", lambda: pick(baselines.PowerOfTwoChoices(nodes()))),
    Case("adaptive", "langcluster", lambda: pick(_warm(lc.Adaptive(nodes())))),
    Case("adaptive", "pure-python", lambda: pick(_warm(baselines.Adaptive(nodes())))),
    Case("random", "langcluster", lambda: pick(lc.Random(nodes()))),
    Case("random", "pure-python", lambda: pick(baselines.Random(nodes()))),
    Case("consistent_hash", "langcluster", lambda: pick(lc.ConsistentHash(nodes(RING_NODES)), KEY)),
    Case(
        "consistent_hash",
        "pure-python",
        lambda: pick(baselines.ConsistentHash(nodes(RING_NODES)), KEY),
    ),
    Case("consistent_hash", "uhashring", _peer_uhashring),
    Case("prefix_aware_8kb", "langcluster", lambda: pick_prompts(lc.PrefixAware(nodes()))),
    Case("prefix_aware_8kb", "pure-python", lambda: pick_prompts(baselines.PrefixAware(nodes()))),
]
