"""Exact mode for a changing node set: one ``KvEventSubscriber`` per node
that names its publisher, and each node's cache size learned."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import httpx

from langcluster._checks import seconds
from langcluster._http import tls
from langcluster.kv.capacity import balancer_blocks, kv_tokens
from langcluster.kv.subscriber import KvEventSubscriber

if TYPE_CHECKING:
    from langcluster._core import Balancer
    from langcluster.node import Node
    from langcluster.registry import NodeRegistry

__all__ = ["KvEvents"]

_log = logging.getLogger(__name__)


def _endpoints(node: Node) -> tuple[str, str | None, str] | None:
    meta = node.metadata
    endpoint = meta.get("kv_events")
    if not isinstance(endpoint, str) or not endpoint:
        return None
    replay = meta.get("kv_events_replay")
    topic = meta.get("kv_events_topic", "")
    return endpoint, replay if isinstance(replay, str) and replay else None, str(topic)


class KvEvents:
    """Keeps ``balancer`` (a ``PrefixAware``) in step with the servers of
    a node set:

    - a node whose ``metadata["kv_events"]`` names a ZeroMQ address
      (``tcp://host:5557``; ``kv_events_replay`` its replay socket,
      ``kv_events_topic`` its topic) gets a subscriber feeding its record
      from the server's KV events;
    - with ``learn_capacity``, each node's cache size is asked of the
      server (``langcluster.kv.capacity``) when it joins, and set as the
      node's record bound (``set_node_blocks``).

    ``sync(nodes)`` reconciles with a node set (a ``Cluster`` calls it on
    every change); ``close()`` stops every subscriber.
    """

    def __init__(
        self,
        balancer: Balancer,
        *,
        learn_capacity: bool = True,
        probe_timeout_s: float = 2.0,
        replay_timeout_s: float = 1.0,
    ) -> None:
        if not hasattr(balancer, "apply_kv_events"):
            raise TypeError(
                f"balancer: KV events need a PrefixAware balancer, got {type(balancer).__name__}"
            )
        self.balancer: Any = balancer
        self.learn_capacity = learn_capacity
        self.probe_timeout_s = seconds("probe_timeout_s", probe_timeout_s)
        self.replay_timeout_s = seconds("replay_timeout_s", replay_timeout_s)
        self.subscribers: dict[str, KvEventSubscriber] = {}
        self._where: dict[str, tuple[str, str | None, str]] = {}
        self._probed: set[str] = set()
        self._probes: set[asyncio.Task[None]] = set()

    async def sync(self, nodes: Iterable[Node]) -> None:
        """Starts a subscriber for each node that names a publisher (again
        when the address changed) and stops those of nodes gone."""
        present: dict[str, Node] = {}
        for node in nodes:
            present[node.id] = node
            where = _endpoints(node)
            if where is not None and self._where.get(node.id) != where:
                await self._stop(node.id)
                endpoint, replay, topic = where
                subscriber = KvEventSubscriber(
                    self.balancer, node.id, endpoint, replay_endpoint=replay, topic=topic,
                    replay_timeout_s=self.replay_timeout_s,
                )  # fmt: skip
                self.subscribers[node.id] = await subscriber.start()
                self._where[node.id] = where
            elif where is None:
                await self._stop(node.id)
            if self.learn_capacity and node.id not in self._probed:
                self._probed.add(node.id)
                task = asyncio.create_task(self._probe(node), name=f"langcluster:kv-size:{node.id}")
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)
        for gone in set(self.subscribers) - set(present):
            await self._stop(gone)
        self._probed &= set(present)

    async def _probe(self, node: Node) -> None:
        async with httpx.AsyncClient(timeout=self.probe_timeout_s, verify=tls(httpx)) as client:
            tokens = await kv_tokens(node, client)
        if tokens is None:
            return
        with contextlib.suppress(KeyError):  # the node left meanwhile
            self.balancer.set_node_blocks(node.id, balancer_blocks(self.balancer, tokens))
            _log.info("node %s holds %d KV tokens", node.id, tokens)

    async def _stop(self, node_id: str) -> None:
        subscriber = self.subscribers.pop(node_id, None)
        self._where.pop(node_id, None)
        if subscriber is not None:
            await subscriber.close()

    async def follow(self, registry: NodeRegistry, name: str) -> asyncio.Task[None]:
        """Syncs with ``registry``'s nodes now and at every change after,
        from a task (returned; cancel it to stop)."""
        await self.sync(registry.nodes())

        async def follow() -> None:
            async for _ in registry.watch():
                try:
                    await self.sync(registry.nodes())
                except Exception:
                    _log.exception("%s: KV event subscribers", name)

        return asyncio.create_task(follow(), name=f"langcluster:{name}:kv-events")

    def stats(self) -> dict[str, dict[str, int]]:
        """Each subscriber's counts, by node id."""
        return {node_id: s.stats() for node_id, s in self.subscribers.items()}

    async def close(self) -> None:
        for task in list(self._probes):
            task.cancel()
        for task in list(self._probes):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for node_id in list(self.subscribers):
            await self._stop(node_id)
