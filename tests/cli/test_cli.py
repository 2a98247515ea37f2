"""python -m langcluster demo and bench, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest


def run_module(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langcluster", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_the_demo_runs_and_reports_in_json() -> None:
    started = time.monotonic()
    done = run_module("demo", "--json", "--duration", "6")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    result = json.loads(done.stdout)
    assert result["requests"] > 200
    assert result["success_rate"] >= 0.99
    assert 0 < result["cache_hit_ratio"] < 1
    assert result["breaker_opens"] + result["health_flips"] >= 1  # the chaos was seen
    assert set(result["per_node"]) == {f"gpu-{i}" for i in range(5)}


def test_the_demo_in_plain_logs() -> None:
    done = run_module("demo", "--no-live", "--duration", "4")
    assert done.returncode == 0, done.stderr
    assert "chaos: gpu-1 is killed" in done.stdout
    assert "success rate" in done.stdout


@pytest.mark.services
def test_the_demo_on_real_redis_and_etcd(redis_server: Any, etcd_server: Any) -> None:
    done = run_module(
        "demo", "--json", "--duration", "4",
        "--redis", f"redis://{redis_server.url}/0", "--etcd", f"http://{etcd_server.url}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["success_rate"] >= 0.99
    assert result["cache_hit_ratio"] > 0


def test_the_bench_command_prints_ratios() -> None:
    done = run_module("bench", "--number", "2000", "--repeat", "1")
    assert done.returncode == 0, done.stderr
    for row in ("floor: next(itertools.cycle)", "langcluster RoundRobin",
                "pure Python round robin", "cachebox", "pybreaker"):  # fmt: skip
        assert row in done.stdout
    assert "x first row" in done.stdout
