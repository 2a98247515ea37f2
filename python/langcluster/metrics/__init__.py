"""Metrics and traces: ``PrometheusCollector`` (prometheus-client) and
``instrument`` (OpenTelemetry), both built on one catalog (``METRICS``) and
on ``Observer``, the hook that sees calls and attempts as they happen."""

from langcluster._observe import Observer
from langcluster.metrics.catalog import CALL_BUCKETS, METRICS, Metric
from langcluster.metrics.otel import Instrumentation, instrument
from langcluster.metrics.prometheus import PrometheusCollector

__all__ = [
    "CALL_BUCKETS",
    "METRICS",
    "Instrumentation",
    "Metric",
    "Observer",
    "PrometheusCollector",
    "instrument",
]
