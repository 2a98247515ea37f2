"""``PrometheusCollector``: the catalog's metrics for prometheus-client
(``pip install langcluster[prometheus]``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from langcluster.metrics.catalog import METRICS, Metric, read
from langcluster.metrics.recorder import CallRecorder, cumulative

__all__ = ["PrometheusCollector", "default_name"]


def _client() -> Any:
    try:
        from prometheus_client import core
    except ImportError as error:  # pragma: no cover - the extra is installed in tests
        raise ImportError(
            "PrometheusCollector needs prometheus-client: pip install 'langcluster[prometheus]'"
        ) from error
    return core


def default_name(target: Any) -> str:
    """The label a component is known by when no ``name`` is given: a
    cluster's service, a Redis or layered cache's namespace, a breaker's
    name, else ``"default"``."""
    for attribute in ("service", "namespace", "name"):
        found = getattr(target, attribute, None)
        if isinstance(found, str):
            return found
    l2 = getattr(target, "l2", None)
    return str(l2.namespace) if l2 is not None else "default"


class PrometheusCollector:
    """Reads a ``Cluster`` (or one component alone: a ``FailoverManager``,
    a balancer, a ``CircuitBreaker``, a cache) at each scrape, and for a
    cluster also records each call's outcome and duration as it happens::

        registry.register(lc.metrics.PrometheusCollector(cluster))

    ``name`` is the ``service`` label of a cluster, failover manager,
    balancer or breaker, and the ``cache`` label of a cache (by default
    the service, the namespace or the breaker's name). ``close()`` stops
    the recording (unregister the collector too)."""

    def __init__(self, target: Any, *, name: str | None = None) -> None:
        from langcluster.cluster import Cluster

        self._core = _client()
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name: must be a str or None, got {type(name).__name__}")
        self.name = default_name(target) if name is None else name
        read(target, self.name)  # refuses a target it cannot read, now
        self.target = target
        self._recorder: CallRecorder | None = None
        self._stop: Callable[[], None] | None = None
        if isinstance(target, Cluster):
            self._recorder = CallRecorder()
            self._stop = target.observe(self._recorder)

    def close(self) -> None:
        """Stops recording calls (the readings of ``stats()`` go on)."""
        if self._stop is not None:
            self._stop()
            self._stop = None

    def _family(self, metric: Metric) -> Any:
        core = self._core
        kind = {"counter": core.CounterMetricFamily, "gauge": core.GaugeMetricFamily}
        return kind[metric.kind](metric.name, metric.help, labels=list(metric.labels))

    def collect(self) -> Iterator[Any]:
        families: dict[str, Any] = {}
        for reading in read(self.target, self.name):
            family = families.get(reading.metric.name)
            if family is None:
                family = families[reading.metric.name] = self._family(reading.metric)
            family.add_metric(list(reading.labels), reading.value)
        yield from families.values()
        if self._recorder is not None:
            yield from self._calls()

    def _calls(self) -> Iterator[Any]:
        assert self._recorder is not None
        calls = METRICS["langcluster_calls"]
        duration = METRICS["langcluster_call_duration_seconds"]
        counter = self._family(calls)
        histogram = self._core.HistogramMetricFamily(
            duration.name, duration.help, labels=list(duration.labels)
        )
        for outcome, (counts, total) in self._recorder.snapshot().items():
            buckets = cumulative(counts)
            counter.add_metric([self.name, outcome], buckets[-1][1])
            histogram.add_metric(
                [self.name, outcome], [(_bound(bound), count) for bound, count in buckets], total
            )
        yield counter
        yield histogram


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
