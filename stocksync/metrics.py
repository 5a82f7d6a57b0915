"""Prometheus metrics: what both ends share.

Each end names its metrics once, next to what they count
(:mod:`stocksync.agent.metrics`, :mod:`stocksync.hub.metrics`), as
:class:`Spec` rows that make the metric objects, the scrape-time families
and the README's metrics table alike. Every process has its own
:class:`~prometheus_client.CollectorRegistry` (never the library's global
one), passed to whatever counts, so several hubs in one process (the tests)
never share a number.

Names follow the Prometheus naming guide: prefix ``stocksync_``, base units
(seconds, bytes), counters end in ``_total``, no SKU, order or reservation
ids in labels, and every label child is created at 0 so a ``rate()`` works
from the first scrape.

``/metrics`` has no authentication, like any exporter: it shows counts and
warehouse ids, never a SKU, an order, a reservation or a token. Bind it to
an address only Prometheus reaches (README, Operations).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    # aiohttp is loaded when /metrics is served (~14 MB): an agent run
    # without --metrics, and every short command, never pays for it.
    from aiohttp import web

__all__ = [
    "BUILD_INFO",
    "LATENCY_BUCKETS",
    "MetricsServer",
    "ScrapeCollector",
    "Spec",
    "metrics_handler",
    "new_registry",
    "stocksync_version",
]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram buckets (seconds) for the latencies: an ack in a LAN is a few
milliseconds, a room update well under a second; the top buckets catch a
link in trouble."""


@dataclass(frozen=True)
class Spec:
    """One metric: its name, type, labels and meaning (the README table's row).

    Attributes:
        name: the exposed name (a counter's ends in ``_total``).
        kind: ``counter``, ``gauge`` or ``histogram``.
        labels: label names, in order.
        help: what it means, one sentence.
    """

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str

    def counter(self, registry: CollectorRegistry) -> Counter:
        """A counter updated as things happen."""
        assert self.kind == "counter" and self.name.endswith("_total")
        return Counter(self.name, self.help, self.labels, registry=registry)

    def gauge(self, registry: CollectorRegistry) -> Gauge:
        """A gauge set as things happen."""
        assert self.kind == "gauge"
        return Gauge(self.name, self.help, self.labels, registry=registry)

    def histogram(
        self, registry: CollectorRegistry, buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        """A histogram (of seconds)."""
        assert self.kind == "histogram"
        return Histogram(self.name, self.help, self.labels, registry=registry, buckets=buckets)

    def family(self, samples: Iterable[tuple[Sequence[str], float]] = ()) -> Metric:
        """A family computed at scrape time from ``(label values, value)`` pairs."""
        metric: Metric
        if self.kind == "counter":
            metric = CounterMetricFamily(self.name, self.help, labels=self.labels)
        else:
            assert self.kind == "gauge"
            metric = GaugeMetricFamily(self.name, self.help, labels=self.labels)
        for values, value in samples:
            metric.add_metric(list(values), value)
        return metric


BUILD_INFO = Spec(
    "stocksync_build_info",
    "gauge",
    ("role", "version", "python"),
    "Always 1; the labels say which stocksync and Python this process runs.",
)


def stocksync_version() -> str:
    """The installed stocksync version ("unknown" when run from a bare tree)."""
    try:
        return version("stocksync")
    except PackageNotFoundError:
        return "unknown"


def new_registry(role: str) -> CollectorRegistry:
    """A registry of its own for one process (or one hub in a test), holding
    ``stocksync_build_info{role=...}``."""
    # No *_created series: they double every counter's series for a
    # timestamp Prometheus does not use (a process-wide setting, the same
    # for every registry).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=True)
    info = BUILD_INFO.gauge(registry)
    info.labels(role, stocksync_version(), platform.python_version()).set(1)
    return registry


class ScrapeCollector(Collector):
    """Families computed when Prometheus scrapes, by ``collect`` (a function
    returning them): gauges such as pending events or lag cost nothing
    between scrapes.

    ``describe`` names the specs without computing anything, so registering
    does not call ``collect`` before its sources are ready.
    """

    def __init__(self, specs: Sequence[Spec], collect: Callable[[], Iterable[Metric]]) -> None:
        self._specs = specs
        self._collect = collect

    def describe(self) -> Iterable[Metric]:
        """Empty families, by name (what the registry checks for clashes)."""
        return [spec.family() for spec in self._specs]

    def collect(self) -> Iterable[Metric]:
        """The families now."""
        return list(self._collect())


def metrics_handler(
    registry: CollectorRegistry, refresh: Callable[[], Any] | None = None
) -> Callable[[web.Request], Any]:
    """An aiohttp handler for ``GET /metrics``: the registry in the text format.

    Args:
        registry: what to expose.
        refresh: if set, awaited before each scrape (reads that must leave
            the event loop, e.g. counts from the store).
    """

    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        if refresh is not None:
            await refresh()
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return handler


class MetricsServer:
    """``/metrics`` alone on ``HOST:PORT``, on the running event loop (the agent's).

    Args:
        registry: what to expose.
        listen: HOST:PORT; port 0 for any free one (see :attr:`port`).
    """

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        from aiohttp import web

        app = web.Application()
        app.add_routes([web.get("/metrics", metrics_handler(registry))])
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> int:
        """Bind and serve; returns the bound port.

        Raises:
            OSError: the address cannot be bound.
        """
        from aiohttp import web

        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stop serving."""
        await self._runner.cleanup()
