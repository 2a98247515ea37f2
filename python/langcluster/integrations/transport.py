"""``AsyncClusterTransport`` and ``ClusterTransport``: httpx transports that
send each request to a node the cluster picks, with its failover.

The decisions (which key, which URL, which statuses to retry, what a
``Retry-After`` means, what a broken stream counts as) are made once, in
``_Router``; the two transports only send and read, each in its own world.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import httpx

from langcluster._checks import seconds, text
from langcluster._core import ConsistentHash, PrefixAware
from langcluster._http import AsyncTransportBase, TransportBase, library, mismatch, tls, with_host
from langcluster._http import header as _header
from langcluster.errors import NoAvailableNode, NodeBusy
from langcluster.integrations.admission import (
    AsyncAdmission,
    NodePools,
    SyncAdmission,
    given_transport,
    pool_limits,
    wait_limit_s,
)
from langcluster.integrations.bodies import AsyncBody, SyncBody, hand_over, streamed
from langcluster.integrations.openai_body import read_prompt
from langcluster.types import Key

if TYPE_CHECKING:
    import httpx2

    from langcluster.cluster import Cluster

__all__ = ["AsyncClusterTransport", "ClusterTransport"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110 token)
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
        self.session_header = None if session_header is None else session_header.lower()
        self.max_retry_after_s = float(max_retry_after_s)
        self._spread = itertools.count()  # keys for a hashing balancer when a request has none
        self._urls: dict[tuple[str, str, str, int | None], tuple[httpx.URL, bytes]] = {}

    def nodes_available(self) -> int:
        return int(self.cluster.balancer.available_count)

    def addresses(self) -> set[tuple[str, int | None]]:
        return {(n.address, n.port) for n in self.cluster.registry.nodes()}

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
            session = _header(request.headers, header) if header is not None else None
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
            found = self._urls[key] = (target, target.netloc)
        headers = with_host(request.headers, found[1])
        kind = type(request)  # an httpx or an httpx2 request
        if not hasattr(request, "__dict__"):  # a version whose requests have slots
            return kind(
                request.method, found[0], headers=headers, content=body,
                extensions=request.extensions,
            )  # fmt: skip
        # A copy that shares the body (read already, so it can be sent again)
        # costs a fifth of a new Request, which parses and checks it all anew.
        out = kind.__new__(kind)
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

    def first_chunk(self, node: Any, started: float, response: Any) -> Callable[[], None] | None:
        """What to call when the first chunk of ``node``'s answer (a
        stream) arrives: its time to first token goes to a balancer that
        keeps it (``PrefixAware``); None for one that does not, or an answer
        that is no stream."""
        observe = getattr(self.cluster.failover.balancer, "observe_ttft", None)
        if observe is None or not streamed(response):
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


class AsyncClusterTransport(AsyncTransportBase):
    """An httpx transport that sends each request to a node ``cluster``
    picks, through its failover:

        client = openai.AsyncOpenAI(
            base_url="http://chat/v1", api_key="-", max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(
                transport=AsyncClusterTransport(cluster)
            ),
        )

    It serves the clients of httpx and of httpx2 (the fork the OpenAI SDK
    3.x builds its default clients on, ``openai.DefaultAsyncHttpxClient``)
    alike: each request is sent with the library of its client.

    - The node's address and port (and ``metadata["scheme"]``, if set)
      replace the URL's; path, query, headers and body are kept, and the
      ``Host`` header names the node. Each node has a connection pool of its
      own, of ``limits`` (by default as many connections as it may have
      requests in flight, all kept alive); httpx ignores a client's
      ``limits=`` once it is given a transport, so give them here. The
      pools use the library's default TLS settings (one context for all);
      a ``transport`` given (with TLS settings of your own, say) serves
      every node with its own pool instead.
    - At most ``max_in_flight_per_node`` requests per available node are in
      flight at once; up to ``max_queued`` more wait their turn (in order,
      each for at most its pool timeout), and the rest are refused at once
      with ``Overloaded`` (an ``httpx.TransportError``). A service whose
      event loop fell behind (a blocked second, a busy host) then catches
      up instead of piling requests into a pool that grows slower as it
      grows. ``stats()`` counts it.
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
        retry_statuses: Iterable[int] = (429, 500, 502, 503, 504),
        transport: httpx.AsyncBaseTransport | httpx2.AsyncBaseTransport | None = None,
        session_header: str | None = "x-session-id",
        max_retry_after_s: float = 60.0,
        max_in_flight_per_node: int = 128,
        max_queued: int = 1024,
        limits: httpx.Limits | httpx2.Limits | None = None,
    ) -> None:
        self._router = router = _Router(
            cluster, key, retry_statuses, session_header, max_retry_after_s
        )
        self._transport, self._given_for = given_transport(transport, "AsyncBaseTransport", limits)
        self._admission = AsyncAdmission(max_in_flight_per_node, max_queued, router.nodes_available)
        self._retiring: set[asyncio.Task[None]] = set()
        self._pools = NodePools(
            lambda lib, limits: lib.AsyncHTTPTransport(
                limits=lib.Limits(**limits), verify=tls(lib)
            ),
            pool_limits(limits, max_in_flight_per_node), router.addresses, self._retire,
        )  # fmt: skip

    def _retire(self, pool: httpx.AsyncBaseTransport) -> None:
        task = asyncio.get_running_loop().create_task(pool.aclose())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @property
    def service(self) -> str:
        """The cluster's service: the label of the transport's metrics."""
        return self._router.cluster.service

    def stats(self) -> dict[str, int]:
        """Requests ``in_flight`` and ``waiting`` now, the ``capacity``;
        ``admitted`` in all, ``waited`` of them first, ``refused_full`` and
        ``refused_timeout``."""
        return self._admission.stats()

    async def handle_async_request(self, request: httpx.Request | httpx2.Request) -> Any:
        """Sends ``request`` (of an httpx or an httpx2 client) to a node;
        the answer is of the client's library."""
        if self._given_for and library(request) not in self._given_for:
            raise mismatch(request, self._transport)
        body = await request.aread()
        admission = self._admission
        await admission.enter(wait_limit_s(request))
        try:
            response = await self._send(request, body)
        except BaseException:
            admission.leave()
            raise
        hand_over(response, admission.leave)
        return response

    async def _send(self, request: Any, body: bytes) -> Any:
        router = self._router
        given = self._transport
        pools = self._pools

        async def attempt(node: Any) -> Any:
            started = time.perf_counter()
            out = router.outgoing(request, node, body)
            sender = given if given is not None else pools.for_url(out.url)
            response = await sender.handle_async_request(out)
            try:
                if response.status_code in router.retry_statuses:
                    await response.aread()
                    raise router.refusal(response, node)
                response.stream = AsyncBody(
                    response.stream,
                    router.settle(node, started),
                    router.first_chunk(node, started, response),
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
        if self._transport is not None:
            await self._transport.aclose()
        for pool in self._pools.take_all():
            await pool.aclose()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


class ClusterTransport(TransportBase):
    """The blocking twin of ``AsyncClusterTransport``, for ``httpx.Client``
    (``openai.OpenAI``, LangChain's ``http_client``); ``transport`` is an
    ``httpx.BaseTransport`` (or an httpx2 one). Threads past ``max_queued`` are refused; those
    waiting are let through as room comes."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        key: Literal["auto"] | KeyFunction | None = "auto",
        retry_statuses: Iterable[int] = (429, 500, 502, 503, 504),
        transport: httpx.BaseTransport | httpx2.BaseTransport | None = None,
        session_header: str | None = "x-session-id",
        max_retry_after_s: float = 60.0,
        max_in_flight_per_node: int = 128,
        max_queued: int = 1024,
        limits: httpx.Limits | httpx2.Limits | None = None,
    ) -> None:
        self._router = router = _Router(
            cluster, key, retry_statuses, session_header, max_retry_after_s
        )
        self._transport, self._given_for = given_transport(transport, "BaseTransport", limits)
        self._admission = SyncAdmission(max_in_flight_per_node, max_queued, router.nodes_available)
        self._pools = NodePools(
            lambda lib, limits: lib.HTTPTransport(limits=lib.Limits(**limits), verify=tls(lib)),
            pool_limits(limits, max_in_flight_per_node),
            router.addresses,
            lambda pool: pool.close(),
        )
        self._lock = threading.Lock()  # the pools' table, from many threads

    @property
    def service(self) -> str:
        return self._router.cluster.service

    def stats(self) -> dict[str, int]:
        """As ``AsyncClusterTransport.stats``."""
        return self._admission.stats()

    def handle_request(self, request: httpx.Request | httpx2.Request) -> Any:
        """As ``AsyncClusterTransport.handle_async_request``."""
        if self._given_for and library(request) not in self._given_for:
            raise mismatch(request, self._transport)
        body = request.read()
        admission = self._admission
        admission.enter(wait_limit_s(request))
        try:
            response = self._send(request, body)
        except BaseException:
            admission.leave()
            raise
        hand_over(response, admission.leave)
        return response

    def _pool(self, url: httpx.URL) -> httpx.BaseTransport:
        with self._lock:
            pool: httpx.BaseTransport = self._pools.for_url(url)
            return pool

    def _send(self, request: Any, body: bytes) -> Any:
        router = self._router
        given = self._transport

        def attempt(node: Any) -> Any:
            started = time.perf_counter()
            out = router.outgoing(request, node, body)
            sender = given if given is not None else self._pool(out.url)
            response = sender.handle_request(out)
            try:
                if response.status_code in router.retry_statuses:
                    response.read()
                    raise router.refusal(response, node)
                response.stream = SyncBody(
                    response.stream,  # type: ignore[arg-type]
                    router.settle(node, started),
                    router.first_chunk(node, started, response),
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
        if self._transport is not None:
            self._transport.close()
        with self._lock:
            pools = self._pools.take_all()
        for pool in pools:
            pool.close()
