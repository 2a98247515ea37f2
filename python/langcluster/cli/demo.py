"""``python -m langcluster demo``: the whole library on embedded defaults.

Simulated model servers on loopback, found by static discovery (or etcd),
health-checked over HTTP, and a Zipf workload of prompts through cache ->
failover -> balancer. Mid-run one server is killed and another made slow,
then both recover; the live view shows breakers open, traffic move, health
flip and come back.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from langcluster.breaker import BreakerConfig
from langcluster.cache import LayeredCache, MemoryCache, RedisCache
from langcluster.cluster import Cluster, ClusterEvent
from langcluster.discovery import Discovery, EtcdDiscovery, StaticDiscovery
from langcluster.failover import Backoff, FailoverConfig
from langcluster.health import HealthConfig, HttpCheck
from langcluster.node import Node
from langcluster.testing import SimulatedServer

# (id, latency s, error rate): a mix of fast and slower servers.
SERVERS = [
    ("gpu-0", 0.020, 0.00),
    ("gpu-1", 0.030, 0.01),
    ("gpu-2", 0.025, 0.00),
    ("gpu-3", 0.040, 0.02),
    ("gpu-4", 0.060, 0.01),
]


@dataclass
class Run:
    """What the demo counts as it goes."""

    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    backend: list[float] = field(default_factory=list)  # calls that reached a server
    log: deque[str] = field(default_factory=lambda: deque(maxlen=12))
    kinds: dict[str, int] = field(default_factory=dict)

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:5.1f}s  {text}")


def zipf_sampler(n: int, s: float, rng: random.Random) -> Any:
    cumulative = list(itertools.accumulate(1 / (i + 1) ** s for i in range(n)))
    total = cumulative[-1]

    def draw() -> int:
        return bisect.bisect_left(cumulative, rng.random() * total)

    return draw


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(cluster: Cluster, run: Run, elapsed: float) -> dict[str, Any]:
    stats = cluster.stats()
    calls = stats["calls"]
    return {
        "duration_s": round(elapsed, 2),
        "requests": run.requests,
        "success_rate": round(run.ok / run.requests, 4) if run.requests else 0.0,
        "failed": run.failed,
        "p50_ms": round(percentile(run.latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(run.latencies, 0.99) * 1000, 2),
        "server_p50_ms": round(percentile(run.backend, 0.50) * 1000, 2),
        "server_p99_ms": round(percentile(run.backend, 0.99) * 1000, 2),
        "cache_hit_ratio": round(calls["cache_hits"] / calls["calls"], 4) if calls["calls"] else 0,
        "failovers": run.kinds.get("retry", 0) + run.kinds.get("failover", 0),
        "breaker_opens": run.kinds.get("breaker_opened", 0),
        "health_flips": run.kinds.get("status_changed", 0),
        "backend_calls": stats["failover"]["attempts"],
        "per_node": {n: s["picks"] for n, s in stats["nodes"].items()},
        # A node that recovered leaves ejection when its health checks pass.
        "breakers_at_end": {n: s["breaker"] for n, s in stats["nodes"].items()},
    }


def render(cluster: Cluster, run: Run, title: str) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    stats = cluster.stats()
    table = Table(title=title, expand=True)
    for column in ("node", "requests", "in flight", "EWMA ms", "health", "breaker"):
        table.add_column(column, justify="left" if column in ("node", "health") else "right")
    colors = {"healthy": "green", "unhealthy": "red", "unknown": "yellow", "draining": "yellow"}
    breaker_colors = {"closed": "green", "open": "red", "half_open": "yellow"}
    for node_id, node in sorted(stats["nodes"].items()):
        ewma = node.get("ewma_latency_s")
        table.add_row(
            node_id,
            str(node.get("picks", 0)),
            str(node.get("in_flight", 0)),
            f"{ewma * 1000:.1f}" if ewma is not None else "-",
            f"[{colors.get(node['status'], 'white')}]{node['status']}[/]",
            f"[{breaker_colors.get(node['breaker'], 'white')}]{node['breaker']}[/]",
        )
    calls = stats["calls"]
    ratio = calls["cache_hits"] / calls["calls"] if calls["calls"] else 0.0
    line = (
        f"requests {run.requests}   ok {run.ok}   failed {run.failed}   "
        f"cache hit ratio {ratio:.1%}   retries {run.kinds.get('retry', 0)}   "
        f"breaker opens {run.kinds.get('breaker_opened', 0)}"
    )
    return Group(table, Panel(line), Panel("\n".join(run.log) or "-", title="events"))


async def main(
    *,
    duration_s: float = 12.0,
    live: bool = True,
    redis_url: str | None = None,
    etcd_url: str | None = None,
    workers: int = 16,
    seed: int = 7,
    quiet: bool = False,
    metrics_port: int | None = None,
) -> dict[str, Any]:
    rng = random.Random(seed)
    servers = {
        name: SimulatedServer(name, latency_s=latency, error_rate=errors, seed=seed + i)
        for i, (name, latency, errors) in enumerate(SERVERS)
    }
    for server in servers.values():
        await server.start()
    nodes = [server.node() for server in servers.values()]

    discovery: Discovery
    announcer = None
    if etcd_url:
        discovery = EtcdDiscovery("langcluster-demo", endpoints=[etcd_url])
        announcer = EtcdDiscovery("langcluster-demo", endpoints=[etcd_url])
        for node in nodes:
            await announcer.register(node)
    else:
        discovery = StaticDiscovery(nodes)

    cache: MemoryCache | LayeredCache
    if redis_url:
        cache = LayeredCache(
            MemoryCache(2_000), RedisCache(redis_url, namespace="langcluster-demo")
        )
        await cache.aclear()
    else:
        cache = MemoryCache(2_000)

    cluster = Cluster(
        service="langcluster-demo",
        discovery=discovery,
        balancer="adaptive",
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
            slow_call_duration_s=0.3,
            slow_call_rate_threshold=0.6,
        ),
        failover=FailoverConfig(max_attempts=3, backoff=Backoff(base_s=0.002, max_s=0.02)),
        cache=cache,
    )
    exporter = serve_metrics(cluster, metrics_port, quiet) if metrics_port is not None else None
    run = Run()
    client = httpx.AsyncClient(timeout=1.0, limits=httpx.Limits(max_connections=200))
    prompts = [f"prompt {i}: explain topic {i} in one paragraph" for i in range(20_000)]
    draw = zipf_sampler(len(prompts), 1.0, rng)

    async def complete(node: Node, prompt: str) -> str:
        started = time.perf_counter()
        response = await client.post(
            f"http://{node.address}:{node.port}/v1/completions", json={"prompt": prompt}
        )
        response.raise_for_status()
        run.backend.append(time.perf_counter() - started)
        return str(response.json()["choices"][0]["text"])

    async def worker(stop_at: float) -> None:
        while time.monotonic() < stop_at:
            prompt = prompts[draw()]
            started = time.perf_counter()
            run.requests += 1

            async def ask(node: Node, prompt: str = prompt) -> str:
                return await complete(node, prompt)

            try:
                await cluster.call(ask, cache_key=prompt, ttl=10)
                run.ok += 1
                run.latencies.append(time.perf_counter() - started)
            except Exception as error:
                run.failed += 1
                run.note(f"[red]request failed[/]: {type(error).__name__}")
            await asyncio.sleep(0.01)

    async def restart(name: str) -> None:
        await servers[name].start()

    async def chaos(t0: float) -> None:
        steps: list[tuple[float, str, Callable[[], Awaitable[None]]]] = [
            (0.25, "gpu-1 is killed", servers["gpu-1"].kill),
            (0.40, "gpu-3 turns slow (600 ms)", lambda: slow("gpu-3", 0.6)),
            (0.65, "gpu-1 restarts", lambda: restart("gpu-1")),
            (0.75, "gpu-3 is fast again", lambda: slow("gpu-3", None)),
        ]
        for at, text, action in steps:
            await asyncio.sleep(max(0.0, t0 + at * duration_s - time.monotonic()))
            run.note(f"[bold magenta]chaos[/]: {text}")
            if not live and not quiet:
                print(f"{time.monotonic() - run.started:5.1f}s  chaos: {text}", flush=True)
            await action()

    async def slow(name: str, latency: float | None) -> None:
        server = servers[name]
        base = dict((n, lat) for n, lat, _ in SERVERS)[name]
        server.latency_s = latency if latency is not None else base
        server.health_latency_s = latency or 0.0

    async def follow_events() -> None:
        async for event in cluster.events():
            run.kinds[event.kind] = run.kinds.get(event.kind, 0) + 1
            if event.kind in ("retry", "node_failed"):
                continue  # too many to show one by one; counted in the summary
            text = describe(event)
            run.note(text)
            if not live and not quiet:
                print(f"{time.monotonic() - run.started:5.1f}s  {strip(text)}", flush=True)

    await cluster.astart()
    for node in cluster.registry.nodes():  # the demo's servers are up: start healthy
        cluster.registry.set_status(node.id, "healthy")
    events = asyncio.create_task(follow_events())
    await asyncio.sleep(0)
    t0 = time.monotonic()
    run.started = t0
    stop_at = t0 + duration_s
    tasks = [asyncio.create_task(worker(stop_at)) for _ in range(workers)]
    tasks.append(asyncio.create_task(chaos(t0)))
    try:
        if live:
            from rich.live import Live

            with Live(render(cluster, run, "langcluster demo"), refresh_per_second=8) as view:
                while not all(t.done() for t in tasks):
                    await asyncio.sleep(0.125)
                    view.update(render(cluster, run, "langcluster demo"))
        else:
            next_line = t0 + 1.0
            while not all(t.done() for t in tasks):
                await asyncio.sleep(0.05)
                if not quiet and time.monotonic() >= next_line:
                    next_line += 1.0
                    print(progress(cluster, run), flush=True)
        await asyncio.gather(*tasks)
        result = summary(cluster, run, time.monotonic() - t0)
    finally:
        for task in tasks:
            task.cancel()
        events.cancel()
        await asyncio.gather(*tasks, events, return_exceptions=True)
        await cluster.aclose()
        await client.aclose()
        if exporter is not None:
            exporter()
        if isinstance(cache, LayeredCache):
            await cache.aclose()
        if announcer is not None:
            for node in nodes:
                await announcer.deregister(node.id)
            await announcer.close()
        for server in servers.values():
            await server.kill()
    return result


def serve_metrics(cluster: Cluster, port: int, quiet: bool) -> Callable[[], None]:
    """Serves the cluster's Prometheus metrics on 127.0.0.1:``port``
    (``/metrics``) while the demo runs; returns what stops it."""
    from prometheus_client import CollectorRegistry, start_http_server

    from langcluster.metrics import PrometheusCollector

    registry = CollectorRegistry()
    collector = PrometheusCollector(cluster)
    registry.register(collector)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    if not quiet:
        print(f"metrics on http://127.0.0.1:{server.server_port}/metrics", flush=True)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)
        collector.close()

    return stop


def describe(event: ClusterEvent) -> str:
    color = {
        "breaker_opened": "red", "breaker_half_open": "yellow", "breaker_closed": "green",
        "status_changed": "cyan", "failover": "magenta", "failback": "magenta",
    }.get(event.kind, "white")  # fmt: skip
    node = event.node_id or "-"
    return f"[{color}]{event.kind}[/] {node} {event.detail}".rstrip()


def strip(text: str) -> str:
    from re import sub

    return sub(r"\[/?[a-z ]*\]", "", text)


def progress(cluster: Cluster, run: Run) -> str:
    stats = cluster.stats()
    parts = [
        f"{n}:{s['picks']}/{s['status'][:4]}/{s['breaker'][:4]}"
        for n, s in sorted(stats["nodes"].items())
    ]
    return f"{time.monotonic() - run.started:5.1f}s  requests {run.requests}  " + "  ".join(parts)


def report(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            "",
            "summary",
            f"  requests        {result['requests']} in {result['duration_s']} s "
            f"({result['backend_calls']} reached a server)",
            f"  success rate    {result['success_rate']:.2%} ({result['failed']} failed)",
            f"  latency         p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms "
            f"(calls that reached a server: p50 {result['server_p50_ms']} ms, "
            f"p99 {result['server_p99_ms']} ms)",
            f"  cache hit ratio {result['cache_hit_ratio']:.1%}",
            f"  failovers       {result['failovers']} calls moved to another node, "
            f"{result['breaker_opens']} breaker openings, {result['health_flips']} health changes",
            "  per node        " + ", ".join(f"{n} {c}" for n, c in result["per_node"].items()),
            "  breakers at end "
            + ", ".join(f"{n} {b}" for n, b in result["breakers_at_end"].items()),
        ]
    )


def cli(args: Any) -> int:
    live = not (args.no_live or args.json)
    if live:
        try:
            import rich  # noqa: F401
        except ImportError:
            print("(rich is not installed: pip install 'langcluster[demo]'; plain logs instead)")
            live = False
    result = asyncio.run(
        main(
            duration_s=args.duration,
            live=live,
            redis_url=args.redis,
            etcd_url=args.etcd,
            seed=args.seed,
            quiet=args.json,
            metrics_port=args.metrics_port,
        )
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report(result))
    return 0
