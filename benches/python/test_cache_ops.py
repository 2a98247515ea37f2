"""pytest-benchmark: one cache operation per call, langcluster beside a dict,
the pure-Python cache and the peers. `make bench` runs it; cache_report.py
prints the ratios from one run."""

from __future__ import annotations

from typing import Any

import pytest
from cache_report import HIT, caches

CACHES = caches()


@pytest.mark.parametrize("name", list(CACHES))
def test_get_hit(benchmark: Any, name: str) -> None:
    _, get, _ = CACHES[name]
    benchmark.group = "get hit"
    benchmark(get, HIT)


@pytest.mark.parametrize("name", list(CACHES))
def test_set_replace(benchmark: Any, name: str) -> None:
    _, _, set_ = CACHES[name]
    benchmark.group = "set replace"
    benchmark(set_, HIT, 1)
