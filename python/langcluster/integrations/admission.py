"""What keeps a service that falls behind from never catching up: a bound
on the requests the cluster transports let through, and a connection pool
per node.

Without a bound, a client sends every request it is given at once. When
more are in flight than its connection pool holds, the rest queue inside
the pool, whose bookkeeping scans that queue on every request that enters
or leaves: a loop that fell behind for a second (a blocked call, a garbage
collection, a busy host) then spends its time in that scan, falls further
behind, and never drains while requests keep coming.

``Admission`` lets at most ``per_node`` requests in flight per available
node through, holds up to ``max_queued`` more in a queue of its own (a
deque: each request that enters or leaves costs the same however long it
is), and refuses the rest at once, and those that waited past their
timeout, with ``Overloaded``. The pools hold as many connections per node
as a node may have requests, so no request ever waits inside one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from types import ModuleType
from typing import Any

import httpx

from langcluster._checks import count
from langcluster._counters import Counters
from langcluster._http import LIBRARIES, library, limits_of
from langcluster.errors import Overloaded

__all__ = [
    "AsyncAdmission",
    "NodePools",
    "SyncAdmission",
    "given_transport",
    "pool_limits",
    "wait_limit_s",
]


def wait_limit_s(request: Any) -> float | None:
    """How long ``request`` may wait to be let through: its pool timeout
    (httpx's time to wait for a connection), None for no limit; of an
    httpx or an httpx2 request."""
    timeout = request.extensions.get("timeout")
    if isinstance(timeout, dict):
        pool = timeout.get("pool")
        if isinstance(pool, int | float) and not isinstance(pool, bool) and pool >= 0:
            return float(pool)
    return None


class _Admission:
    """The accounting both kinds share; every method is called under the
    caller's lock (or on its event loop)."""

    def __init__(self, per_node: int, max_queued: int, nodes: Callable[[], int]) -> None:
        self.per_node = count("max_in_flight_per_node", per_node)
        self.max_queued = count("max_queued", max_queued, minimum=0)
        self._nodes = nodes
        self.in_flight = 0
        self.counts = Counters("admitted", "waited", "refused_full", "refused_timeout")

    def capacity(self) -> int:
        return self.per_node * max(1, self._nodes())

    def refuse(self, why: str, waiting: int) -> Overloaded:
        self.counts.add("refused_full" if why == "full" else "refused_timeout")
        if why == "full":
            text = f"{self.in_flight} requests in flight and {waiting} waiting, the most allowed"
        else:
            text = f"no room within the request's pool timeout ({self.in_flight} in flight)"
        return Overloaded(f"the cluster transport is overloaded: {text}")

    def stats(self, waiting: int) -> dict[str, int]:
        """``in_flight``, ``waiting`` and ``capacity`` now; requests
        ``admitted`` in all (``waited`` of them first), and ``refused_full``
        (the queue was full) and ``refused_timeout`` (no room in time)."""
        out: dict[str, int] = self.counts.snapshot()
        out.update(in_flight=self.in_flight, waiting=waiting, capacity=self.capacity())
        return out


class AsyncAdmission(_Admission):
    """Admission for requests on one event loop."""

    def __init__(self, per_node: int, max_queued: int, nodes: Callable[[], int]) -> None:
        super().__init__(per_node, max_queued, nodes)
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def enter(self, timeout_s: float | None) -> None:
        """Returns once the request may go; raises ``Overloaded`` when the
        queue is full, or when no room came within ``timeout_s``."""
        if self.in_flight < self.capacity() and not self._waiters:
            self.in_flight += 1
            self.counts.add("admitted")
            return
        if len(self._waiters) >= self.max_queued:
            raise self.refuse("full", len(self._waiters))
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), timeout_s)
        except BaseException as error:
            if turn.done() and not turn.cancelled():
                self.leave()  # let through as it gave up: pass its turn on
            else:
                turn.cancel()
                self._drop(turn)
            if isinstance(error, asyncio.TimeoutError | TimeoutError):
                raise self.refuse("timeout", len(self._waiters)) from None
            raise
        self.counts.add("waited")

    def _drop(self, turn: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):  # handed its turn as it gave up
            self._waiters.remove(turn)

    def leave(self) -> None:
        """A request let through has ended: the next waiting one may go."""
        self.in_flight -= 1
        capacity = self.capacity()
        while self._waiters and self.in_flight < capacity:
            turn = self._waiters.popleft()
            if not turn.done():
                self.in_flight += 1
                self.counts.add("admitted")
                turn.set_result(None)

    def stats(self, waiting: int | None = None) -> dict[str, int]:
        return super().stats(len(self._waiters))


class SyncAdmission(_Admission):
    """Admission for requests from many threads (waiting ones are let
    through as room comes, not strictly in their order of arrival)."""

    def __init__(self, per_node: int, max_queued: int, nodes: Callable[[], int]) -> None:
        super().__init__(per_node, max_queued, nodes)
        self._room = threading.Condition()
        self._waiting = 0

    def enter(self, timeout_s: float | None) -> None:
        """As ``AsyncAdmission.enter``, blocking the calling thread."""
        with self._room:
            if self.in_flight < self.capacity() and not self._waiting:
                self.in_flight += 1
                self.counts.add("admitted")
                return
            if self._waiting >= self.max_queued:
                raise self.refuse("full", self._waiting)
            self._waiting += 1
            try:
                room = self._room.wait_for(lambda: self.in_flight < self.capacity(), timeout_s)
            finally:
                self._waiting -= 1
            if not room:
                raise self.refuse("timeout", self._waiting)
            self.in_flight += 1
            self.counts.add("admitted")
            self.counts.add("waited")

    def leave(self) -> None:
        with self._room:
            self.in_flight -= 1
            self._room.notify()

    def stats(self, waiting: int | None = None) -> dict[str, int]:
        with self._room:
            return super().stats(self._waiting)


def given_transport(given: Any, kind: str, limits: Any) -> tuple[Any, frozenset[ModuleType]]:
    """The transport that sends, when the caller gives one (checked), and
    the libraries whose clients it can serve; None for a pool per node.
    ``kind`` is the base class's name: ``AsyncBaseTransport`` or
    ``BaseTransport``."""
    limits_of(limits)
    if given is None:
        return None, frozenset()
    libraries = frozenset(lib for lib in LIBRARIES if isinstance(given, getattr(lib, kind)))
    if not libraries:
        raise TypeError(f"transport: must be an httpx.{kind}, got {type(given).__name__}")
    if limits is not None:
        raise ValueError("limits: only without transport (a transport given has its own pool)")
    return given, libraries


def pool_limits(given: Any, per_node: int) -> dict[str, Any]:
    """Each node's pool: the settings of ``given`` (an ``httpx.Limits`` or
    an ``httpx2`` one), or as many connections as a node may have requests
    in flight, all kept alive."""
    return limits_of(given) or {
        "max_connections": per_node, "max_keepalive_connections": per_node,
        "keepalive_expiry": 5.0,
    }  # fmt: skip


class NodePools:
    """One connection pool per node address (scheme, host, port) and
    client library, made when first needed by ``make(library, limits)``.
    Pools of addresses no node has any more are handed to ``retire`` (which
    closes them) as new ones come."""

    def __init__(
        self,
        make: Callable[[ModuleType, dict[str, Any]], Any],
        limits: dict[str, Any],
        addresses: Callable[[], set[tuple[str, int | None]]],
        retire: Callable[[Any], None],
    ) -> None:
        self._make = make
        self.limits = limits
        self._addresses = addresses
        self._retire = retire
        self.pools: dict[tuple[ModuleType, str, str, int | None], Any] = {}

    def for_url(self, url: httpx.URL) -> Any:
        lib = library(url)
        key = (lib, url.scheme, url.host, url.port)
        pool = self.pools.get(key)
        if pool is None:
            live = self._addresses()
            if len(self.pools) > 2 * len(live) + 8:
                for old in [k for k in self.pools if (k[2], k[3]) not in live]:
                    self._retire(self.pools.pop(old))
            pool = self.pools[key] = self._make(lib, self.limits)
        return pool

    def take_all(self) -> list[Any]:
        """Every pool, for closing; none is left."""
        pools, self.pools = list(self.pools.values()), {}
        return pools
