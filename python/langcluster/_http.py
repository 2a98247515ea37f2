"""The two HTTP client libraries the cluster transports serve: httpx, and
httpx2 (the fork of httpx that the OpenAI SDK 3.x builds its default
clients on) when it is installed.

Their classes are alike but distinct: an httpx2 client checks that a body is
an ``httpx2.AsyncByteStream``, and a caller catching ``httpx2.TransportError``
does not catch an httpx one. So each base the transports, their bodies and
``Overloaded`` derive from is both libraries' class at once, and the
connection pools and requests made for a request are of the library its
client uses (``library``)."""

from __future__ import annotations

import functools
import ssl
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx

__all__ = [
    "LIMITS",
    "AsyncStreamBase",
    "AsyncTransportBase",
    "SyncStreamBase",
    "TransportBase",
    "TransportErrorBase",
    "header",
    "library",
    "limits_of",
    "mismatch",
    "tls",
    "with_host",
]

if TYPE_CHECKING:
    import httpx2

    # The two libraries' signatures name their own request and response.
    class AsyncTransportBase(httpx.AsyncBaseTransport, httpx2.AsyncBaseTransport):  # type: ignore[misc]
        pass

    class TransportBase(httpx.BaseTransport, httpx2.BaseTransport):  # type: ignore[misc]
        pass

    class AsyncStreamBase(httpx.AsyncByteStream, httpx2.AsyncByteStream):
        pass

    class SyncStreamBase(httpx.SyncByteStream, httpx2.SyncByteStream):
        pass

    class TransportErrorBase(httpx.TransportError, httpx2.TransportError):  # type: ignore[misc]
        pass

    LIBRARIES: tuple[ModuleType, ...]
else:
    try:
        import httpx2
    except ImportError:  # the OpenAI SDK before 3.x, or no SDK at all
        httpx2 = None
    LIBRARIES = (httpx,) if httpx2 is None else (httpx, httpx2)

    def _both(name: str) -> type:
        own = getattr(httpx, name)
        if httpx2 is None:
            return own
        return type(name, (own, getattr(httpx2, name)), {"__module__": __name__})

    AsyncTransportBase = _both("AsyncBaseTransport")
    TransportBase = _both("BaseTransport")
    AsyncStreamBase = _both("AsyncByteStream")
    SyncStreamBase = _both("SyncByteStream")
    TransportErrorBase = _both("TransportError")

# The settings of a pool, by name, as both libraries' ``Limits`` take them.
LIMITS = ("max_connections", "max_keepalive_connections", "keepalive_expiry")

_BY_TYPE: dict[type, ModuleType] = {}


def library(value: Any) -> ModuleType:
    """The library (httpx or httpx2) whose request, URL or response
    ``value`` is; httpx for anything else."""
    kind = type(value)
    found = _BY_TYPE.get(kind)
    if found is None:
        name = getattr(kind, "__module__", "").partition(".")[0]
        found = next((lib for lib in LIBRARIES if lib.__name__ == name), httpx)
        if len(_BY_TYPE) < 64:
            _BY_TYPE[kind] = found
    return found


def limits_of(limits: Any) -> dict[str, Any] | None:
    """The settings of an ``httpx.Limits`` or ``httpx2.Limits`` (None for
    None), checked."""
    if limits is None:
        return None
    if not any(isinstance(limits, lib.Limits) for lib in LIBRARIES):
        raise TypeError(f"limits: must be an httpx.Limits, got {type(limits).__name__}")
    return {name: getattr(limits, name) for name in LIMITS}


def header(headers: Any, name: str) -> str | None:
    """The value of the header ``name`` (lower case) in httpx's or httpx2's
    ``Headers``, None when absent. Their own ``get`` lowers and encodes the
    name and builds a list (0.8 µs a request); their list of (name, lowered
    name, value), where it is there, is read directly instead."""
    items = getattr(headers, "_list", None)
    if type(items) is not list:
        given: str | None = headers.get(name)
        return given
    wanted = name.encode("ascii")
    found: bytes | None = None
    for _, lowered, value in items:
        if lowered == wanted:
            found = value if found is None else found + b", " + value
    # Decoded by the libraries' rule: ascii, else utf-8, else latin-1.
    return None if found is None else str(found.decode(headers.encoding))


@functools.cache
def tls(lib: ModuleType) -> ssl.SSLContext:
    """The TLS settings ``lib``'s transports make by default (its
    certificates, trust from the environment), made once: each transport
    would otherwise load the certificates again, 20 ms of CPU on the event
    loop for every node's pool."""
    context: ssl.SSLContext = lib.create_ssl_context()
    return context


def with_host(headers: Any, host: bytes) -> Any:
    """A copy of ``headers`` whose ``Host`` is ``host``. httpx's own copy
    and set cost 2.5 µs a request (they check every name and value again);
    where its list of (name, lowered name, value) is there, as in httpx and
    httpx2, the copy is made of that list, the rest kept as they were."""
    items = getattr(headers, "_list", None)
    if type(items) is not list or not hasattr(headers, "_encoding"):
        copy = headers.copy()
        copy["host"] = host.decode("ascii")
        return copy
    fresh = []
    named = False
    for item in items:
        if item[1] == b"host":
            item, named = (item[0], b"host", host), True
        fresh.append(item)
    if not named:
        fresh.insert(0, (b"Host", b"host", host))
    out = object.__new__(type(headers))
    out._list = fresh
    out._encoding = headers._encoding
    return out


def mismatch(request: Any, given: Any) -> TypeError:
    return TypeError(
        f"transport: a {type(given).__name__} cannot send a {library(request).__name__} "
        "client's requests; give one of that library"
    )
