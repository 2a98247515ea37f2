"""A worker process of a multi-process service, for the shared-state tests:
a blocking cluster over the given servers, calling them one request at a
time until told to stop, and reporting what it saw of node ``s0``."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import Any

import httpx

import langcluster as lc
from tests.support.helpers import wait_until

BREAKER = {"window_size": 5, "minimum_calls": 5, "open_timeout_s": 2.0}
SPAWN = multiprocessing.get_context("spawn")


@contextlib.contextmanager
def spawned(
    target: Callable[..., None], args: list[tuple[Any, ...]]
) -> Iterator[list[BaseProcess]]:
    """One spawned process per argument tuple, started; on the way out each
    is given 30 s to end, then killed."""
    procs = [SPAWN.Process(target=target, args=a) for a in args]
    for proc in procs:
        proc.start()
    try:
        yield procs
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


def work(
    ports: list[int],
    redis_url: str | None,
    ready: Any,
    go: Event,
    stop: Event,
    health_interval_s: float | None = None,
) -> None:
    """Runs in a spawned process; puts its origin on ``ready`` once running,
    ``("opened", time)`` when node s0's breaker first leaves closed,
    ``("closed", time)`` when it closes after it was out, and its report at
    the end. With ``health_interval_s`` it checks the servers'
    health (shared when there is Redis) and makes no calls."""
    shared = (
        lc.SharedState(redis_url, namespace="workers", signing_key=b"k", trial_s=0.5)
        if redis_url
        else None
    )
    nodes = [lc.Node(f"s{i}", "127.0.0.1", port) for i, port in enumerate(ports)]
    health = (
        # The query names the checker, so that a test counts who checked.
        lc.HealthConfig(
            lc.HttpCheck(f"/health?by={os.getpid()}"), interval_s=health_interval_s, timeout_s=0.2
        )
        if health_interval_s
        else None
    )
    cluster = lc.Cluster(
        service="chat", nodes=nodes, balancer="round_robin",
        breaker=lc.BreakerConfig(**BREAKER), shared_state=shared, health=health,
    )  # fmt: skip
    closed_at: float | None = None
    was_out = False
    with cluster, httpx.Client(transport=lc.ClusterTransport(cluster), timeout=2.0) as client:
        if shared is not None:
            wait_until(lambda: shared.connected, timeout_s=10)
        ready.put(("ready", (shared._origin if shared is not None else None, os.getpid())))
        go.wait()
        failed = 0
        if health is not None:
            # Polled, not waited on: a worker killed while waiting on an
            # Event would leave the setter waiting for it to wake.
            wait_until(stop.is_set, timeout_s=600)
        while not stop.is_set():
            try:
                client.post("http://chat/v1/completions", json={"prompt": "hi"})
            except Exception:
                failed += 1
            state = cluster.failover.breaker("s0").state
            if state != "closed":
                if not was_out:
                    ready.put(("opened", time.time()))
                was_out = True
            elif was_out and closed_at is None:
                closed_at = time.time()
                ready.put(("closed", closed_at))
        stats = cluster.balancer.stats()["s0"]
        report = {"s0_failures": stats["failures"], "failed_calls": failed, "closed_at": closed_at,
                  "shared": cluster.stats().get("shared")}  # fmt: skip
    ready.put(("report", report))
