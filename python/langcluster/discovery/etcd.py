"""Service discovery on etcd v3, through its JSON gateway (httpx)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx

from langcluster._aio import cancel_and_wait
from langcluster._checks import seconds, text
from langcluster.discovery.base import node_from_record
from langcluster.errors import DiscoveryError
from langcluster.node import Node

__all__ = ["EtcdDiscovery"]

_log = logging.getLogger(__name__)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


def _record(node: Node) -> str:
    return json.dumps(
        {
            "id": node.id,
            "address": node.address,
            "port": node.port,
            "weight": node.weight,
            "metadata": node.metadata,
        }
    )


class EtcdDiscovery:
    """Registers and discovers the nodes of ``service`` in etcd v3, through
    its JSON gateway (httpx).

    Each registered node is a key ``{prefix}{service}/{node_id}`` holding the
    node as JSON, attached to a lease of ``ttl_s`` that a background task keeps
    alive (every ``ttl_s / 3``). A process that dies without deregistering
    stops renewing, and etcd deletes its nodes when the lease runs out. If a
    lease is found expired (etcd was down longer than the TTL), it is granted
    again and the nodes are written again.

    ``watch()`` reads the prefix once, then follows etcd's watch stream from the
    next revision: every change yields a new snapshot, without polling. When
    the stream breaks (etcd restarting, an endpoint down) it reconnects with
    backoff, to the next endpoint in turn, reads the prefix again and goes on;
    meanwhile the last snapshot stands.

    The gateway's conventions: every call is a POST; keys and values are
    base64; 64-bit integers are JSON strings; fields at their zero value are
    left out.
    """

    def __init__(
        self,
        service: str,
        *,
        endpoints: Iterable[str] = ("http://127.0.0.1:2379",),
        prefix: str = "/langcluster/services/",
        ttl_s: float = 10.0,
        timeout_s: float = 2.0,
    ) -> None:
        if "/" in text("service", service):
            raise ValueError(f"service: must be a name without '/', got {service!r}")
        if isinstance(endpoints, str | bytes) or not isinstance(endpoints, Iterable):
            raise TypeError(f"endpoints: must be a list of URLs, got {type(endpoints).__name__}")
        self.endpoints = [text("endpoints", e).rstrip("/") for e in endpoints]
        if not self.endpoints:
            raise ValueError("endpoints: must not be empty")
        if not text("prefix", prefix).endswith("/"):
            raise ValueError(f"prefix: must end with '/', got {prefix!r}")
        if seconds("ttl_s", ttl_s) < 2:
            raise ValueError(f"ttl_s: must be at least 2 seconds, got {ttl_s!r}")
        seconds("timeout_s", timeout_s)
        self.service = service
        self.root = f"{prefix}{service}/"
        self.elections = f"{prefix.rstrip('/')}.elections/{service}/"
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._endpoint = 0
        self._client = httpx.AsyncClient(timeout=timeout_s)
        self._registered: dict[str, tuple[Node, str]] = {}  # node id -> (node, lease id)
        self._keepers: dict[str, asyncio.Task[None]] = {}
        self._campaigns: dict[str, str] = {}  # election name -> this process's lease id
        self._closed = False

    # ------------------------------------------------------------ transport

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One gateway call, trying each endpoint once from the current one."""
        last: Exception | None = None
        for _ in range(len(self.endpoints)):
            base = self.endpoints[self._endpoint]
            try:
                response = await self._client.post(f"{base}{path}", json=body)
            except httpx.HTTPError as error:
                last = error
                self._endpoint = (self._endpoint + 1) % len(self.endpoints)
                continue
            try:
                data: dict[str, Any] = response.json()
            except ValueError:
                raise DiscoveryError(
                    f"etcd {path}: HTTP {response.status_code}, not JSON: {response.text[:200]!r}"
                ) from None
            if response.status_code != 200:
                raise DiscoveryError(f"etcd {path}: {data.get('message') or data}")
            return data
        raise DiscoveryError(f"etcd unreachable at {self.endpoints}: {last}") from last

    # -------------------------------------------------------- registration

    async def register(self, node: Node, *, ttl_s: float | None = None) -> None:
        """Writes the node under a fresh lease and keeps the lease alive."""
        ttl = max(2, round(ttl_s if ttl_s is not None else self.ttl_s))
        grant = await self._post("/v3/lease/grant", {"TTL": ttl})
        lease = grant["ID"]
        await self._post(
            "/v3/kv/put",
            {"key": _b64(self.root + node.id), "value": _b64(_record(node)), "lease": lease},
        )
        await self._stop_keeper(node.id)
        self._registered[node.id] = (node, lease)
        self._keepers[node.id] = asyncio.get_running_loop().create_task(
            self._keep_alive(node.id, ttl)
        )

    async def _keep_alive(self, node_id: str, ttl: int) -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            node, lease = self._registered[node_id]
            try:
                result = (await self._post("/v3/lease/keepalive", {"ID": lease})).get("result", {})
                if "TTL" not in result:  # the lease expired: write the node again
                    _log.warning("etcd lease of %s expired; registering again", node_id)
                    grant = await self._post("/v3/lease/grant", {"TTL": ttl})
                    await self._post(
                        "/v3/kv/put",
                        {
                            "key": _b64(self.root + node_id),
                            "value": _b64(_record(node)),
                            "lease": grant["ID"],
                        },
                    )
                    self._registered[node_id] = (node, grant["ID"])
            except DiscoveryError as error:
                _log.warning("etcd keepalive of %s failed: %s", node_id, error)

    async def _stop_keeper(self, node_id: str) -> None:
        await cancel_and_wait(self._keepers.pop(node_id, None))

    async def deregister(self, node_id: str) -> None:
        """Deletes the node now (and revokes its lease)."""
        await self._stop_keeper(node_id)
        entry = self._registered.pop(node_id, None)
        await self._post("/v3/kv/deleterange", {"key": _b64(self.root + node_id)})
        if entry is not None:
            with contextlib.suppress(DiscoveryError):
                await self._post("/v3/lease/revoke", {"ID": entry[1]})

    # ----------------------------------------------------------- elections

    async def campaign(self, name: str, holder: bytes, ttl_s: float) -> bool:
        """One round of an election (for the one health checker of a service):
        True when ``holder`` holds ``name`` after it. The key
        ``{prefix without its /}.elections/{service}/{name}`` (outside the
        nodes' prefix) holds the holder's name,
        attached to a lease of ``ttl_s`` (whole seconds, at least 2: etcd's
        minimum) that each round renews; created only when absent (one etcd
        transaction), so two holders are impossible. When the holder dies,
        the lease lapses and the key with it; ``resign`` gives it up at once."""
        key = _b64(f"{self.elections}{name}")
        value = base64.b64encode(holder).decode()
        lease = self._campaigns.get(name)
        if lease is not None:
            alive = (await self._post("/v3/lease/keepalive", {"ID": lease})).get("result", {})
            if "TTL" not in alive:  # lapsed (etcd was out of reach): the key went with it
                lease = None
        if lease is None:
            lease = (await self._post("/v3/lease/grant", {"TTL": max(2, math.ceil(ttl_s))}))["ID"]
            self._campaigns[name] = lease
        txn = await self._post(
            "/v3/kv/txn",
            {
                "compare": [{"key": key, "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": value, "lease": lease}}],
                "failure": [{"request_range": {"key": key}}],
            },
        )
        if txn.get("succeeded"):
            return True
        found = txn.get("responses", [{}])[0].get("response_range", {}).get("kvs", [])
        return bool(found) and found[0].get("value") == value and found[0].get("lease") == lease

    async def resign(self, name: str) -> None:
        """Gives up ``name`` (revokes this process's lease: the key goes)."""
        lease = self._campaigns.pop(name, None)
        if lease is not None:
            with contextlib.suppress(DiscoveryError):
                await self._post("/v3/lease/revoke", {"ID": lease})

    # ------------------------------------------------------------- reading

    def _parse(self, kv: dict[str, Any]) -> Node | None:
        key = _unb64(kv.get("key", ""))
        try:
            record = json.loads(_unb64(kv.get("value", "")))
            node = node_from_record(record)
        except (ValueError, DiscoveryError) as error:
            _log.warning("etcd: skipping malformed record at %s: %s", key, error)
            return None
        if key != self.root + node.id:
            _log.warning("etcd: skipping record at %s: its id is %r", key, node.id)
            return None
        return node

    async def _snapshot(self) -> tuple[dict[str, Node], int]:
        data = await self._post(
            "/v3/kv/range", {"key": _b64(self.root), "range_end": _prefix_end(self.root)}
        )
        nodes: dict[str, Node] = {}
        for kv in data.get("kvs", []):
            node = self._parse(kv)
            if node is not None:
                nodes[node.id] = node
        return nodes, int(data["header"]["revision"])

    async def nodes(self) -> list[Node]:
        return list((await self._snapshot())[0].values())

    async def watch(self) -> AsyncIterator[list[Node]]:
        """The current snapshot, then a new one after every change."""
        delay = 0.1
        last: dict[str, Node] | None = None
        while not self._closed:
            try:
                nodes, revision = await self._snapshot()
                if nodes != last:
                    last = dict(nodes)
                    yield list(nodes.values())
                async for changed in self._follow(nodes, revision):
                    delay = 0.1
                    last = dict(changed)
                    yield list(changed.values())
            except (DiscoveryError, httpx.HTTPError, ValueError, KeyError) as error:
                if self._closed:
                    return
                _log.warning("etcd watch interrupted (%s); retrying in %.1f s", error, delay)
                self._endpoint = (self._endpoint + 1) % len(self.endpoints)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def _follow(
        self, nodes: dict[str, Node], revision: int
    ) -> AsyncIterator[dict[str, Node]]:
        body = {
            "create_request": {
                "key": _b64(self.root),
                "range_end": _prefix_end(self.root),
                "start_revision": str(revision + 1),
            }
        }
        url = f"{self.endpoints[self._endpoint]}/v3/watch"
        timeout = httpx.Timeout(self.timeout_s, read=None)
        async with self._client.stream("POST", url, json=body, timeout=timeout) as response:
            if response.status_code != 200:
                raise DiscoveryError(f"etcd watch: HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                changed = False
                for event in result.get("events", []):
                    kv = event.get("kv", {})
                    key = _unb64(kv.get("key", ""))
                    node_id = key[len(self.root) :]
                    if event.get("type") == "DELETE":
                        changed |= nodes.pop(node_id, None) is not None
                    else:
                        node = self._parse(kv)
                        if node is not None and nodes.get(node.id) != node:
                            nodes[node.id] = node
                            changed = True
                if changed:
                    yield nodes
        raise DiscoveryError("etcd watch stream ended")

    async def close(self) -> None:
        """Stops the keepalives, deletes what this process registered, and
        closes the HTTP client."""
        self._closed = True
        for name in list(self._campaigns):
            await self.resign(name)
        for node_id in list(self._registered):
            with contextlib.suppress(DiscoveryError):
                await self.deregister(node_id)
        await self._client.aclose()
