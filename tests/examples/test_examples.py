"""Every example runs to completion and prints what it promises."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("balancer_demo.py", "gpu-0"),
        ("cache_demo.py", "model calls:"),
        ("failover_demo.py", "failed requests: 0"),
        ("cluster_demo.py", "failed requests: 0"),
        ("llm_gateway.py", "goes down"),
    ],
)
def test_example_runs(script: str, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
    limit = 150 if script == "llm_gateway.py" else 100  # each fits a page
    assert len((EXAMPLES / script).read_text().splitlines()) < limit


def test_the_gateway_keeps_conversations_together_and_moves_them() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "llm_gateway.py")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    served = [line.split("served by")[1] for line in lines if "served by" in line]
    before = [ast.literal_eval(s.strip()) for s in served[:2]]
    assert all(len(set(nodes)) == 1 for nodes in before)  # prefix affinity
    streamed = next(line for line in lines if line.startswith("streamed:"))
    assert streamed.count("|") > 3  # token by token, through the gateway
    dead = next(line.split()[0] for line in lines if "goes down" in line)
    after = ast.literal_eval(served[2].strip())
    assert dead not in after
    assert len(set(after[1:])) == 1  # the conversation settles on one new server
