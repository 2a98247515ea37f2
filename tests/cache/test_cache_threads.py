"""Four threads x 100k mixed operations leave the cache consistent."""

from __future__ import annotations

import random
import threading

import pytest

from langcluster import MemoryCache

OPS = 100_000


@pytest.mark.parametrize("policy", ["tinylfu", "lru", "lfu", "fifo"])
def test_threads_leave_the_cache_consistent(policy: str) -> None:
    cache = MemoryCache(500, policy=policy, shards=4)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for i in range(OPS):
                key = rng.randrange(2000)
                op = rng.random()
                if op < 0.6:
                    value = cache.get(key)
                    # A value is only ever stored under its own key.
                    assert value is None or value[0] == key
                elif op < 0.9:
                    cache.set(key, (key, seed, i), ttl=None if op < 0.85 else 0.001)
                elif op < 0.98:
                    cache.delete(key)
                else:
                    cache.get_many([key, key + 1])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    keys = cache.keys()
    assert len(keys) == len(set(keys)) <= 500
    for key in keys:
        value = cache.get(key)
        assert value is None or value[0] == key
    stats = cache.stats()
    assert stats["size"] == len(cache) <= 500
    assert stats["hits"] + stats["misses"] >= int(4 * OPS * 0.6 * 0.9)
