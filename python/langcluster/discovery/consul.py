"""Service discovery on Consul, through the maintained client py-consul."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

from langcluster._aio import cancel_and_wait
from langcluster._checks import choice, seconds, text
from langcluster.errors import DiscoveryError
from langcluster.node import Node
from langcluster.types import CheckKind, Scheme

__all__ = ["ConsulDiscovery"]

_log = logging.getLogger(__name__)


def _consul() -> Any:
    try:
        import consul
    except ImportError:  # pragma: no cover - depends on the install
        raise DiscoveryError(
            "ConsulDiscovery needs py-consul: pip install 'langcluster[consul]'"
        ) from None
    return consul


class ConsulDiscovery:
    """Registers and discovers the instances of ``service`` in Consul,
    through the maintained client py-consul (``pip install
    langcluster[consul]``).

    - ``register`` registers the node as a service instance with a health
      check (``check_kind``): a TTL check (the default) kept passing by a background task every
      ``ttl_s / 3``, or an HTTP or TCP check run by the agent. With
      ``deregister_critical_after_s`` the agent removes an instance whose check
      stays critical that long, so a process that dies disappears.
    - ``watch`` follows ``/v1/health/service/<name>?passing`` with blocking
      queries (``index`` and ``wait``): a new snapshot as soon as the set of
      passing instances changes, no polling. An index that goes backwards (an
      agent restart) resets the watch to index 0; queries are spaced at least
      ``min_query_interval_s`` apart. On a Consul error the last snapshot stands,
      the error is logged and passed to ``on_error``, and the watch retries with
      backoff.

    py-consul's client is synchronous (requests); its calls run in worker
    threads (``asyncio.to_thread``), one per blocking query in flight.
    """

    def __init__(
        self,
        service: str,
        *,
        client: Any = None,
        host: str = "127.0.0.1",
        port: int = 8500,
        token: str | None = None,
        scheme: Scheme = "http",
        check_kind: CheckKind = "ttl",
        ttl_s: float = 10.0,
        check_interval_s: float = 10.0,
        check_timeout_s: float = 2.0,
        check_path: str = "/health",
        deregister_critical_after_s: float | None = 60.0,
        wait_s: float = 30.0,
        min_query_interval_s: float = 0.01,
        on_error: Callable[[Exception], object] | None = None,
    ) -> None:
        text("service", service)
        choice("check_kind", check_kind, ("ttl", "http", "tcp"))
        for name, value in (
            ("ttl_s", ttl_s),
            ("check_interval_s", check_interval_s),
            ("check_timeout_s", check_timeout_s),
            ("wait_s", wait_s),
        ):
            seconds(name, value)
        seconds("deregister_critical_after_s", deregister_critical_after_s, optional=True)
        seconds("min_query_interval_s", min_query_interval_s, zero=True)
        text("check_path", check_path)
        self.service = service
        self.client = (
            client
            if client is not None
            else _consul().Consul(host=host, port=port, token=token, scheme=scheme)
        )
        self.check_kind = check_kind
        self.ttl_s = ttl_s
        self.check_interval_s = check_interval_s
        self.check_timeout_s = check_timeout_s
        self.check_path = check_path
        self.deregister_after = (
            None if deregister_critical_after_s is None else f"{deregister_critical_after_s:g}s"
        )
        self.wait_s = wait_s
        self.min_query_interval_s = min_query_interval_s
        self.on_error = on_error
        self._registered: dict[str, Node] = {}
        self._keepers: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    # -------------------------------------------------------- registration

    def _check_definition(self, node: Node, ttl_s: float) -> dict[str, Any]:
        if self.check_kind == "ttl":
            definition: dict[str, Any] = {"ttl": f"{ttl_s:g}s"}
        elif self.check_kind == "http":
            definition = {
                "http": f"http://{node.url}{self.check_path}",
                "interval": f"{self.check_interval_s:g}s",
                "timeout": f"{self.check_timeout_s:g}s",
            }
        else:
            if node.port is None:
                raise ValueError(f"node: a TCP check needs a port ({node.id} has none)")
            definition = {
                "tcp": node.url,
                "interval": f"{self.check_interval_s:g}s",
                "timeout": f"{self.check_timeout_s:g}s",
            }
        if self.deregister_after is not None:
            definition["DeregisterCriticalServiceAfter"] = self.deregister_after
        return definition

    def _register_now(self, node: Node, ttl_s: float) -> None:
        meta = {str(k): str(v) for k, v in node.metadata.items()}
        meta["weight"] = repr(node.weight)
        self.client.agent.service.register(
            self.service,
            service_id=node.id,
            address=node.address,
            port=node.port,
            meta=meta,
            check=self._check_definition(node, ttl_s),
        )
        if self.check_kind == "ttl":
            self.client.agent.check.ttl_pass(f"service:{node.id}")

    async def register(self, node: Node, *, ttl_s: float | None = None) -> None:
        ttl = ttl_s if ttl_s is not None else self.ttl_s
        try:
            await asyncio.to_thread(self._register_now, node, ttl)
        except Exception as error:
            raise DiscoveryError(f"consul: registering {node.id} failed: {error}") from error
        await self._stop_keeper(node.id)
        self._registered[node.id] = node
        if self.check_kind == "ttl":
            self._keepers[node.id] = asyncio.get_running_loop().create_task(
                self._keep_passing(node.id, ttl)
            )

    async def _keep_passing(self, node_id: str, ttl: float) -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                await asyncio.to_thread(self.client.agent.check.ttl_pass, f"service:{node_id}")
            except Exception as error:
                # The check is gone (the agent restarted or reaped us):
                # register again, then keep going.
                _log.warning(
                    "consul TTL update of %s failed (%s); registering again", node_id, error
                )
                self._report(error)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._register_now, self._registered[node_id], ttl)

    async def _stop_keeper(self, node_id: str) -> None:
        await cancel_and_wait(self._keepers.pop(node_id, None))

    async def deregister(self, node_id: str) -> None:
        await self._stop_keeper(node_id)
        self._registered.pop(node_id, None)
        try:
            await asyncio.to_thread(self.client.agent.service.deregister, node_id)
        except Exception as error:
            raise DiscoveryError(f"consul: deregistering {node_id} failed: {error}") from error

    # ------------------------------------------------------------- reading

    def _parse(self, entries: list[dict[str, Any]]) -> dict[str, Node]:
        nodes: dict[str, Node] = {}
        for entry in entries:
            try:
                service = entry["Service"]
                meta = dict(service.get("Meta") or {})
                weight = float(meta.pop("weight", (service.get("Weights") or {}).get("Passing", 1)))
                node = Node(
                    service["ID"],
                    service.get("Address") or entry["Node"]["Address"],
                    service.get("Port") or None,
                    weight,
                    meta,
                )
            except (KeyError, TypeError, ValueError) as error:
                _log.warning(
                    "consul: skipping malformed instance %r: %s", entry.get("Service"), error
                )
                continue
            if node.id in nodes:
                # Service ids are unique per agent, not per cluster: two
                # agents can each hold one. Balancers refuse the pair.
                _log.warning("consul: two instances of %s have the id %r; keeping the first",
                             self.service, node.id)  # fmt: skip
                continue
            nodes[node.id] = node
        return nodes

    def _query(self, index: int | None) -> tuple[int, list[dict[str, Any]]]:
        if index:
            result = self.client.health.service(
                self.service, passing=True, index=index, wait=f"{self.wait_s:g}s"
            )
        else:
            result = self.client.health.service(self.service, passing=True)
        found_index, entries = result
        return int(found_index or 0), entries or []

    async def nodes(self) -> list[Node]:
        try:
            _, entries = await asyncio.to_thread(self._query, None)
        except Exception as error:
            raise DiscoveryError(f"consul: listing {self.service} failed: {error}") from error
        return list(self._parse(entries).values())

    def _report(self, error: Exception) -> None:
        if self.on_error is not None:
            try:
                self.on_error(error)
            except Exception:
                _log.exception("consul on_error callback raised")

    async def watch(self) -> AsyncIterator[list[Node]]:
        """The passing instances now, then after every change."""
        index = 0
        last: dict[str, Node] | None = None
        delay = 0.1
        loop = asyncio.get_running_loop()
        last_query = 0.0
        while not self._closed:
            pause = self.min_query_interval_s - (loop.time() - last_query)
            if pause > 0:
                await asyncio.sleep(pause)
            last_query = loop.time()
            try:
                found, entries = await asyncio.to_thread(self._query, index)
            except Exception as error:
                if self._closed:
                    return
                _log.warning(
                    "consul watch of %s failed (%s); retrying in %.1f s", self.service, error, delay
                )
                self._report(error)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.1
            if found < index:
                _log.info("consul index went back from %d to %d: starting over", index, found)
                index = 0
                continue
            index = max(found, 1)
            nodes = self._parse(entries)
            if nodes != last:
                last = nodes
                yield list(nodes.values())

    async def close(self) -> None:
        """Stops the TTL updates and deregisters what this process
        registered."""
        self._closed = True
        for node_id in list(self._registered):
            with contextlib.suppress(DiscoveryError):
                await self.deregister(node_id)
