"""The one "no value" marker of the package, told apart from ``None``
(which is a value a cache may hold)."""

from __future__ import annotations

from typing import Any, Final

MISSING: Final[Any] = type("Missing", (), {"__repr__": lambda self: "MISSING"})()
