"""Named counters that many threads may bump: the ``stats()`` of the
components that do I/O."""

from __future__ import annotations

import threading

__all__ = ["Counters"]


class Counters:
    """Counters by name, each bump and each snapshot under one short lock."""

    __slots__ = ("_lock", "_values")

    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
