"""Python threads picking at once: no lost turn, no negative count, no crash."""

from __future__ import annotations

import collections
import threading

import langcluster as lc
from langcluster import Node

THREADS = 4
PER_THREAD = 20_000


def run_threads(target) -> None:
    barrier = threading.Barrier(THREADS)

    def worker() -> None:
        barrier.wait()
        target()

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()


def test_round_robin_loses_no_turn_across_threads():
    nodes = [Node(f"n{i}", "h") for i in range(4)]
    b = lc.RoundRobin(nodes)
    results: list[collections.Counter[str]] = []
    lock = threading.Lock()

    def work() -> None:
        c = collections.Counter(b.pick().id for _ in range(PER_THREAD))
        with lock:
            results.append(c)

    run_threads(work)
    total: collections.Counter[str] = sum(results, collections.Counter())
    assert total == {n.id: THREADS * PER_THREAD // 4 for n in nodes}


def test_acquire_from_many_threads_leaves_nothing_in_flight():
    b = lc.LeastConnections([Node(f"n{i}", "h") for i in range(8)])

    def work() -> None:
        for _ in range(5_000):
            with b.acquire():
                pass

    run_threads(work)
    stats = b.stats()
    assert sum(s["in_flight"] for s in stats.values()) == 0
    assert sum(s["successes"] for s in stats.values()) == THREADS * 5_000


def test_a_pick_after_update_returns_never_sees_an_older_node_set():
    generations = [[Node(f"g{g}-{i}", "h") for i in range(5)] for g in range(200)]
    b = lc.Adaptive(generations[0])
    published = [0]  # the newest generation whose update() has returned
    stale: list[tuple[int, str]] = []
    stop = threading.Event()

    def picker() -> None:
        while not stop.is_set():
            floor = published[0]
            node = b.pick()
            generation = int(node.id.split("-")[0][1:])
            if generation < floor:
                stale.append((floor, node.id))

    threads = [threading.Thread(target=picker) for _ in range(3)]
    for t in threads:
        t.start()
    for g in range(1, len(generations)):
        b.update(generations[g])
        published[0] = g
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not stale
