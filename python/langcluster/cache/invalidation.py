"""Invalidation between the processes that share a ``LayeredCache``
namespace, over Redis pub/sub.

Every write that reaches Redis publishes the names it changed on the
channel ``langcluster:inv:<namespace>``; every other instance drops those
keys from its L1 when the message arrives (an instance ignores its own).
A message is binary: ``K``, the sender's 16-byte id, then each name
prefixed by its length (4 bytes, big-endian); or ``C`` and the sender's id
for "everything" (a ``clear()``). A message that does not parse clears L1.

Pub/sub delivers at most once: messages sent while a subscriber is
disconnected are lost. So the subscriber clears the whole L1 when it
reconnects, and it pings every ``PING_S`` and treats ``SILENCE_S`` without
an answer as a lost connection, so that a partition that leaves the socket
open cannot stop invalidations without notice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable

from langcluster.cache.coherence import Coherence
from langcluster.cache.redis import RedisCache
from langcluster.types import Key

__all__ = ["PING_S", "SILENCE_S", "Invalidations"]

_log = logging.getLogger(__name__)
_LEN = struct.Struct(">I")
PING_S = 1.0
SILENCE_S = 3.0


class Invalidations:
    """The channel of one namespace: encodes this instance's messages, and
    runs the subscriber thread that applies the others' to ``coherence``.
    ``on_reconnect()`` runs after each reconnection (L1 is cleared first);
    ``count(name)`` counts ``invalidations_received``, ``l1_resets`` and
    ``l2_errors``."""

    def __init__(
        self,
        l2: RedisCache,
        coherence: Coherence,
        *,
        on_reconnect: Callable[[], None],
        count: Callable[[str], None],
    ) -> None:
        self.l2 = l2
        self.coherence = coherence
        self.channel = f"langcluster:inv:{l2.namespace}".encode()
        self._id = os.urandom(16)
        self._on_reconnect = on_reconnect
        self._count = count
        self._subscribed = threading.Event()
        self._closing = threading.Event()
        coherence.listening = False  # until the first subscription
        self._thread = threading.Thread(
            target=self._run, name=f"langcluster-invalidation:{l2.namespace}", daemon=True
        )
        self._thread.start()

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._subscribed.wait(timeout_s)

    def message(self, names: Iterable[bytes] | None) -> bytes:
        """This instance's message for ``names`` (None: everything)."""
        if names is None:
            return b"C" + self._id
        return b"K" + self._id + b"".join(_LEN.pack(len(n)) + n for n in names)

    def _receive(self, data: bytes) -> None:
        op, sender = data[:1], data[1:17]
        if sender == self._id:
            return
        self._count("invalidations_received")
        if op == b"K":
            keys: list[Key] = []
            at = 17
            try:
                while at < len(data):
                    (size,) = _LEN.unpack_from(data, at)
                    keys.append(self.l2.keyspace.key(data[at + 4 : at + 4 + size]))
                    at += 4 + size
            except (struct.error, ValueError, UnicodeDecodeError):
                op = b"?"
            else:
                self.coherence.invalidate(keys)
                return
        if op != b"C":
            _log.warning("redis (%s): an unreadable invalidation; clearing L1", self.channel)
        self.coherence.invalidate(None)

    def _run(self) -> None:
        backoff = 0.05
        connected_before = False
        while not self._closing.is_set():
            pubsub = None
            try:
                pubsub = self.l2._client.pubsub()
                pubsub.subscribe(self.channel)
                heard = pinged = time.monotonic()
                while not self._closing.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    now = time.monotonic()
                    if message is not None:
                        heard = now
                    elif now - heard > SILENCE_S:
                        raise ConnectionError(f"no answer to PING for {SILENCE_S} s")
                    if now - pinged >= PING_S:
                        pubsub.ping()
                        pinged = now
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        if connected_before:
                            # Messages sent while we were away are lost.
                            self.coherence.invalidate(None)
                            self._count("l1_resets")
                            self._on_reconnect()
                        connected_before = True
                        backoff = 0.05
                        self.coherence.listening = True
                        self._subscribed.set()
                    elif message["type"] == "message":
                        self._receive(message["data"])
            except Exception as error:
                self.coherence.listening = False
                self._subscribed.clear()
                self._count("l2_errors")
                _log.debug("redis (%s): subscriber lost: %s", self.channel, error)
                self._closing.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)
