"""Stateful property tests: `lru` and `fifo` match a Python model exactly;
every policy stays within capacity and agrees with itself on membership."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from langcluster import MemoryCache

KEYS = st.one_of(st.integers(-3, 12), st.sampled_from(["a", "b", "c", "d"]), st.just(b"x"))
CAPACITY = 5


class ModelledCache(RuleBasedStateMachine):
    """One shard, so the order of eviction is the model's exactly."""

    policy = "lru"

    def __init__(self) -> None:
        super().__init__()
        self.cache = MemoryCache(CAPACITY, policy=self.policy, shards=1)
        self.model: OrderedDict[object, int] = OrderedDict()
        self.counter = 0

    def _use(self, key: object) -> None:
        if self.policy == "lru":
            self.model.move_to_end(key)

    @rule(key=KEYS)
    def get(self, key: object) -> None:
        expected = self.model.get(key, "miss")
        assert self.cache.get(key, "miss") == expected
        if key in self.model:
            self._use(key)

    @rule(key=KEYS)
    def set(self, key: object) -> None:
        self.counter += 1
        self.cache.set(key, self.counter)
        if key in self.model:
            self.model[key] = self.counter
            self._use(key)
        else:
            if len(self.model) == CAPACITY:
                self.model.popitem(last=False)
            self.model[key] = self.counter

    @rule(key=KEYS)
    def delete(self, key: object) -> None:
        assert self.cache.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @precondition(lambda self: self.counter % 7 == 3)
    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()

    @invariant()
    def same_contents(self) -> None:
        assert len(self.cache) == len(self.model)
        assert sorted(map(repr, self.cache.keys())) == sorted(map(repr, self.model))


class FifoModel(ModelledCache):
    policy = "fifo"


class BoundedCache(RuleBasedStateMachine):
    """W-TinyLFU and LFU decide what to keep themselves; check what holds for
    any policy: never above capacity, and a key it reports is readable."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = MemoryCache(CAPACITY * 2, policy="tinylfu", shards=2)

    @rule(key=KEYS, value=st.integers())
    def set(self, key: object, value: int) -> None:
        self.cache.set(key, value)
        assert self.cache.get(key) == value or key not in self.cache

    @rule(key=KEYS)
    def get(self, key: object) -> None:
        self.cache.get(key)

    @rule(key=KEYS)
    def delete(self, key: object) -> None:
        self.cache.delete(key)
        assert key not in self.cache

    @invariant()
    def within_capacity(self) -> None:
        keys = self.cache.keys()
        assert len(keys) == len(self.cache) <= CAPACITY * 2
        for key in keys:
            assert key in self.cache


class LfuBounded(BoundedCache):
    def __init__(self) -> None:
        super().__init__()
        self.cache = MemoryCache(CAPACITY * 2, policy="lfu", shards=2)


TestLru = ModelledCache.TestCase
TestFifo = FifoModel.TestCase
TestTinyLfuBounded = BoundedCache.TestCase
TestLfuBounded = LfuBounded.TestCase
