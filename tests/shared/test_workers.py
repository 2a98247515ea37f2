"""Four spawned worker processes over three simulated servers, one of which
dies: with SharedState, the calls that reach the dead server, over all the
workers, are those one worker needs to open its breaker and a few more;
without it, each worker pays them. When the server returns, it is back in
every worker within 200 ms of the first trial that passes."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support import workers
from tests.support.helpers import redis_url, wait_until
from tests.support.simulated import ServersInThread

WORKERS = 4
# The failures one worker needs to open its breaker: its window full of
# successes, at least half of the last five must fail.
ONE_WORKER = 3


def take(ready: Any, kind: str, timeout_s: float = 60.0) -> Any:
    """The next message of ``kind`` from the workers; the others (a breaker
    that opened, say) are passed over."""
    while True:
        message = ready.get(timeout=timeout_s)
        if message[0] == kind:
            return message[1]


@contextlib.contextmanager
def calling(fleet: ServersInThread, url: str | None) -> Iterator[tuple[Any, Any]]:
    """Four workers calling the fleet's servers once all are ready; yields
    their report queue and the event that stops them."""
    ready, go, stop = workers.SPAWN.Queue(), workers.SPAWN.Event(), workers.SPAWN.Event()
    ports = [s.port for s in fleet.servers]
    with workers.spawned(workers.work, [(ports, url, ready, go, stop)] * WORKERS):
        for _ in range(WORKERS):
            assert ready.get(timeout=60)[0] == "ready"
        go.set()
        yield ready, stop


def run(fleet: ServersInThread, url: str | None, *, restart: bool) -> list[dict[str, Any]]:
    with calling(fleet, url) as (ready, stop):
        dead, alive = fleet.servers[0], fleet.servers[1]
        assert wait_until(lambda: dead.requests >= 40)  # the workers call every server
        fleet.run(dead.kill())
        # Every worker's breaker opens (on its own calls, or on another's
        # word), however slowly a busy machine runs one of them; then every
        # worker has moved on.
        for _ in range(WORKERS):
            take(ready, "opened", timeout_s=30)
        seen = alive.requests
        assert wait_until(lambda: alive.requests >= seen + 200)
        if restart:
            fleet.run(dead.start())
            # The open time ends, a trial passes, every worker follows.
            for _ in range(WORKERS):
                take(ready, "closed", timeout_s=30)
        stop.set()
        return [take(ready, "report") for _ in range(WORKERS)]


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


@pytest.mark.services
def test_redis_killed_mid_run_fails_no_call_and_sharing_resumes_when_it_returns(
    redis_restartable: Any,
) -> None:
    url = redis_url(redis_restartable)
    with ServersInThread(3, latency_s=0.0) as fleet, calling(fleet, url) as (ready, stop):
        dead, alive = fleet.servers[0], fleet.servers[1]
        assert wait_until(lambda: alive.requests >= 100)
        redis_restartable.kill()  # SIGKILL, mid-run
        seen = alive.requests
        assert wait_until(lambda: alive.requests >= seen + 300)  # calls go on without it
        redis_restartable.start()
        raw = redis.Redis.from_url(url)
        channel = "workers:shared:chat:ejections"
        # Every worker is back: subscribed again (its backoff is at most 2 s).
        assert wait_until(lambda: raw.pubsub_numsub(channel)[0][1] == WORKERS, timeout_s=30)
        raw.close()
        fleet.run(dead.kill())  # and sharing works again
        seen = alive.requests
        assert wait_until(lambda: alive.requests >= seen + 200)
        stop.set()
        reports = [take(ready, "report") for _ in range(WORKERS)]
    failures = sum(r["s0_failures"] for r in reports)
    errors = [r["shared"]["redis_errors"] for r in reports]
    failed = sum(r["failed_calls"] for r in reports)
    print(f"Redis killed: failed calls {failed}, Redis errors per worker {errors}, "
          f"calls to the dead server after: {failures}")  # fmt: skip
    assert all(r["failed_calls"] == 0 for r in reports)
    assert all(n >= 1 for n in errors), "every worker saw Redis go"
    assert all(r["shared"]["connected"] for r in reports)
    assert failures <= workers.BREAKER["minimum_calls"] + WORKERS


INTERVAL_S = 0.25


def checks_and_handover(fleet: ServersInThread, url: str | None) -> tuple[int, float | None]:
    """The workers whose health checks server s1 received, over 24 checks
    after the first 4; with Redis, the longest pause in its checks once the
    lease holder is killed."""
    ready, go, stop = workers.SPAWN.Queue(), workers.SPAWN.Event(), workers.SPAWN.Event()
    ports = [s.port for s in fleet.servers]
    pause = None
    args = [(ports, url, ready, go, stop, INTERVAL_S)] * WORKERS
    with workers.spawned(workers.work, args) as procs:
        started = dict(ready.get(timeout=60)[1] for _ in procs)  # origin -> pid
        go.set()
        server = fleet.servers[1]
        before = server.health_checks
        assert wait_until(lambda: server.health_checks >= before + 28, timeout_s=60)
        checkers = set(list(server.health_queries)[-24:])
        if url is not None:
            lease = redis.Redis.from_url(url)
            holder = lease.get("workers:shared:chat:health:lease")
            by_pid = {proc.pid: proc for proc in procs}
            by_origin = {origin: by_pid[pid] for origin, pid in started.items()}
            killed_at = time.monotonic()
            by_origin[holder].kill()  # SIGKILL: no goodbye, the lease must lapse
            by_origin[holder].join(timeout=10)
            key = "workers:shared:chat:health:lease"
            assert wait_until(lambda: lease.get(key) not in (None, holder), timeout_s=10)
            assert wait_until(lambda: sum(t > killed_at for t in server.health_times) >= 3)
            lease.close()
            times = [t for t in server.health_times if t > killed_at - 2 * INTERVAL_S]
            pause = max(later - earlier for earlier, later in itertools.pairwise(times))
        stop.set()
        for proc in procs:  # a worker ends once its report is read
            if proc.exitcode is None:
                ready.get(timeout=60)
    return checkers, pause


@pytest.mark.services
def test_four_workers_check_each_node_once_an_interval_and_the_lease_passes_on(
    redis_server: Any,
) -> None:
    with ServersInThread(3, latency_s=0.0) as fleet:
        shared, pause = checks_and_handover(fleet, redis_url(redis_server))
    with ServersInThread(3, latency_s=0.0) as fleet:
        alone, _ = checks_and_handover(fleet, None)
    print(f"checkers of one node over 24 checks: {len(shared)} shared, {len(alone)} alone; "
          f"longest pause after the checker died: {pause:.2f} s")  # fmt: skip
    assert len(shared) == 1, "one checker for the service"
    assert len(alone) == WORKERS, "every worker checks on its own"
    assert pause is not None
    assert pause <= 2 * INTERVAL_S + 0.25  # two intervals, and a margin for a loaded machine
