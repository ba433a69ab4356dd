"""The composition root: one node built from the config (../shared/DESIGN.md "Layers").

A :class:`Node` owns the archive (or borrows an open one) and a list of
network services, each an object with ``start()`` (bind, return at once,
serve from background threads) and ``stop()`` (stop accepting, finish what
is in flight).  ``hilum serve`` runs one headless until SIGINT/SIGTERM; the
workstation starts the same node in the background so modalities can send
to a workstation too.

Adding a protocol adapter is one line in :meth:`Node._default_services`.

The node also builds the archive's RIS side once and hands it to the
adapters that use it: one :class:`~hilum.archive.orders.OrderBook` for the
HL7 receiver and the Modality Worklist and MPPS services, and the
:class:`~hilum.archive.orders.Reconciler` that matches arriving studies to
their orders while the node runs (started first, stopped last).

With ``[prefetch] enabled`` in ``hilum.toml`` the node also runs the
prefetcher (:class:`hilum.priors.prefetch.Prefetcher`, ``node.prefetcher``):
priors of ordered and arriving studies retrieved from the peers in the
background, the workstation's worklist asking it for its patients.

Storage: the policies of ``hilum.toml`` (``[storage]``, ``[[compression]]``,
``[tiers.*]``, ``[[tiering]]``, ``[retention]``/``[[purge]]``) are read
before anything starts — a rule with a typo raises
:class:`~hilum.errors.ConfigError` with its line, and the node does not start
— and applied by :class:`hilum.archive.policy.PolicyService` (service
``policies``; ``[storage] policies = false`` turns it off, as on all but one
node of a scale-out).  :class:`hilum.archive.tiers.TierService` (``tiers``)
copies arriving instances to write-through tiers on every node.

Stopping (SIGTERM, SIGINT, SIGHUP, :meth:`Node.request_stop`): every
service that has ``stop_accepting()`` closes its listeners first, so new
associations are refused at once; then the services stop in reverse order,
the DICOM service letting associations in flight finish for up to ``[node]
stop_timeout`` seconds (default 30, counted from the start of the stop) and
aborting what is left, so a hung peer cannot hold the stop for ever.  A second
signal during the stop aborts what is in flight at once.  SIGHUP is a stop
too (a closed terminal; there is no reload: restart to read ``hilum.toml``
again).  Under systemd (``Type=notify``) the node says ``READY=1`` once every
service listens and ``STOPPING=1`` when a stop begins (:mod:`hilum.sdnotify`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hilum.archive import Archive
from hilum.archive.audit import AuditSettings
from hilum.archive.orders import OrderBook, Reconciler
from hilum.archive.policy import PolicyService, load_policies
from hilum.archive.tiers import TierService
from hilum.config import Config
from hilum.errors import ConfigError
from hilum.sdnotify import notify

if TYPE_CHECKING:
    from hilum.priors.prefetch import Prefetcher

log = logging.getLogger(__name__)

STOP_TIMEOUT_MAX = 3600.0


def stop_timeout(config: Config) -> float:
    """``[node] stop_timeout``: seconds in-flight associations may take once a stop begins (0 to 3600)."""
    value = getattr(config, "stop_timeout", 30.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= STOP_TIMEOUT_MAX:
        raise ConfigError(f"[node] stop_timeout must be a number of seconds from 0 to {STOP_TIMEOUT_MAX:.0f}, "
                          f"not {value!r}")
    return float(value)


@runtime_checkable
class Service(Protocol):
    """A network service of the node (DIMSE, DICOMweb, HL7 MLLP...)."""

    name: str

    def start(self) -> None:
        """Bind and serve from background threads; return at once. Raise OSError if the port is taken."""

    def stop(self) -> None:
        """Stop accepting, let in-flight work finish, release the port."""


class Node:
    """A Hilum node: archive + network services, from one :class:`~hilum.config.Config`."""

    def __init__(self, config: Config, archive: Archive | None = None, *,
                 services: list[Service] | None = None, only: list[str] | None = None):
        """``services`` replaces the default ones; ``only`` keeps the default services with those names."""
        self.config = config
        self.stop_timeout = stop_timeout(config)  # a bad value: ConfigError before anything opens
        self._owns_archive = archive is None
        self.archive = archive if archive is not None else Archive.from_config(config)
        if archive is not None and not self.archive.storage_configured:
            self.archive.configure_storage(load_policies(config))  # a typo: ConfigError, nothing started
            self.archive.configure_audit(AuditSettings.from_config(config))
        self.orders = OrderBook(self.archive)
        self.reconciler = Reconciler(self.orders)
        self.prefetcher: Prefetcher | None = None
        if config.prefetch.enabled:
            from hilum.priors.prefetch import Prefetcher

            self.prefetcher = Prefetcher(self.archive, config, orders=self.orders)
        self.services: list[Service] = services if services is not None else self._default_services()
        if only is not None:
            unknown = set(only) - {s.name for s in self.services}
            if unknown:
                raise ValueError(f"no such node service: {', '.join(sorted(unknown))}")
            self.services = [s for s in self.services if s.name in only]
        self._started: list[Service] = []
        self._stop_requested = threading.Event()
        self._lock = threading.Lock()

    def _default_services(self) -> list[Service]:
        from hilum.dicomweb.service import DicomWebService
        from hilum.dimse import DimseService
        from hilum.dimse.mpps import MppsSCP
        from hilum.dimse.mwl import WorklistSCP
        from hilum.hl7.outbox import OutboxService
        from hilum.hl7.service import HL7Service
        from hilum.replication import ForwardService

        ris = [WorklistSCP(self.archive, orders=self.orders), MppsSCP(self.archive, orders=self.orders)]
        return [
            DimseService(self.config, self.archive, extensions=ris, drain_timeout=self.stop_timeout),
            HL7Service(self.config, self.archive, orders=self.orders),
            DicomWebService(self.config, self.archive),
            # Background storage work, stopped first: the policies (one node of a scale-out), write-through,
            # forwarding ([[forward]] rules of hilum.toml; none: idle).
            PolicyService(self.archive, self.archive.policies),
            TierService(self.archive),
            ForwardService(self.archive, self.config),
            # issue 20a: signed reports to the HIS ([report] his / [hl7] his_host; none: idle)
            OutboxService.from_config(self.archive, self.config),
            *self._audit_services(),
        ]

    def _audit_activity(self, kind: str) -> None:
        """A node that owns its archive (``hilum serve``) starting or stopping: "Application Activity"
        (PS3.15 A.5.3.1).  The workstation records its own start and stop (it lends its archive)."""
        if not self._owns_archive:
            return
        from hilum.archive.audit import os_user

        what = "started" if kind.endswith("Start") else "stopped"
        self.archive.audit("Application Activity", action="E", event_type=kind, user=os_user(), role="launcher",
                           detail=f"node {self.config.aet} {what}: {', '.join(s.name for s in self.services)}")

    def _audit_services(self) -> list[Service]:
        """The audit trail's syslog sender when ``[audit] syslog`` names a repository (issue 21a)."""
        settings = self.archive.audit_settings
        if not (settings.enabled and settings.syslog):
            return []
        from hilum.archive.audit_syslog import AuditSyslogService

        return [AuditSyslogService(self.archive.audit, settings)]

    def service(self, name: str) -> Service:
        """The service called ``name`` (``"dimse"``...)."""
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def running(self) -> bool:
        return bool(self._started)

    def start(self) -> None:
        """Start every service; if one fails to start, stop those already running and re-raise."""
        with self._lock:
            if self._started:
                return
            self._stop_requested.clear()
            self.reconciler.start()
            if self.prefetcher is not None:
                self.prefetcher.start()
            try:
                for s in self.services:
                    s.start()
                    self._started.append(s)
            except BaseException:
                self._stop_started()
                if self.prefetcher is not None:
                    self.prefetcher.stop()
                self.reconciler.stop()
                raise
            log.info("node %s started: %s", self.config.aet, ", ".join(s.name for s in self._started))
            self._audit_activity("Application Start")

    def stop_accepting(self) -> None:
        """Close every listener that can be closed on its own (``stop_accepting()`` of a service): new
        associations are refused from now on, those in flight go on.  :meth:`stop` calls it first."""
        for s in list(self._started):
            close = getattr(s, "stop_accepting", None)
            if close is None:
                continue
            try:
                close()
            except Exception:  # noqa: BLE001 - stop the others anyway
                log.exception("closing the listeners of %s failed", s.name)

    def hurry(self) -> None:
        """Abort what is in flight now instead of waiting for it (a second signal during a stop)."""
        for s in list(self.services):  # not only _started: stop() pops each service before stopping it
            abort = getattr(s, "hurry", None)
            if abort is not None:
                abort()

    def stop(self) -> None:
        """Stop the services (in-flight associations/requests finish first), then close an owned archive."""
        self.stop_accepting()
        with self._lock:
            if self.prefetcher is not None:
                self.prefetcher.stop(timeout=self.config.prefetch.timeout + 5)
            was_running = bool(self._started)
            self._stop_started()
            self.reconciler.stop()
            if was_running:
                self._audit_activity("Application Stop")
            if self._owns_archive:
                self.archive.close()
        self._stop_requested.set()

    def _stop_started(self) -> None:
        while self._started:
            s = self._started.pop()
            try:
                s.stop()
            except Exception:  # noqa: BLE001 - stop the others anyway
                log.exception("stopping %s failed", s.name)

    def request_stop(self) -> None:
        """Ask :meth:`serve_forever` to return (safe from signal handlers and other threads)."""
        self._stop_requested.set()

    def serve_forever(self) -> None:
        """Start, block until SIGINT/SIGTERM or :meth:`request_stop`, then stop cleanly."""
        previous: dict[signal.Signals, object] = {}

        stopping = False

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if stopping:
                log.warning("signal %d again: aborting what is still in flight", signum)
                self.hurry()
                return
            log.info("signal %d: stopping (new associations refused; those in flight may take up to %g s)",
                     signum, self.stop_timeout)
            self._stop_requested.set()

        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            # SIGHUP: POSIX only (a closed terminal); SIGBREAK: Windows only (Ctrl+Break in a console)
            signals = (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None), getattr(signal, "SIGBREAK", None))
            for sig in signals:
                if sig is not None:
                    previous[sig] = signal.signal(sig, on_signal)
        try:
            self.start()
            if not self._stop_requested.is_set():
                notify("READY=1", f"STATUS=node {self.config.aet} listening: "
                                  f"{', '.join(s.name for s in self._started)}", f"MAINPID={os.getpid()}")
            while not self._stop_requested.wait(0.5):
                pass
        finally:
            stopping = True
            if self._started:
                notify("STOPPING=1", "STATUS=stopping: finishing the associations in flight")
            try:
                self.stop()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)  # type: ignore[arg-type]

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
