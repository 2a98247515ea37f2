"""Named counters that many threads may bump: the ``stats()`` of the
components that do I/O. ``Counters(*names)``; ``add(name, n=1)`` is one
atomic add in Rust (a lock around a dict cost a few hundred nanoseconds on
every call); ``snapshot()`` reads each counter."""

from __future__ import annotations

from langcluster._core import Counters

__all__ = ["Counters"]
