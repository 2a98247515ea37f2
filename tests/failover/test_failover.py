"""FailoverManager: retries on other nodes, breakers taking nodes out and
back, the retry budget, priority groups, hedging, events, and a real
backend killed and restarted mid-run."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

import langcluster as lc
from langcluster import Backoff, BreakerConfig, FailoverEvent, FailoverEventKind, FailoverManager

FAST = Backoff(base_s=0.001, max_s=0.002)
QUICK_BREAKER = BreakerConfig(
    minimum_calls=2, window_size=4, open_timeout_s=0.1, max_open_timeout_s=None
)


def nodes(n: int) -> list[lc.Node]:
    return [lc.Node(f"n{i}", "127.0.0.1", 9000 + i) for i in range(n)]


def manager(n: int = 3, **kwargs: Any) -> tuple[FailoverManager, list[FailoverEvent]]:
    kwargs.setdefault("breaker", QUICK_BREAKER)
    kwargs.setdefault("backoff", FAST)
    fm = FailoverManager(lc.RoundRobin(nodes(n)), **kwargs)
    events: list[FailoverEvent] = []
    fm.subscribe(events.append)
    return fm, events


def kinds(events: list[FailoverEvent]) -> list[str]:
    return [e.kind for e in events]


@pytest.mark.asyncio
async def test_a_failing_node_is_retried_around_then_taken_out() -> None:
    fm, events = manager()
    hits: dict[str, int] = {}

    async def work(node: lc.Node) -> str:
        hits[node.id] = hits.get(node.id, 0) + 1
        if node.id == "n1":
            raise ConnectionError("n1 is down")
        return node.id

    results = [await fm.call(work) for _ in range(30)]
    assert set(results) == {"n0", "n2"}
    assert hits["n1"] == 2  # out of rotation once its breaker opened
    assert fm.taken_out() == ["n1"]
    assert "breaker_opened" in kinds(events)
    failed = [e for e in events if e.kind == "node_failed"]
    assert all(e.node.id == "n1" and isinstance(e.error, ConnectionError) for e in failed)


@pytest.mark.asyncio
async def test_a_prefix_aware_retry_goes_to_an_untried_node_and_is_recorded_there() -> None:
    balancer = lc.PrefixAware(nodes(3))
    fm = FailoverManager(balancer, breaker=QUICK_BREAKER, backoff=FAST)
    prompt = "a long shared system prompt. " * 20
    home = balancer.pick(prompt).id
    tried: list[str] = []

    async def work(node: lc.Node) -> str:
        tried.append(node.id)
        if node.id == home:
            raise ConnectionError("the prefix's home is down")
        return node.id

    served = await fm.call(work, key=prompt)
    assert tried == [home, served]
    # The retry's node now holds the prompt: the next request goes there
    # at once while the home still fails.
    assert balancer.stats()[served]["blocks"] == balancer.stats()[home]["blocks"] > 0
    tried.clear()
    assert await fm.call(work, key=prompt) == served
    assert tried in ([served], [home, served])


def test_prefix_aware_picks_refuse_a_bad_exclude_by_name() -> None:
    balancer = lc.PrefixAware(nodes(2))
    with pytest.raises(TypeError, match=r"^exclude: must be an iterable of node ids, not one str"):
        balancer.pick("p", exclude="n0")
    with pytest.raises(TypeError, match=r"^exclude: must be a str"):
        balancer.pick("p", exclude=[0])
    with pytest.raises(lc.NoAvailableNode):
        balancer.pick("p", exclude=["n0", "n1"])
    assert balancer.pick("p", exclude=["n0"]).id == "n1"


@pytest.mark.asyncio
async def test_a_recovered_node_comes_back_after_a_trial() -> None:
    fm, events = manager()
    down = {"n1"}

    async def work(node: lc.Node) -> str:
        if node.id in down:
            raise ConnectionError
        return node.id

    for _ in range(10):
        await fm.call(work)
    assert fm.taken_out() == ["n1"]
    down.clear()
    await asyncio.sleep(0.15)
    seen = {await fm.call(work) for _ in range(12)}
    assert seen == {"n0", "n1", "n2"}
    assert fm.taken_out() == []
    assert kinds(events)[-2:] == ["breaker_half_open", "breaker_closed"] or (
        "breaker_closed" in kinds(events)
    )


@pytest.mark.asyncio
async def test_non_retryable_errors_propagate_at_once() -> None:
    fm, _ = manager(retry_on=ConnectionError)
    calls = 0

    async def work(node: lc.Node) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad request")

    with pytest.raises(ValueError, match="bad request"):
        await fm.call(work)
    assert calls == 1


@pytest.mark.asyncio
async def test_max_attempts_and_the_last_error() -> None:
    fm, _ = manager(n=5, max_attempts=2, breaker=BreakerConfig(minimum_calls=50, window_size=50))
    tried: list[str] = []

    async def work(node: lc.Node) -> None:
        tried.append(node.id)
        raise ConnectionError(node.id)

    with pytest.raises(ConnectionError) as raised:
        await fm.call(work)
    assert len(tried) == 2
    assert len(set(tried)) == 2, "a retry goes to another node"
    assert str(raised.value) == tried[-1]


@pytest.mark.asyncio
async def test_the_retry_budget_stops_retry_storms_under_load() -> None:
    # Every node fails every call, 50 calls a second for 30 s of a manual
    # clock: over any 10 s window the attempts stay within 1.2 x the calls
    # plus the minimum (1 retry a second, 10 a window), not the 3 x that
    # max_attempts would allow.
    now = [0.0]
    fm, events = manager(
        n=4,
        retry_budget=0.2,
        min_retries_per_s=1,
        breaker=BreakerConfig(minimum_calls=1000, window_size=1000),
        backoff=Backoff(base_s=0.0, max_s=0.0),
        clock=lambda: now[0],
    )
    attempts: list[float] = []
    calls: list[float] = []

    async def work(node: lc.Node) -> None:
        attempts.append(now[0])
        raise ConnectionError

    for i in range(1500):
        now[0] = i / 50
        calls.append(now[0])
        with pytest.raises(ConnectionError):
            await fm.call(work)
    for start in range(0, 21):
        inside = [t for t in attempts if start <= t < start + 10]
        made = [t for t in calls if start <= t < start + 10]
        assert len(inside) <= 1.2 * len(made) + 10, f"window from {start} s"
    stats = fm.stats()
    assert stats["retries"] <= 0.2 * 1500 + 30
    assert stats["budget_exhausted"] >= 1500 - stats["retries"] - 10
    assert "budget_exhausted" in kinds(events)


@pytest.mark.asyncio
async def test_the_retries_of_a_dying_nodes_calls_are_paid_for_by_earlier_traffic() -> None:
    # 32 calls in progress on 3 nodes when one dies: its ~11 calls in flight
    # fail at once and all are retried, paid for by the calls of the
    # seconds before (the budget of Envoy's kind, 20 % of the calls in
    # progress at the instant, refused some of them).
    now = [0.0]
    fm, _ = manager(
        n=3,
        min_retries_per_s=0,
        breaker=BreakerConfig(minimum_calls=1000, window_size=1000),
        clock=lambda: now[0],
    )

    async def ok(node: lc.Node) -> str:
        return node.id

    for i in range(200):  # 20 calls a second for the 10 s before
        now[0] = i / 20
        await fm.call(ok)
    everyone = asyncio.Event()
    started = 0

    async def work(node: lc.Node) -> str:
        nonlocal started
        started += 1
        if started == 32:
            everyone.set()
        await everyone.wait()  # every call is in flight before the node dies
        if node.id == "n0":
            raise ConnectionResetError("n0 died")
        return node.id

    outcomes = await asyncio.gather(*(fm.call(work) for _ in range(32)), return_exceptions=True)
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    assert fm.stats()["retries"] >= 10
    assert fm.stats()["budget_exhausted"] == 0


@pytest.mark.asyncio
async def test_low_traffic_never_starves_a_retry() -> None:
    # One refusing node in three, calls made one at a time: every call that
    # lands on it is retried on another node, none fails.
    fm, _ = manager(n=3, max_attempts=2, retry_budget=0.2,
                    breaker=BreakerConfig(minimum_calls=100, window_size=100))  # fmt: skip

    async def work(node: lc.Node) -> str:
        if node.id == "n1":
            raise ConnectionRefusedError("n1 refuses")
        return node.id

    results = [await fm.call(work) for _ in range(300)]
    assert set(results) == {"n0", "n2"}
    assert fm.stats()["budget_exhausted"] == 0
    assert fm.stats()["failures"] == 0


@pytest.mark.asyncio
async def test_all_nodes_down_raises_no_available_node_quickly() -> None:
    fm, events = manager(n=2)
    attempts: list[str] = []

    async def work(node: lc.Node) -> None:
        attempts.append(node.id)
        raise ConnectionError

    for _ in range(6):
        with contextlib.suppress(ConnectionError, lc.NoAvailableNode):
            await fm.call(work)
    before, retries = len(attempts), fm.stats()["retries"]
    with pytest.raises(lc.NoAvailableNode) as raised:
        await fm.call(work)
    # At once: no attempt made, no retry (nor its backoff) waited for.
    assert (len(attempts), fm.stats()["retries"]) == (before, retries)
    assert "all_nodes_down" in kinds(events)
    assert raised.value.__cause__ is None or isinstance(raised.value.__cause__, Exception)


@pytest.mark.asyncio
async def test_backups_serve_only_while_primaries_are_down() -> None:
    fm, events = manager(n=4, priority={"n2": 1, "n3": 1})
    down: set[str] = set()

    async def work(node: lc.Node) -> str:
        if node.id in down:
            raise ConnectionError
        return node.id

    assert {await fm.call(work) for _ in range(10)} == {"n0", "n1"}
    down.add("n0")
    for _ in range(10):
        await fm.call(work)
    # One primary of two left: 50 % x 1.4 < 1, so the backups come in.
    assert "failover" in kinds(events)
    assert {await fm.call(work) for _ in range(12)} >= {"n2", "n3"}
    down.clear()
    await asyncio.sleep(0.15)
    for _ in range(12):
        await fm.call(work)
    assert "failback" in kinds(events)
    assert {await fm.call(work) for _ in range(10)} == {"n0", "n1"}


@pytest.mark.asyncio
async def test_hedging_answers_from_the_faster_node_and_cancels_the_other() -> None:
    balancer = lc.RoundRobin(nodes(2))
    fm = FailoverManager(balancer, hedge_after_s=0.02, backoff=FAST)
    cancelled: list[str] = []

    async def work(node: lc.Node) -> str:
        try:
            await asyncio.sleep(1.0 if node.id == "n0" else 0.001)
        except asyncio.CancelledError:
            cancelled.append(node.id)
            raise
        return node.id

    assert await fm.call(work) == "n1"  # not n0's answer, a second later
    assert cancelled == ["n0"]
    assert all(s["in_flight"] == 0 for s in balancer.stats().values())
    assert fm.stats()["hedges"] == 1


class Answer:
    """An answer that can be closed, as an httpx response can."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.asyncio
async def test_an_answer_the_hedge_does_not_use_is_closed() -> None:
    balancer = lc.RoundRobin(nodes(2))
    fm = FailoverManager(balancer, hedge_after_s=0.001, backoff=FAST)
    second_started = asyncio.Event()
    answers: list[Answer] = []

    async def work(node: lc.Node) -> Answer:
        if node.id == "n0":  # slow until the hedge starts; then both answer at once
            await second_started.wait()
        else:
            second_started.set()
        answers.append(Answer(node.id))
        return answers[-1]

    used = await fm.call(work)
    assert len(answers) == 2
    assert not used.closed
    assert [a.closed for a in answers if a is not used] == [True]
    assert all(s["in_flight"] == 0 for s in balancer.stats().values())


def test_the_sync_twin_fails_over_too() -> None:
    fm, _ = manager()

    def work(node: lc.Node) -> str:
        if node.id == "n0":
            raise ConnectionError
        return node.id

    assert {fm.call_sync(work) for _ in range(10)} == {"n1", "n2"}


@pytest.mark.asyncio
async def test_events_stream_and_a_raising_listener_is_harmless() -> None:
    fm, _ = manager()
    fm.subscribe(lambda event: 1 / 0)
    received: list[str] = []

    async def consume() -> None:
        async for event in fm.events():
            received.append(event.kind)
            if event.kind == "breaker_opened":
                return

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)

    async def work(node: lc.Node) -> str:
        if node.id == "n0":
            raise ConnectionError
        return node.id

    for _ in range(6):
        await fm.call(work)
    await asyncio.wait_for(consumer, 1)
    assert received[0] == "node_failed"
    assert received[-1] == "breaker_opened"
    assert all(isinstance(kind, FailoverEventKind) for kind in received)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"retry_budget": 0}, ValueError, "retry_budget"),
        ({"retry_budget": 1.5}, ValueError, "retry_budget"),
        ({"hedge_after_s": 0}, ValueError, "hedge_after_s"),
        ({"overprovisioning": 0.5}, ValueError, "overprovisioning"),
        ({"retry_on": 5}, TypeError, "retry_on"),
        ({"breaker": {"minimum_calls": 1}}, TypeError, "breaker"),
    ],
)
def test_bad_configuration_is_named(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        FailoverManager(lc.RoundRobin(nodes(2)), **kwargs)


def test_breaker_config_is_checked_when_made() -> None:
    with pytest.raises(ValueError, match="failure_rate_threshold"):
        BreakerConfig(failure_rate_threshold=2)
    with pytest.raises(ValueError, match="open_timeout_s"):
        BreakerConfig(open_timeout_s=0)


def test_backoff_is_checked_and_bounded() -> None:
    import random

    with pytest.raises(ValueError, match=r"^base_s"):
        Backoff(base_s=-1)
    b = Backoff(base_s=0.1, max_s=0.3)
    rng = random.Random(1)
    assert all(0 <= b.delay(n, rng) <= 0.3 for n in range(1, 10))
    assert Backoff(base_s=0.1, max_s=0.3, jitter=0).delay(3, rng) == pytest.approx(0.3)
    with pytest.raises(TypeError, match="balancer"):
        FailoverManager([])  # type: ignore[arg-type]


def test_backoff_never_overflows_and_refuses_absurd_growth() -> None:
    import random

    backoff = Backoff(base_s=0.01, max_s=2.0, multiplier=1000, jitter=0)
    assert backoff.delay(10_000, random.Random(0)) == 2.0  # 1000 ** 9999 is past any float
    with pytest.raises(ValueError, match=r"^multiplier"):
        Backoff(multiplier=1e308)
    with pytest.raises(ValueError, match=r"^jitter"):
        Backoff(jitter=1.5)


@pytest.mark.asyncio
@pytest.mark.parametrize(("error", "refused"), [(ConnectionRefusedError, 0), (TimeoutError, 4)])
async def test_a_retry_after_a_connection_never_made_is_not_charged_to_the_budget(
    error: type[Exception], refused: int
) -> None:
    # 30 calls, a third on a node that fails them at once: 10 retries, where
    # the budget (20 % of the calls, no minimum) allows 6.
    balancer = lc.RoundRobin(nodes(3))
    breaker = BreakerConfig(window_size=100, minimum_calls=100)  # the budget alone is tested
    fm = FailoverManager(
        balancer, breaker=breaker, backoff=FAST, retry_budget=0.2, min_retries_per_s=0
    )
    release, everyone = asyncio.Event(), asyncio.Event()
    failed = started = 0

    async def work(node: lc.Node) -> str:
        nonlocal failed, started
        started += 1
        if started == 30:
            everyone.set()
        await everyone.wait()  # every call starts before any fails
        if node.id == "n0":
            failed += 1
            if failed == 10:
                release.set()
            raise error("n0 is gone")
        await release.wait()  # the others' retries stay in progress until then
        return node.id

    outcomes = await asyncio.gather(*(fm.call(work) for _ in range(30)), return_exceptions=True)
    assert sum(isinstance(o, Exception) for o in outcomes) == refused
    assert fm.stats()["budget_exhausted"] == refused


def test_stats_list_only_the_nodes_in_the_balancer() -> None:
    m, _ = manager(3)
    for node in m.balancer.nodes:
        m.breaker(node.id)
    m.balancer.update(nodes(1))
    assert set(m.stats()["nodes"]) == {"n0"}, "departed nodes are not listed, pruned or not"
