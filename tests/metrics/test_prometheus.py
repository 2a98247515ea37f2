"""The Prometheus collector, scraped with prometheus-client's own text
parser, against the components' ``stats()``."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import langcluster as lc
from langcluster.cache import LayeredCache, RedisCache
from tests.support.helpers import redis_url, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(*collectors: Any) -> Samples:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def failing_cluster() -> lc.Cluster:
    return lc.Cluster(
        service="chat",
        nodes=[lc.Node(i, "127.0.0.1", 9000 + n) for n, i in enumerate(["a", "b", "bad"])],
        balancer="round_robin",
        breaker=lc.BreakerConfig(window_size=4, minimum_calls=2, open_timeout_s=60.0),
        failover=lc.FailoverConfig(max_attempts=2, backoff=lc.Backoff(base_s=0.0001, max_s=0.0002)),
        cache=lc.MemoryCache(100),
    )


def answer(node: Any) -> str:
    if node.id == "bad":
        raise ConnectionError(f"{node.id} refused")
    return f"from {node.id}"


def test_a_scrape_after_a_run_with_a_failing_node_agrees_with_stats() -> None:
    cluster = failing_cluster()
    collector = lc.metrics.PrometheusCollector(cluster)
    with cluster:
        for i in range(40):
            cluster.call_sync(answer, cache_key=f"prompt-{i % 10}")
        samples = scrape(collector)
        stats = cluster.stats()

    calls, failover = stats["calls"], stats["failover"]
    assert total(samples, "langcluster_calls_total", service="chat") == calls["calls"] == 40
    assert value(samples, "langcluster_calls_total", service="chat", outcome="cache_hit") == 30
    assert value(samples, "langcluster_calls_total", service="chat", outcome="error") == 0
    hist = {"service": "chat", "outcome": "success"}
    assert value(samples, "langcluster_call_duration_seconds_count", **hist) == 10
    assert value(samples, "langcluster_call_duration_seconds_bucket", le="+Inf", **hist) == 10
    assert value(samples, "langcluster_call_duration_seconds_sum", **hist) > 0

    attempts = total(samples, "langcluster_attempts_total", service="chat")
    assert attempts == failover["attempts"]
    assert value(samples, "langcluster_attempts_total", service="chat", reason="retry") >= 2
    assert value(samples, "langcluster_breaker_openings_total", service="chat") == 1
    assert failover["breaker_openings"] == 1
    for node_id, node in stats["nodes"].items():
        labels = {"service": "chat", "node": node_id}
        for state in ("closed", "open", "half_open", "forced_open", "disabled"):
            expected = 1.0 if state == node["breaker"] else 0.0
            assert value(samples, "langcluster_breaker_state", state=state, **labels) == expected
        ok = value(samples, "langcluster_node_requests_total", outcome="success", **labels)
        failed = value(samples, "langcluster_node_requests_total", outcome="failure", **labels)
        assert (ok, failed) == (node["successes"], node["failures"])
        assert value(samples, "langcluster_node_in_flight", **labels) == 0
        assert value(samples, "langcluster_node_available", **labels) == node["available"]
        assert value(samples, "langcluster_node_up", **labels) == 1  # no health checks: unknown
    assert stats["nodes"]["bad"]["breaker"] == "open"
    cache = {"cache": "chat", "tier": "memory"}
    assert value(samples, "langcluster_cache_requests_total", result="hit", **cache) == 30
    assert value(samples, "langcluster_cache_requests_total", result="miss", **cache) == 10
    assert value(samples, "langcluster_cache_entries", **cache) == stats["cache"]["size"] == 10


def test_every_metric_is_in_the_catalog_with_its_kind_and_labels() -> None:
    cluster = failing_cluster()
    collector = lc.metrics.PrometheusCollector(cluster)
    with cluster:
        cluster.call_sync(answer)
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    redis_only = {"langcluster_cache_errors", "langcluster_cache_pending_writes"}
    for name, metric in lc.metrics.METRICS.items():
        if name in redis_only or name == "langcluster_breaker_failure_rate":
            continue  # a layered cache's, a standalone breaker's: tested below
        if name.startswith(("langcluster_prefix_", "langcluster_shared_")):
            continue  # a PrefixAware balancer's, a SharedState's: tested below
        if name.startswith("langcluster_transport_"):
            continue  # a cluster transport's: tests/integrations/test_admission.py
        family = families[name]
        assert family.type == metric.kind, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(metric.labels), sample


def test_a_prefix_aware_balancer_exports_its_record_and_match() -> None:
    balancer = lc.PrefixAware([lc.Node("a", "h", 1), lc.Node("b", "h", 2)])
    prompt = "a shared system prompt. " * 10
    home = balancer.pick(prompt + "first")
    balancer.pick(prompt + "second")
    samples = scrape(lc.metrics.PrometheusCollector(balancer, name="llm"))
    stats, prefix = balancer.stats(), balancer.prefix_stats()
    assert (
        value(samples, "langcluster_prefix_record_blocks", service="llm", node=home.id)
        == (stats[home.id]["blocks"])
    )
    assert value(samples, "langcluster_prefix_record_bytes", service="llm") == prefix["bytes"]
    matched = value(
        samples, "langcluster_prefix_prompt_blocks_total", service="llm", result="matched"
    )
    unmatched = value(
        samples, "langcluster_prefix_prompt_blocks_total", service="llm", result="unmatched"
    )
    assert matched == prefix["matched_blocks"] == 3  # the second prompt's three whole blocks
    assert matched + unmatched == prefix["prompt_blocks"] == 6
    assert value(samples, "langcluster_prefix_spills_total", service="llm") == 0


def test_a_component_alone_is_collected_under_its_name() -> None:
    cache = lc.MemoryCache(10)
    cache.set("k", 1)
    cache.get("k")
    cache.get("missing")
    breaker = lc.CircuitBreaker("llm", minimum_calls=1, window_size=1)
    breaker.record_failure()
    balancer = lc.RoundRobin([lc.Node("a", "h", 1)])
    balancer.begin("a")
    samples = scrape(
        lc.metrics.PrometheusCollector(cache, name="answers"),
        lc.metrics.PrometheusCollector(breaker, name="chat"),
        lc.metrics.PrometheusCollector(balancer, name="chat"),
    )
    memory = {"cache": "answers", "tier": "memory"}
    assert value(samples, "langcluster_cache_requests_total", result="hit", **memory) == 1
    assert value(samples, "langcluster_cache_requests_total", result="miss", **memory) == 1
    state = {"service": "chat", "node": "llm"}
    assert value(samples, "langcluster_breaker_state", state="open", **state) == 1
    assert value(samples, "langcluster_breaker_failure_rate", **state) == 1.0
    assert value(samples, "langcluster_node_in_flight", service="chat", node="a") == 1
    assert lc.metrics.PrometheusCollector(breaker).name == "llm"


def test_what_cannot_be_collected_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match=r"^target: must be a Cluster"):
        lc.metrics.PrometheusCollector(object())
    with pytest.raises(TypeError, match=r"^name: must be a str"):
        lc.metrics.PrometheusCollector(lc.MemoryCache(1), name=3)  # type: ignore[arg-type]


def test_close_stops_the_recording_and_the_readings_go_on() -> None:
    cluster = failing_cluster()
    collector = lc.metrics.PrometheusCollector(cluster)
    with cluster:
        cluster.call_sync(answer, cache_key="x")
        collector.close()
        cluster.call_sync(answer, cache_key="x")
        samples = scrape(collector)
    assert total(samples, "langcluster_calls_total", service="chat") == 1
    memory = {"cache": "chat", "tier": "memory", "result": "hit"}
    assert value(samples, "langcluster_cache_requests_total", **memory) == 1


def test_an_observer_that_raises_is_logged_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(lc.metrics.Observer):
        attempts = True

        def call_began(self, service: str) -> Any:
            raise RuntimeError("exporter down")

        def attempt_ended(self, token: Any, node: Any, error: BaseException | None) -> None:
            raise RuntimeError("exporter down")

    cluster = failing_cluster()
    recording = lc.metrics.PrometheusCollector(cluster)  # with Broken: a fan-out of two
    cluster.observe(Broken())
    with cluster, caplog.at_level(logging.ERROR, logger="langcluster.metrics"):
        assert cluster.call_sync(lambda node: node.id) in ("a", "b", "bad")
        samples = scrape(recording)
    assert "exporter down" in caplog.text
    assert value(samples, "langcluster_calls_total", service="chat", outcome="success") == 1
    with pytest.raises(TypeError, match=r"^observer: "):
        cluster.observe(object())  # type: ignore[arg-type]


@pytest.mark.services
def test_a_layered_cache_reports_both_tiers_and_its_queue(redis_server: Any) -> None:
    l2 = RedisCache(redis_url(redis_server), namespace="answers")
    cache = LayeredCache(lc.MemoryCache(100), l2, mode="write_back", invalidation=False,
                         flush_interval_s=3600)  # fmt: skip
    try:
        cache.set("k", 1)
        assert cache.get("k") == 1  # an L1 hit
        assert cache.get("nothing") is None  # a miss in both tiers
        samples = scrape(lc.metrics.PrometheusCollector(cache))
        stats = cache.stats()
    finally:
        cache.close()
    tier = {"cache": "answers"}
    hits = value(samples, "langcluster_cache_requests_total", tier="memory", result="hit", **tier)
    misses = value(samples, "langcluster_cache_requests_total", tier="redis", result="miss", **tier)
    assert (hits, misses) == (1, stats["misses"])
    assert (
        value(samples, "langcluster_cache_pending_writes", **tier) == stats["pending_writes"] == 1
    )
    assert value(samples, "langcluster_cache_errors_total", tier="redis", **tier) == 0


@pytest.mark.services
def test_shared_state_and_the_shared_prefix_index_are_exported(redis_server: Any) -> None:
    nodes = [lc.Node("a", "127.0.0.1", 1), lc.Node("b", "127.0.0.1", 2)]

    def router() -> lc.Cluster:
        shared = lc.SharedState(redis_url(redis_server), namespace="metrics", signing_key=b"k")
        return lc.Cluster(service="chat", nodes=nodes, balancer="prefix_aware", shared_state=shared)

    one, two = router(), router()
    with one, two:
        assert wait_until(lambda: one.stats()["shared"]["connected"])
        assert wait_until(lambda: two.stats()["shared"]["connected"])
        for g in range(3):
            one.balancer.pick(f"group {g}. " * 40)  # type: ignore[attr-defined]
        assert wait_until(lambda: two.stats()["shared"]["routes_merged"] == 3)
        # One counts a publish once Redis has answered it, which can be after
        # two has received and merged it.
        assert wait_until(lambda: one.stats()["shared"]["routes_published"] >= 1)
        samples = scrape(lc.metrics.PrometheusCollector(two))
        sent = scrape(lc.metrics.PrometheusCollector(one))
        shared, prefix = two.stats()["shared"], two.balancer.prefix_stats()  # type: ignore[attr-defined]
    chat = {"service": "chat"}
    assert value(samples, "langcluster_shared_connected", **chat) == 1
    merged = value(samples, "langcluster_prefix_merged_picks_total", result="merged", **chat)
    assert merged == prefix["merged"] == 3
    applied = value(samples, "langcluster_shared_messages_total", result="applied", **chat)
    assert applied == shared["applied"] >= 1
    assert value(sent, "langcluster_shared_messages_total", result="published", **chat) >= 1
    assert value(samples, "langcluster_shared_messages_total", result="refused", **chat) == 0
    assert value(samples, "langcluster_shared_redis_errors_total", **chat) == 0
    assert value(samples, "langcluster_prefix_journal_dropped_total", **chat) == 0
