"""OpenTelemetry: a span per ``Cluster`` call with a child span per
attempt, and the catalog's metrics through a meter
(``pip install langcluster[otel]``; the API only: the application brings
the SDK and its exporters)."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from langcluster._observe import Observer
from langcluster.metrics.catalog import CALL_BUCKETS, METRICS, Metric, Reading, read

__all__ = ["Instrumentation", "instrument"]

# OpenTelemetry attribute names for the catalog's labels.
ATTRIBUTES = {
    "service": "langcluster.service",
    "node": "langcluster.node.id",
    "outcome": "langcluster.outcome",
    "reason": "langcluster.attempt.reason",
    "state": "langcluster.breaker.state",
    "cache": "langcluster.cache.name",
    "tier": "langcluster.cache.tier",
    "result": "langcluster.cache.result",
}

# The error type of the attempt before this one, in this call's context.
_last_failure: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "langcluster_last_failure", default=None
)


def _api() -> tuple[Any, Any, Any]:
    try:
        from opentelemetry import context, metrics, trace
    except ImportError as error:  # pragma: no cover - the extra is installed in tests
        raise ImportError(
            "instrument needs opentelemetry-api: pip install 'langcluster[otel]'"
        ) from error
    return context, trace, metrics


def _error_type(error: BaseException) -> str:
    kind = type(error)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


class _Tracing(Observer):
    """Spans for calls and attempts; the call's duration to a histogram."""

    attempts = True

    def __init__(self, tracer: Any, histogram: Any, counter: Any) -> None:
        self._context, self._trace, _ = _api()
        self._tracer = tracer
        self._histogram = histogram
        self._counter = counter
        self._status = self._trace.Status
        self._error = self._trace.StatusCode.ERROR

    def _open(self, name: str, attributes: dict[str, Any]) -> tuple[Any, Any]:
        span = self._tracer.start_span(
            name, kind=self._trace.SpanKind.INTERNAL, attributes=attributes
        )
        return span, self._context.attach(self._trace.set_span_in_context(span))

    def _close(self, span: Any, token: Any, outcome: str, error: BaseException | None) -> None:
        span.set_attribute(ATTRIBUTES["outcome"], outcome)
        if error is not None and outcome != "cancelled":
            span.set_attribute("error.type", _error_type(error))
            span.record_exception(error)
            span.set_status(self._status(self._error, str(error)[:200]))
        span.end()
        self._context.detach(token)

    def call_began(self, service: str) -> Any:
        span, token = self._open("langcluster.call", {ATTRIBUTES["service"]: service})
        return span, token, _last_failure.set(None), time.perf_counter(), service

    def call_ended(self, token: Any, outcome: str, error: BaseException | None) -> None:
        span, attached, failure, started, service = token
        if isinstance(error, BaseException) and not isinstance(error, Exception):
            outcome = "cancelled"
        self._close(span, attached, outcome, error)
        _last_failure.reset(failure)
        attributes = {ATTRIBUTES["service"]: service, ATTRIBUTES["outcome"]: outcome}
        self._histogram.record(time.perf_counter() - started, attributes)
        self._counter.add(1, attributes)

    def attempt_began(self, node: Any, reason: str) -> Any:
        attributes = {
            ATTRIBUTES["node"]: node.id,
            "server.address": node.address,
            "server.port": node.port,
            ATTRIBUTES["reason"]: reason,
        }
        previous = _last_failure.get()
        if reason == "retry" and previous is not None:
            attributes["langcluster.retry.cause"] = previous
        return self._open("langcluster.attempt", attributes)

    def attempt_ended(self, token: Any, node: Any, error: BaseException | None) -> None:
        span, attached = token
        if error is None:
            outcome = "success"
        elif isinstance(error, Exception):
            outcome = "failure"
            _last_failure.set(_error_type(error))
        else:
            outcome = "cancelled"
        self._close(span, attached, outcome, error)


class _Readings:
    """One read of the target per collection, shared by every instrument's
    callback (they run one after the other)."""

    def __init__(self, target: Any, name: str) -> None:
        self._target, self._name = target, name
        self._lock = threading.Lock()
        self._at = -1.0
        self._by_metric: dict[str, list[Reading]] = {}

    def of(self, metric: Metric) -> list[Reading]:
        with self._lock:
            now = time.monotonic()
            if now - self._at > 0.05:
                self._by_metric = {}
                for reading in read(self._target, self._name):
                    self._by_metric.setdefault(reading.metric.name, []).append(reading)
                self._at = now
            return self._by_metric.get(metric.name, [])


class Instrumentation:
    """What ``instrument`` set up; ``uninstrument()`` stops the spans and
    the call histogram (a meter's observable instruments live as long as
    the meter provider)."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop: Callable[[], None] | None = stop

    def uninstrument(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def instrument(
    cluster: Any, tracer_provider: Any = None, meter_provider: Any = None
) -> Instrumentation:
    """Traces every ``Cluster.call``: a ``langcluster.call`` span with a
    ``langcluster.attempt`` child per attempt (node id, ``server.address``,
    ``server.port``, reason, outcome, ``error.type``), current while the
    user's function runs, so spans it makes nest under the attempt. Exports
    the catalog's metrics through the meter: the call duration as a
    histogram, the rest as observable counters and gauges read at
    collection. The providers default to the global ones."""
    from langcluster.cluster import Cluster

    if not isinstance(cluster, Cluster):
        raise TypeError(f"cluster: must be a Cluster, got {type(cluster).__name__}")
    _, trace, metrics = _api()
    tracer = trace.get_tracer("langcluster", tracer_provider=tracer_provider)
    meter = metrics.get_meter("langcluster", meter_provider=meter_provider)
    duration = METRICS["langcluster_call_duration_seconds"]
    histogram = meter.create_histogram(
        duration.otel, unit=duration.unit, description=duration.help,
        explicit_bucket_boundaries_advisory=list(CALL_BUCKETS),
    )  # fmt: skip
    calls = METRICS["langcluster_calls"]
    counter = meter.create_counter(calls.otel, unit=calls.unit, description=calls.help)
    readings = _Readings(cluster, cluster.service)
    for metric in METRICS.values():
        if metric in (calls, duration):
            continue  # recorded by the tracing observer as calls end
        make = (
            meter.create_observable_counter
            if metric.kind == "counter"
            else (meter.create_observable_gauge)
        )
        make(metric.otel, callbacks=[_callback(readings, metric, metrics.Observation)],
             unit=metric.unit, description=metric.help)  # fmt: skip
    return Instrumentation(cluster.observe(_Tracing(tracer, histogram, counter)))


def _callback(
    readings: _Readings, metric: Metric, observation: Any
) -> Callable[[Any], Iterable[Any]]:
    def observe(options: Any) -> Iterable[Any]:
        return [
            observation(
                r.value, {ATTRIBUTES[k]: v for k, v in zip(metric.labels, r.labels, strict=True)}
            )
            for r in readings.of(metric)
        ]

    return observe
