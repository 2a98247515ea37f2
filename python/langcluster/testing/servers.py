"""``SimulatedServer``: a model server on loopback for demos and tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

from langcluster._checks import count, fraction, seconds, text
from langcluster.node import Node

__all__ = ["SimulatedServer"]

_REASONS = {200: "OK", 404: "Not Found", 400: "Bad Request", 500: "Internal Server Error"}


class SimulatedServer:
    """One simulated model server: a real HTTP/1.1 server on loopback
    (asyncio streams, keep-alive) with its own latency and error rate.

    - ``GET /health`` answers 200 ``ok`` (after ``health_latency_s``).
    - ``POST /v1/completions`` (and ``/v1/chat/completions``) with a JSON
      body answers after ``latency_s`` (times a random factor in [0.5, 1.5])
      with ``{"id", "node", "text", "usage"}``, or with a 500 at
      ``error_rate``.
    - ``kill()`` closes the listening socket and every open connection, as a
      crashed process would; ``start()`` listens again on the same port.
    """

    def __init__(
        self,
        node_id: str,
        *,
        port: int = 0,
        latency_s: float = 0.02,
        error_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        text("node_id", node_id)
        seconds("latency_s", latency_s, zero=True)
        fraction("error_rate", error_rate)
        count("port", port, minimum=0)
        self.node_id = node_id
        self.port = port
        self.latency_s = latency_s
        self.error_rate = error_rate
        self.health_latency_s = 0.0  # raise it to make health checks slow too
        self.requests = 0
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def running(self) -> bool:
        return self._server is not None

    def node(self, **kwargs: Any) -> Node:
        return Node(self.node_id, "127.0.0.1", self.port, **kwargs)

    async def start(self) -> SimulatedServer:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        """Stops listening and drops every connection, mid-request too."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

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
                status, payload = await self._answer(method, path, body)
                data = json.dumps(payload).encode()
                writer.write(
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                    f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
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

    async def _answer(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if method == "GET" and path == "/health":
            if self.health_latency_s:
                await asyncio.sleep(self.health_latency_s)
            return 200, "ok"
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            return 404, {"error": f"no route {method} {path}"}
        self.requests += 1
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return 400, {"error": "body: not JSON"}
        await asyncio.sleep(self.latency_s * self._rng.uniform(0.5, 1.5))
        if self._rng.random() < self.error_rate:
            return 500, {"error": f"{self.node_id}: simulated failure"}
        prompt = request.get("prompt")
        if prompt is None:
            messages = request.get("messages") or [{}]
            prompt = messages[-1].get("content", "")
        text = f"[{self.node_id}] answer to: {str(prompt)[:60]}"
        return 200, {
            "id": f"{self.node_id}-{self.requests}",
            "node": self.node_id,
            "text": text,
            "usage": {"prompt_tokens": len(str(prompt).split()), "completion_tokens": 8},
        }
