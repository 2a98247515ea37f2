"""What metrics cost a call (docs/benchmarks.md, "Metrics"): ns per
``Cluster.call_sync`` and ``Cluster.call`` with nothing watching, with a
``PrometheusCollector`` recording, and with OpenTelemetry instrumentation
(the API alone, and the SDK exporting to memory). Each figure is the median
of short blocks in which the variants take turns, so drift of the machine
falls on all of them alike; and the Prometheus recorder's hooks alone.

    python benches/python/metrics_report.py [--blocks N] [--number N] [--json]

Run with another build's interpreter (installed into a second virtualenv),
it measures that build's calls with nothing watching, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
import timeit
from typing import Any

import langcluster as lc


def work(node: Any) -> int:
    return 1


async def awork(node: Any) -> int:
    return 1


def observers(cluster: lc.Cluster) -> dict[str, Any]:
    """Each variant's observer, made through the public entry points once
    and then detached, so that blocks can attach and detach it cheaply."""
    out: dict[str, Any] = {"off": None}
    if not hasattr(lc, "metrics"):  # a build before metrics: the baseline alone
        return out

    def last() -> Any:
        return cluster._observers.all[-1]

    collector = lc.metrics.PrometheusCollector(cluster)
    out["prometheus"] = last()
    collector.close()

    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.trace import NoOpTracerProvider

    done = lc.metrics.instrument(cluster, NoOpTracerProvider(), NoOpMeterProvider())
    out["otel api (no-op)"] = last()
    done.uninstrument()

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracer = TracerProvider()
    tracer.add_span_processor(SimpleSpanProcessor(exporter))
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()])
    done = lc.metrics.instrument(cluster, tracer, meter)
    out["otel sdk (in memory)"] = last()
    done.uninstrument()
    out["_exporter"] = exporter
    return out


def timed(loop: asyncio.AbstractEventLoop, many: Any, number: int) -> float:
    """ns per call of ``number`` awaited calls."""
    started = time.perf_counter()
    loop.run_until_complete(many(number))
    return (time.perf_counter() - started) / number * 1e9


def measure(blocks: int, number: int) -> dict[str, dict[str, float]]:
    """Median ns per call of each variant over ``blocks`` blocks of
    ``number`` calls; the variants take turns block by block (their order
    rotating), so drift of the machine falls on all of them alike."""
    cluster = lc.Cluster(
        service="bench", nodes=[lc.Node(f"n{i}", "127.0.0.1", 9000 + i) for i in range(3)]
    )
    cluster.start()
    loop = asyncio.new_event_loop()

    async def many(n: int) -> None:
        call = cluster.call
        for _ in range(n):
            await call(awork)

    samples: dict[str, dict[str, list[float]]] = {}
    try:
        made = observers(cluster)
        exporter = made.pop("_exporter", None)
        names = list(made)
        for block in range(blocks):
            turn = names[block % len(names) :] + names[: block % len(names)]
            for name in turn:
                observer = made[name]
                stop = cluster.observe(observer) if observer is not None else None
                gc.collect()
                gc.disable()  # as timeit does: one variant's garbage is not another's pause
                try:
                    started = time.perf_counter()
                    for _ in range(number):
                        cluster.call_sync(work)
                    sync = (time.perf_counter() - started) / number * 1e9
                    async_ns = timed(loop, many, number)
                finally:
                    gc.enable()
                    if stop is not None:
                        stop()
                if exporter is not None:
                    exporter.clear()
                entry = samples.setdefault(name, {"call_sync": [], "call": []})
                entry["call_sync"].append(sync)
                entry["call"].append(async_ns)
    finally:
        loop.close()
        cluster.close()
    return {
        name: {k: statistics.median(v) for k, v in entry.items()} for name, entry in samples.items()
    }


def hook_cost(number: int) -> float | None:
    """ns of the Prometheus recorder's two hooks alone (began, then ended)."""
    if not hasattr(lc, "metrics"):
        return None
    from langcluster.metrics.recorder import CallRecorder

    began, ended = CallRecorder().call_hooks()
    stmt = "ended(began('s'), 'success', None)"
    env = {"began": began, "ended": ended}
    return min(timeit.repeat(stmt, globals=env, number=number, repeat=7)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=60)
    parser.add_argument("--number", type=int, default=2_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = measure(args.blocks, args.number)
    hooks = hook_cost(200_000)
    if args.json:
        print(json.dumps({**result, "recorder hooks ns": hooks}, indent=2))
        return
    base = result["off"]
    print(f"{'variant':24} {'call_sync ns':>13} {'+ns':>7} {'call ns':>9} {'+ns':>7}")
    for name, entry in result.items():
        print(
            f"{name:24} {entry['call_sync']:13.0f} {entry['call_sync'] - base['call_sync']:+7.0f} "
            f"{entry['call']:9.0f} {entry['call'] - base['call']:+7.0f}"
        )
    if hooks is not None:
        print(f"the Prometheus recorder's two hooks alone: {hooks:.0f} ns")


if __name__ == "__main__":
    main()
