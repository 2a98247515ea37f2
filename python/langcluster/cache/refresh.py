"""Early refresh for ``LayeredCache.get_or_set``: XFetch (Vattani, Chierichetti
and Lowenstein, 2015).

A caller recomputes a key before it expires with a probability that grows
as expiry nears and with the time the value took to compute: it refreshes
when ``now - delta * beta * ln(rand) >= expiry``. One caller among many
refreshes early, so a hot key never expires under load and its factory is
never stampeded.

The compute time of a value is known to the process that computed it; for
keys another process computed, a running mean of this process's own
compute times stands in.
"""

from __future__ import annotations

import math
import random
import threading
import time

from langcluster.types import Key

__all__ = ["EarlyRefresh"]


class EarlyRefresh:
    """Per key: how long its value took to compute and when it expires (at
    most ``limit`` keys, the oldest forgotten first)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._keys: dict[Key, tuple[float, float]] = {}  # key -> (delta_s, expires monotonic)
        self._mean_delta_s = 0.0

    def due(self, key: Key, beta: float) -> bool:
        """Whether this caller should recompute ``key`` now."""
        known = self._keys.get(key)
        if known is None or beta <= 0:
            return False
        delta, expires = known
        return time.monotonic() - delta * beta * math.log(1.0 - random.random()) >= expires

    def _remember(self, key: Key, delta: float, expires: float) -> None:
        with self._lock:
            if len(self._keys) >= self.limit and key not in self._keys:
                self._keys.pop(next(iter(self._keys)))
            self._keys[key] = (delta, expires)

    def computed(self, key: Key, started: float, ttl: float | None) -> None:
        """``key``'s value was computed from ``started`` (monotonic) until now
        and stored for ``ttl`` seconds."""
        delta = time.monotonic() - started
        with self._lock:
            old = self._mean_delta_s
            self._mean_delta_s = 0.8 * old + 0.2 * delta if old else delta
        if ttl is not None:
            self._remember(key, delta, time.monotonic() + ttl)

    def read(self, key: Key, left_s: float | None) -> None:
        """``key`` was read from Redis with ``left_s`` seconds to live."""
        if left_s is not None and self._mean_delta_s:
            self._remember(key, self._mean_delta_s, time.monotonic() + left_s)
