"""The memory cache in front of a slow model call.

Run with `python examples/cache_demo.py`. Prompts are drawn from a Zipf
distribution, as repeated questions are in a real service; a simulated model
takes 20 ms per answer. The decorated call computes each missing prompt
once, even when many requests for it arrive together.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import langcluster as lc

PROMPTS = [f"question {i}" for i in range(5_000)]
WEIGHTS = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(PROMPTS))))
REQUESTS, CONCURRENCY = 3_000, 64
model_calls = 0

cache = lc.MemoryCache(500, policy="tinylfu", ttl=60)


@lc.cached(cache)
async def answer(prompt: str, temperature: float = 0.0) -> str:
    global model_calls
    model_calls += 1
    await asyncio.sleep(0.02)  # the model server
    return f"answer to {prompt!r}"


async def main() -> None:
    rng = random.Random(7)
    prompts = rng.choices(PROMPTS, cum_weights=WEIGHTS, k=REQUESTS)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)

    async def worker() -> None:
        while not queue.empty():
            await answer(queue.get_nowait())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started

    stats = cache.stats()
    distinct = len(set(prompts))
    print(f"{REQUESTS} requests, {distinct} distinct prompts, cache of {cache.capacity}")
    print(f"model calls: {model_calls} (without the cache: {REQUESTS})")
    print(f"hit ratio: {stats['hit_ratio']:.1%}, evictions: {stats['evictions']}")
    uncached_s = REQUESTS * 0.02 / CONCURRENCY
    print(f"elapsed: {elapsed:.2f} s (uncached, at this concurrency: {uncached_s:.2f} s)")
    assert model_calls < REQUESTS


if __name__ == "__main__":
    asyncio.run(main())
