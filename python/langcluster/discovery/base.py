"""What every discovery backend is: the ``Discovery`` interface, and the
one reading of a node record (a mapping) into a ``Node``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol, runtime_checkable

from langcluster.errors import DiscoveryError
from langcluster.node import Node

__all__ = ["Discovery", "node_from_record", "unique_duplicate"]


@runtime_checkable
class Discovery(Protocol):
    """Where the nodes of a service come from, with one asyncio interface
    for every backend (``StaticDiscovery``, ``EtcdDiscovery``,
    ``ConsulDiscovery``): ``register(node, ttl_s=...)``,
    ``deregister(node_id)``, ``nodes()`` (the current snapshot), ``watch()``
    (an async iterator of snapshots, one per change) and ``close()``.
    ``NodeRegistry.attach(discovery)`` keeps a registry in step with one."""

    async def register(self, node: Node, *, ttl_s: float | None = None) -> None: ...
    async def deregister(self, node_id: str) -> None: ...
    async def nodes(self) -> list[Node]: ...
    def watch(self) -> AsyncIterator[list[Node]]: ...
    async def close(self) -> None: ...


def unique_duplicate(nodes: list[Node]) -> tuple[int, str] | None:
    """The position and id of the first node whose id an earlier node has
    (balancers refuse such a set), or None."""
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if node.id in seen:
            return i, node.id
        seen.add(node.id)
    return None


def node_from_record(record: object) -> Node:
    """A Node from a mapping with ``id``, ``address`` and optionally
    ``port``, ``weight``, ``metadata``, ``status``; ``DiscoveryError`` naming
    the bad field otherwise."""
    if not isinstance(record, Mapping):
        raise DiscoveryError(f"node record must be a mapping, got {type(record).__name__}")
    unknown = set(record) - {"id", "address", "port", "weight", "metadata", "status"}
    if unknown:
        raise DiscoveryError(f"node record has unknown fields: {sorted(unknown)}")
    try:
        return Node(
            record["id"],
            record["address"],
            record.get("port"),
            record.get("weight", 1),
            record.get("metadata"),
            status=record.get("status", "unknown"),
        )
    except KeyError as missing:
        raise DiscoveryError(f"node record lacks {missing.args[0]!r}: {dict(record)!r}") from None
    except (TypeError, ValueError) as bad:
        raise DiscoveryError(f"bad node record {dict(record)!r}: {bad}") from None
