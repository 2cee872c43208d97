"""The per-call counters and histograms, kept as plain numbers and exposed at scrape time.

Every forwarded call moves about eight series (calls, tokens, cost, three latencies).
prometheus-client's ``Counter`` and ``Histogram`` take a lock on every increment and a
histogram walks its buckets in Python: on the proxy's hot path that cost more than the rest
of a call's telemetry. These series are only ever moved on the event loop's thread, so they
need no lock: an increment is an addition on a slot, an observation a binary search and two
additions. A scrape (on the same thread) turns them into the same metric families, with the
same samples, exemplars and ``_created`` series, that the library's own classes expose
(``tests/observability/test_series.py`` compares the two).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar, cast

from prometheus_client import metrics as client_metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

Labels = tuple[str, ...]
S = TypeVar("S")
# How the library writes a bucket's bound as its ``le`` label ("0.25", "1.0", "+Inf").
_le: Callable[[float], str] = cast(Callable[[float], str], floatToGoString)


def _created_series() -> bool:
    """Whether ``_created`` samples are exposed (``PROMETHEUS_DISABLE_CREATED_SERIES``, read
    by prometheus-client itself)."""
    return bool(getattr(client_metrics, "_use_created", True))


class Count:
    """One counter series."""

    __slots__ = ("created", "exemplar", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()
        self.exemplar: Exemplar | None = None

    def inc(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        self.value += amount
        if exemplar is not None:
            self.exemplar = Exemplar(exemplar, amount, time.time())


class Spread:
    """One histogram series: how many observations fell in each bucket, and their sum."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf's
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # A bucket holds what is at most its bound, as Prometheus's ``le`` says.
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class _Family(Generic[S]):
    """A family's series by label values: ``child(labels)`` is looked up once per label set by
    the caller. An unlabelled family's one series is exposed from the start, as the library's
    own would be."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], new: Callable[[], S]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.series: dict[Labels, S] = {}
        self._new = new
        if not self.labelnames:
            self.child(())

    def child(self, labels: Labels = ()) -> S:
        series = self.series.get(labels)
        if series is None:
            if len(labels) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected")
            series = self.series[labels] = self._new()
        return series


class CounterSeries(_Family[Count]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames, Count)

    def family(self, created: bool) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, series in self.series.items():
            family.add_metric(
                labels,
                series.value,
                created=series.created if created else None,
                exemplar=series.exemplar,
            )
        return family


class HistogramSeries(_Family[Spread]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
    ) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self.les = [*(_le(b) for b in self.bounds), "+Inf"]
        super().__init__(name, documentation, labelnames, lambda: Spread(self.bounds))

    def family(self, created: bool) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, series in self.series.items():
            cumulative, running = [], 0
            for le, count in zip(self.les, series.counts, strict=True):
                running += count
                cumulative.append((le, float(running)))
            family.add_metric(labels, cumulative, series.sum)
            if created:
                family.add_sample(
                    self.name + "_created",
                    dict(zip(self.labelnames, labels, strict=True)),
                    series.created,
                )
        return family


class SeriesCollector(Collector):
    """Exposes its families, in the order they were added, at every scrape."""

    def __init__(self) -> None:
        self.families: list[CounterSeries | HistogramSeries] = []

    def counter(self, name: str, documentation: str, labelnames: Sequence[str]) -> CounterSeries:
        family = CounterSeries(name, documentation, labelnames)
        self.families.append(family)
        return family

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
    ) -> HistogramSeries:
        family = HistogramSeries(name, documentation, labelnames, buckets)
        self.families.append(family)
        return family

    def collect(self) -> Iterable[Metric]:
        created = _created_series()
        for family in self.families:
            yield family.family(created)
