"""The core's histogram, which the Prometheus recorder fills."""

from __future__ import annotations

import itertools
import math
import threading

import pytest

from langcluster._core import Histogram


def test_values_fall_in_the_first_bucket_whose_bound_holds_them() -> None:
    histogram = Histogram([0.1, 1, 10])
    for value in (0.05, 0.1, 0.5, 1, 5, 50, -1, math.inf, math.nan):
        histogram.observe(value)
    counts, total = histogram.snapshot()
    assert counts == [3, 2, 1, 2]
    assert total == math.inf
    assert histogram.bounds == [0.1, 1.0, 10.0]


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ([], "bounds: must hold 1 to 1000 bounds"),
        ([1, 1], "bounds: must be strictly increasing"),
        ([math.nan], "bounds: must be finite"),
        ([1, "2"], "bounds: must be a number"),
        (3, "bounds: must be an iterable of numbers"),
        (itertools.count(), "bounds: must hold 1 to 1000 bounds"),  # refused without reading on
    ],
)
def test_bad_bounds_are_refused_by_name(bounds: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError)) as caught:
        Histogram(bounds)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


def test_threads_recording_at_once_lose_nothing() -> None:
    histogram = Histogram([1.0])

    def record() -> None:
        for _ in range(20_000):
            histogram.observe(0.5)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert histogram.snapshot() == ([80_000, 0], 40_000.0)


def test_a_call_timer_files_each_duration_under_its_outcome() -> None:
    from langcluster._core import CallTimer

    timer = CallTimer([0.001, 60.0], ["success", "error"])
    token = timer.began("chat")
    timer.ended(token, "success", None)
    timer.ended(token, "error", ValueError("x"))
    timer.ended(token, "not an outcome", None)  # not counted
    timer.ended(timer.began() + 10**12, "success")  # a token from the future: 0 s
    found = dict(timer.snapshot())
    assert sum(found["success"][0]) == 2
    assert sum(found["error"][0]) == 1
    assert found["success"][0][2] == 0  # nothing above a minute
    assert 0 <= found["error"][1] < 60


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([1.0], []), "outcomes: must hold 1 to 64 names"),
        (([1.0], [3]), "outcomes: must be a str"),
        (([1.0], (f"o{i}" for i in itertools.count())), "outcomes: must hold 1 to 64 names"),
        (([], ["ok"]), "bounds: must hold 1 to 1000 bounds"),
    ],
)
def test_a_call_timer_refuses_bad_settings_by_name(
    args: tuple[object, object], message: str
) -> None:
    from langcluster._core import CallTimer

    with pytest.raises((ValueError, TypeError)) as caught:
        CallTimer(*args)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)
    timer = CallTimer([1.0], ["ok"])
    with pytest.raises(TypeError, match=r"^token: must be an int"):
        timer.ended("soon", "ok")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^outcome: must be a str"):
        timer.ended(0, None)  # type: ignore[arg-type]
