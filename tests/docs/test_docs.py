"""The docs are executed: every Python block of the user guide runs, in
order, against real Redis and etcd; the API reference matches the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.mark.services
def test_every_user_guide_example_runs(
    redis_server: Any, etcd_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://{redis_server.url}/0")
    monkeypatch.setenv("ETCD_URL", f"http://{etcd_server.url}")
    found = blocks(DOCS / "user-guide.md")
    assert len(found) >= 12
    namespace: dict[str, Any] = {"__name__": "user_guide"}
    for number, source in enumerate(found, 1):
        try:
            exec(compile(source, f"user-guide.md block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"user-guide.md block {number} failed: {error!r}") from error


def test_the_api_reference_is_in_step_with_the_code() -> None:
    done = subprocess.run(
        [sys.executable, str(DOCS / "gen_api.py"), "--check"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_every_public_name_is_in_the_api_reference() -> None:
    import langcluster

    text = (DOCS / "api.md").read_text()
    missing = [n for n in langcluster.__all__ if n != "__version__" and f"### `{n}" not in text]
    assert missing == []
