"""One health checker per service: a lease in Redis (or etcd).

The lease is a key holding the holder's origin, with a TTL of one and a half
check intervals; every process tries to take or renew it each half interval
(one Lua script, so that only the holder renews). The holder runs its
``HealthMonitor`` and publishes each status change (and keeps the statuses
in a hash); the others stop theirs and follow what it publishes. When the
holder dies, its lease lapses within 1.5 intervals and another process takes
it within half an interval more: under two intervals without checks. When
Redis is down, every process checks for itself.

When the cluster discovers its nodes through etcd, the lease is an etcd lease
instead (``EtcdDiscovery.campaign``: a key created in one transaction, so two
holders are impossible whatever Redis does; its TTL is in whole seconds, at
least 2); the statuses still travel through Redis. When etcd is out of reach,
every process checks for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from langcluster.node import NodeStatus
from langcluster.registry import NodeEvent, NodeEventKind
from langcluster.shared.messages import Kind, Message

if TYPE_CHECKING:
    from langcluster.health import HealthMonitor
    from langcluster.shared.parts import SharedParts
    from langcluster.shared.state import SharedState

__all__ = ["CODES", "HealthLease"]

_log = logging.getLogger(__name__)

# A status travels as a number in the message's value field.
CODES = {NodeStatus.UNKNOWN: 0, NodeStatus.HEALTHY: 1, NodeStatus.UNHEALTHY: 2,
         NodeStatus.DRAINING: 3}  # fmt: skip
STATUSES = {code: status for status, code in CODES.items()}

_TAKE_OR_RENEW = """
local holder = redis.call('get', KEYS[1])
if holder == false or holder == ARGV[1] then
    redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""


class HealthLease:
    """The lease loop of one process, and what it does as holder or not."""

    def __init__(self, state: SharedState, cluster: SharedParts, monitor: HealthMonitor) -> None:
        self.state = state
        self.cluster = cluster
        self.monitor = monitor
        self.holder = False
        self.alone = False  # Redis is out of reach: checking for itself
        self.synced = False
        self.prefix = f"{state._prefix()}:health"
        self._script: Any = None
        self._campaign = cluster.campaign
        self._unsubscribe = cluster.registry.subscribe(self._on_node)

    def close(self) -> None:
        self._unsubscribe()

    async def run(self) -> None:
        interval = self.monitor.interval_s
        ttl_ms = max(1, int(interval * 1500))
        while True:
            try:
                if self._campaign is not None:  # etcd's lease
                    took = await asyncio.wait_for(
                        self._campaign("health", self.state._origin, ttl_ms / 1000),
                        self.state.timeout_s,
                    )
                else:
                    if self._script is None:
                        self._script = self.state._client.register_script(_TAKE_OR_RENEW)
                    took = await asyncio.wait_for(
                        self._script(
                            keys=[f"{self.prefix}:lease"], args=[self.state._origin, ttl_ms]
                        ),
                        self.state.timeout_s,
                    )
                await self._become(bool(took))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # no Redis: every process checks for itself
                _log.debug("shared state: health lease failed: %r", error)
                await self._become(True, alone=True)
            await asyncio.sleep(interval / 2)

    async def _become(self, holder: bool, *, alone: bool = False) -> None:
        was_holder, was_alone = self.holder, self.alone
        self.holder, self.alone = holder and not alone, alone
        if holder or alone:
            # A new holder checks every node at once: the last checks were
            # its predecessor's, up to the lease's lapse ago.
            await self.monitor.start(spread=not (self.holder and not was_holder))
            if self.holder and not was_holder:
                self.state._stats.add("health_leases")
        else:
            await self.monitor.stop()
            if was_holder or was_alone or not self.synced:
                await self._sync()

    async def _sync(self) -> None:
        """The statuses the holder published, read at once."""
        found = await self.state._client.hgetall(f"{self.prefix}:status")
        for raw_id, raw_code in found.items():
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                self.apply(raw_id.decode(), int(raw_code))
        self.synced = True

    def apply(self, node_id: str, code: int) -> None:
        """A status the holder published (ignored by the holder itself)."""
        status = STATUSES.get(code)
        if self.holder or status is None or node_id not in self.cluster.registry:
            return
        with self.state._own():
            self.cluster.registry.set_status(node_id, status)

    def _on_node(self, event: NodeEvent) -> None:
        """The holder's checks changed a status: tell the others."""
        if not self.holder or event.kind is not NodeEventKind.STATUS_CHANGED:
            return
        if getattr(self.state._applying, "on", False):
            return
        message = Message(Kind.HEALTH, event.node.id, CODES[event.node.status], self.state._origin)
        loop = self.state._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.state._enqueue, message)
