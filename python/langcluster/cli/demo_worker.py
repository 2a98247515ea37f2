"""A worker process of ``python -m langcluster demo``: what one process of
an LLM service runs. It builds its own cluster over the demo's servers
(prefix-aware routing, health checks, breakers, failover; shared state when
the demo has Redis), holds the real OpenAI SDK on the cluster's transport,
and answers the requests the demo's front deals it: each a chat that it
streams, timing the first token.

Messages from the front, on ``inbox``: ``(request id, system, user)``, or
None to stop. To the front, on ``outbox``: ``("ready", worker)``,
``("done", worker, request id, result)`` per request, ``("stats", worker,
view)`` four times a second, ``("end", worker, view)`` last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from langcluster.breaker import BreakerConfig
from langcluster.cluster import Cluster
from langcluster.discovery import Discovery, EtcdDiscovery, StaticDiscovery
from langcluster.failover import Backoff, FailoverConfig
from langcluster.health import HealthConfig, HttpCheck
from langcluster.integrations.transport import AsyncClusterTransport
from langcluster.node import Node
from langcluster.shared import SharedState

SERVICE = "langcluster-demo"
# The kinds of cluster events the front counts.
COUNTED = ("breaker_opened", "status_changed", "retry", "failover", "node_busy")


@dataclass(frozen=True)
class WorkerSettings:
    worker: int
    nodes: list[tuple[str, int]]  # (id, port) on 127.0.0.1
    redis_url: str | None
    etcd_url: str | None
    metrics_port: int | None
    max_tokens: int


def build(settings: WorkerSettings) -> Cluster:
    discovery: Discovery
    if settings.etcd_url:
        discovery = EtcdDiscovery(SERVICE, endpoints=[settings.etcd_url])
    else:
        discovery = StaticDiscovery([Node(i, "127.0.0.1", port) for i, port in settings.nodes])
    shared = (
        SharedState(settings.redis_url, namespace=SERVICE, trial_s=0.5)
        if settings.redis_url
        else None
    )
    return Cluster(
        service=SERVICE,
        discovery=discovery,
        balancer="prefix_aware",
        # Each server's cache size, asked of it (vLLM's /metrics, which the
        # simulated servers answer): the record forgets what they evict.
        kv_events=True,
        # Health checks every second, three misses to fall: the breakers,
        # judging every call, react first, as they do in production.
        health=HealthConfig(
            HttpCheck("/health", timeout_s=0.4), interval_s=1.0, timeout_s=0.5, rise=2, fall=3
        ),
        breaker=BreakerConfig(
            window_size=6,
            minimum_calls=3,
            open_timeout_s=1.0,
            max_open_timeout_s=3.0,
            slow_call_duration_s=0.4,
            slow_call_rate_threshold=0.6,
        ),
        failover=FailoverConfig(max_attempts=3, backoff=Backoff(base_s=0.002, max_s=0.02)),
        shared_state=shared,
    )


def rss_mb() -> float:
    """This process's resident memory, in MB (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def view(cluster: Cluster, events: Counter[str], transport: Any = None) -> dict[str, Any]:
    """What the front shows of this worker: each node's health and breaker,
    the events counted, the shared state's counters, its memory and its
    transport's admission."""
    stats = cluster.stats()
    nodes = {n: (s["status"], s["breaker"]) for n, s in stats["nodes"].items()}
    return {
        "nodes": nodes, "events": dict(events), "shared": stats.get("shared"),
        "rss_mb": round(rss_mb(), 1),
        "transport": transport.stats() if transport is not None else None,
    }  # fmt: skip


def serve_metrics(cluster: Cluster, port: int) -> Callable[[], None]:
    """Serves the cluster's Prometheus metrics on 127.0.0.1:``port``
    (``/metrics``) while the demo runs; returns what stops it."""
    from prometheus_client import CollectorRegistry, start_http_server

    from langcluster.metrics import PrometheusCollector

    registry = CollectorRegistry()
    collector = PrometheusCollector(cluster)
    registry.register(collector)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)
        collector.close()

    return stop


def run(settings: WorkerSettings, inbox: Any, outbox: Any) -> None:
    """The process's entry point (spawned). A worker that cannot start
    (its metrics port is taken, etcd is out of reach) tells the front why."""
    try:
        asyncio.run(_run(settings, inbox, outbox))
    except Exception as error:
        outbox.put(("failed", settings.worker, f"{type(error).__name__}: {error}"))


async def _run(settings: WorkerSettings, inbox: Any, outbox: Any) -> None:
    import openai

    cluster = build(settings)
    events: Counter[str] = Counter()
    stop_metrics = None
    async with cluster:
        for node in cluster.registry.nodes():  # the demo's servers are up: start healthy
            cluster.registry.set_status(node.id, "healthy")
        if settings.metrics_port is not None:
            stop_metrics = serve_metrics(cluster, settings.metrics_port)
        # A bound on what this worker has in flight (the servers run 8 at
        # once each): a loop that falls behind catches up instead of piling
        # requests up.
        transport = AsyncClusterTransport(cluster, max_in_flight_per_node=16, max_queued=256)
        http = httpx.AsyncClient(transport=transport, timeout=5.0)
        # The SDK's types name httpx2's client; it takes an httpx one as well.
        client = openai.AsyncOpenAI(
            base_url=f"http://{SERVICE}/v1",
            api_key="demo",
            max_retries=0,
            http_client=http,  # type: ignore[arg-type]
        )
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()
        tasks: set[asyncio.Task[None]] = set()

        async def answer(request_id: int, system: str, user: str) -> None:
            result: dict[str, Any] = {"ok": False}
            started = time.perf_counter()
            try:
                stream = await client.chat.completions.create(
                    model="simulated",
                    messages=[
                        {"role": "system", "content": system},
                        {"role": "user", "content": user},
                    ],
                    stream=True,
                    stream_options={"include_usage": True},
                    max_tokens=settings.max_tokens,
                )
                async for chunk in stream:
                    if "ttft_s" not in result and chunk.choices:
                        result["ttft_s"] = time.perf_counter() - started
                        result["node"] = chunk.system_fingerprint
                    if chunk.usage is not None:
                        details = chunk.usage.prompt_tokens_details
                        result["prompt_tokens"] = chunk.usage.prompt_tokens
                        result["cached_tokens"] = details.cached_tokens if details else 0
                result["ok"] = "ttft_s" in result
            except Exception as error:
                result["error"] = type(error).__name__
            outbox.put(("done", settings.worker, request_id, result))

        def take(item: Any) -> None:
            if item is None:
                if not stopped.done():
                    stopped.set_result(None)
                return
            if item[0] == "stall":  # the front asks this loop to block, as a stuck call would
                time.sleep(item[1])
                return
            task = loop.create_task(answer(*item))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        def read() -> None:  # a thread: the inbox blocks
            while True:
                item = inbox.get()
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    loop.call_soon_threadsafe(take, item)
                if item is None:
                    return

        async def count_events() -> None:
            async for event in cluster.events():
                if event.kind in COUNTED:
                    events[event.kind] += 1

        async def report() -> None:
            while True:
                outbox.put(("stats", settings.worker, view(cluster, events, transport)))
                await asyncio.sleep(0.25)

        threading.Thread(target=read, daemon=True).start()
        side = [loop.create_task(count_events()), loop.create_task(report())]
        outbox.put(("ready", settings.worker))
        await stopped
        if tasks:
            await asyncio.wait(set(tasks), timeout=10)
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        outbox.put(("end", settings.worker, view(cluster, events, transport)))
        await client.close()
        if stop_metrics is not None:
            stop_metrics()
