"""The rules of docs/vocabulary.md, checked over every public signature."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import typing
from collections.abc import Callable, Iterator
from typing import Any

import langcluster as lc
import langcluster.types
from langcluster.integrations import langchain
from langcluster.testing import SimulatedServer

# Cache-entry lifetimes keep the cache libraries' spelling.
ENTRY_LIFETIMES = {"ttl", "l1_ttl", "negative_ttl", "tti"}
TIME_WORDS = ("timeout", "interval", "delay", "wait", "after", "decay", "poll", "latency",
              "duration", "ttl", "period")  # fmt: skip
# Names whose type varies with what they hold by nature: a user's function,
# an event and its kind, a node of the caller's own type, a default value,
# an httpx transport of the client's kind (blocking or not).
GENERIC = {"fn", "callback", "factory", "kind", "node", "default", "value", "cache",
           "key_fn", "error", "args", "kwargs", "return_val", "settings", "overrides",
           "transport"}  # fmt: skip
# Names kept as a peer spells them where they mean something else: RedisCache's
# ``cluster`` flag is redis-py's (the server is a Redis Cluster); everywhere
# else ``cluster`` is a langcluster Cluster.
PEER_SPELLINGS = {("RedisCache", "cluster")}


def public_callables() -> Iterator[tuple[str, Callable[..., Any]]]:
    for module, names in ((lc, lc.__all__), (langchain, ["LangClusterCache"])):
        for name in names:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                yield name, obj
                for attr, value in vars(obj).items():
                    if not attr.startswith("_") and callable(value):
                        yield f"{name}.{attr}", value
            elif callable(obj):
                yield name, obj
    yield "SimulatedServer", SimulatedServer


def parameters() -> Iterator[tuple[str, inspect.Parameter]]:
    for where, obj in public_callables():
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        for param in signature.parameters.values():
            if param.name not in ("self", "cls"):
                yield where, param


def test_durations_end_in_s_except_cache_entry_lifetimes() -> None:
    wrong = sorted(
        {
            f"{where}({p.name})"
            for where, p in parameters()
            if any(word in p.name for word in TIME_WORDS)
            and not p.name.endswith("_s")
            and p.name not in ENTRY_LIFETIMES
            and not p.name.endswith("_jitter")  # a fraction, not a duration
        }
    )
    assert wrong == []


def _normalised(annotation: object) -> str:
    text = str(annotation)
    return re.sub(r"\s*\|\s*None\b|\bNone\s*\|\s*", "", text)


def test_one_type_per_parameter_name() -> None:
    types: dict[str, dict[str, set[str]]] = {}
    for where, p in parameters():
        if p.name in GENERIC or p.annotation is inspect.Parameter.empty:
            continue  # the Rust classes' types are in _core.pyi, checked by stubtest
        if (where, p.name) in PEER_SPELLINGS:
            continue
        types.setdefault(p.name, {}).setdefault(_normalised(p.annotation), set()).add(where)
    # A name may take an accepted other form next to its own type, as long
    # as one spelling of the type covers every use.
    clashes = {
        name: seen
        for name, seen in types.items()
        if len(seen) > 1 and not any(all(t2 in t1 for t2 in seen) for t1 in seen)
    }
    assert clashes == {}


def test_option_strings_are_lower_case_with_underscores() -> None:
    for name in langcluster.types.__all__:
        alias = getattr(langcluster.types, name)
        if typing.get_origin(alias) is typing.Literal:
            for value in typing.get_args(alias):
                assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", value), (name, value)


def test_event_kinds_are_str_enums_and_every_timestamp_is_at() -> None:
    for kind in (lc.NodeEventKind, lc.FailoverEventKind, lc.ClusterEventSource):
        assert issubclass(kind, str)
        assert issubclass(kind, enum.Enum)
        assert all(str(member) == member.value for member in kind)
    for record in (lc.NodeEvent, lc.FailoverEvent, lc.ClusterEvent, lc.NodeHealth):
        fields = {f.name for f in dataclasses.fields(record)}
        assert "at" in fields, record
        assert not fields & {"time", "timestamp", "checked_at"}, record


def test_config_objects_carry_their_components_defaults() -> None:
    breaker = lc.CircuitBreaker()
    config = lc.BreakerConfig()
    assert config.make("x").metrics()["state"] == breaker.state
    core_defaults = inspect.signature(lc.HealthMonitor).parameters
    health = lc.HealthConfig(lc.TcpCheck())
    for name in ("interval_s", "timeout_s", "rise", "fall", "jitter"):
        assert getattr(health, name) == core_defaults[name].default
    manager = inspect.signature(lc.FailoverManager).parameters
    failover = lc.FailoverConfig()
    for name in (
        "max_attempts",
        "retry_budget",
        "min_retries_per_s",
        "retry_window_s",
        "overprovisioning",
    ):
        assert getattr(failover, name) == manager[name].default


def test_the_breaker_defaults_in_the_stub_are_the_cores() -> None:
    import ast
    from pathlib import Path

    stub = Path(lc.__file__).parent / "_core.pyi"
    tree = ast.parse(stub.read_text())
    (new,) = [
        item
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == "CircuitBreaker"
        for item in node.body
        if isinstance(item, ast.FunctionDef) and item.name == "__new__"
    ]
    stated = {
        arg.arg: ast.literal_eval(default)
        for arg, default in zip(new.args.kwonlyargs, new.args.kw_defaults, strict=True)
        if default is not None and arg.arg not in ("record", "ignore")
    }
    actual = lc.BreakerConfig().as_dict()
    assert stated == {name: actual[name] for name in stated}
    assert actual["record"] == (Exception,)
    assert actual["ignore"] == ()
