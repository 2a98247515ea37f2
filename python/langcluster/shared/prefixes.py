"""The prefix index of ``PrefixAware``, shared by the routers of a service.

Each router keeps a journal of its picks for prompts (node id and prompt
block hashes, bounded in bytes: ``PrefixAware.keep_journal``), takes it every
``prefix_flush_s`` and publishes it on the service's ``routes`` channel; every
other router merges it into its own record (``merge_journal``), as if it had
routed those prompts itself. N routers then send a prefix where any of them
sent it before, as one router would.

Each journal is also appended to a Redis stream trimmed to the last
``prefix_history_s``: a router that starts (or reconnects) merges what the
others routed in that window (since what it last received, after a
reconnection), at most ``_HISTORY_BYTES`` of it, before it follows the
channel.

What is shared is a hint, never a decision: a journal lost (Redis down, a
full journal) costs cache hits, not calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from langcluster.shared.messages import MAX_PAYLOAD, Kind, Message, encode

if TYPE_CHECKING:
    from langcluster._core import PrefixAware
    from langcluster.shared.state import SharedState

__all__ = ["PrefixSharing"]

_log = logging.getLogger(__name__)
# Room left in a message for its head, an empty node id and the signature.
_JOURNAL_BYTES = MAX_PAYLOAD - 64
_HISTORY_BYTES = 32 << 20  # read back at a (re)connection, at most
_PAGE = 50  # stream entries read at a time


class PrefixSharing:
    """One router's side: publishes its journal, merges the others'."""

    def __init__(self, state: SharedState, balancer: PrefixAware) -> None:
        self.state = state
        self.balancer = balancer
        self.channel = f"{state._prefix()}:routes"
        self.log = f"{state._prefix()}:routes:log"
        self.seen_ms = 0.0  # when a journal was last received
        balancer.keep_journal(_JOURNAL_BYTES)

    def close(self) -> None:
        self.balancer.keep_journal(0)

    async def run(self) -> None:
        state = self.state
        while True:
            await asyncio.sleep(state.prefix_flush_s)
            data = self.balancer.take_journal()
            if not data:
                continue
            message = encode(Message(Kind.ROUTES, "", 0, state._origin, data), state._key)
            try:
                await asyncio.wait_for(self._send(message), state.timeout_s)
                state._stats.add("routes_published")
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis is down: these picks stay this router's
                state._stats.add("publish_failures")
                _log.debug("shared state: publishing routes failed: %r", error)

    async def _send(self, message: bytes) -> None:
        state = self.state
        if state.prefix_history_s > 0:
            oldest_ms = int((time.time() - state.prefix_history_s) * 1000)
            await state._client.xadd(self.log, {"m": message}, minid=oldest_ms, approximate=True)
        await state._client.publish(self.channel, message)

    async def catch_up(self) -> None:
        """At a (re)connection: the journals of the history window, or
        those since the last one received, each checked as a message from
        the channel is."""
        state = self.state
        if state.prefix_history_s <= 0:
            return
        now_ms = time.time() * 1000
        start = f"{int(max(now_ms - state.prefix_history_s * 1000, self.seen_ms - 1000))}"
        read = 0
        while read < _HISTORY_BYTES:
            page = await state._client.xrange(self.log, min=start, max="+", count=_PAGE)
            for _, fields in page:
                data = fields.get(b"m", fields.get("m"))
                read += len(data) if isinstance(data, bytes) else 0
                state._receive(data)
            if len(page) < _PAGE:
                return
            start = "(" + (page[-1][0].decode() if isinstance(page[-1][0], bytes) else page[-1][0])

    def merge(self, payload: Any) -> None:
        """Another router's journal, from the network: bytes that are not a
        whole journal of the same block sizes are refused and counted."""
        try:
            merged = self.balancer.merge_journal(payload)
        except (TypeError, ValueError) as error:
            self.state._stats.add("refused")
            _log.debug("shared state: a journal refused: %s", error)
            return
        self.seen_ms = time.time() * 1000
        self.state._stats.add("applied")
        self.state._stats.add("routes_merged", merged)
