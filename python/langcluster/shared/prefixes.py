"""The prefix index of ``PrefixAware``, shared by the routers of a service.

Each router keeps a journal of its picks for prompts (node id and prompt
block hashes, bounded in bytes: ``PrefixAware.keep_journal``), takes it every
``prefix_flush_s`` and publishes it on the service's ``routes`` channel; every
other router merges it into its own record (``merge_journal``), as if it had
routed those prompts itself. N routers then send a prefix where any of them
sent it before, as one router would.

What is shared is a hint, never a decision: a journal lost (Redis down, a
full journal, a router that starts late) costs cache hits, not calls. A
router that starts or reconnects learns from the traffic that follows; the
records are not read back from Redis.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from langcluster.shared.messages import MAX_PAYLOAD, Kind, Message, encode

if TYPE_CHECKING:
    from langcluster._core import PrefixAware
    from langcluster.shared.state import SharedState

__all__ = ["PrefixSharing"]

_log = logging.getLogger(__name__)
# Room left in a message for its head, an empty node id and the signature.
_JOURNAL_BYTES = MAX_PAYLOAD - 64


class PrefixSharing:
    """One router's side: publishes its journal, merges the others'."""

    def __init__(self, state: SharedState, balancer: PrefixAware) -> None:
        self.state = state
        self.balancer = balancer
        self.channel = f"{state._prefix()}:routes"
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
                publish = state._client.publish(self.channel, message)
                await asyncio.wait_for(publish, state.timeout_s)
                state._stats.add("routes_published")
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis is down: these picks stay this router's
                state._stats.add("publish_failures")
                _log.debug("shared state: publishing routes failed: %r", error)

    def merge(self, payload: Any) -> None:
        """Another router's journal, from the network: bytes that are not a
        whole journal of the same block sizes are refused and counted."""
        try:
            merged = self.balancer.merge_journal(payload)
        except (TypeError, ValueError) as error:
            self.state._stats.add("refused")
            _log.debug("shared state: a journal refused: %s", error)
            return
        self.state._stats.add("applied")
        self.state._stats.add("routes_merged", merged)
