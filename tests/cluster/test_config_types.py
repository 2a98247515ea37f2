"""Every field of a config file, given a value of the wrong type, is refused
with an error that names the field (or is a value the field accepts)."""

from __future__ import annotations

from typing import Any

import pytest

import langcluster as lc

WRONG = [[], {}, "x", 5, 1.5, True, -1, float("inf"), "\ud800"]
NODE = {"id": "a", "address": "10.0.0.1", "port": 8000}

# (table, fields the table takes, a base it starts from)
SECTIONS: list[tuple[str, list[str], dict[str, Any]]] = [
    ("balancer", ["kind", "vnodes", "load_factor"], {"kind": "consistent_hash"}),
    ("balancer", ["decay_s"], {"kind": "adaptive"}),
    ("discovery", ["kind", "nodes", "poll_s"], {"kind": "static"}),
    ("discovery", ["endpoints", "prefix", "ttl_s", "timeout_s"], {"kind": "etcd"}),
    ("discovery", ["host", "port", "token", "scheme", "check_kind", "ttl_s",
                   "check_interval_s", "check_timeout_s", "check_path",
                   "deregister_critical_after_s", "wait_s", "min_query_interval_s"],
     {"kind": "consul"}),
    ("health", ["kind", "path", "expect_status", "method", "headers", "scheme",
                "check_timeout_s", "interval_s", "timeout_s", "rise", "fall", "jitter",
                "max_concurrency", "seed"], {"kind": "http"}),
    ("breaker", ["failure_rate_threshold", "slow_call_rate_threshold", "slow_call_duration_s",
                 "window", "window_size", "minimum_calls", "open_timeout_s",
                 "half_open_max_calls", "max_open_timeout_s", "record", "ignore"], {}),
    ("failover", ["max_attempts", "retry_on", "backoff", "retry_budget", "min_retries_per_s",
                  "retry_window_s", "hedge_after_s", "priority", "overprovisioning", "seed"], {}),
    ("cache", ["kind", "capacity", "policy", "shards", "ttl"], {"kind": "memory"}),
    ("shared_state", ["redis", "namespace", "signing_key", "timeout_s", "trial_s",
                      "consecutive_failures", "share_ejections", "share_health",
                      "share_prefixes", "prefix_flush_s", "prefix_history_s", "max_ejected"],
     {"redis": "redis://127.0.0.1:1"}),
    ("cache", ["url", "namespace", "serializer", "signing_key", "ttl", "ttl_jitter",
               "socket_timeout_s", "cluster"], {"kind": "redis"}),
    ("cache", ["mode", "l1_ttl", "invalidation", "flush_interval_s", "flush_batch",
               "max_pending", "pending_timeout_s", "on_l2_error", "lock_ttl_s"],
     {"kind": "layered", "invalidation": False, "socket_timeout_s": 0.05}),
]  # fmt: skip
CASES = [
    (section, field, base, value)
    for section, fields, base in SECTIONS
    for field in fields
    for value in WRONG
]


def refusal(config: dict[str, Any]) -> str | None:
    """The message a config is refused with, or None when it loads (or names
    a right value whose server is not there, such as a Redis cluster)."""
    try:
        cluster = lc.Cluster.from_config(config)
    except (ValueError, TypeError) as error:
        return str(error)
    except lc.LangClusterError:
        return None
    if isinstance(cluster.cache, lc.LayeredCache | lc.RedisCache):
        cluster.cache.close()
    return None


@pytest.mark.parametrize(
    ("section", "field", "base", "value"),
    CASES,
    ids=[f"{s}.{f}={v!r}" for s, f, _, v in CASES],
)
def test_a_wrong_value_is_named_by_its_field(
    section: str, field: str, base: dict[str, Any], value: Any
) -> None:
    message = refusal({"service": "svc", section: {**base, field: value}})
    if message is not None:
        # The field, or (a constraint between two fields) the other one, and this one in the text.
        assert message.startswith(f"{section}."), message
        assert field in message, message


@pytest.mark.parametrize("value", WRONG)
@pytest.mark.parametrize("field", ["service", "balancer", "discovery", "health", "breaker",
                                   "failover", "cache", "register"])  # fmt: skip
def test_a_wrong_top_level_value_is_named(field: str, value: Any) -> None:
    message = refusal({"service": "svc", field: value})
    if message is not None:
        assert message.startswith(field), message


@pytest.mark.parametrize("value", WRONG)
@pytest.mark.parametrize("field", ["id", "address", "port", "weight", "metadata", "status"])
def test_a_wrong_node_field_is_named(field: str, value: Any) -> None:
    nodes = [{**NODE, field: value}]
    message = refusal({"service": "svc", "discovery": {"kind": "static", "nodes": nodes}})
    if message is not None:
        assert message.startswith("discovery.nodes[0]"), message
        assert field in message, message


@pytest.mark.parametrize("value", WRONG)
@pytest.mark.parametrize("field", ["base_s", "max_s", "multiplier", "jitter"])
def test_a_wrong_backoff_field_is_named(field: str, value: Any) -> None:
    message = refusal({"service": "svc", "failover": {"backoff": {field: value}}})
    if message is not None:
        assert message.startswith(f"failover.backoff.{field}"), message


def test_some_wrong_values_are_refused_at_all() -> None:
    # The tests above accept a value a field takes; these must each be refused.
    for config in (
        {"service": "svc", "cache": {"kind": "memory", "capacity": "x"}},
        {"service": "svc", "breaker": {"window_size": []}},
        {"service": "svc", "health": {"path": 5}},
        {"service": "svc", "failover": {"backoff": 5}},
        {"service": "svc", "balancer": ["x"]},
        {"service": "svc", "discovery": {"kind": "static", "nodes": [NODE, NODE]}},
    ):
        assert refusal(config) is not None, config
