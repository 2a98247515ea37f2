"""``StaticDiscovery``: a fixed list of nodes, or a JSON/TOML file re-read
when it changes (the embedded default: no server needed)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

from langcluster import _toml
from langcluster._checks import seconds
from langcluster.discovery.base import node_from_record, unique_duplicate
from langcluster.errors import DiscoveryError
from langcluster.node import Node

__all__ = ["StaticDiscovery"]

_log = logging.getLogger(__name__)


class StaticDiscovery:
    """A fixed list of nodes, or the nodes listed in a file.

    The file is JSON (``{"nodes": [{"id": ..., "address": ..., "port": ...},
    ...]}`` or a bare list) or TOML (``[[nodes]]`` tables) by its suffix. It
    is re-read when its modification time or size changes (checked every
    ``poll_s``): a record that does not parse is logged and skipped, a file
    that does not parse at all is logged and the last good snapshot kept.
    A file that is missing or unreadable when the discovery is made raises
    ``DiscoveryError``.

    ``register`` and ``deregister`` change the in-memory list (a file is not
    written back) and notify watchers at once.
    """

    def __init__(
        self,
        nodes: Iterable[Node] = (),
        *,
        file: str | os.PathLike[str] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        seconds("poll_s", poll_s)
        if file is not None and not isinstance(file, str | os.PathLike):
            raise TypeError(f"file: must be a path (str or os.PathLike), got {type(file).__name__}")
        try:
            self.file = Path(file) if file is not None else None
        except TypeError as error:  # a PathLike whose __fspath__ is not a str
            raise TypeError(f"file: must be a path (str or os.PathLike): {error}") from None
        self.poll_s = poll_s
        if isinstance(nodes, Node) or not isinstance(nodes, Iterable):
            raise TypeError(
                f"nodes: must be an iterable of Node objects, got {type(nodes).__name__}"
            )
        listed = list(nodes)
        for i, node in enumerate(listed):
            if not isinstance(node, Node):
                raise TypeError(f"nodes[{i}]: must be a Node, got {type(node).__name__}")
        if (duplicate := unique_duplicate(listed)) is not None:
            raise ValueError(f"nodes[{duplicate[0]}].id: duplicate node id {duplicate[1]!r}")
        self._nodes: dict[str, Node] = {node.id: node for node in listed}
        self._stamp: tuple[float, int] | None = None
        self._version = 0
        self._closed = False
        if self.file is not None:
            self._load(initial=True)

    # ------------------------------------------------------------- the file

    def _read(self) -> list[Node]:
        assert self.file is not None
        text = self.file.read_text(encoding="utf-8")
        if self.file.suffix == ".toml":
            data: Any = _toml.loads(text)
        else:
            data = json.loads(text)
        records = data.get("nodes", []) if isinstance(data, Mapping) else data
        if not isinstance(records, list):
            raise DiscoveryError(f"{self.file}: 'nodes' must be a list")
        nodes = []
        for i, record in enumerate(records):
            try:
                nodes.append(node_from_record(record))
            except DiscoveryError as bad:
                _log.warning("%s: skipping record %d: %s", self.file, i, bad)
        if (duplicate := unique_duplicate(nodes)) is not None:
            raise DiscoveryError(f"duplicate node id {duplicate[1]!r} (balancers refuse the set)")
        return nodes

    def _load(self, initial: bool = False) -> bool:
        """Re-reads the file if it changed; returns whether the nodes did."""
        assert self.file is not None
        try:
            st = self.file.stat()
            stamp = (st.st_mtime, st.st_size)
            if stamp == self._stamp:
                return False
            nodes = self._read()
        except (OSError, ValueError, RecursionError, DiscoveryError) as error:
            # RecursionError: a file nested deeper than the parser goes.
            if initial:
                raise DiscoveryError(f"{self.file}: {error}") from error
            _log.error("%s: keeping the last good node list: %s", self.file, error)
            return False
        self._stamp = stamp
        new = {n.id: n for n in nodes}
        if new == self._nodes:
            return False
        self._nodes = new
        self._version += 1
        return True

    # ------------------------------------------------------------ interface

    async def register(self, node: Node, *, ttl_s: float | None = None) -> None:
        self._nodes[node.id] = node
        self._version += 1

    async def deregister(self, node_id: str) -> None:
        if self._nodes.pop(node_id, None) is not None:
            self._version += 1

    async def nodes(self) -> list[Node]:
        if self.file is not None:
            self._load()
        return list(self._nodes.values())

    async def watch(self) -> AsyncIterator[list[Node]]:
        """The current snapshot, then one per change."""
        seen = -1
        while not self._closed:
            if self.file is not None:
                self._load()
            if self._version != seen:
                seen = self._version
                yield list(self._nodes.values())
            await asyncio.sleep(self.poll_s if self.file is not None else min(self.poll_s, 0.05))

    async def close(self) -> None:
        self._closed = True
