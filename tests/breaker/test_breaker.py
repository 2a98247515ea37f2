"""CircuitBreaker from Python: call, acall, decorator, context managers,
record/ignore rules, listeners, errors, and no queueing of concurrent calls."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from langcluster import CircuitBreaker, CircuitOpenError, LangClusterError


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fail() -> None:
    raise ConnectionError("node down")


def tripped(clock: Clock, **kwargs: object) -> CircuitBreaker:
    kwargs.setdefault("max_open_timeout_s", None)  # an exact open time
    breaker = CircuitBreaker(
        "llm", minimum_calls=2, window_size=4, open_timeout_s=5.0, clock=clock, **kwargs
    )
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    assert breaker.state == "open"
    return breaker


def test_call_returns_results_and_opens_on_failures() -> None:
    clock = Clock()
    breaker = tripped(clock)
    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(lambda: "never runs")
    assert isinstance(refused.value, LangClusterError)
    assert refused.value.name == "llm"
    assert refused.value.retry_after_s == pytest.approx(5.0)
    clock.now += 5.0
    assert breaker.call(lambda x: x * 2, 21) == 42
    assert breaker.state == "half_open"  # one of five trials has reported


@pytest.mark.parametrize("start", [1000.0, 1.8e9, 1.7e10])
def test_a_clock_of_any_origin_keeps_the_breaker_open_for_its_time(start: float) -> None:
    # 1.8e9 is time.time(): past the 40 bits of milliseconds a deadline
    # is kept in, so one once wrapped and opened the breaker at once.
    clock = Clock(start)
    breaker = tripped(clock)
    clock.now += 4.9
    assert not breaker.allow()
    assert breaker.metrics()["retry_after_s"] == pytest.approx(0.1, abs=0.002)
    clock.now += 0.102  # deadlines are kept in whole milliseconds
    assert breaker.allow()


def test_half_open_closes_after_successful_trials_and_reopens_on_failure() -> None:
    clock = Clock()
    breaker = tripped(clock, half_open_max_calls=2)
    clock.now += 5.0
    breaker.call(lambda: None)
    breaker.call(lambda: None)
    assert breaker.state == "closed"
    breaker = tripped(clock, half_open_max_calls=2)
    clock.now += 5.0
    breaker.call(lambda: None)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    assert breaker.state == "open"  # 1 of 2 trials failed: 50 % >= 50 %


def test_record_ignore_and_other_exceptions() -> None:
    breaker = CircuitBreaker(
        minimum_calls=2, window_size=2, record=ConnectionError, ignore=[TimeoutError]
    )

    def raise_(exc: BaseException) -> None:
        raise exc

    for exc in (ValueError("client error"), TimeoutError(), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            breaker.call(raise_, exc)
    metrics = breaker.metrics()
    # ValueError is not recorded as a failure: it counts as a success (the
    # service answered); ignored errors and interrupts count as nothing.
    assert (metrics["calls"], metrics["failures"]) == (1, 0)
    with pytest.raises(ConnectionError):
        breaker.call(raise_, ConnectionError())
    assert breaker.state == "open"


def test_allow_and_record_by_hand_and_release() -> None:
    clock = Clock()
    breaker = tripped(clock, half_open_max_calls=1)
    assert breaker.allow() is False
    clock.now += 5.0
    assert breaker.allow() is True
    assert breaker.allow() is False  # the one trial permit is out
    breaker.release()
    assert breaker.allow() is True
    breaker.record_success(latency_s=0.01)
    assert breaker.state == "closed"


def test_slow_calls_open_the_breaker() -> None:
    breaker = CircuitBreaker(
        minimum_calls=2,
        window_size=2,
        slow_call_duration_s=0.02,
        slow_call_rate_threshold=1.0,
    )
    breaker.call(time.sleep, 0.03)
    breaker.record_success(latency_s=0.5)
    assert breaker.state == "open"
    assert breaker.metrics()["slow_calls"] == 2


def test_decorator_and_context_managers_sync_and_async() -> None:
    clock = Clock()
    breaker = CircuitBreaker(minimum_calls=4, window_size=4, clock=clock)

    @breaker
    def sync_ok(x: int) -> int:
        return x + 1

    @breaker
    async def async_fail() -> None:
        raise ConnectionError

    assert sync_ok(1) == 2
    assert sync_ok.__name__ == "sync_ok"
    with breaker:
        pass

    async def scenario() -> None:
        async with breaker:
            pass
        with pytest.raises(ConnectionError):
            await async_fail()
        with pytest.raises(ConnectionError):
            await async_fail()
        with pytest.raises(CircuitOpenError):
            async with breaker:
                pass
        with pytest.raises(CircuitOpenError):
            await breaker.acall(asyncio.sleep, 0)

    asyncio.run(scenario())
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError), breaker:
        pass


def test_listeners_see_every_transition_and_a_raising_one_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    breaker = CircuitBreaker("svc", minimum_calls=1, window_size=1, clock=clock)
    seen: list[tuple[str, str, str]] = []

    @breaker.on_state_change
    def watch(old: str, new: str) -> None:
        # Called outside any lock: the breaker can be used from here.
        seen.append((old, new, breaker.state))

    @breaker.on_state_change
    def broken(old: str, new: str) -> None:
        raise RuntimeError("listener bug")

    with caplog.at_level(logging.ERROR, logger="langcluster.breaker"):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
        breaker.force_open()
        breaker.disable()
        breaker.reset()
    assert seen == [
        ("closed", "open", "open"),
        ("open", "forced_open", "forced_open"),
        ("forced_open", "disabled", "disabled"),
        ("disabled", "closed", "closed"),
    ]
    assert "listener of breaker 'svc' raised" in caplog.text


def test_forced_open_and_disabled() -> None:
    breaker = CircuitBreaker()
    breaker.force_open()
    with pytest.raises(CircuitOpenError, match="forced open"):
        breaker.call(lambda: None)
    breaker.disable()
    for _ in range(50):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    assert breaker.state == "disabled"
    breaker.reset()
    assert breaker.state == "closed"
    assert breaker.metrics()["calls"] == 0


def test_concurrent_callers_never_queue_on_the_breaker() -> None:
    # Eight calls meet inside the breaker at once: were calls serialised,
    # the first would wait at the barrier for ever (and time out).
    breaker = CircuitBreaker()
    inside = threading.Barrier(8, timeout=30)
    met: list[int] = []

    def meet() -> None:
        met.append(inside.wait())

    threads = [threading.Thread(target=breaker.call, args=(meet,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(met) == list(range(8))
    assert breaker.metrics()["calls"] == 8


def test_half_open_admits_exactly_its_permits_across_threads() -> None:
    clock = Clock()
    breaker = tripped(clock, half_open_max_calls=3)
    clock.now += 5.0
    admitted = []
    gate = threading.Barrier(8)

    def hammer() -> None:
        gate.wait()
        admitted.append(sum(breaker.allow() for _ in range(500)))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 3


def test_backoff_grows_up_to_the_cap() -> None:
    clock = Clock()
    breaker = tripped(clock, half_open_max_calls=1, max_open_timeout_s=12.0)
    waits = []
    for _ in range(4):
        waits.append(breaker.metrics()["retry_after_s"])
        clock.now += waits[-1] + 1e-6  # past the deadline despite float rounding
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    for wait, nominal in zip(waits, [5, 10, 12, 12], strict=True):
        assert 0.8 * nominal <= wait <= nominal + 0.001


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"failure_rate_threshold": 0.0}, ValueError, "failure_rate_threshold"),
        ({"failure_rate_threshold": 1.5}, ValueError, "failure_rate_threshold"),
        ({"slow_call_rate_threshold": -0.1}, ValueError, "slow_call_rate_threshold"),
        ({"window": "sliding"}, ValueError, "window"),
        ({"window_size": 0}, ValueError, "window_size"),
        ({"window_size": 2.5}, TypeError, "window_size"),
        ({"minimum_calls": 0}, ValueError, "minimum_calls"),
        ({"minimum_calls": 200}, ValueError, "minimum_calls"),
        ({"open_timeout_s": 0}, ValueError, "open_timeout_s"),
        ({"open_timeout_s": -1}, ValueError, "open_timeout_s"),
        ({"half_open_max_calls": 0}, ValueError, "half_open_max_calls"),
        ({"max_open_timeout_s": 1.0}, ValueError, "max_open_timeout_s"),
        ({"slow_call_duration_s": 0}, ValueError, "slow_call_duration_s"),
        ({"record": [ValueError, 3]}, TypeError, "record"),
        ({"ignore": "oops"}, TypeError, "ignore"),
        ({"clock": 5}, TypeError, "clock"),
        ({"clock": lambda: "now"}, TypeError, "clock"),
    ],
)
def test_bad_configuration_is_named(
    kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


def test_repr_and_name() -> None:
    assert repr(CircuitBreaker("db")) == "CircuitBreaker(name=\"db\", state='closed')"
    assert CircuitBreaker().name is None
