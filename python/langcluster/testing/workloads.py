"""Seeded workloads for ``langcluster.testing.fleet``: the shapes that
prefix-aware routers are measured on.

- ``SharedPrefix``: SGLang's generated-shared-prefix benchmark: groups of
  prompts sharing a long system prompt, each with its own question.
- ``MultiTurn``: chats that grow turn by turn (each turn's prompt is the
  previous one, its answer and a new message) and interleave.
- ``GroupedUsers``: llm-d's shape: many groups with a long shared prefix,
  a few users per group sending long queries.

Arrivals are Poisson at ``rate`` per second (new conversations, for
``MultiTurn``). ``distinct_prefix_tokens`` is the reusable content in all,
to size the servers' caches for a given pressure.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from langcluster.testing.fleet import Request

__all__ = ["GroupedUsers", "MultiTurn", "SharedPrefix"]


def _blocks(tokens: int, block_tokens: int) -> int:
    if tokens % block_tokens:
        raise ValueError(f"tokens: {tokens} is not a whole number of {block_tokens}-token blocks")
    return tokens // block_tokens


@dataclass
class SharedPrefix:
    """SGLang's defaults: 64 groups x 16 prompts, a 2,048-token system
    prompt, 128-token questions, 256-token answers; ``rounds`` asks every
    prompt again with a new question."""

    rate: float
    groups: int = 64
    prompts_per_group: int = 16
    system_tokens: int = 2048
    question_tokens: int = 128
    output_tokens: int = 256
    rounds: int = 1
    seed: int = 0
    block_tokens: int = 16

    @property
    def distinct_prefix_tokens(self) -> int:
        return self.groups * self.system_tokens

    def arrivals(self) -> Iterator[Request]:
        rng = random.Random(self.seed)
        ids = itertools.count()
        system = [
            tuple(itertools.islice(ids, _blocks(self.system_tokens, self.block_tokens)))
            for _ in range(self.groups)
        ]
        question = _blocks(self.question_tokens, self.block_tokens)
        prompts = [g for g in range(self.groups) for _ in range(self.prompts_per_group)]
        now = 0.0
        for _ in range(self.rounds):
            rng.shuffle(prompts)
            for g in prompts:
                now += rng.expovariate(self.rate)
                own = tuple(itertools.islice(ids, question))
                yield Request(now, system[g] + own, self.output_tokens)

    def follow_up(self, done: Request, now_s: float) -> Request | None:
        return None


@dataclass
class MultiTurn:
    """Conversations start at ``rate`` per second; each turn adds the last
    answer and a ``user_tokens`` message to the prompt; the next turn comes
    an exponential ``think_s`` after the answer. Every conversation starts
    with the same ``system_tokens``."""

    rate: float
    conversations: int = 256
    turns: int = 5
    system_tokens: int = 256
    user_tokens: int = 512
    output_tokens: int = 64
    think_s: float = 2.0
    seed: int = 0
    block_tokens: int = 16
    _ids: Iterator[int] = field(default_factory=itertools.count, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    @property
    def distinct_prefix_tokens(self) -> int:
        per_turn = self.user_tokens + self.output_tokens
        return self.system_tokens + self.conversations * self.turns * per_turn

    def _new(self, tokens: int) -> tuple[int, ...]:
        return tuple(itertools.islice(self._ids, _blocks(tokens, self.block_tokens)))

    def arrivals(self) -> Iterator[Request]:
        self._rng.seed(self.seed)
        system = self._new(self.system_tokens)
        now = 0.0
        for c in range(self.conversations):
            now += self._rng.expovariate(self.rate)
            yield Request(now, system + self._new(self.user_tokens), self.output_tokens, c, 0)

    def follow_up(self, done: Request, now_s: float) -> Request | None:
        if done.turn + 1 >= self.turns:
            return None
        blocks = done.blocks + self._new(self.output_tokens) + self._new(self.user_tokens)
        at = now_s + self._rng.expovariate(1.0 / self.think_s)
        return Request(at, blocks, self.output_tokens, done.conversation, done.turn + 1)


@dataclass
class GroupedUsers:
    """llm-d's shape: 150 groups with a 6,000-token prefix, 5 users per
    group, each sending ``queries_per_user`` 1,200-token queries."""

    rate: float
    groups: int = 150
    users_per_group: int = 5
    queries_per_user: int = 4
    prefix_tokens: int = 6000
    query_tokens: int = 1200
    output_tokens: int = 256
    seed: int = 0
    block_tokens: int = 16

    @property
    def distinct_prefix_tokens(self) -> int:
        return self.groups * self.prefix_tokens

    def arrivals(self) -> Iterator[Request]:
        rng = random.Random(self.seed)
        ids = itertools.count()
        prefix = [
            tuple(itertools.islice(ids, _blocks(self.prefix_tokens, self.block_tokens)))
            for _ in range(self.groups)
        ]
        query = _blocks(self.query_tokens, self.block_tokens)
        senders = [
            g
            for g in range(self.groups)
            for _ in range(self.users_per_group * self.queries_per_user)
        ]
        rng.shuffle(senders)
        now = 0.0
        for g in senders:
            now += rng.expovariate(self.rate)
            yield Request(now, prefix[g] + tuple(itertools.islice(ids, query)), self.output_tokens)

    def follow_up(self, done: Request, now_s: float) -> Request | None:
        return None
