"""The `cached` decorator: keys from arguments, single flight for threads and
asyncio, exceptions never cached, recursion without deadlock."""

from __future__ import annotations

import asyncio
import enum
import inspect
import threading
import time

import pytest

from langcluster import MemoryCache, cached
from tests.support.helpers import ManualClock


def test_hits_skip_the_function_and_keys_follow_the_arguments() -> None:
    calls: list[tuple[object, ...]] = []
    cache = MemoryCache(100)

    @cached(cache)
    def f(*args: object, **kwargs: object) -> tuple[object, ...]:
        calls.append(args + tuple(sorted(kwargs.items())))
        return args

    assert f("a", 1) == ("a", 1)
    assert f("a", 1) == ("a", 1)
    f(1)
    f(True)  # bool and int are different arguments
    f(1.0)
    f(None)
    f(b"a")
    f(("nested", (1, 2.5)))
    f(("nested", (1, 2.5)))
    f(x=1, y=2)
    f(y=2, x=1)  # keyword order does not matter
    f(("x", 1), ("y", 2))  # but keywords never collide with positional pairs
    assert len(calls) == 9
    assert len(cache) == 9
    assert f.__name__ == "f"
    assert f.__wrapped__ is not None  # type: ignore[attr-defined]


def test_two_functions_sharing_a_cache_never_share_entries() -> None:
    cache = MemoryCache(10)

    @cached(cache)
    def double(x: int) -> int:
        return 2 * x

    @cached(cache)
    def square(x: int) -> int:
        return x * x

    assert (double(3), square(3)) == (6, 9)
    assert sorted(cache.keys()) == [
        ("test_two_functions_sharing_a_cache_never_share_entries.<locals>.double", (3,)),
        ("test_two_functions_sharing_a_cache_never_share_entries.<locals>.square", (3,)),
    ]


def test_ttl_invalidate_and_key_function() -> None:
    clock = ManualClock()
    cache = MemoryCache(10, clock=clock)
    counter = iter(range(100))

    @cached(cache, ttl=0.05)
    def tick(name: str) -> int:
        return next(counter)

    assert tick("a") == tick("a") == 0
    clock.advance(0.06)
    assert tick("a") == 1
    assert tick.invalidate("a") is True  # type: ignore[attr-defined]
    assert tick.invalidate("a") is False  # type: ignore[attr-defined]
    assert tick("a") == 2

    @cached(cache, key_fn=lambda request: request["id"])
    def handle(request: dict[str, object]) -> object:
        return request["body"]

    assert handle({"id": 7, "body": "first"}) == "first"
    assert handle({"id": 7, "body": "second"}) == "first"


def test_enum_arguments_are_normalised() -> None:
    class Model(str, enum.Enum):
        SMALL = "small"

    cache = MemoryCache(10)
    calls = []

    @cached(cache)
    def run(model: str) -> str:
        calls.append(model)
        return model

    run(Model.SMALL)
    run("small")
    assert len(calls) == 1


@pytest.mark.parametrize("arg", [[1], {"a": 1}, object(), {1, 2}])
def test_unsupported_arguments_name_their_position(arg: object) -> None:
    @cached(MemoryCache(10))
    def f(a: object, b: object) -> None:
        return None

    with pytest.raises(TypeError, match="argument 1 is a"):
        f("ok", arg)


def test_a_key_function_returning_a_bad_key_is_named() -> None:
    @cached(MemoryCache(10), key_fn=lambda request: [request])
    def handle(request: str) -> str:
        return request

    with pytest.raises(TypeError, match="key_fn: the key function returned a list"):
        handle("x")


def test_threads_hammering_many_keys_get_right_answers() -> None:
    cache = MemoryCache(64, shards=4)  # far fewer entries than keys: constant eviction
    calls = 0
    lock = threading.Lock()

    @cached(cache)
    def square(x: int) -> int:
        nonlocal calls
        with lock:
            calls += 1
        return x * x

    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for i in range(20_000):
                x = (i * 7919 + seed) % 500
                assert square(x) == x * x
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(cache) <= 64
    assert calls < 4 * 20_000


def test_decorator_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="cache"):
        cached({})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        cached(MemoryCache(10), ttl=-1)(lambda: None)
    with pytest.raises(TypeError, match="key_fn"):
        cached(MemoryCache(10), key_fn=5)  # type: ignore[arg-type]


def test_threads_compute_a_missing_key_once() -> None:
    cache = MemoryCache(10)
    calls = 0
    entered = threading.Event()

    @cached(cache)
    def slow(x: int) -> int:
        nonlocal calls
        calls += 1
        entered.set()
        time.sleep(0.1)
        return x * 10

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(slow(4))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [40] * 8
    assert calls == 1


def test_an_exception_reaches_every_waiter_and_is_not_cached() -> None:
    cache = MemoryCache(10)
    calls = 0
    go = threading.Event()

    @cached(cache)
    def fails(x: int) -> int:
        nonlocal calls
        calls += 1
        go.wait(1)
        raise ValueError(f"boom {calls}")

    errors: list[str] = []

    def call() -> None:
        try:
            fails(1)
        except ValueError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    go.set()
    for t in threads:
        t.join()
    assert errors == ["boom 1"] * 5
    assert len(cache) == 0
    with pytest.raises(ValueError, match="boom 2"):
        fails(1)


def test_recursion_does_not_deadlock() -> None:
    cache = MemoryCache(1000)

    @cached(cache)
    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert fib(80) == 23416728348467685


def test_a_call_that_reenters_its_own_key_computes_directly() -> None:
    cache = MemoryCache(10)
    depth = 0

    @cached(cache)
    def again(x: int) -> int:
        nonlocal depth
        depth += 1
        if depth < 3:
            return again(x) + 1
        return 100

    assert again(1) == 102


@pytest.mark.asyncio
async def test_async_single_flight_and_hits() -> None:
    cache = MemoryCache(10)
    calls = 0

    @cached(cache)
    async def fetch(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return x + 1

    assert await asyncio.gather(*(fetch(1) for _ in range(10))) == [2] * 10
    assert calls == 1
    assert await fetch(1) == 2  # a hit
    assert calls == 1
    # A hit is a coroutine like a miss: a task can be made of either.
    assert inspect.iscoroutinefunction(fetch)
    assert await asyncio.create_task(fetch(1)) == 2
    assert await asyncio.create_task(fetch(2)) == 3
    assert fetch.invalidate(2) is True  # type: ignore[attr-defined]
    assert fetch.cache is not None  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_async_exception_reaches_every_waiter_and_is_not_cached() -> None:
    cache = MemoryCache(10)
    calls = 0

    @cached(cache)
    async def broken(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        raise KeyError(x)

    results = await asyncio.gather(*(broken(1) for _ in range(4)), return_exceptions=True)
    assert all(isinstance(r, KeyError) for r in results)
    assert calls == 1
    assert len(cache) == 0


@pytest.mark.asyncio
async def test_a_cancelled_waiter_leaves_the_computation_running() -> None:
    cache = MemoryCache(10)

    @cached(cache)
    async def slow(x: int) -> int:
        await asyncio.sleep(0.05)
        return x

    leader = asyncio.create_task(slow(3))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(slow(3))
    await asyncio.sleep(0.01)
    waiter.cancel()
    assert await leader == 3
    with pytest.raises(asyncio.CancelledError):
        await waiter


@pytest.mark.asyncio
async def test_a_cancelled_leader_hands_over_to_a_waiter() -> None:
    cache = MemoryCache(10)
    calls = 0

    @cached(cache)
    async def slow(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return x

    leader = asyncio.create_task(slow(5))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(slow(5))
    await asyncio.sleep(0.01)
    leader.cancel()
    assert await waiter == 5
    assert calls == 2
    with pytest.raises(asyncio.CancelledError):
        await leader


@pytest.mark.asyncio
async def test_async_recursion_does_not_deadlock() -> None:
    cache = MemoryCache(100)

    @cached(cache)
    async def depth(n: int) -> int:
        return 0 if n == 0 else 1 + await depth(n - 1)

    assert await depth(30) == 30
