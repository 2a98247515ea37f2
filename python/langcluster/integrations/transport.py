"""``AsyncClusterTransport`` and ``ClusterTransport``: httpx transports that
send each request to a node the cluster picks, with its failover.

The decisions (which key, which URL, which statuses to retry, what a
``Retry-After`` means, what a broken stream counts as) are made once, in
``_Router``; the two transports only send and read, each in its own world.
"""

from __future__ import annotations

import email.utils
import hashlib
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx

from langcluster._checks import seconds, text
from langcluster._core import ConsistentHash, PrefixAware
from langcluster.errors import NoAvailableNode, NodeBusy
from langcluster.integrations.openai_body import read_prompt
from langcluster.types import Key

if TYPE_CHECKING:
    from langcluster.cluster import Cluster

__all__ = ["AsyncClusterTransport", "ClusterTransport"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110 token)
T = TypeVar("T")
KeyFunction = Callable[[httpx.Request], Key | None]


class _Refused(Exception):
    """A node answered with a status to retry elsewhere; holds the answer
    (read in full), which the caller gets if no other node does better."""

    def __init__(self, response: httpx.Response, node: Any) -> None:
        super().__init__(f"status {response.status_code} from node {node.id!r}")
        self.response = response


class _Busy(NodeBusy):
    """A 429 or 503 with ``Retry-After``: the node is held out that long."""

    def __init__(self, response: httpx.Response, retry_after_s: float) -> None:
        super().__init__(
            f"status {response.status_code}, retry after {retry_after_s:g} s",
            retry_after_s=retry_after_s,
        )
        self.response = response


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay seconds or an HTTP
    date), or None when it is absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _statuses(value: Iterable[int]) -> frozenset[int]:
    try:
        statuses = frozenset(value)
    except TypeError:
        raise TypeError(
            f"retry_statuses: must be an iterable of HTTP statuses, got {type(value).__name__}"
        ) from None
    for status in statuses:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"retry_statuses: {status!r} is not an HTTP status (100 to 599)")
    return statuses


class _Router:
    """What both transports share: checked settings, the routing key of a
    request, the request sent to a node, and the judgement of its answer."""

    def __init__(
        self,
        cluster: Cluster,
        key: Literal["auto"] | KeyFunction | None,
        retry_statuses: Iterable[int],
        session_header: str | None,
        max_retry_after_s: float,
    ) -> None:
        from langcluster.cluster import Cluster  # the cluster package imports this one

        if not isinstance(cluster, Cluster):
            raise TypeError(f"cluster: must be a langcluster Cluster, got {type(cluster).__name__}")
        if not (key is None or (isinstance(key, str) and key == "auto") or callable(key)):
            raise ValueError(f"key: must be 'auto', a function of the request or None, got {key!r}")
        if session_header is not None and not _TOKEN.fullmatch(
            text("session_header", session_header)
        ):
            raise ValueError(f"session_header: {session_header!r} is not an HTTP header name")
        if seconds("max_retry_after_s", max_retry_after_s, zero=True) > 3600:
            raise ValueError(f"max_retry_after_s: must be at most 3600, got {max_retry_after_s!r}")
        self.cluster = cluster
        self.key = key
        self.retry_statuses = _statuses(retry_statuses)
        self.session_header = session_header
        self.max_retry_after_s = float(max_retry_after_s)
        self._spread = itertools.count()  # keys for a hashing balancer when a request has none
        self._urls: dict[tuple[str, str, str, int | None], tuple[httpx.URL, str]] = {}

    # ------------------------------------------------------------ routing

    def routing_key(self, request: httpx.Request, body: bytes) -> Key | None:
        balancer = self.cluster.balancer
        prefix = isinstance(balancer, PrefixAware)
        hashing = isinstance(balancer, ConsistentHash)
        key: Key | None = None
        if callable(self.key):
            key = self.key(request)
        elif isinstance(self.key, str) and (prefix or hashing):
            header = self.session_header
            session = request.headers.get(header) if header is not None else None
            prompt = read_prompt(request.url.path, body)
            if session and isinstance(balancer, PrefixAware):
                # A first block of its own per session: its turns stay together.
                size = int(balancer.settings["block_size"] or 64)
                tag = hashlib.blake2b(session.encode(), digest_size=16).hexdigest()
                key = tag.ljust(size, "~")[:size] + (prompt.whole if prompt else "")
            elif session:
                key = session
            elif prompt is not None:
                key = prompt.whole if prefix else prompt.head
        if key is None and hashing:
            key = next(self._spread)
        return key

    # ------------------------------------------------------------ sending

    def outgoing(self, request: httpx.Request, node: Any, body: bytes) -> httpx.Request:
        """``request`` aimed at ``node``: its scheme (``node.metadata
        ["scheme"]`` if set), address and port replace the URL's."""
        url = request.url
        scheme = node.metadata.get("scheme", url.scheme) if node.metadata else url.scheme
        key = (str(url), scheme, node.address, node.port)  # a URL compares by parsing again
        found = self._urls.get(key)
        if found is None:  # parsing a URL is the dearest step: each is made once
            if len(self._urls) >= 1024:
                self._urls.clear()
            target = url.copy_with(scheme=scheme, host=node.address, port=node.port)
            found = self._urls[key] = (target, target.netloc.decode("ascii"))
        headers = request.headers.copy()
        headers["host"] = found[1]
        if not hasattr(request, "__dict__"):  # an httpx whose requests have slots
            return httpx.Request(
                request.method, found[0], headers=headers, content=body,
                extensions=request.extensions,
            )  # fmt: skip
        # A copy that shares the body (read already, so it can be sent again)
        # costs a fifth of a new Request, which parses and checks it all anew.
        out = httpx.Request.__new__(httpx.Request)
        out.__dict__.update(request.__dict__)
        out.url = found[0]
        out.headers = headers
        return out

    def refusal(self, response: httpx.Response, node: Any) -> Exception:
        """The error that makes failover move on from ``node``, whose answer
        (read in full) has a status to retry."""
        if response.status_code in (429, 503):
            wait = retry_after_s(response.headers.get("retry-after"))
            if wait is not None:
                return _Busy(response, min(wait, self.max_retry_after_s))
        return _Refused(response, node)

    def first_chunk(self, node: Any, started: float) -> Callable[[], None] | None:
        """What to call when the first chunk of ``node``'s answer arrives:
        its time to first token goes to a balancer that keeps it
        (``PrefixAware``); None for one that does not."""
        observe = getattr(self.cluster.failover.balancer, "observe_ttft", None)
        if observe is None:
            return None

        def first() -> None:
            observe(node.id, time.perf_counter() - started)

        return first

    def settle(self, node: Any, started: float) -> Callable[[BaseException | None], None]:
        """The body of an answer from ``node`` is being read: the node holds
        one more request in flight until the body ends; a body that breaks
        counts against the node. Returns the function that ends it, once."""
        manager = self.cluster.failover
        try:
            manager.balancer.begin(node.id)
            done = False
        except KeyError:  # the node left the balancer meanwhile: nothing to hold
            done = True

        def end(error: BaseException | None) -> None:
            nonlocal done
            if isinstance(error, Exception):
                manager.late_failure(node, error)
            if done:
                return
            done = True
            if isinstance(error, Exception):
                manager.balancer.end(node.id, time.perf_counter() - started, False)
            else:
                manager.balancer.release(node.id)

        return end

    @staticmethod
    def unwrap(error: BaseException) -> httpx.Response | None:
        """The answer to hand over when every node refused: the last one."""
        while error is not None:
            if isinstance(error, _Refused | _Busy):
                return error.response
            if not isinstance(error, NoAvailableNode):
                return None
            error = error.__cause__  # type: ignore[assignment]
        return None


def _streamed(response: httpx.Response) -> bool:
    """Whether an answer is an event stream, whose first chunk is its first
    token (a JSON answer's first chunk comes at its end)."""
    kind: str = response.headers.get("content-type", "")
    return kind.startswith("text/event-stream")


def _inner(given: Any, kind: type[T], default: Callable[[], T]) -> T:
    """The transport that sends: ``given``, checked, or httpx's own."""
    if given is None:
        return default()
    if not isinstance(given, kind):
        raise TypeError(f"transport: must be an httpx.{kind.__name__}, got {type(given).__name__}")
    return given


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(
        self,
        inner: httpx.AsyncByteStream,
        end: Callable[[BaseException | None], None],
        first: Callable[[], None] | None = None,
    ):
        self._inner = inner
        self._end = end
        self._first = first

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                if self._first is not None and chunk:
                    first, self._first = self._first, None
                    first()
                yield chunk
        except BaseException as error:
            self._end(error)
            raise

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._end(None)


class _SyncBody(httpx.SyncByteStream):
    def __init__(
        self,
        inner: httpx.SyncByteStream,
        end: Callable[[BaseException | None], None],
        first: Callable[[], None] | None = None,
    ):
        self._inner = inner
        self._end = end
        self._first = first

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                if self._first is not None and chunk:
                    first, self._first = self._first, None
                    first()
                yield chunk
        except BaseException as error:
            self._end(error)
            raise

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._end(None)


class AsyncClusterTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request to a node ``cluster``
    picks, through its failover:

        client = openai.AsyncOpenAI(
            base_url="http://chat/v1", api_key="-", max_retries=0,
            http_client=httpx.AsyncClient(transport=AsyncClusterTransport(cluster)),
        )

    - The node's address and port (and ``metadata["scheme"]``, if set)
      replace the URL's; path, query, headers and body are kept, and the
      ``Host`` header names the node. One connection pool serves every node:
      ``transport``'s, or a new ``httpx.AsyncHTTPTransport``'s.
    - A connection error, a timeout before the response headers, or a status
      in ``retry_statuses`` is retried on another node within the cluster's
      failover budget and counts against the node's breaker; a 429 or 503
      with ``Retry-After`` holds the node out for that long (at most
      ``max_retry_after_s``) instead. When no node does better, the caller
      gets the last such answer as it came. An answer handed to the caller
      is never retried; a stream that breaks midway raises to the caller
      and counts against its node.
    - Bodies stream through as they arrive; a node holds the request in
      flight until its body has been read or closed.
    - ``key="auto"`` routes by the prompt of OpenAI requests (chat
      completions, completions, embeddings): the whole prompt for a
      ``PrefixAware`` balancer, the conversation before its newest message
      for a ``ConsistentHash``; a request with a ``session_header`` sticks
      to its session. A function ``key(request)`` decides instead; ``None``
      sends no key. Bodies are read in full before sending, so that they
      can be sent again.
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        key: Literal["auto"] | KeyFunction | None = "auto",
        retry_statuses: Iterable[int] = (429, 502, 503, 504),
        transport: httpx.AsyncBaseTransport | None = None,
        session_header: str | None = "x-session-id",
        max_retry_after_s: float = 60.0,
    ) -> None:
        self._router = _Router(cluster, key, retry_statuses, session_header, max_retry_after_s)
        self._transport = _inner(transport, httpx.AsyncBaseTransport, httpx.AsyncHTTPTransport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        router = self._router
        body = await request.aread()
        send = self._transport.handle_async_request

        async def attempt(node: Any) -> httpx.Response:
            started = time.perf_counter()
            response = await send(router.outgoing(request, node, body))
            try:
                if response.status_code in router.retry_statuses:
                    await response.aread()
                    raise router.refusal(response, node)
                response.stream = _AsyncBody(
                    response.stream,  # type: ignore[arg-type]
                    router.settle(node, started),
                    router.first_chunk(node, started) if _streamed(response) else None,
                )
            except BaseException:
                await response.aclose()
                raise
            return response

        try:
            return await router.cluster.call(attempt, key=router.routing_key(request, body))
        except Exception as error:
            answer = router.unwrap(error)
            if answer is None:
                raise
            return answer

    async def aclose(self) -> None:
        await self._transport.aclose()


class ClusterTransport(httpx.BaseTransport):
    """The blocking twin of ``AsyncClusterTransport``, for ``httpx.Client``
    (``openai.OpenAI``, LangChain's ``http_client``); ``transport`` is an
    ``httpx.BaseTransport``."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        key: Literal["auto"] | KeyFunction | None = "auto",
        retry_statuses: Iterable[int] = (429, 502, 503, 504),
        transport: httpx.BaseTransport | None = None,
        session_header: str | None = "x-session-id",
        max_retry_after_s: float = 60.0,
    ) -> None:
        self._router = _Router(cluster, key, retry_statuses, session_header, max_retry_after_s)
        self._transport = _inner(transport, httpx.BaseTransport, httpx.HTTPTransport)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        router = self._router
        body = request.read()
        send = self._transport.handle_request

        def attempt(node: Any) -> httpx.Response:
            started = time.perf_counter()
            response = send(router.outgoing(request, node, body))
            try:
                if response.status_code in router.retry_statuses:
                    response.read()
                    raise router.refusal(response, node)
                response.stream = _SyncBody(
                    response.stream,  # type: ignore[arg-type]
                    router.settle(node, started),
                    router.first_chunk(node, started) if _streamed(response) else None,
                )
            except BaseException:
                response.close()
                raise
            return response

        try:
            return router.cluster.call_sync(attempt, key=router.routing_key(request, body))
        except Exception as error:
            answer = router.unwrap(error)
            if answer is None:
                raise
            return answer

    def close(self) -> None:
        self._transport.close()
