"""Every fuzz target of targets.py, each in a child process: a panic, an
abort or a stack overflow ends the child, and fails here with the signal
and the child's output, instead of ending the test run.

The examples are derandomized, so a run is the same on every machine.
``LANGCLUSTER_FUZZ_EXAMPLES`` sets how many each target tries (default
1000); ``python -m tests.fuzz.targets TARGET N SEED`` runs a fresh search.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("LANGCLUSTER_FUZZ_EXAMPLES", "1000"))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_no_input_crashes_or_goes_unnamed(target: str) -> None:
    child = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.targets", target, str(EXAMPLES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = (child.stdout + child.stderr)[-6000:]
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        pytest.fail(f"{target}: the process died of {name}:\n{output}")
    assert child.returncode == 0, f"{target}:\n{output}"
    assert f"{target}: {EXAMPLES} examples, no crash" in child.stdout
