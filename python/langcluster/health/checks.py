"""Health checks: ``async check(node)`` returns when the node is healthy
and raises otherwise. ``HealthCheck`` is the base of a check of your own;
``TcpCheck``, ``HttpCheck``, ``CallableCheck`` and ``CompositeCheck`` are
built in."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from langcluster._checks import choice, count, seconds, text
from langcluster.node import Node
from langcluster.types import CompositeMode, Scheme

__all__ = [
    "CallableCheck",
    "CheckFailed",
    "CompositeCheck",
    "HealthCheck",
    "HttpCheck",
    "TcpCheck",
]


class CheckFailed(Exception):
    """A check's verdict: the node is not healthy."""


class HealthCheck(abc.ABC):
    """The base of a health check: ``async check(node)`` returns when the
    node is healthy and raises (any exception) when it is not. Subclass it
    for a check of your own; any object with an async ``check(node)``
    method is accepted too (``isinstance`` says so). ``aclose()`` releases
    what the check holds, such as pooled connections."""

    @abc.abstractmethod
    async def check(self, node: Node) -> None:
        """Returns if ``node`` is healthy; raises otherwise."""

    async def aclose(self) -> None:  # noqa: B027 - a check that holds nothing closes nothing
        """Releases what the check holds on the running loop (nothing here)."""

    @classmethod
    def __subclasshook__(cls, other: type) -> Any:
        if cls is HealthCheck and callable(getattr(other, "check", None)):
            return True
        return NotImplemented


class TcpCheck(HealthCheck):
    """Healthy when a TCP connection to ``address:port`` opens within
    ``timeout_s``."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = float(seconds("timeout_s", timeout_s))

    async def check(self, node: Node) -> None:
        if node.port is None:
            raise CheckFailed(f"{node.id}: no port to connect to")
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(node.address, node.port), self.timeout_s
        )
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    def __repr__(self) -> str:
        return f"TcpCheck(timeout_s={self.timeout_s})"


class HttpCheck(HealthCheck):
    """Healthy when ``method`` on ``http://address:port{path}`` answers with a
    status in ``expect_status`` within ``timeout_s``. One pooled httpx
    client per event loop serves every node."""

    def __init__(
        self,
        path: str = "/health",
        *,
        expect_status: Iterable[int] = range(200, 400),
        timeout_s: float = 2.0,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        scheme: Scheme = "http",
    ) -> None:
        if not text("path", path).startswith("/"):
            raise ValueError(f"path: must start with '/', got {path!r}")
        choice("scheme", scheme, ("http", "https"))
        self.path = path
        try:
            self.expect_status = frozenset(
                count("expect_status", s, minimum=100) for s in expect_status
            )
        except TypeError as error:
            raise TypeError(f"expect_status: must be HTTP status codes ({error})") from None
        if not self.expect_status:
            raise ValueError("expect_status: must not be empty")
        self.timeout_s = float(seconds("timeout_s", timeout_s))
        self.method = text("method", method).upper()
        if headers is not None and not isinstance(headers, Mapping):
            raise TypeError(f"headers: must be a mapping or None, got {type(headers).__name__}")
        self.headers = dict(headers or {})
        self.scheme = scheme
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}

    def _client(self) -> Any:
        import httpx

        from langcluster._http import tls

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            for old in [lp for lp in self._clients if lp.is_closed()]:
                del self._clients[old]
            client = httpx.AsyncClient(
                timeout=self.timeout_s,
                verify=tls(httpx),  # the certificates, loaded once for every checker
                headers=self.headers,
                limits=httpx.Limits(max_keepalive_connections=100, max_connections=1000),
            )
            self._clients[loop] = client
        return client

    async def check(self, node: Node) -> None:
        url = f"{self.scheme}://{node.url}{self.path}"
        response = await self._client().request(self.method, url)
        if response.status_code not in self.expect_status:
            raise CheckFailed(f"{url} answered {response.status_code}")

    async def aclose(self) -> None:
        """Closes the pooled client of the running loop."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def __repr__(self) -> str:
        return f"HttpCheck({self.path!r}, method={self.method!r}, timeout_s={self.timeout_s})"


class CallableCheck(HealthCheck):
    """Wraps ``fn(node)``, sync or async: healthy unless it returns False or
    raises."""

    def __init__(self, fn: Callable[[Node], bool | Awaitable[bool | None] | None]) -> None:
        if not callable(fn):
            raise TypeError("fn: must be callable")
        self.fn = fn

    async def check(self, node: Node) -> None:
        result = self.fn(node)
        if inspect.isawaitable(result):
            result = await result
        if result is False:
            raise CheckFailed(f"{node.id}: check returned False")


class CompositeCheck(HealthCheck):
    """Runs several checks at once: ``require="all"`` needs every one to
    pass, ``"any"`` one, ``"quorum"`` more than half."""

    def __init__(self, checks: Iterable[HealthCheck], require: CompositeMode = "all") -> None:
        self.checks = list(checks)
        if not self.checks:
            raise ValueError("checks: must not be empty")
        for c in self.checks:
            if not isinstance(c, HealthCheck):
                raise TypeError(f"checks: {c!r} has no async check(node) method")
        if require not in ("all", "any", "quorum"):
            raise ValueError(f"require: must be 'all', 'any' or 'quorum', got {require!r}")
        self.require = require

    async def aclose(self) -> None:
        """Closes the checks that hold connections (``HttpCheck``)."""
        for c in self.checks:
            close = getattr(c, "aclose", None)
            if close is not None:
                await close()

    async def check(self, node: Node) -> None:
        results = await asyncio.gather(
            *(c.check(node) for c in self.checks), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r
        failures = [r for r in results if isinstance(r, Exception)]
        passed = len(results) - len(failures)
        needed = {"all": len(results), "any": 1, "quorum": len(results) // 2 + 1}[self.require]
        if passed < needed:
            raise CheckFailed(
                f"{node.id}: {passed} of {len(results)} checks passed ({self.require}); "
                f"first failure: {failures[0]!r}"
            )
