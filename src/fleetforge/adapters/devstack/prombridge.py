"""The metrics received over OTLP, for Prometheus to scrape: what the collector's Prometheus exporter does
for the compose stack, done by the embedded stack on :9464.

The newest point of every series is kept (delta points are added up into cumulative ones) and rendered by
prometheus_client, with the naming of OpenTelemetry's Prometheus exporter: dots and other characters become
underscores, a unit adds its suffix (`s` -> `_seconds`) unless the name ends with it, counters add
`_total`, histograms `_bucket`, `_sum` and `_count`. So the series are the ones the runtime's own scrape
endpoint exposes, plus `job` (service.name) and, when set, `instance` (service.instance.id), as the
collector adds them. Series not updated for `expiry_s` are dropped (the collector's metric_expiration).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetforge.adapters.devstack.otlp_rows import any_text

__all__ = ["PrometheusBridge", "prometheus_name", "prometheus_unit"]

_DELTA: Final = 1  # AGGREGATION_TEMPORALITY_DELTA
_NAME_BAD = re.compile(r"[^a-zA-Z0-9:]+")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9]+")
_ANNOTATION = re.compile(r"\{.*\}")
_UNITS: Final[dict[str, str]] = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
_PER: Final[dict[str, str]] = {
    "s": "second",
    "m": "minute",
    "h": "hour",
    "d": "day",
    "w": "week",
    "mo": "month",
    "y": "year",
}


def prometheus_name(name: str) -> str:
    """An OpenTelemetry metric name as a Prometheus metric name (without suffixes)."""
    if name and name[0].isdigit():
        name = "_" + name[1:]
    return _NAME_BAD.sub("_", name)


def _label(key: str) -> str:
    if key and key[0].isdigit():
        key = "_" + key[1:]
    return _LABEL_BAD.sub("_", key)


def prometheus_unit(unit: str) -> str:
    """The suffix a unit adds (`s` -> `seconds`, `{token}` -> nothing, `m/s` -> `meters_per_second`)."""
    unit = _ANNOTATION.sub("", unit)
    if unit in _UNITS:
        return _UNITS[unit]
    top, slash, bottom = unit.partition("/")
    if slash and _NAME_BAD.sub("_", bottom):
        top = _UNITS.get(top, _NAME_BAD.sub("_", top))
        per = _PER.get(bottom, _NAME_BAD.sub("_", bottom))
        return f"{top}_per_{per}" if top else f"per_{per}"
    return _NAME_BAD.sub("_", unit).strip("_")


@dataclass(slots=True)
class _Series:
    value: float = 0.0
    bounds: tuple[float, ...] = ()
    buckets: list[float] = field(default_factory=list)
    total: float = 0.0
    updated: float = 0.0


@dataclass(slots=True)
class _Family:
    kind: str  # counter | gauge | histogram
    unit: str
    description: str
    series: dict[tuple[tuple[str, str], ...], _Series] = field(default_factory=dict)


class PrometheusBridge(Collector):
    """A prometheus_client collector fed with OTLP metric requests."""

    def __init__(self, expiry_s: float = 300.0, clock: Any = time.monotonic) -> None:
        self.expiry_s = expiry_s
        self._clock = clock
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def record(self, req: ExportMetricsServiceRequest) -> None:
        """Take in every data point of `req`."""
        now = self._clock()
        with self._lock:
            for rm in req.resource_metrics:
                res = {kv.key: any_text(kv.value) for kv in rm.resource.attributes}
                job = res.get("service.name", "")
                if res.get("service.namespace"):
                    job = f"{res['service.namespace']}/{job}"
                base = [("job", job)] if job else []
                if res.get("service.instance.id"):
                    base.append(("instance", res["service.instance.id"]))
                for sm in rm.scope_metrics:
                    scope = [("otel_scope_name", sm.scope.name), ("otel_scope_version", sm.scope.version)]
                    for metric in sm.metrics:
                        self._metric(metric, [*base, *scope], now)

    def _family(self, name: str, kind: str, unit: str, description: str) -> _Family:
        key = f"{name}|{kind}"
        family = self._families.get(key)
        if family is None:
            family = self._families[key] = _Family(kind, unit, description)
        return family

    def _metric(self, metric: Any, base: list[tuple[str, str]], now: float) -> None:
        name, unit = prometheus_name(metric.name), prometheus_unit(metric.unit)
        which = metric.WhichOneof("data")
        if which == "gauge":
            family = self._family(name, "gauge", unit, metric.description)
            for p in metric.gauge.data_points:
                self._number(family, p, base, now, delta=False)
        elif which == "sum":
            s = metric.sum
            kind = "counter" if s.is_monotonic else "gauge"
            family = self._family(name, kind, unit, metric.description)
            for p in s.data_points:
                self._number(family, p, base, now, delta=s.aggregation_temporality == _DELTA)
        elif which == "histogram":
            family = self._family(name, "histogram", unit, metric.description)
            delta = metric.histogram.aggregation_temporality == _DELTA
            for p in metric.histogram.data_points:
                series = self._series(family, p, base)
                bounds, counts = tuple(p.explicit_bounds), [float(c) for c in p.bucket_counts]
                if delta and series.bounds == bounds and len(series.buckets) == len(counts):
                    series.buckets = [a + b for a, b in zip(series.buckets, counts, strict=True)]
                    series.total += p.sum
                else:
                    series.bounds, series.buckets, series.total = bounds, counts, p.sum
                series.updated = now

    def _series(self, family: _Family, point: Any, base: list[tuple[str, str]]) -> _Series:
        labels = tuple(base + sorted((_label(kv.key), any_text(kv.value)) for kv in point.attributes))
        series = family.series.get(labels)
        if series is None:
            series = family.series[labels] = _Series()
        return series

    def _number(
        self, family: _Family, point: Any, base: list[tuple[str, str]], now: float, *, delta: bool
    ) -> None:
        value = float(point.as_double) if point.WhichOneof("value") == "as_double" else float(point.as_int)
        series = self._series(family, point, base)
        series.value = series.value + value if delta else value
        series.updated = now

    def collect(self) -> Iterator[Metric]:
        """The families for one scrape (expired series dropped first)."""
        cutoff = self._clock() - self.expiry_s
        with self._lock:
            for name_kind in list(self._families):
                family = self._families[name_kind]
                family.series = {k: s for k, s in family.series.items() if s.updated >= cutoff}
                if not family.series:
                    del self._families[name_kind]
            snapshot = [
                (k.split("|")[0], f.kind, f.unit, f.description, dict(f.series))
                for k, f in self._families.items()
            ]
        for name, kind, unit, description, series in snapshot:
            yield from _render(name, kind, unit, description, series)


def _render(
    name: str, kind: str, unit: str, description: str, series: dict[tuple[tuple[str, str], ...], _Series]
) -> Iterator[Metric]:
    # One family per name: label keys are the union, a key a series lacks is "" (absent in Prometheus).
    keys: list[str] = []
    for labels in series:
        keys += [k for k, _ in labels if k not in keys]
    rows = [(tuple(dict(labels).get(k, "") for k in keys), s) for labels, s in series.items()]
    family: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
    if kind == "counter":
        family = CounterMetricFamily(name, description, labels=keys, unit=unit)
        for values, s in rows:
            family.add_metric(values, s.value)
    elif kind == "gauge":
        family = GaugeMetricFamily(name, description, labels=keys, unit=unit)
        for values, s in rows:
            family.add_metric(values, s.value)
    else:
        family = HistogramMetricFamily(name, description, labels=keys, unit=unit)
        for values, s in rows:
            cumulative, buckets = 0.0, []
            for bound, count in zip([*map(str, s.bounds), "+Inf"], s.buckets, strict=False):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(values, buckets, s.total)
    yield family
