"""The node's Prometheus metrics (issue 22, Part B): one registry per archive, served at ``/metrics``.

Not prometheus-client's global registry: tests run several nodes in one process,
and the workstation's node and a second node must not add up.  One
:class:`NodeMetrics` per :class:`~hilum.archive.Archive` (:func:`metrics_for`),
which in practice is one per node (a node owns its archive, or borrows the
workstation's, which runs one node).

What moves it:

- **instances** — the archive's own events (every instance enters through the
  one ingest, which emits one ``stored``/``replaced`` event each):
  ``hilum_instances_received_total{protocol}`` with protocol ``dimse``, ``stow``,
  ``import`` or ``other`` (DICOMweb retrieval into the archive, reports, AI
  results, annotations), and ``hilum_instances_per_second`` over the last minute.
  An import run by a *separate* ``hilum import`` process is counted by that
  process, not by the node (its events are its own); the archive size gauges see it.
- **associations** — the DIMSE service calls :meth:`NodeMetrics.association` on
  each accepted or rejected association and registers itself for the active
  count (:meth:`NodeMetrics.watch_associations`, counted at scrape time).
- **HTTP** — the DICOMweb app counts every answered request (method, status class).
- **at scrape time** — archive counts and queue lengths
  (:class:`hilum.archive.health.CachedFigures`: at most one count per ``ttl``
  seconds, so a scrape of a large index costs one cached read) and free disk of
  the data folder and of each tier that is a folder.
"""

from __future__ import annotations

import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hilum import __version__
from hilum.archive.health import CachedFigures

if TYPE_CHECKING:
    from hilum.archive.archive import Archive
    from hilum.archive.model import ArchiveEvent

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROTOCOLS = ("dimse", "stow", "import")
"""Origins of the one ingest counted under their own name; every other origin counts as ``other``."""
RATE_WINDOW = 60
"""Seconds over which ``hilum_instances_per_second`` averages."""


class _Rate:
    """Events per second over the last ``window`` seconds: one bucket per second, in a ring."""

    def __init__(self, window: int = RATE_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._buckets = [0] * window
        self._seconds = [-1] * window
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        second = int(self._clock())
        i = second % self.window
        with self._lock:
            if self._seconds[i] != second:
                self._seconds[i], self._buckets[i] = second, 0
            self._buckets[i] += n

    def per_second(self) -> float:
        now = int(self._clock())
        with self._lock:
            total = sum(b for b, s in zip(self._buckets, self._seconds, strict=True) if now - self.window < s <= now)
        return total / self.window


class _ScrapeCollector(Collector):
    """What is read when scraped: archive size, queues, disk free."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The names only: registering must not count the index (nor fill the cache with a stale count)."""
        yield GaugeMetricFamily("hilum_archive_instances", "Instances in the index")
        yield GaugeMetricFamily("hilum_archive_studies", "Studies in the index")
        yield GaugeMetricFamily("hilum_archive_bytes", "Bytes of the indexed instances")
        yield GaugeMetricFamily("hilum_queue_length", "Items waiting in a queue of the index", labels=["queue"])
        yield GaugeMetricFamily("hilum_disk_free_bytes", "Free bytes of the data folder and folder tiers",
                                labels=["path"])  # fmt: skip

    def collect(self) -> Iterator[GaugeMetricFamily]:
        m = self.metrics
        figures = m.figures.get()
        yield GaugeMetricFamily("hilum_archive_instances", "Instances in the index", value=figures.instances)
        yield GaugeMetricFamily("hilum_archive_studies", "Studies in the index", value=figures.studies)
        yield GaugeMetricFamily("hilum_archive_bytes", "Bytes of the indexed instances", value=figures.bytes)
        queues = GaugeMetricFamily("hilum_queue_length", "Items waiting in a queue of the index", labels=["queue"])
        for name, n in figures.queues.items():
            queues.add_metric([name], n)
        queues.add_metric(["prefetch"], m.prefetch_queue())
        yield queues
        disk = GaugeMetricFamily("hilum_disk_free_bytes", "Free bytes of the data folder and folder tiers",
                                 labels=["path"])  # fmt: skip
        for path in m.disk_paths():
            try:
                disk.add_metric([str(path)], shutil.disk_usage(path).free)
            except OSError:
                continue  # a tier's folder not mounted: no sample (an alert on absent() sees it)
        yield disk


class NodeMetrics:
    """The metrics of one node; ``render()`` is the ``/metrics`` body (Prometheus text format 0.0.4)."""

    def __init__(self, archive: Archive, *, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.data_dir = Path(archive.data_dir)
        self._tier_paths = _folder_tiers(archive)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("hilum_up", "1 while the node runs", registry=r).set(1)
        Gauge("hilum_build_info", "The running Hilum's version", ["version"], registry=r).labels(__version__).set(1)
        self.started = Gauge("hilum_start_time_seconds", "When the node started (Unix time)", registry=r)
        self.started.set(time.time())
        self.associations = Counter("hilum_associations", "DICOM associations by result", ["result"], registry=r)
        for result in ("accepted", "rejected"):
            self.associations.labels(result)
        self._dimse: list[Callable[[], int]] = []
        self._dimse_lock = threading.Lock()
        active = Gauge("hilum_associations_active", "DICOM associations open now", registry=r)
        active.set_function(self._active_associations)
        self.instances = Counter("hilum_instances_received", "Instances stored, by how they came",
                                 ["protocol"], registry=r)  # fmt: skip
        for p in (*PROTOCOLS, "other"):
            self.instances.labels(p)
        self._rate = _Rate()
        rate = Gauge("hilum_instances_per_second", f"Instances stored per second over the last {RATE_WINDOW} s",
                     registry=r)  # fmt: skip
        rate.set_function(self._rate.per_second)
        self.http = Counter("hilum_http_requests", "HTTP requests answered, by method and status",
                            ["method", "status"], registry=r)  # fmt: skip
        self.figures = CachedFigures(archive.engine, ttl=ttl, clock=clock)
        self.prefetch_queue: Callable[[], int] = lambda: 0
        r.register(_ScrapeCollector(self))
        self._unsubscribe = archive.subscribe(self._on_event)

    # ------------------------------------------------------------------ hooks

    def _on_event(self, event: ArchiveEvent) -> None:
        if event.kind in ("stored", "replaced") and event.level == "IMAGE":
            self.instances.labels(event.origin if event.origin in PROTOCOLS else "other").inc()
            self._rate.add()

    def association(self, result: str) -> None:
        """An association ``accepted`` or ``rejected`` (the DIMSE service's event handlers call this)."""
        self.associations.labels(result).inc()

    def watch_associations(self, count: Callable[[], int]) -> Callable[[], None]:
        """Add a source of the open-associations count (a DIMSE service); returns the function that removes it."""
        with self._dimse_lock:
            self._dimse.append(count)

        def remove() -> None:
            with self._dimse_lock:
                if count in self._dimse:
                    self._dimse.remove(count)

        return remove

    def http_request(self, method: str, status: int) -> None:
        self.http.labels(method if method in _METHODS else "other", str(status)).inc()

    def _active_associations(self) -> float:
        with self._dimse_lock:
            sources = list(self._dimse)
        total = 0
        for count in sources:
            try:
                total += count()
            except Exception:  # noqa: BLE001,S112 - a stopping service: no count
                continue
        return float(total)

    def disk_paths(self) -> list[Path]:
        return [self.data_dir, *self._tier_paths]

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        self._unsubscribe()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def _folder_tiers(archive: Any) -> list[Path]:
    tiers = getattr(getattr(getattr(archive, "tiers", None), "rules", None), "tiers", {}) or {}
    return [Path(t.path) for t in tiers.values() if getattr(t, "path", "") and getattr(t, "type", "") != "s3"]


_BY_ARCHIVE: weakref.WeakKeyDictionary[Any, NodeMetrics] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def metrics_for(archive: Archive) -> NodeMetrics:
    """The metrics of ``archive``'s node, made on first use (counting starts then: the DIMSE and DICOMweb
    services ask for it when they are built, before anything arrives)."""
    with _LOCK:
        m = _BY_ARCHIVE.get(archive)
        if m is None:
            m = _BY_ARCHIVE[archive] = NodeMetrics(archive)
        return m
