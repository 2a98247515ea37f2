"""OpenTelemetry: the span tree of a call that failed over, and the
metrics through a meter, with the SDK's in-memory exporters."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import langcluster as lc


@pytest.fixture
def providers() -> Any:
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return exporter, tracing, reader, MeterProvider(metric_readers=[reader])


def cluster() -> lc.Cluster:
    return lc.Cluster(
        service="chat",
        nodes=[lc.Node("bad", "10.0.0.1", 8001), lc.Node("good", "10.0.0.2", 8002)],
        balancer="round_robin",
        failover=lc.FailoverConfig(max_attempts=2, backoff=lc.Backoff(base_s=0.0001, max_s=0.0002)),
    )


@pytest.mark.asyncio
async def test_a_call_that_failed_over_is_one_span_with_an_attempt_per_node(providers: Any) -> None:
    exporter, tracing, _, meters = providers
    inner = tracing.get_tracer("app")

    async def answer(node: Any) -> str:
        with inner.start_as_current_span("app.request"):  # nests under the attempt
            if node.id == "bad":
                raise ConnectionError("refused")
            return "ok"

    async with cluster() as c:
        lc.metrics.instrument(c, tracing, meters)
        assert await c.call(answer) == "ok"  # round robin starts on "bad", fails over to "good"

    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.name == "langcluster.call"]
    assert len(calls) == 1

    def children(parent: Any) -> list[Any]:
        mine = parent.context.span_id
        return [s for s in spans if s.parent is not None and s.parent.span_id == mine]

    (failed_over,) = calls
    attempts = sorted(children(failed_over), key=lambda s: s.start_time)
    assert [s.name for s in attempts] == ["langcluster.attempt", "langcluster.attempt"]
    first, second = attempts
    assert first.attributes["langcluster.node.id"] == "bad"
    assert first.attributes["server.address"] == "10.0.0.1"
    assert first.attributes["server.port"] == 8001
    assert first.attributes["langcluster.attempt.reason"] == "first"
    assert first.attributes["langcluster.outcome"] == "failure"
    assert first.attributes["error.type"] == "ConnectionError"
    assert first.status.status_code is StatusCode.ERROR
    assert second.attributes["langcluster.node.id"] == "good"
    assert second.attributes["langcluster.attempt.reason"] == "retry"
    assert second.attributes["langcluster.retry.cause"] == "ConnectionError"
    assert second.attributes["langcluster.outcome"] == "success"
    assert "error.type" not in second.attributes
    assert failed_over.attributes["langcluster.service"] == "chat"
    assert failed_over.attributes["langcluster.outcome"] == "success"
    assert failed_over.status.status_code is StatusCode.UNSET
    for attempt in attempts:  # the application's own span is the attempt's child
        (child,) = children(attempt)
        assert child.name == "app.request"
    assert trace.get_current_span() is trace.INVALID_SPAN  # every context was restored


def test_a_failed_sync_call_is_an_error_span_and_the_meter_has_the_figures(providers: Any) -> None:
    exporter, tracing, reader, meters = providers

    def refuse(node: Any) -> str:
        raise ConnectionError(node.id)

    with cluster() as c:
        done = lc.metrics.instrument(c, tracing, meters)
        with pytest.raises(ConnectionError):
            c.call_sync(refuse)
        assert c.call_sync(lambda node: node.id) in ("bad", "good")
        stats = c.stats()
        data = reader.get_metrics_data()
        done.uninstrument()
        c.call_sync(lambda node: node.id)  # not traced any more

    calls = [s for s in exporter.get_finished_spans() if s.name == "langcluster.call"]
    assert [s.attributes["langcluster.outcome"] for s in calls] == ["error", "success"]
    assert calls[0].status.status_code is StatusCode.ERROR
    assert calls[0].attributes["error.type"] == "ConnectionError"

    metrics = {
        m.name: m.data.data_points
        for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }  # fmt: skip
    durations = {
        p.attributes["langcluster.outcome"]: p.count for p in metrics["langcluster.call.duration"]
    }
    assert durations == {"error": 1, "success": 1}
    counted = {p.attributes["langcluster.outcome"]: p.value for p in metrics["langcluster.calls"]}
    assert counted == durations
    attempts = {
        p.attributes["langcluster.attempt.reason"]: p.value for p in metrics["langcluster.attempts"]
    }
    assert sum(attempts.values()) == stats["failover"]["attempts"] == 3
    requests = {
        (p.attributes["langcluster.node.id"], p.attributes["langcluster.outcome"]): p.value
        for p in metrics["langcluster.node.requests"]
    }
    for node_id, node in stats["nodes"].items():
        assert requests[(node_id, "failure")] == node["failures"]
        assert requests[(node_id, "success")] == node["successes"]


def test_instrument_refuses_what_is_not_a_cluster() -> None:
    with pytest.raises(TypeError, match=r"^cluster: must be a Cluster"):
        lc.metrics.instrument(lc.MemoryCache(1))
