"""Four spawned worker processes over three simulated servers, one of which
dies: with SharedState, the calls that reach the dead server, over all the
workers, are those one worker needs to open its breaker and a few more;
without it, each worker pays them. When the server returns, it is back in
every worker within 200 ms of the first trial that passes."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pytest

from tests.support import workers
from tests.support.helpers import redis_url
from tests.support.simulated import ServersInThread

WORKERS = 4
# The failures one worker needs to open its breaker: its window full of
# successes, at least half of the last five must fail.
ONE_WORKER = 3


def run(fleet: ServersInThread, url: str | None, *, restart: bool) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    ready, go, stop = context.Queue(), context.Event(), context.Event()
    ports = [s.port for s in fleet.servers]
    procs = [
        context.Process(target=workers.work, args=(ports, url, ready, go, stop))
        for _ in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            assert ready.get(timeout=60) == ("ready", None)
        go.set()
        time.sleep(0.3)  # the workers call the three servers
        fleet.run(fleet.servers[0].kill())
        time.sleep(0.5)  # less than the breakers' open time: no trial yet
        if restart:
            fleet.run(fleet.servers[0].start())
            time.sleep(2.0)  # open time over, a trial passes, the others follow
        stop.set()
        reports = [ready.get(timeout=60)[1] for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return reports


@pytest.mark.services
def test_a_dead_server_costs_one_workers_failures_not_four(redis_server: Any) -> None:
    with ServersInThread(3, latency_s=0.0) as fleet:
        shared = run(fleet, redis_url(redis_server), restart=False)
    with ServersInThread(3, latency_s=0.0) as fleet:
        alone = run(fleet, None, restart=False)
    with_sharing = sum(r["s0_failures"] for r in shared)
    without = sum(r["s0_failures"] for r in alone)
    print(f"calls that reached the dead server: {with_sharing} shared, {without} alone")
    # The bound: minimum_calls, and one more per worker in flight.
    assert with_sharing <= workers.BREAKER["minimum_calls"] + WORKERS
    assert without >= WORKERS * ONE_WORKER
    assert all(r["failed_calls"] == 0 for r in shared + alone)


@pytest.mark.services
def test_a_server_back_is_back_in_every_worker_within_200_ms(redis_server: Any) -> None:
    with ServersInThread(3, latency_s=0.0) as fleet:
        reports = run(fleet, redis_url(redis_server), restart=True)
    closed = [r["closed_at"] for r in reports]
    assert all(at is not None for at in closed), reports
    print(f"back in every worker within {1000 * (max(closed) - min(closed)):.0f} ms")
    assert max(closed) - min(closed) < 0.2
