"""Every metric langcluster exports, and how each is read from the
components' ``stats()`` at collection time. The Prometheus collector and the
OpenTelemetry instruments both read this one catalog, so the two expose the
same figures under each system's naming rules."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, get_args

from langcluster._core import Balancer, CircuitBreaker, MemoryCache, PrefixAware
from langcluster.cache import LayeredCache, RedisCache
from langcluster.failover import FailoverManager
from langcluster.types import BreakerState

__all__ = ["CALL_BUCKETS", "METRICS", "Metric", "Reading", "read"]

BREAKER_STATES: tuple[str, ...] = get_args(BreakerState)

# Seconds; an LLM call takes from a few milliseconds (a cache, an embedding)
# to minutes (a long generation).
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric: ``name`` is the Prometheus name without the ``_total``
    of a counter; ``otel`` the OpenTelemetry instrument's name."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    labels: tuple[str, ...]
    help: str
    otel: str
    unit: str = ""


def _m(name: str, kind: str, labels: str, help: str, otel: str, unit: str = "") -> Metric:
    return Metric(f"langcluster_{name}", kind, tuple(labels.split()), help, otel, unit)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        _m("calls", "counter", "service outcome",
           "Cluster calls by outcome: success, error, or cache_hit (answered without a call).",
           "langcluster.calls", "{call}"),
        _m("call_duration_seconds", "histogram", "service outcome",
           "Duration of Cluster calls, cache and every attempt included.",
           "langcluster.call.duration", "s"),
        _m("attempts", "counter", "service reason",
           "Attempts on nodes, by why they were made: first, retry (after a failure) or hedge.",
           "langcluster.attempts", "{attempt}"),
        _m("attempts_refused", "counter", "service reason",
           "Attempts not made: budget (the retry budget was spent) or no_node (none left).",
           "langcluster.attempts.refused", "{attempt}"),
        _m("breaker_openings", "counter", "service",
           "Times a node's circuit breaker opened.", "langcluster.breaker.openings", "{opening}"),
        _m("node_pauses", "counter", "service",
           "Times a node asked for a pause (a 429 or 503 with Retry-After) and was held out.",
           "langcluster.node.pauses", "{pause}"),
        _m("late_failures", "counter", "service",
           "Answers already handed to the caller that failed later (a stream cut midway).",
           "langcluster.late_failures", "{failure}"),
        _m("breaker_state", "gauge", "service node state",
           "Circuit breaker state of each node, one-hot (1 for the current state).",
           "langcluster.breaker.state"),
        _m("breaker_failure_rate", "gauge", "service node",
           "Failure rate in the breaker's window, once it holds minimum_calls.",
           "langcluster.breaker.failure_rate", "1"),
        _m("node_requests", "counter", "service node outcome",
           "Requests each node finished, by outcome: success or failure.",
           "langcluster.node.requests", "{request}"),
        _m("node_in_flight", "gauge", "service node",
           "Requests in flight on each node.", "langcluster.node.in_flight", "{request}"),
        _m("node_latency_ewma_seconds", "gauge", "service node",
           "Each node's latency, a moving average of recent requests.",
           "langcluster.node.latency", "s"),
        _m("node_available", "gauge", "service node",
           "1 when the balancer may pick the node (in rotation), else 0.",
           "langcluster.node.available"),
        _m("prefix_record_blocks", "gauge", "service node",
           "Prompt blocks a PrefixAware balancer records as held by each node.",
           "langcluster.prefix.record.blocks", "{block}"),
        _m("prefix_record_capacity_blocks", "gauge", "service node",
           "The most prompt blocks a PrefixAware balancer records for each node (its server's "
           "cache, given or learned).",
           "langcluster.prefix.record.capacity", "{block}"),
        _m("prefix_prefill_blocks", "gauge", "service node",
           "Prefill work a PrefixAware balancer sent each node (uncached blocks) and does not "
           "yet count as done: its estimate of the node's prefill queue.",
           "langcluster.prefix.prefill", "{block}"),
        _m("prefix_ttft_seconds", "gauge", "service node",
           "Each node's time to first token as callers reported it, a moving average.",
           "langcluster.prefix.ttft", "s"),
        _m("prefix_kv_event_blocks", "counter", "service result",
           "Blocks the servers' KV events told a PrefixAware balancer about, by result: stored, "
           "removed, ignored (not matchable by tokens), orphaned (parent unknown), unknown "
           "(removed, never known).",
           "langcluster.prefix.kv_event_blocks", "{block}"),
        _m("prefix_kv_event_batches", "counter", "service result",
           "KV event batches applied, or refused (malformed, truncated or hostile).",
           "langcluster.prefix.kv_event_batches", "{batch}"),
        _m("prefix_record_bytes", "gauge", "service",
           "Memory of a PrefixAware balancer's record.", "langcluster.prefix.record.bytes", "By"),
        _m("prefix_prompt_blocks", "counter", "service result",
           "Blocks of the prompts a PrefixAware balancer picked for, by result: matched "
           "(the chosen node held it) or unmatched.",
           "langcluster.prefix.prompt.blocks", "{block}"),
        _m("prefix_spills", "counter", "service",
           "Picks that passed over the node holding the deepest match because it was overloaded.",
           "langcluster.prefix.spills", "{pick}"),
        _m("prefix_merged_picks", "counter", "service result",
           "Picks of other routers (from SharedState) a PrefixAware balancer took into its "
           "record (merged), or skipped (their node is not in its node set).",
           "langcluster.prefix.merged_picks", "{pick}"),
        _m("prefix_journal_dropped", "counter", "service",
           "Picks left out of a full journal, so not shared with the other routers.",
           "langcluster.prefix.journal_dropped", "{pick}"),
        _m("transport_requests", "counter", "service result",
           "Requests a cluster transport let through (admitted) or refused: full (as many in "
           "flight and waiting as allowed) or timeout (no room within the pool timeout).",
           "langcluster.transport.requests", "{request}"),
        _m("transport_in_flight", "gauge", "service",
           "Requests a cluster transport has let through and not yet seen end.",
           "langcluster.transport.in_flight", "{request}"),
        _m("transport_waiting", "gauge", "service",
           "Requests waiting for a cluster transport to let them through.",
           "langcluster.transport.waiting", "{request}"),
        _m("transport_capacity", "gauge", "service",
           "Requests a cluster transport lets be in flight at once (per node x available nodes).",
           "langcluster.transport.capacity", "{request}"),
        _m("shared_connected", "gauge", "service",
           "1 while SharedState is connected to Redis, else 0 (each process on its own).",
           "langcluster.shared.connected"),
        _m("shared_messages", "counter", "service result",
           "SharedState messages: published, applied (from another process), refused "
           "(unsigned, forged or malformed), failed (not published: Redis out of reach), "
           "dropped (a full queue) and capped (an ejection not carried out: max_ejected of "
           "the nodes were out already).",
           "langcluster.shared.messages", "{message}"),
        _m("shared_redis_errors", "counter", "service",
           "Times SharedState lost Redis or a command to it failed.",
           "langcluster.shared.redis_errors", "{error}"),
        _m("shared_health_leases", "counter", "service",
           "Times this process took the service's health-check lease.",
           "langcluster.shared.health_leases", "{lease}"),
        _m("node_up", "gauge", "service node",
           "1 when the node's health is healthy or not checked yet, 0 when unhealthy or draining.",
           "langcluster.node.up"),
        _m("cache_requests", "counter", "cache tier result",
           "Cache reads by tier (memory, redis) and result (hit, miss).",
           "langcluster.cache.requests", "{request}"),
        _m("cache_entries", "gauge", "cache tier",
           "Entries held by a memory tier.", "langcluster.cache.entries", "{entry}"),
        _m("cache_weight", "gauge", "cache tier",
           "Sum of the entries' weights in a memory tier (its entries, without a weigher).",
           "langcluster.cache.weight", "{unit}"),
        _m("cache_rejections", "counter", "cache tier",
           "Writes a memory tier refused because the entry outweighed its capacity.",
           "langcluster.cache.rejections", "{entry}"),
        _m("cache_evictions", "counter", "cache tier",
           "Entries a memory tier evicted for room.", "langcluster.cache.evictions", "{entry}"),
        _m("cache_expirations", "counter", "cache tier",
           "Entries a memory tier dropped at expiry.", "langcluster.cache.expirations", "{entry}"),
        _m("cache_errors", "counter", "cache tier",
           "Redis operations that failed (errors, timeouts, refusals by the tier's breaker).",
           "langcluster.cache.errors", "{error}"),
        _m("cache_pending_writes", "gauge", "cache",
           "Writes acknowledged in write-back mode and not yet in Redis.",
           "langcluster.cache.pending_writes", "{write}"),
    )
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Reading:
    """One sample: a metric, its label values (in ``metric.labels`` order)
    and its value."""

    metric: Metric
    labels: tuple[str, ...]
    value: float


def read(target: Any, name: str) -> list[Reading]:
    """Every reading of ``target`` now: a ``Cluster`` (labelled
    ``service=name``), a ``FailoverManager``, a balancer, a
    ``CircuitBreaker`` (``service=name``), a cache (``cache=name``) or a
    cluster transport (``service=name``)."""
    from langcluster.cluster import Cluster

    if isinstance(target, Cluster):
        return list(_cluster(target, name))
    if isinstance(target, FailoverManager):
        return list(_failover(target, name, None))
    if isinstance(target, Balancer):
        return list(_balancer(target, name))
    if isinstance(target, CircuitBreaker):
        return list(_breaker(target, name, target.name or name))
    if isinstance(target, MemoryCache | RedisCache | LayeredCache):
        return list(_cache(target, name))
    from langcluster.integrations.transport import AsyncClusterTransport, ClusterTransport

    if isinstance(target, AsyncClusterTransport | ClusterTransport):
        return list(_transport(target.stats(), name))
    raise TypeError(
        "target: must be a Cluster, FailoverManager, balancer, CircuitBreaker, cache or "
        f"cluster transport, got {type(target).__name__}"
    )


def _transport(stats: dict[str, int], service: str) -> Iterator[Reading]:
    yield _r("transport_requests", stats["admitted"], service, "admitted")
    yield _r("transport_requests", stats["refused_full"], service, "refused_full")
    yield _r("transport_requests", stats["refused_timeout"], service, "refused_timeout")
    yield _r("transport_in_flight", stats["in_flight"], service)
    yield _r("transport_waiting", stats["waiting"], service)
    yield _r("transport_capacity", stats["capacity"], service)


def _r(name: str, value: float, *labels: str) -> Reading:
    return Reading(METRICS[f"langcluster_{name}"], labels, float(value))


def _cluster(cluster: Any, service: str) -> Iterator[Reading]:
    nodes = cluster.registry.nodes()
    yield from _failover(cluster.failover, service, [n.id for n in nodes])
    yield from _balancer(cluster.balancer, service)
    for node in nodes:
        yield _r("node_up", node.status.value in ("healthy", "unknown"), service, node.id)
    if cluster.cache is not None:
        yield from _cache(cluster.cache, service)
    if cluster.shared_state is not None:
        yield from _shared(cluster.shared_state.stats(), service)


def _failover(manager: FailoverManager, service: str, nodes: list[str] | None) -> Iterator[Reading]:
    stats = manager.stats()
    retries, hedges = stats["retry_attempts"], stats["hedges"]
    yield _r("attempts", stats["attempts"] - retries - hedges, service, "first")
    yield _r("attempts", retries, service, "retry")
    yield _r("attempts", hedges, service, "hedge")
    yield _r("attempts_refused", stats["budget_exhausted"], service, "budget")
    yield _r("attempts_refused", stats["all_nodes_down"], service, "no_node")
    yield _r("breaker_openings", stats["breaker_openings"], service)
    yield _r("node_pauses", stats["busy"], service)
    yield _r("late_failures", stats["late_failures"], service)
    breakers = stats["nodes"]
    for node_id in nodes if nodes is not None else sorted(breakers):
        state = breakers.get(node_id, {}).get("breaker", "closed")
        for one in BREAKER_STATES:
            yield _r("breaker_state", one == state, service, node_id, one)


def _balancer(balancer: Balancer, service: str) -> Iterator[Reading]:
    stats = balancer.stats()
    for node_id, node in stats.items():
        yield _r("node_requests", node["successes"], service, node_id, "success")
        yield _r("node_requests", node["failures"], service, node_id, "failure")
        yield _r("node_in_flight", node["in_flight"], service, node_id)
        if node["ewma_latency_s"] is not None:
            yield _r("node_latency_ewma_seconds", node["ewma_latency_s"], service, node_id)
        yield _r("node_available", node["available"], service, node_id)
    if isinstance(balancer, PrefixAware):
        prefix = balancer.prefix_stats()
        for node_id, node in stats.items():
            yield _r("prefix_record_blocks", node["blocks"], service, node_id)
            yield _r("prefix_record_capacity_blocks", node["capacity"], service, node_id)
            yield _r("prefix_prefill_blocks", node["prefill_blocks"], service, node_id)
            if node["ttft_s"] is not None:
                yield _r("prefix_ttft_seconds", node["ttft_s"], service, node_id)
        yield _r("prefix_record_bytes", prefix["bytes"], service)
        events = prefix["events"]
        for result, key in (("stored", "stored"), ("removed", "removed"), ("ignored", "ignored"),
                            ("orphaned", "orphaned"), ("unknown", "unknown_removed")):  # fmt: skip
            yield _r("prefix_kv_event_blocks", events[key], service, result)
        yield _r("prefix_kv_event_batches", events["batches"], service, "applied")
        yield _r("prefix_kv_event_batches", events["refused"], service, "refused")
        matched = prefix["matched_blocks"]
        yield _r("prefix_prompt_blocks", matched, service, "matched")
        yield _r("prefix_prompt_blocks", prefix["prompt_blocks"] - matched, service, "unmatched")
        yield _r("prefix_spills", prefix["spills"], service)
        yield _r("prefix_merged_picks", prefix["merged"], service, "merged")
        yield _r("prefix_merged_picks", prefix["merge_skipped"], service, "skipped")
        yield _r("prefix_journal_dropped", prefix["journal_dropped"], service)


def _shared(stats: dict[str, Any], service: str) -> Iterator[Reading]:
    yield _r("shared_connected", stats["connected"], service)
    published = stats["published"] + stats["routes_published"]
    yield _r("shared_messages", published, service, "published")
    yield _r("shared_messages", stats["applied"], service, "applied")
    yield _r("shared_messages", stats["refused"], service, "refused")
    yield _r("shared_messages", stats["publish_failures"], service, "failed")
    yield _r("shared_messages", stats["dropped"], service, "dropped")
    yield _r("shared_messages", stats["ejections_capped"], service, "capped")
    yield _r("shared_redis_errors", stats["redis_errors"], service)
    yield _r("shared_health_leases", stats["health_leases"], service)


def _breaker(breaker: CircuitBreaker, service: str, node: str) -> Iterator[Reading]:
    metrics = breaker.metrics()
    for one in BREAKER_STATES:
        yield _r("breaker_state", one == metrics["state"], service, node, one)
    if metrics["failure_rate"] is not None:
        yield _r("breaker_failure_rate", metrics["failure_rate"], service, node)


def _memory(stats: dict[str, Any], cache: str) -> Iterator[Reading]:
    yield _r("cache_requests", stats["hits"], cache, "memory", "hit")
    yield _r("cache_requests", stats["misses"], cache, "memory", "miss")
    yield _r("cache_entries", stats["size"], cache, "memory")
    yield _r("cache_weight", stats["weighted_size"], cache, "memory")
    yield _r("cache_rejections", stats["rejections"], cache, "memory")
    yield _r("cache_evictions", stats["evictions"], cache, "memory")
    yield _r("cache_expirations", stats["expirations"], cache, "memory")


def _cache(cache: Any, name: str) -> Iterator[Reading]:
    if isinstance(cache, MemoryCache):
        yield from _memory(cache.stats(), name)
    elif isinstance(cache, RedisCache):
        stats = cache.stats()
        yield _r("cache_requests", stats["hits"], name, "redis", "hit")
        yield _r("cache_requests", stats["misses"], name, "redis", "miss")
        yield _r("cache_errors", stats["errors"], name, "redis")
    elif isinstance(cache, LayeredCache):
        stats = cache.stats()
        yield from _memory(cache.l1.stats(), name)
        yield _r("cache_requests", stats["l2_hits"], name, "redis", "hit")
        yield _r("cache_requests", stats["misses"], name, "redis", "miss")
        yield _r("cache_errors", stats["l2_errors"] + stats["l2_refused"], name, "redis")
        yield _r("cache_pending_writes", stats["pending_writes"], name)
