"""The node registry: the current set of nodes of a service, with events.

Discovery backends (``attach``) and health monitors write to it; balancers
read from it through ``bind``. Membership changes and
status changes are events (``NodeEvent``) delivered to ``subscribe``
callbacks, synchronously and in order, and to ``watch()`` async iterators
through a queue that keeps the latest event per node: a slow consumer sees
the latest state of every node that changed, in the order of their last
change, and never holds more than one pending event per node.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langcluster._aio import call_in_loop
from langcluster._core import Balancer
from langcluster._events import Broadcast
from langcluster.node import Node, NodeStatus, node_status

if TYPE_CHECKING:
    from langcluster.discovery import Discovery

__all__ = ["NodeEvent", "NodeEventKind", "NodeRegistry"]

_log = logging.getLogger(__name__)
_IN_ROTATION = (NodeStatus.HEALTHY, NodeStatus.UNKNOWN)


class NodeEventKind(str, enum.Enum):
    """The kinds of ``NodeEvent``; a ``str`` enum, equal to its value."""

    ADDED = "added"
    REMOVED = "removed"
    UPDATED = "updated"  # a new weight, address or metadata
    STATUS_CHANGED = "status_changed"  # health (or draining) changed

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class NodeEvent:
    """``node`` is the node after the change (for REMOVED, the node that
    left); ``previous`` a copy of it before (None for ADDED); ``at`` a
    ``time.time()`` timestamp."""

    kind: NodeEventKind
    node: Node
    previous: Node | None = None
    at: float = field(default_factory=time.time)


class _Watcher:
    """One ``watch()`` consumer: pending events keyed by node id, latest
    wins, on the consumer's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: OrderedDict[str, NodeEvent] = OrderedDict()
        self.ready = asyncio.Event()
        self.coalesced = 0

    def _put(self, event: NodeEvent) -> None:
        if event.node.id in self.pending:
            self.coalesced += 1
            del self.pending[event.node.id]
        self.pending[event.node.id] = event
        self.ready.set()

    def push(self, event: NodeEvent) -> None:
        call_in_loop(self.loop, self._put, event)

    async def next(self) -> NodeEvent:
        while not self.pending:
            self.ready.clear()
            await self.ready.wait()
        _, event = self.pending.popitem(last=False)
        return event


class NodeRegistry:
    """The nodes of one service, by id. Thread-safe."""

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self._nodes: dict[str, Node] = {}
        self._lock = threading.RLock()
        self._listeners: Broadcast[NodeEvent] = Broadcast(_log)
        self._watchers: weakref.WeakSet[_Watcher] = weakref.WeakSet()
        for node in nodes:
            self.register(node)

    # ------------------------------------------------------------- reading

    def get(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes())

    def nodes(self, healthy_only: bool = False) -> list[Node]:
        """A snapshot; with ``healthy_only``, the nodes a balancer would pick
        (HEALTHY or UNKNOWN)."""
        with self._lock:
            if healthy_only:
                return [n for n in self._nodes.values() if n.status in _IN_ROTATION]
            return list(self._nodes.values())

    # ------------------------------------------------------------- writing

    def register(self, node: Node) -> NodeEvent | None:
        """Adds a node, or replaces the one with its id. Returns the event,
        or None when nothing changed."""
        if not isinstance(node, Node):
            raise TypeError(f"node: must be a Node, got {type(node).__name__}")
        with self._lock:
            old = self._nodes.get(node.id)
            if old is None:
                event = NodeEvent(NodeEventKind.ADDED, node)
            elif old == node:
                return None
            elif _same_but_status(old, node):
                return self.set_status(node.id, node.status)
            else:
                event = NodeEvent(NodeEventKind.UPDATED, node, old)
            self._nodes[node.id] = node
            self._publish(event)
        return event

    def deregister(self, node_id: str) -> Node | None:
        """Removes a node; returns it, or None if it was not registered."""
        with self._lock:
            node = self._nodes.pop(node_id, None)
            if node is not None:
                self._publish(NodeEvent(NodeEventKind.REMOVED, node, node))
        return node

    def update(
        self,
        node_id: str,
        *,
        weight: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        status: NodeStatus | str | None = None,
    ) -> Node:
        """Changes a node's weight, metadata or status; KeyError if unknown.
        A new weight or metadata makes a new Node (UPDATED); a status alone
        changes the node in place (STATUS_CHANGED), so the object a balancer
        hands out shows it too."""
        with self._lock:
            old = self._nodes.get(node_id)
            if old is None:
                raise KeyError(f"node_id: no node with id {node_id!r}")
            if weight is None and metadata is None:
                if status is not None:
                    self.set_status(node_id, status)
                return old
            new = Node(
                old.id,
                old.address,
                old.port,
                old.weight if weight is None else weight,
                old.metadata if metadata is None else metadata,
                status=old.status if status is None else status,
            )
            self.register(new)
        return new

    def set_status(self, node_id: str, status: NodeStatus | str) -> NodeEvent | None:
        """Sets a node's health; returns the event, or None if unchanged."""
        status = node_status(status)
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None:
                raise KeyError(f"node_id: no node with id {node_id!r}")
            if node.status == status:
                return None
            previous = copy.copy(node)
            previous.metadata = dict(node.metadata)
            node.status = status
            event = NodeEvent(NodeEventKind.STATUS_CHANGED, node, previous)
            self._publish(event)
        return event

    # -------------------------------------------------------------- events

    def subscribe(self, callback: Callable[[NodeEvent], object]) -> Callable[[], None]:
        """Calls ``callback(event)`` after every change, in order; returns a
        function that unsubscribes. A raising callback is logged."""
        return self._listeners.subscribe(callback)

    async def watch(self) -> AsyncIterator[NodeEvent]:
        """Every change from the first iteration on; see the module docstring
        for what a slow consumer sees."""
        watcher = _Watcher(asyncio.get_running_loop())
        self._watchers.add(watcher)
        try:
            while True:
                yield await watcher.next()
        finally:
            self._watchers.discard(watcher)

    def _publish(self, event: NodeEvent) -> None:
        # Called with the lock held, so that every listener sees the events
        # in the order the changes were made (a bound balancer must not see
        # "healthy" before the "unhealthy" it follows). Listeners must be
        # quick; a listener may call back into the registry (the lock is
        # re-entrant).
        self._listeners.emit(event)
        for watcher in list(self._watchers):
            watcher.push(event)

    # ----------------------------------------------------------- discovery

    def sync(self, snapshot: Iterable[Node]) -> None:
        """Makes the registry hold exactly ``snapshot``: new nodes added,
        changed ones replaced, missing ones removed. A node whose status in
        the snapshot is UNKNOWN keeps the status the registry has (health is
        the health monitor's to decide)."""
        with self._lock:
            wanted: dict[str, Node] = {}
            for node in snapshot:
                current = self._nodes.get(node.id)
                if current is not None and node.status is NodeStatus.UNKNOWN:
                    node.status = current.status
                wanted[node.id] = node
            for node_id in [i for i in self._nodes if i not in wanted]:
                self.deregister(node_id)
            for node in wanted.values():
                self.register(node)

    def attach(self, discovery: Discovery) -> asyncio.Task[None]:
        """Keeps this registry in step with ``discovery`` from a background
        task (on the running event loop): every snapshot it delivers is
        applied with ``sync``. A failing watch is logged and retried after a
        second; it never ends the task. Cancel the task to stop."""

        async def follow() -> None:
            while True:
                try:
                    async for snapshot in discovery.watch():
                        self.sync(snapshot)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    _log.exception("discovery watch failed; retrying in 1 s")
                    await asyncio.sleep(1.0)

        return asyncio.get_running_loop().create_task(follow())

    # ------------------------------------------------------------- binding

    def bind(self, balancer: Balancer) -> Callable[[], None]:
        """Keeps ``balancer`` in step: membership and weight changes replace
        its node set (``update``), a status change flips the node's
        availability (``set_available``, O(1)). Returns a function that
        unbinds."""
        if not isinstance(balancer, Balancer):
            raise TypeError(
                f"balancer: must be a langcluster balancer, got {type(balancer).__name__}"
            )
        with self._lock:
            balancer.update(self.nodes())

            def follow(event: NodeEvent) -> None:
                if event.kind is NodeEventKind.STATUS_CHANGED:
                    balancer.set_available(event.node.id, event.node.status in _IN_ROTATION)
                else:
                    balancer.update(self.nodes())

            return self.subscribe(follow)


def _same_but_status(a: Node, b: Node) -> bool:
    return (
        a.address == b.address
        and a.port == b.port
        and a.weight == b.weight
        and a.metadata == b.metadata
        and a.status != b.status
    )
