"""pytest-benchmark: one pick per call, langcluster beside the floor, the
pure-Python twins and the peers. `make bench` runs it; report.py prints the
ratios from one run."""

from __future__ import annotations

import pytest
from cases import CASES, Case


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.group}-{c.contender}")
def test_pick(benchmark, case: Case) -> None:
    fn, args = case.make()
    benchmark.group = case.group
    benchmark(fn, *args)
