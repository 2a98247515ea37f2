"""One node's KV cache events, from its ZeroMQ publisher into a
``PrefixAware`` record (exact mode).

vLLM (``--kv-events-config '{"enable_kv_cache_events": true, "publisher":
"zmq", "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558"}'``)
and SGLang publish each batch of events as three frames: a topic, an
8-byte big-endian sequence number (from 0, one per batch) and the msgpack
batch. A ROUTER socket answers a replay request, an 8-byte start sequence,
with every batch it still buffers from there, then the sequence -1.

``KvEventSubscriber`` follows one publisher:

- each batch in sequence goes to ``PrefixAware.apply_kv_events`` (decoded
  and applied in Rust, without the GIL); a batch that is malformed,
  truncated or hostile is counted (``refused``) and dropped, the record
  untouched;
- a sequence number that skips ahead is a gap: the missing batches are
  asked of the replay socket; a gap the replay cannot fill (no replay
  socket, batches no longer buffered, no answer in ``replay_timeout_s``)
  leaves the record unsure of what the server evicted, so the node's record
  is forgotten (``lost``) and rebuilt from the events that follow;
- a publisher that restarted, with its server, counts from 0 again: a
  sequence number that goes back says so; and since a subscriber that
  reconnects may first hear the new publisher past the old one's last
  number, after every reconnection the batch it applied last is asked of
  the replay socket again and compared: another batch under that number (or
  none) means a new publisher. Either way the node's record is forgotten
  (``restarts``) and the new publisher's buffer replayed from 0 (without a
  replay socket, a reconnection cannot be told from a restart, and the
  record is forgotten);
- the first batch after the subscriber starts is preceded by a replay from
  0, so a router that starts late learns what the server already holds;
- a connection that drops (the publisher went away, or sent a frame over
  ``max_message_bytes``, which ZeroMQ refuses before reading it) is opened
  again, and keeps trying until the publisher is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
from typing import Any

from langcluster._aio import cancel_and_wait
from langcluster._checks import count, seconds, text
from langcluster._core import Balancer
from langcluster._counters import Counters

__all__ = ["KvEventSubscriber"]

_log = logging.getLogger(__name__)
_END = -1
MAX_MESSAGE_BYTES = 64 << 20
"""The largest frame a subscriber accepts: ZeroMQ drops larger messages
before they are read."""


def _zmq() -> Any:
    try:
        import zmq
        import zmq.asyncio
    except ImportError:  # pragma: no cover - the extra is missing
        raise ImportError("KV events need pyzmq: pip install 'langcluster[kv]'") from None
    return zmq


class KvEventSubscriber:
    """Follows node ``node_id``'s KV event publisher at ``endpoint`` (a
    ZeroMQ address, ``tcp://host:5557``) and applies its batches to
    ``balancer`` (a ``PrefixAware``); ``replay_endpoint`` is its replay
    socket, if it has one; ``topic`` filters the batches (vLLM's default is
    ""). ``start`` and ``close`` on the running loop; ``stats()`` counts
    what happened."""

    def __init__(
        self,
        balancer: Balancer,
        node_id: str,
        endpoint: str,
        *,
        replay_endpoint: str | None = None,
        topic: str = "",
        replay_timeout_s: float = 1.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        if not hasattr(balancer, "apply_kv_events"):
            raise TypeError(f"balancer: must be a PrefixAware, got {type(balancer).__name__}")
        self.balancer: Any = balancer
        self.node_id = text("node_id", node_id)
        self.endpoint = text("endpoint", endpoint)
        self.replay_endpoint = (
            None if replay_endpoint is None else text("replay_endpoint", replay_endpoint)
        )
        self.topic = text("topic", topic, empty=True).encode()
        self.replay_timeout_s = seconds("replay_timeout_s", replay_timeout_s)
        self.max_message_bytes = count("max_message_bytes", max_message_bytes)
        self.last: int | None = None
        self._digest = b""  # of the batch applied last
        self._reconnected = False
        self._counts = Counters(
            "batches", "refused", "gaps", "replayed", "lost", "restarts", "stale", "reconnects"
        )
        self._task: asyncio.Task[None] | None = None

    def stats(self) -> dict[str, int]:
        """``batches`` applied, ``refused`` (malformed), ``gaps`` seen,
        batches ``replayed``, gaps ``lost`` (the record forgotten),
        ``restarts`` of the publisher, ``stale`` (repeated) batches, and
        ``reconnects`` after a dropped connection."""
        return self._counts.snapshot()

    async def start(self) -> KvEventSubscriber:
        """Connects (at once: the publisher need not be up yet) and starts
        following it in a task of its own."""
        if self._task is None:
            _zmq()
            self._task = asyncio.create_task(
                self._run(), name=f"langcluster:kv-events:{self.node_id}"
            )
        return self

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        zmq = _zmq()
        ctx = zmq.asyncio.Context.instance()
        first = True
        while True:
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            sub.setsockopt(zmq.SUBSCRIBE, self.topic)
            monitor = sub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            poller = zmq.asyncio.Poller()
            poller.register(sub, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            sub.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
            sub.connect(self.endpoint)
            if not first:
                self._counts.add("reconnects")
                self._reconnected = True
            first = False
            try:
                await self._follow(sub, monitor, poller)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the subscription silently
                _log.exception("KV events of node %s: the subscriber failed", self.node_id)
                await asyncio.sleep(1.0)
            finally:
                sub.disable_monitor()
                monitor.close(0)
                sub.close(0)

    async def _follow(self, sub: Any, monitor: Any, poller: Any) -> None:
        """Receives until the connection drops (ZeroMQ does not always open
        it again by itself, after a frame over the size limit)."""
        while True:
            ready = dict(await poller.poll())
            if monitor in ready:
                event = await monitor.recv_multipart()
                (kind,) = struct.unpack("=H", event[0][:2])
                if kind == _zmq().EVENT_DISCONNECTED:
                    return
            if sub in ready:
                await self._receive(await sub.recv_multipart())

    async def _receive(self, frames: list[bytes]) -> None:
        if len(frames) != 3 or len(frames[1]) != 8 or not frames[0].startswith(self.topic):
            self._counts.add("refused")
            return
        seq = int.from_bytes(frames[1], "big", signed=True)
        payload = frames[2]
        last = self.last
        if seq < 0:
            self._counts.add("refused")
            return
        if last is not None and self._reconnected:
            self._reconnected = False
            if not await self._same_publisher(last):
                self._counts.add("restarts")
                self._forget()
                self.last = last = None
        if last is None:
            await self._catch_up(0, seq)
        elif seq == last:
            self._counts.add("stale")
            return
        elif seq < last:
            self._counts.add("restarts")
            self._forget()
            await self._catch_up(0, seq)
        elif seq > last + 1:
            self._counts.add("gaps")
            await self._catch_up(last + 1, seq)
        self._apply(payload)
        self.last = seq

    async def _same_publisher(self, last: int) -> bool:
        """Whether the publisher still holds, under number ``last``, the
        batch applied last: the same publisher as before the reconnection."""
        if self.replay_endpoint is None:
            return False
        found = await self._fetch(last)
        return found is not None and hashlib.blake2b(found, digest_size=16).digest() == self._digest

    async def _catch_up(self, start: int, upto: int) -> None:
        """Applies the batches ``start`` to ``upto - 1`` from the replay
        socket; forgets the node's record when they cannot all be had
        (except when starting from 0: a publisher only buffers so much, and
        a router that starts late takes what there is)."""
        if start >= upto:
            return
        got = await self._replay(start, upto)
        if got < upto - start and (start > 0 or self.last is not None):
            self._counts.add("lost")
            self._forget()

    async def _replay(self, start: int, upto: int) -> int:
        """Asks the replay socket for batches from ``start`` and applies
        those before ``upto`` in order; returns how many it applied."""
        got = 0
        async with contextlib.aclosing(self._ask(start)) as batches:
            async for seq, payload in batches:
                if seq != start + got or seq >= upto:
                    break  # not the next one needed: what follows is a gap
                self._apply(payload)
                self._counts.add("replayed")
                got += 1
        return got

    async def _fetch(self, seq: int) -> bytes | None:
        """The batch numbered ``seq`` from the replay socket, if it has it."""
        async with contextlib.aclosing(self._ask(seq)) as batches:
            async for found, payload in batches:
                return payload if found == seq else None
        return None

    async def _ask(self, start: int) -> Any:
        """The batches the replay socket sends from ``start``, until its end
        marker or ``replay_timeout_s``."""
        if self.replay_endpoint is None:
            return
        zmq = _zmq()
        dealer = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        try:
            dealer.connect(self.replay_endpoint)
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.replay_timeout_s
            while (left := deadline - loop.time()) > 0:
                frames = await asyncio.wait_for(dealer.recv_multipart(), left)
                if len(frames) != 3 or len(frames[1]) != 8:
                    self._counts.add("refused")
                    continue
                seq = int.from_bytes(frames[1], "big", signed=True)
                if seq == _END:
                    return
                yield seq, frames[2]
        except (TimeoutError, asyncio.TimeoutError):
            return
        except zmq.ZMQError as error:
            _log.warning("KV events of node %s: replay failed: %s", self.node_id, error)
        finally:
            dealer.close(0)

    def _apply(self, payload: bytes) -> None:
        try:
            self.balancer.apply_kv_events(self.node_id, payload)
        except (ValueError, KeyError) as error:  # a malformed batch, or the node left
            self._counts.add("refused")
            _log.debug("KV events of node %s: batch dropped: %s", self.node_id, error)
            return
        self._counts.add("batches")
        self._digest = hashlib.blake2b(payload, digest_size=16).digest()

    def _forget(self) -> None:
        with contextlib.suppress(KeyError):  # the node left the set meanwhile
            self.balancer.forget(self.node_id)
