"""``SimulatedServer``: a model server on loopback that speaks OpenAI's wire
format, for demos and tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from langcluster._checks import count, fraction, seconds, text
from langcluster.node import Node
from langcluster.testing.kv_publisher import KvPublisher, encode_events
from langcluster.testing.openai_api import (
    PrefixCache,
    answer_body,
    embeddings_body,
    metrics_text,
    prompt_of,
    reply_pieces,
    server_info,
    stream_events,
    tokenize_answer,
    tokens,
    usage,
)

__all__ = ["SimulatedServer"]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}
_REASONS[500] = "Internal Server Error"
_GENERATE = ("/v1/chat/completions", "/v1/completions")
_INFO = ("/get_server_info", "/server_info", "/get_model_info", "/model_info")
_TOKENIZE = ("/tokenize", "/v1/chat/completions/render", "/v1/completions/render")
Answer = tuple[int, dict[str, str], Any]  # status, extra headers, JSON body or an event stream


def _head(status_line: str, headers: dict[str, str]) -> bytes:
    return (status_line + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()


def _malformed(path: str, request: dict[str, Any]) -> str:
    """What is wrong with the request's prompt, or "" when nothing is."""
    if path == "/v1/chat/completions":
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: must be a non-empty list"
        if not all(isinstance(m, dict) for m in messages):
            return "messages: each must be an object"
        return ""
    field = "prompt" if path == "/v1/completions" else "input"
    if not isinstance(request.get(field), str | list):
        return f"{field}: must be a string or a list"
    return ""


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class SimulatedServer:
    """One simulated model server: a real HTTP/1.1 server on loopback
    (asyncio streams, keep-alive) that answers as vLLM's OpenAI server does.

    - ``GET /health`` answers 200 ``ok`` (after ``health_latency_s``);
      ``GET /v1/models`` lists ``model``.
    - ``POST /v1/chat/completions`` and ``/v1/completions`` answer a
      completion (``stream: true``: server-sent events, one per token,
      ending in ``data: [DONE]``, with ``usage`` last when
      ``stream_options.include_usage`` asks) whose text names the server; the
      ``system_fingerprint`` field and the ``x-served-by`` header name it
      too. ``usage.prompt_tokens_details.cached_tokens`` is the prompt's
      prefix found in the server's cache (``cache_blocks`` blocks of
      ``block_tokens`` four-byte tokens, least recently used out).
    - Time to the first token is ``latency_s`` times a random factor in
      [0.5, 1.5], plus ``prefill_per_token_s`` per uncached prompt token;
      each further token takes ``decode_per_token_s``. At most
      ``max_running`` requests run at once and ``max_queue`` wait; beyond
      that a 429 answers, with ``Retry-After: retry_after_s`` (None: no
      header). At ``error_rate`` a request fails with a 500.
    - ``POST /v1/embeddings``: a repeatable vector per input, as floats or
      base64 (``encoding_format``).
    - ``kill()`` closes the listening socket and every open connection, as a
      crashed process would, mid-stream too; ``start()`` listens again on
      the same port; ``restart()`` is both, with an empty cache (a new
      process). ``gate``, when set to an ``asyncio.Event``, holds every
      streamed answer after its first event until the event is set.
    - It reports its cache as vLLM does (``GET /metrics``:
      ``vllm:cache_config_info``) and as SGLang does (``GET
      /get_server_info``, ``/server_info``: ``max_total_num_tokens``).
    - With ``kv_events``, it publishes its cache's KV events as vLLM does
      (``langcluster.testing.kv_publisher``), and ``node()`` names the
      publisher in the node's metadata (``kv_events``, ``kv_events_replay``)
      for ``Cluster(kv_events=True)``. Its blocks are ``tokenize``'s token
      ids: a router given that tokenizer hashes the server's blocks.
    """

    def __init__(
        self,
        node_id: str,
        *,
        port: int = 0,
        latency_s: float = 0.02,
        error_rate: float = 0.0,
        seed: int | None = None,
        model: str = "simulated",
        cache_blocks: int = 4096,
        block_tokens: int = 16,
        prefill_per_token_s: float = 0.0,
        decode_per_token_s: float = 0.0,
        max_running: int = 64,
        max_queue: int = 256,
        retry_after_s: float | None = 1.0,
        kv_events: bool = False,
    ) -> None:
        text("node_id", node_id)
        text("model", model)
        seconds("latency_s", latency_s, zero=True)
        seconds("prefill_per_token_s", prefill_per_token_s, zero=True)
        seconds("decode_per_token_s", decode_per_token_s, zero=True)
        seconds("retry_after_s", retry_after_s, optional=True, zero=True)
        fraction("error_rate", error_rate)
        count("port", port, minimum=0)
        count("cache_blocks", cache_blocks, minimum=0)
        count("block_tokens", block_tokens)
        count("max_running", max_running)
        count("max_queue", max_queue, minimum=0)
        self.node_id = node_id
        self.port = port
        self.latency_s = latency_s
        self.error_rate = error_rate
        self.model = model
        self.prefill_per_token_s = prefill_per_token_s
        self.decode_per_token_s = decode_per_token_s
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.health_latency_s = 0.0  # raise it to make health checks slow too
        self.gate: asyncio.Event | None = None
        self.cache = PrefixCache(cache_blocks, block_tokens)
        self.requests = 0  # completions and embeddings
        self.health_checks = 0
        self.health_times: deque[float] = deque(maxlen=10_000)  # monotonic, in this process
        self.health_queries: deque[str] = deque(maxlen=10_000)  # the query of each, in order
        self.rejected = 0  # 429s
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self._rng = random.Random(seed)
        self._slots = asyncio.Semaphore(max_running)
        self._waiting = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.publisher: KvPublisher | None = None
        if kv_events:
            self.publisher = KvPublisher()
            self.cache.events = []

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def hit_rate(self) -> float:
        """Cached prompt tokens over prompt tokens, over every request."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def node(self, **kwargs: Any) -> Node:
        if self.publisher is not None:
            meta = {"kv_events": self.publisher.endpoint}
            if self.publisher.replay_endpoint is not None:
                meta["kv_events_replay"] = self.publisher.replay_endpoint
            kwargs["metadata"] = {**meta, **kwargs.get("metadata", {})}
        return Node(self.node_id, "127.0.0.1", self.port, **kwargs)

    async def start(self) -> SimulatedServer:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]
            if self.publisher is not None:
                await self.publisher.start()
        return self

    async def kill(self) -> None:
        """Stops listening and drops every connection, mid-request too."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if self.publisher is not None:
            await self.publisher.close()
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def restart(self) -> None:
        """Kills the server and starts it again cold: a new process, its
        cache empty, its KV event publisher counting from 0 again."""
        await self.kill()
        self.cache.clear()
        if self.publisher is not None:
            self.publisher.restart_sequence()
        await self.start()

    # ------------------------------------------------------------- HTTP/1.1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, *_ = [*line.decode("latin-1").split(" "), "", ""]
                length, keep_alive = 0, True
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                    elif name.strip().lower() == "connection" and "close" in value.lower():
                        keep_alive = False
                body = await reader.readexactly(length) if length else b""
                target, _, query = path.partition("?")
                if target == "/health":
                    self.health_queries.append(query)
                status, headers, payload = await self._answer(method, target, body)
                try:
                    await self._write(writer, status, headers, payload, keep_alive)
                finally:
                    if isinstance(payload, AsyncIterator):  # its running slot was held until now
                        self._slots.release()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        except asyncio.CancelledError:
            # The loop is shutting down around an idle keep-alive connection.
            # Ending quietly spares asyncio's stream callback, which would
            # log the cancellation as an error.
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        headers: dict[str, str],
        payload: Any,
        keep_alive: bool,
    ) -> None:
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        headers = {"x-served-by": self.node_id, **headers}
        headers["Connection"] = "keep-alive" if keep_alive else "close"
        if not isinstance(payload, AsyncIterator):
            if isinstance(payload, str) and "Content-Type" in headers:
                data = payload.encode()  # a text answer (metrics)
            else:
                data = json.dumps(payload).encode()
                headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(data))
            writer.write(_head(head, headers) + data)
            await writer.drain()
            return
        headers.update({"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
        writer.write(_head(head, headers))
        async for event in payload:  # each event leaves at once, as a chunk of its own
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    # ---------------------------------------------------------------- OpenAI

    async def _answer(self, method: str, path: str, body: bytes) -> Answer:
        if method == "GET" and path == "/health":
            self.health_checks += 1
            self.health_times.append(time.monotonic())
            if self.health_latency_s:
                await asyncio.sleep(self.health_latency_s)
            return 200, {}, "ok"
        if method == "GET" and path == "/v1/models":
            listed = {"id": self.model, "object": "model", "created": 0, "owned_by": "langcluster"}
            return 200, {}, {"object": "list", "data": [listed]}
        if method == "GET" and path in _INFO:
            return 200, {}, server_info(self.model, self.cache)
        if method == "GET" and path == "/metrics":
            return 200, {"Content-Type": "text/plain; version=0.0.4"}, metrics_text(self.cache)
        if method == "POST" and path in _TOKENIZE:
            return tokenize_answer(path, body, self.model)
        if method != "POST" or path not in (*_GENERATE, "/v1/embeddings"):
            return 404, {}, _error(f"no route {method} {path}", "not_found_error")
        self.requests += 1
        try:
            request = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            return 400, {}, _error("the body is not JSON", "invalid_request_error")
        if not isinstance(request, dict):
            return 400, {}, _error("the body is not a JSON object", "invalid_request_error")
        model = request.get("model")
        model = model if isinstance(model, str) else self.model
        wrong = _malformed(path, request)
        if wrong:
            return 400, {}, _error(wrong, "invalid_request_error")
        if path == "/v1/embeddings":
            await asyncio.sleep(self.latency_s * self._rng.uniform(0.5, 1.5))
            return 200, {}, embeddings_body(request, model)
        if self._slots.locked() and self._waiting >= self.max_queue:
            self.rejected += 1
            after = {} if self.retry_after_s is None else {"Retry-After": f"{self.retry_after_s:g}"}
            return 429, after, _error("the queue is full", "rate_limit_error")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        answer: Answer | None = None
        try:
            answer = await self._generate(path, request, model)
            return answer
        finally:  # a streamed answer holds its slot until it is written
            if answer is None or not isinstance(answer[2], AsyncIterator):
                self._slots.release()

    async def _generate(self, path: str, request: dict[str, Any], model: str) -> Answer:
        prompt = prompt_of(path, request)
        prompt_tokens = tokens(prompt)
        cached = min(self.cache.admit(prompt), prompt_tokens)
        if self.publisher is not None and self.cache.events:
            done, self.cache.events = self.cache.events, []
            await self.publisher.publish(encode_events(done, tokens=self.cache.block_tokens_of))
        self.prompt_tokens += prompt_tokens
        self.cached_tokens += cached
        prefill = self.prefill_per_token_s * (prompt_tokens - cached)
        await asyncio.sleep(self.latency_s * self._rng.uniform(0.5, 1.5) + prefill)
        if self._rng.random() < self.error_rate:
            return 500, {}, _error(f"{self.node_id}: simulated failure", "server_error")
        chat = path == "/v1/chat/completions"
        pieces = reply_pieces(self.node_id, path, request)
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        finish = "length" if isinstance(limit, int) and len(pieces) >= limit else "stop"
        use = usage(prompt_tokens, len(pieces), cached)
        answer_id = f"{'chatcmpl' if chat else 'cmpl'}-{self.node_id}-{self.requests}"
        if not request.get("stream"):
            await asyncio.sleep(self.decode_per_token_s * max(0, len(pieces) - 1))
            body = answer_body(chat, answer_id, model, self.node_id, pieces, finish, use)
            return 200, {}, body
        options = request.get("stream_options")
        wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        events = stream_events(
            chat, answer_id, model, self.node_id, self._decode(pieces), finish,
            use if wants_usage else None,
        )  # fmt: skip
        return 200, {}, events

    async def _decode(self, pieces: list[str]) -> AsyncIterator[str]:
        """The tokens of a streamed answer, at decode speed."""
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(self.decode_per_token_s)
            yield piece
            if i == 0 and self.gate is not None:
                await self.gate.wait()
