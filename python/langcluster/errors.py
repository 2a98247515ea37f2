"""The exceptions langcluster raises.

Every error of the library is a ``LangClusterError``; catching that one class
catches them all. Bad arguments are reported with the built-in ``ValueError``
or ``TypeError``, with a message that starts with the argument's name.
"""

from __future__ import annotations

from langcluster._http import TransportErrorBase

__all__ = [
    "CacheError",
    "CircuitOpenError",
    "ClusterNotRunning",
    "DiscoveryError",
    "LangClusterError",
    "NoAvailableNode",
    "NodeBusy",
    "Overloaded",
]


class LangClusterError(Exception):
    """Base class of every langcluster error."""


class NoAvailableNode(LangClusterError):
    """A balancer has no available node to pick (none registered, or all unavailable)."""


class NodeBusy(LangClusterError):
    """A node asked to be left alone for ``retry_after_s`` seconds (an HTTP
    429 or 503 with ``Retry-After``). Raised by a call's function, it tells
    the ``FailoverManager`` to take the node out of rotation for that long
    and to retry on another node, without counting a failure against the
    node's breaker."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(LangClusterError, TransportErrorBase):  # type: ignore[misc]
    """A cluster transport refused a request at once: as many are in flight
    and waiting as it lets through (or none made room within the request's
    pool timeout). An httpx transport error too (and an httpx2 one when
    httpx2 is installed), so the clients that catch those (the OpenAI SDK:
    ``APIConnectionError``) see it as one."""


class CircuitOpenError(LangClusterError):
    """A circuit breaker refused the call.

    ``name`` is the breaker's name and ``retry_after_s`` how long until it lets
    a trial call through.
    """

    def __init__(
        self, message: str, *, name: str | None = None, retry_after_s: float = 0.0
    ) -> None:
        super().__init__(message)
        self.name = name
        self.retry_after_s = retry_after_s


class CacheError(LangClusterError):
    """A cache tier failed in a way the caller must know about."""


class DiscoveryError(LangClusterError):
    """A service-discovery backend failed."""


class ClusterNotRunning(LangClusterError):
    """A ``Cluster`` was asked to call, or to start, in a state that does not
    allow it: ``state`` is ``"new"`` (not started yet), ``"closing"`` or
    ``"closed"``. A closed cluster does not start again."""

    def __init__(self, message: str, *, state: str) -> None:
        super().__init__(message)
        self.state = state
