"""KV cache events as vLLM publishes them, for simulated servers.

``encode_events`` writes one batch (msgpack, vLLM's ``KVEventBatch``) from
``KvEvent``s of the fleet simulation or a ``SimulatedServer``: in the map
form vLLM sends now, or the array form of its earlier releases. A block id
stands for 16 tokens (``block_tokens``): the 64 bytes ``prompt_bytes``
writes for it, read as four-byte little-endian token ids, so a router that
reads the same prompt as bytes, or as those token ids, hashes the same
blocks.

``KvPublisher`` publishes batches over ZeroMQ as vLLM's
``ZmqEventPublisher`` does: a PUB socket sending ``(topic, sequence,
payload)`` with an 8-byte big-endian sequence number counting from 0, and
a ROUTER socket answering a replay request (an 8-byte start sequence) with
every buffered batch from there, then ``(-1, b"")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from langcluster.testing.fleet import KvEvent

__all__ = ["BLOCK_TOKENS", "KvPublisher", "block_tokens", "encode_events"]

BLOCK_TOKENS = 16
"""Token ids per block of the simulated servers' events."""

_END = (-1).to_bytes(8, "big", signed=True)


def block_tokens(block: int) -> list[int]:
    """The 16 token ids block ``block`` stands for."""
    low, high = block & 0xFFFFFFFF, (block >> 32) & 0xFFFFFFFF
    return [low, high] * 8


def _event(e: KvEvent, array: bool, tokens: Any) -> Any:
    if e.kind == "stored":
        ids = [t for b in e.blocks for t in tokens(b)]
        fields = [list(e.blocks), e.parent, ids, BLOCK_TOKENS, None, "GPU"]
        names = ["block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id"]
        tag = "BlockStored"
    elif e.kind == "removed":
        fields, names, tag = [list(e.blocks), "GPU"], ["block_hashes"], "BlockRemoved"
    elif e.kind == "cleared":
        fields, names, tag = [], [], "AllBlocksCleared"
    else:
        raise ValueError(f"kind: must be stored, removed or cleared, got {e.kind!r}")
    if array:
        return [tag, *fields]
    return {"type": tag, **dict(zip([*names, "medium"], fields, strict=False))}


def encode_events(
    events: Iterable[KvEvent],
    *,
    ts: float | None = None,
    array: bool = False,
    tokens: Any = block_tokens,
) -> bytes:
    """One vLLM ``KVEventBatch`` of ``events``, as msgpack bytes (the map
    form, or with ``array`` the array form). ``tokens(block)`` gives a
    stored block's token ids."""
    import msgpack  # the extra langcluster[kv]

    body = [_event(e, array, tokens) for e in events]
    stamp = time.time() if ts is None else ts
    batch: Any = [stamp, body] if array else {"ts": stamp, "events": body}
    return bytes(msgpack.packb(batch, use_bin_type=True))


async def _bind(sock: Any, endpoint: str) -> str:
    """Binds ``sock``; returns the address bound. ZeroMQ closes a socket's
    listener in its own thread, a moment after ``close``: a publisher that
    restarts on the same port tries again for a while."""
    import zmq

    for _ in range(200):
        try:
            sock.bind(endpoint)
            return str(sock.getsockopt(zmq.LAST_ENDPOINT).decode())
        except zmq.ZMQError as error:
            if error.errno != zmq.EADDRINUSE:
                raise
            await asyncio.sleep(0.01)
    sock.bind(endpoint)
    return str(sock.getsockopt(zmq.LAST_ENDPOINT).decode())


class KvPublisher:
    """Publishes event batches as vLLM does (see the module doc), on
    ``endpoint`` (``tcp://127.0.0.1:0`` picks a free port) with replay on
    ``replay_endpoint``; ``buffer_steps`` batches are kept for replay.
    ``start``/``close`` on the running loop; ``publish`` from it."""

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:0",
        replay_endpoint: str | None = "tcp://127.0.0.1:0",
        *,
        topic: str = "",
        buffer_steps: int = 10_000,
    ) -> None:
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.topic = topic.encode()
        self.buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self.sequence = 0
        self.published = 0
        self._pub: Any = None
        self._router: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> KvPublisher:
        import zmq
        import zmq.asyncio

        ctx = zmq.asyncio.Context.instance()
        self._pub = ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self.endpoint = await _bind(self._pub, self.endpoint)
        if self.replay_endpoint is not None:
            self._router = ctx.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            self.replay_endpoint = await _bind(self._router, self.replay_endpoint)
            self._task = asyncio.create_task(self._replay(), name="kv-publisher-replay")
        return self

    def restart_sequence(self) -> None:
        """Counts from 0 again and forgets the buffer: a publisher that
        restarted with its server."""
        self.sequence = 0
        self.buffer.clear()

    async def publish(self, payload: bytes, *, send: bool = True) -> int:
        """Publishes one batch; returns its sequence number. With ``send``
        off the batch is numbered and buffered but not sent: a batch lost
        on the way, which only a replay recovers."""
        seq = self.sequence
        self.sequence += 1
        self.buffer.append((seq, payload))
        if send and self._pub is not None:
            await self._pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])
            self.published += 1
        return seq

    async def send_raw(self, frames: Sequence[bytes]) -> None:
        """Sends arbitrary frames on the PUB socket (a hostile publisher)."""
        await self._pub.send_multipart(list(frames))

    async def _replay(self) -> None:
        while True:
            frames = await self._router.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                continue
            client, _, start = frames
            (first,) = struct.unpack(">q", start)
            for seq, payload in list(self.buffer):
                if seq >= first:
                    await self._router.send_multipart(
                        [client, b"", seq.to_bytes(8, "big"), payload]
                    )
            await self._router.send_multipart([client, b"", _END, b""])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for sock in (self._pub, self._router):
            if sock is not None:
                sock.close(0)
        self._pub = self._router = None
