"""The API fuzz targets: every public constructor and method of the
in-process components, called with extreme and odd values. Each target runs
in a child process (see test_api_fuzz.py), so a crash of the interpreter
fails its test instead of ending the run.

What a target checks, whatever it is given:
- nothing crashes the process (no panic, no abort, no stack overflow);
- a refusal is a ``ValueError`` or ``TypeError`` whose message starts with
  the name (or the path) of an argument of the call, a ``KeyError`` where a
  mapping would raise one, a ``LangClusterError``, or a ``MemoryError`` /
  ``RecursionError`` for what no memory or stack could hold.

    python -m tests.fuzz.targets TARGET EXAMPLES [SEED]

Without SEED the examples are derandomized (the same on every run, as CI
needs); with one, a fresh search.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import langcluster as lc
from tests.fuzz.inputs import (
    EXTREME,
    GOOD_NODES,
    KEYS,
    NODES,
    NUMBERS,
    SCALARS,
    TEXT,
    call,
    enter,
    fields,
    keywords,
)
from tests.fuzz.wire import journals, kv_batches, prompts, transport

# ----------------------------------------------------------------- targets

BALANCERS = [
    lc.RoundRobin,
    lc.WeightedRoundRobin,
    lc.LeastConnections,
    lc.Random,
    lc.PowerOfTwoChoices,
    lc.Adaptive,
    lc.ConsistentHash,
    lc.PrefixAware,
]
PREFIX_OPTIONS = keywords(lc.PrefixAware, skip={"nodes", "decay_s"})


@given(
    cls=st.sampled_from(BALANCERS),
    nodes=st.one_of(NODES, EXTREME),
    options=st.dictionaries(
        st.sampled_from(["vnodes", "load_factor", "decay_s", *PREFIX_OPTIONS]), EXTREME, max_size=2
    ),
    key=st.one_of(KEYS, st.lists(st.one_of(NUMBERS, EXTREME), max_size=40)),
    node_id=st.one_of(st.sampled_from(["a", "b", "zz"]), EXTREME),
    latency=st.one_of(NUMBERS, EXTREME),
    ok=st.one_of(st.booleans(), EXTREME),
    update=st.one_of(NODES, EXTREME),
)
def balancers(
    cls: Any,
    nodes: Any,
    options: dict[str, Any],
    key: Any,
    node_id: Any,
    latency: Any,
    ok: Any,
    update: Any,
) -> None:
    wanted = {
        lc.Adaptive: {"decay_s"},
        lc.ConsistentHash: {"vnodes", "load_factor"},
        lc.PrefixAware: {"decay_s", *PREFIX_OPTIONS},
    }.get(cls, set())
    options = {k: v for k, v in options.items() if k in wanted}
    balancer = call(cls, ["nodes", *options], nodes, **options)
    if balancer is None:
        balancer = cls(GOOD_NODES)
    named = ["prompt"] if cls is lc.PrefixAware else ["key"]
    call(balancer.pick, named, key)
    lease = call(balancer.acquire, named, key)
    if lease is not None:
        call(enter, named, lease)
    call(balancer.begin, ["node_id"], node_id)
    call(balancer.end, ["node_id", "latency_s", "ok"], node_id, latency, ok)
    call(balancer.release, ["node_id"], node_id)
    call(balancer.set_available, ["node_id", "available"], node_id, ok)
    call(balancer.update, ["nodes"], update)
    balancer.stats()
    assert len(balancer) >= 0


@given(
    capacity=st.one_of(st.just(100), NUMBERS, EXTREME),
    options=st.dictionaries(
        st.sampled_from(["policy", "ttl", "shards", "on_evict", "clock"]), EXTREME, max_size=2
    ),
    key=KEYS,
    value=EXTREME,
    ttl=st.one_of(st.none(), NUMBERS, EXTREME),
    many=st.one_of(st.lists(KEYS, max_size=4), EXTREME),
    mapping=st.one_of(st.dictionaries(TEXT, SCALARS, max_size=3), EXTREME),
)
def memory_cache(
    capacity: Any, options: dict[str, Any], key: Any, value: Any, ttl: Any, many: Any, mapping: Any
) -> None:
    if isinstance(capacity, int) and not isinstance(capacity, bool) and capacity > 10**6:
        capacity = 10**6  # a real allocation; the huge ones are tested under a limit
    cache = call(lc.MemoryCache, ["capacity", *options], capacity, **options)
    if cache is None:
        cache = lc.MemoryCache(100)
    call(cache.set, ["key", "value", "ttl"], key, value, ttl)
    call(cache.get, ["key", "default"], key)
    call(cache.__contains__, ["key"], key)
    call(cache.pop, ["key", "default"], key, None)
    call(cache.delete, ["key"], key)
    call(cache.get_many, ["keys", "key"], many)
    call(cache.set_many, ["mapping", "ttl", "key"], mapping, ttl)
    call(cache.delete_many, ["keys", "key"], many)
    cache.keys()
    cache.stats()
    cache.purge_expired()


@given(
    args=st.lists(EXTREME, max_size=3),
    kwargs=st.dictionaries(st.sampled_from(["a", "b"]), EXTREME, max_size=2),
    ttl=st.one_of(st.none(), NUMBERS, EXTREME),
)
def cached(args: list[Any], kwargs: dict[str, Any], ttl: Any) -> None:
    decorate = call(lc.cached, ["cache", "ttl", "key_fn"], lc.MemoryCache(10), ttl=ttl)
    if decorate is None:
        return

    def f(*a: Any, **k: Any) -> int:
        return 1

    wrapped = call(decorate, ["ttl", "cached"], f)
    if wrapped is None:
        return
    call(wrapped, ["cached", "key_fn"], *args, **kwargs)
    call(wrapped.invalidate, ["cached", "key_fn"], *args, **kwargs)


BREAKER_FIELDS = fields(lc.BreakerConfig())


@given(
    settings_=st.dictionaries(st.sampled_from(BREAKER_FIELDS), EXTREME, max_size=3),
    latency=st.one_of(st.none(), NUMBERS, EXTREME),
    error=st.one_of(st.none(), st.builds(ValueError), EXTREME),
)
def breaker(settings_: dict[str, Any], latency: Any, error: Any) -> None:
    if "clock" in settings_ and not callable(settings_["clock"]):
        pass
    # A check between two settings may name either, given or default.
    made = call(lc.CircuitBreaker, ["name", *BREAKER_FIELDS], "b", **settings_)
    call(lc.BreakerConfig, BREAKER_FIELDS, **settings_)
    breaker = made if made is not None else lc.CircuitBreaker("b")
    call(breaker.record_success, ["latency_s"], latency)
    call(breaker.record_failure, ["latency_s"], latency)
    if breaker.allow():
        breaker.release()
    try:
        breaker.admit()
    except lc.CircuitOpenError:
        pass
    else:
        call(breaker.report, ["error", "latency_s"], error, latency)
    breaker.metrics()
    breaker.half_open()


@given(
    id=st.one_of(TEXT, EXTREME),
    address=st.one_of(TEXT, EXTREME),
    port=st.one_of(st.none(), NUMBERS, EXTREME),
    weight=st.one_of(NUMBERS, EXTREME),
    metadata=st.one_of(st.none(), EXTREME),
    status=st.one_of(st.sampled_from(["healthy", "unknown"]), EXTREME),
)
def node(id: Any, address: Any, port: Any, weight: Any, metadata: Any, status: Any) -> None:
    made = call(
        lc.Node,
        ["id", "address", "port", "weight", "metadata", "status"],
        id,
        address,
        port,
        weight,
        metadata,
        status=status,
    )
    registry = lc.NodeRegistry()
    balancer = lc.RoundRobin()
    registry.bind(balancer)
    if made is not None:
        registry.register(made)
        call(
            registry.update,
            ["node_id", "weight", "metadata", "status"],
            made.id,
            weight=weight,
            metadata=metadata,
            status=status,
        )
    registry.register(lc.Node("known", "h"))
    assert "known" in balancer  # nothing before it wedged the bound balancer


FAILOVER_FIELDS = fields(lc.FailoverConfig())
HEALTH_FIELDS = [f for f in fields(lc.HealthConfig(lc.TcpCheck())) if f != "check"]
BACKOFF_FIELDS = keywords(lc.Backoff)


@given(
    failover=st.dictionaries(st.sampled_from(FAILOVER_FIELDS), EXTREME, max_size=3),
    health=st.dictionaries(st.sampled_from(HEALTH_FIELDS), EXTREME, max_size=3),
    backoff=st.dictionaries(st.sampled_from(BACKOFF_FIELDS), EXTREME, max_size=3),
    retry=st.one_of(NUMBERS, EXTREME),
)
def configs(
    failover: dict[str, Any], health: dict[str, Any], backoff: dict[str, Any], retry: Any
) -> None:
    call(lc.FailoverConfig, FAILOVER_FIELDS, **failover)
    call(lc.FailoverManager, ["balancer", *FAILOVER_FIELDS], lc.RoundRobin(GOOD_NODES), **failover)
    # A check between two settings may name either, given or default.
    call(lc.HealthConfig, ["check", *HEALTH_FIELDS], lc.TcpCheck(), **health)
    call(
        lc.HealthMonitor,
        ["registry", "check", *HEALTH_FIELDS],
        lc.NodeRegistry(),
        lc.TcpCheck(),
        **health,
    )
    made = call(lc.Backoff, BACKOFF_FIELDS, **backoff)
    if made is not None and isinstance(retry, int) and not isinstance(retry, bool):
        import random

        made.delay(max(retry, 0) % 100_000, random.Random(0))


CHECK_FIELDS = keywords(lc.HttpCheck)
DISCOVERY_FIELDS = keywords(lc.StaticDiscovery, skip={"nodes"})
ETCD_FIELDS = keywords(lc.EtcdDiscovery, skip={"service"})


@given(
    http=st.dictionaries(st.sampled_from(CHECK_FIELDS), EXTREME, max_size=3),
    timeout=st.one_of(NUMBERS, EXTREME),
    static=st.dictionaries(st.sampled_from(DISCOVERY_FIELDS), EXTREME, max_size=2),
    service=st.one_of(TEXT, EXTREME),
    etcd=st.dictionaries(st.sampled_from(ETCD_FIELDS), EXTREME, max_size=2),
)
def checks_and_discovery(
    http: dict[str, Any], timeout: Any, static: dict[str, Any], service: Any, etcd: dict[str, Any]
) -> None:
    call(lc.HttpCheck, list(http), **http)
    call(lc.TcpCheck, ["timeout_s"], timeout)
    static = {k: v for k, v in static.items() if k != "file" or not isinstance(v, str | bytes)}
    call(lc.StaticDiscovery, ["nodes", *static], (), **static)
    made = call(lc.EtcdDiscovery, ["service", *etcd], service, **etcd)
    if made is not None:
        asyncio.run(made.close())
    call(lc.ConsulDiscovery, ["service"], service)


SECTIONS = [
    "service",
    "balancer",
    "discovery",
    "health",
    "breaker",
    "failover",
    "cache",
    "register",
]
SETTINGS = [
    "kind",
    "nodes",
    "capacity",
    "ttl",
    "window_size",
    "interval_s",
    "vnodes",
    "max_attempts",
]


@given(
    config=st.dictionaries(
        st.sampled_from(SECTIONS),
        st.one_of(EXTREME, st.dictionaries(st.sampled_from(SETTINGS), EXTREME, max_size=3)),
        max_size=4,
    )
)
def config_files(config: dict[str, Any]) -> None:
    names = ["config", *SECTIONS]
    config.setdefault("service", "svc")
    config.pop("cache", None)  # a cache config may connect to Redis; covered by its own tests
    call(lc.Cluster.from_config, names, config)


KEY = b"k" * 32
PAYLOADS = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda tag, body: tag + body,
        st.sampled_from([b"P", b"J", b"M", b"S", b"C"]),
        st.binary(max_size=64),
    ),
    st.sampled_from(
        [
            b"J" + b"[" * 100_000,
            b"M" + b"\x91" * 100_000,
            b"M\xdd\xff\xff\xff\xff",
            b"M\xdb\xff\xff\xff\xff",
            b"J" + b'"' + b"\\u" * 1000,
            b"P\x80\x05cos\nsystem\n.",
        ]
    ),
)


@given(kind=st.sampled_from(["pickle", "json", "msgpack"]), payload=PAYLOADS, value=SCALARS)
def codec(kind: str, payload: bytes, value: Any) -> None:
    """Bytes read from Redis are data: a payload a cache did not write is
    refused (never unpickled unsigned, never run), whatever it holds."""
    from langcluster.cache.codec import Codec

    if kind != "pickle":
        ok, _ = Codec(kind, None).loads(payload)
    signed = Codec(kind, KEY)
    ok, why = signed.loads(payload)
    assert not ok, f"an unsigned payload was accepted: {payload[:20]!r}"
    assert isinstance(why, str)
    try:
        written = signed.dumps(value)
    except (TypeError, ValueError, OverflowError):
        return  # a value the format cannot hold (bytes in JSON, a huge int)
    ok, back = signed.loads(written)
    assert ok, back
    if not (isinstance(value, float) and math.isnan(value)):
        assert back == value or kind == "json"  # JSON turns bytes/tuples into other types


# The clients and cluster=True would connect at once: covered by the Redis tests.
REDIS_FIELDS = keywords(lc.RedisCache, skip={"url", "client", "async_client", "cluster"})


@given(
    url=st.one_of(st.just("redis://127.0.0.1:1/0"), TEXT, EXTREME),
    options=st.dictionaries(st.sampled_from(REDIS_FIELDS), st.one_of(TEXT, EXTREME), max_size=3),
    key=KEYS,
)
def redis_settings(url: Any, options: dict[str, Any], key: Any) -> None:
    """RedisCache's arguments and keys are checked before any connection."""
    made = call(lc.RedisCache, ["url", *REDIS_FIELDS], url, **options)
    if made is not None:
        call(made.keyspace.name, ["key"], key)


@given(
    bounds=st.one_of(st.lists(NUMBERS, max_size=6), EXTREME),
    values=st.lists(st.one_of(NUMBERS, EXTREME), max_size=4),
    target=st.one_of(st.sampled_from(["cache", "breaker", "balancer"]), EXTREME),
    name=st.one_of(st.none(), TEXT, EXTREME),
)
def metrics(bounds: Any, values: list[Any], target: Any, name: Any) -> None:
    """The histogram and the collector take anything: a refusal names its argument."""
    from langcluster._core import CallTimer, Histogram

    histogram = call(Histogram, ["bounds"], bounds) or Histogram([1.0])
    for value in values:
        call(histogram.observe, ["value"], value)
    histogram.snapshot()
    timer = call(CallTimer, ["bounds", "outcomes"], bounds, values) or CallTimer([1.0], ["ok"])
    for value in values:
        call(timer.ended, ["token", "outcome"], value, value)
        call(timer.ended, ["token", "outcome"], timer.began(value), value)
    timer.snapshot()
    components = {
        "cache": lc.MemoryCache(4),
        "breaker": lc.CircuitBreaker("b"),
        "balancer": lc.RoundRobin(GOOD_NODES),
    }
    chosen = components.get(target, target) if isinstance(target, str) else target
    collector = call(lc.metrics.PrometheusCollector, ["target", "name"], chosen, name=name)
    if collector is not None:
        list(collector.collect())


TARGETS: dict[str, Callable[[], None]] = {
    "codec": codec,
    "redis_settings": redis_settings,
    "balancers": balancers,
    "memory_cache": memory_cache,
    "cached": cached,
    "breaker": breaker,
    "node": node,
    "configs": configs,
    "checks_and_discovery": checks_and_discovery,
    "config_files": config_files,
    "metrics": metrics,
    "transport": transport,
    "prompts": prompts,
    "journals": journals,
    "kv_batches": kv_batches,
}


def main(argv: list[str]) -> int:
    name, examples = argv[0], int(argv[1])
    target = TARGETS[name]
    search = settings(
        deadline=None,
        max_examples=examples,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=len(argv) < 3,
    )
    if len(argv) >= 3:
        target = seed(int(argv[2]))(target)
    search(target)()
    print(f"{name}: {examples} examples, no crash")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
