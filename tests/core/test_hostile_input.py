"""Input that used to crash the process or give wrong answers, refused by
name or answered right. Cases that could kill the interpreter run in a
child process, so a crash fails the test instead of the run."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest

import langcluster as lc


class Raw:
    """A node of the caller's own type, which balancers accept."""

    def __init__(self, id: str, weight: float = 1.0) -> None:
        self.id = id
        self.weight = weight


def run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("weight", [1e307, 1e300, 1e6 + 1, math.inf, -1.0, 0.0, math.nan])
@pytest.mark.parametrize("cls", [lc.ConsistentHash, lc.Random, lc.WeightedRoundRobin])
def test_a_weight_out_of_range_is_refused_by_name(cls: type[lc.Balancer], weight: float) -> None:
    with pytest.raises(ValueError, match=r"^nodes\[0\]\.weight: must be a number above 0"):
        cls([Raw("a", weight), Raw("b")])
    balancer = cls([Raw("a"), Raw("b")])
    with pytest.raises(ValueError, match=r"^nodes\[1\]\.weight"):
        balancer.update([Raw("a"), Raw("b", weight)])
    assert len(balancer) == 2  # the old set stands
    with pytest.raises(ValueError, match=r"^weight"):
        lc.Node("a", "h", weight=weight)


def test_the_largest_weights_still_balance() -> None:
    nodes = [Raw("a", 1e6), Raw("b", 1e6)]
    picks = [lc.Random(nodes).pick().id for _ in range(2000)]
    assert 800 < picks.count("a") < 1200  # the sum of weights did not overflow
    ring = lc.ConsistentHash([Raw("a", 1e6), Raw("b", 1e-6)])
    assert {ring.pick(str(i)).id for i in range(500)} <= {"a", "b"}


def test_a_huge_node_set_on_a_ring_stays_bounded_in_memory() -> None:
    done = run_isolated(
        """
        import resource, langcluster as lc
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        class Raw:
            def __init__(self, i): self.id, self.weight = f"n{i}", 1.0
        ring = lc.ConsistentHash([Raw(i) for i in range(50_000)], vnodes=10_000)
        print(ring.pick("k").id.startswith("n"))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_a_latency_out_of_range_is_refused_not_stored() -> None:
    balancer = lc.Adaptive([Raw("a"), Raw("b")])
    balancer.begin("a")
    for latency in (1e300, 86_401.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^latency_s"):
            balancer.end("a", latency)
    breaker = lc.CircuitBreaker()
    for latency in (1.9e19, 1e300, -0.5, math.nan):
        with pytest.raises(ValueError, match=r"^latency_s"):
            breaker.record_failure(latency)
        with pytest.raises(ValueError, match=r"^latency_s"):
            breaker.record_success(latency)
    assert balancer.end("a", 86_400.0) is True


@pytest.mark.parametrize("name", ["open_timeout_s", "max_open_timeout_s"])
def test_an_open_time_that_would_wrap_the_deadline_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}: must be at most 2592000"):
        lc.CircuitBreaker(**{name: 1e12})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"^{name}"):
        lc.BreakerConfig(**{name: 40 * 86_400})  # type: ignore[arg-type]


def test_a_capacity_far_beyond_the_memory_costs_nothing_until_it_is_used() -> None:
    # Memory follows the entries held, not the bound: under a 2 GiB address
    # space, the largest capacity allowed builds and works.
    done = run_isolated(
        """
        import resource, langcluster as lc
        resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))
        cache = lc.MemoryCache(2**31 - 2)
        for i in range(10_000):
            cache.set(i, i)
        print(cache.get(9_999), len(cache), cache.memory_usage() < 4 << 20)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["9999", "10000", "True"]


def test_deeply_nested_cached_arguments_raise_recursion_error() -> None:
    nested: tuple[object, ...] = ()
    for _ in range(10_000):
        nested = (nested,)

    @lc.cached(lc.MemoryCache(10))
    def f(x: object) -> int:
        return 1

    with pytest.raises(RecursionError, match=r"^cached: nested deeper than 100"):
        f(nested)
    shallow: tuple[object, ...] = ()
    for _ in range(50):
        shallow = (shallow,)
    assert f(shallow) == 1


def test_a_node_id_utf8_cannot_encode_is_refused_and_wedges_nothing() -> None:
    with pytest.raises(ValueError, match=r"^id:"):
        lc.Node("gpu\ud800", "h")
    with pytest.raises(ValueError, match=r"^nodes\[1\]\.id"):
        lc.RoundRobin([Raw("a"), Raw("b\ud800")])
    registry = lc.NodeRegistry()
    balancer = lc.RoundRobin()
    registry.bind(balancer)
    registry.register(lc.Node("a", "h"))
    registry.register(lc.Node("b", "h"))
    assert len(balancer) == 2  # every update after a bad id would have been dropped


def test_pop_returns_the_default_given_none_included() -> None:
    cache = lc.MemoryCache(10)
    assert cache.pop("absent", None) is None
    assert cache.pop("absent", 0) == 0
    with pytest.raises(KeyError):
        cache.pop("absent")
    cache["k"] = "v"
    assert cache.pop("k", None) == "v"


@pytest.mark.parametrize("ttl", [math.inf, math.nan, -1.0, 0.0, 1e300])
def test_a_memory_cache_ttl_out_of_range_is_refused(ttl: float) -> None:
    with pytest.raises(ValueError, match=r"^ttl"):
        lc.MemoryCache(10, ttl=ttl)
    with pytest.raises(ValueError, match=r"^ttl"):
        lc.MemoryCache(10).set("k", 1, ttl=ttl)


class Odd:
    """An object whose comparison and hash raise: no check may run them."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__ ran")

    def __hash__(self) -> int:
        raise RuntimeError("__hash__ ran")


def starts_with_name(error: BaseException, name: str) -> bool:
    # The message itself: Python 3.10 has no exception notes to carry a name.
    return str(error).startswith(f"{name}:")


@pytest.mark.parametrize(
    ("method", "args", "name"),
    [
        ("begin", (object(),), "node_id"),
        ("end", (object(), 0.1), "node_id"),
        ("end", ("a", 0.1, 1), "ok"),
        ("release", (b"a",), "node_id"),
        ("set_available", (1, True), "node_id"),
        ("set_available", ("a", "false"), "available"),
    ],
)
def test_a_wrong_type_for_a_node_call_is_named_in_the_message(
    method: str, args: tuple[object, ...], name: str
) -> None:
    balancer = lc.RoundRobin([lc.Node("a", "h")])
    with pytest.raises(TypeError) as refused:
        getattr(balancer, method)(*args)
    assert starts_with_name(refused.value, name), refused.value


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: lc.Node(1, "h"), "id"),  # type: ignore[arg-type]
        (lambda: lc.Node("a", "h", status=Odd()), "status"),  # type: ignore[arg-type]
        (lambda: lc.MemoryCache(10).get_many(None), "keys"),  # type: ignore[arg-type]
        (lambda: lc.MemoryCache(10).delete_many(3), "keys"),  # type: ignore[arg-type]
        (lambda: lc.MemoryCache(10).set_many(None), "mapping"),  # type: ignore[arg-type]
        (lambda: lc.StaticDiscovery(file=Odd()), "file"),  # type: ignore[arg-type]
        (lambda: lc.HttpCheck(scheme=Odd()), "scheme"),  # type: ignore[arg-type]
        (lambda: lc.Cluster.from_config({"service": "s", "discovery": {"kind": Odd()}}),
         "discovery.kind"),
    ],
)  # fmt: skip
def test_a_wrong_type_is_named_and_never_compared(call: object, name: str) -> None:
    with pytest.raises(TypeError) as refused:
        call()  # type: ignore[operator]
    assert starts_with_name(refused.value, name), refused.value


@pytest.mark.parametrize("cls", [lc.ConsistentHash, lc.PrefixAware])
def test_an_int_python_will_not_print_is_refused_by_name(cls: type[lc.Balancer]) -> None:
    balancer = cls([Raw("a"), Raw("b")])
    huge = 10**5000  # over the default sys.get_int_max_str_digits() of 4300
    name = "prompt" if cls is lc.PrefixAware else "key"
    with pytest.raises(ValueError, match=rf"^{name}: an int routes as its decimal text"):
        balancer.pick(huge)
    assert balancer.pick(10**70) is balancer.pick(str(10**70))  # 71 digits: a whole block


@pytest.mark.parametrize("cls", [lc.ConsistentHash, lc.PrefixAware])
def test_a_str_utf8_cannot_encode_is_refused_by_name(cls: type[lc.Balancer]) -> None:
    balancer = cls([Raw("a"), Raw("b")])
    name = "prompt" if cls is lc.PrefixAware else "key"
    with pytest.raises(ValueError, match=rf"^{name}: must be text that UTF-8 can encode"):
        balancer.pick("\ud800" * 100)
