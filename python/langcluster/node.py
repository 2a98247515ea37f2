"""Nodes: the model servers a cluster balances over."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from langcluster._checks import text
from langcluster._core import check_node

__all__ = ["Node", "NodeStatus"]


class NodeStatus(str, enum.Enum):
    """Health of a node. A ``str`` enum, so the Rust core reads it as text.

    Balancers pick ``HEALTHY`` and ``UNKNOWN`` nodes (a node not checked yet
    gets traffic) and skip ``UNHEALTHY`` and ``DRAINING`` ones.
    """

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


def node_status(status: object) -> NodeStatus:
    """``status`` as a ``NodeStatus``: one, or its value."""
    if isinstance(status, str):
        try:
            return NodeStatus(status)
        except ValueError:
            pass
    values = [s.value for s in NodeStatus]
    got = repr(status) if isinstance(status, str) else type(status).__name__
    error = ValueError if isinstance(status, str) else TypeError
    raise error(f"status: must be one of {values}, got {got}")


class Node:
    """One model server: an inference node, a gateway, an embedding service.

    Balancers return the very ``Node`` object they were given, so any extra
    data the application needs can hang off ``metadata``.
    """

    __slots__ = ("address", "id", "metadata", "port", "status", "weight")

    id: str
    address: str
    port: int | None
    weight: float
    metadata: dict[str, Any]
    status: NodeStatus

    def __init__(
        self,
        id: str,
        address: str,
        port: int | None = None,
        weight: float = 1,
        metadata: Mapping[str, Any] | None = None,
        *,
        status: NodeStatus | str = NodeStatus.UNKNOWN,
    ) -> None:
        text("id", id, empty=True)  # an empty id is the core's to refuse, as everywhere
        text("address", address, empty=True)
        if port is not None:
            if not isinstance(port, int) or isinstance(port, bool):
                raise TypeError(f"port: must be an int or None, got {type(port).__name__}")
            if not 0 < port < 65536:
                raise ValueError(f"port: must be between 1 and 65535, got {port}")
        check_node(id, weight)  # the balancers' own rule for ids and weights
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(f"metadata: must be a mapping or None, got {type(metadata).__name__}")
        status = node_status(status)
        self.id = id
        self.address = address
        self.port = port
        self.weight = weight
        self.metadata = dict(metadata) if metadata is not None else {}
        self.status = status

    @property
    def url(self) -> str:
        """``address:port``, or the address alone when there is no port."""
        return self.address if self.port is None else f"{self.address}:{self.port}"

    def __repr__(self) -> str:
        return (
            f"Node(id={self.id!r}, address={self.address!r}, port={self.port!r}, "
            f"weight={self.weight!r}, status={self.status.value!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Node):
            return NotImplemented
        return (
            self.id == other.id
            and self.address == other.address
            and self.port == other.port
            and self.weight == other.weight
            and self.metadata == other.metadata
            and self.status == other.status
        )

    def __hash__(self) -> int:
        return hash((self.id, self.address, self.port))
