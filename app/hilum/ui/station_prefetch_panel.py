"""The workstation's side of the prefetch onto the reading station (issue 18): the queue, its controls.

:class:`StationPrefetchController` binds a :class:`hilum.priors.station.StationPrefetcher` to the main
window:

* a dock, *Prefetch to this station* (View menu, Ctrl+Alt+F), listing every study being brought
  from the remote sources into the remote-study cache: the study (patient, date, description), why
  (worklist, prior of…, by hand), the source, the state, images done of total, bytes and speed;
  *Pause* / *Resume* the whole queue, *Cancel* and *Retry* the selected study, *Look now* (search
  the remote worklist at once), *Clear finished*, and the bandwidth cap in Mbit/s (0: none);
* with ``[station_prefetch] enabled``, the remote worklist is searched when the window opens and
  every ``interval_s`` seconds, and the orders the worklist tab shows are looked up on the sources
  (not the same order again within :data:`REASK_S`).

The cache is the process's remote-study cache of the data folder
(:meth:`hilum.dicomweb.cache.RemoteCache.shared`, the one the study browser's remote sources open
studies from), so a prefetched study opens from it without a request to the remote.  The sources are the study browser's (with the passwords typed
in this session), else those of ``hilum.toml``.  Job changes arrive from the prefetch threads and
reach the widgets through a queued signal; nothing here waits on the network (DESIGN.md "The GUI
never waits").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QDockWidget,
    QDoubleSpinBox,
    QHeaderView,
    QLabel,
    QWidget,
)

from hilum.archive.orders import CANCELLED, DISCONTINUED
from hilum.config import ConfigError
from hilum.priors.station import MBIT, StationJob, StationPrefetcher, StationPrefetchSettings, sources_for
from hilum.ui.transfers import JobQueuePanel

log = logging.getLogger(__name__)

__all__ = ["StationPrefetchController", "StationPrefetchPanel", "install_station_prefetch"]

SHORTCUT = "Ctrl+Alt+F"
REASK_S = 300.0
"""Seconds before a worklist order handed over is handed over again."""
COLUMNS = ("Study", "Why", "Source", "State", "Images", "Bytes", "Speed", "Message")
_STATES = {
    "queued": "Queued",
    "running": "Fetching",
    "paused": "Paused",
    "done": "Done",
    "failed": "Failed",
    "cancelled": "Cancelled",
}


def human_bytes(n: float) -> str:
    """``0 B``, ``12.3 kB``, ``4.5 MB``, ``1.20 GB`` (decimal units, as link speeds are given)."""
    if n < 1000:
        return f"{int(n)} B"
    for unit, size in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if n < size * 1000 or unit == "GB":
            value = n / size
            return f"{value:.2f} {unit}" if unit == "GB" else f"{value:.1f} {unit}"
    return f"{n:.0f} B"  # pragma: no cover


def human_rate(bytes_per_s: float) -> str:
    """A speed in Mbit/s (``3.2 Mbit/s``) or kbit/s under one megabit."""
    bits = bytes_per_s * 8
    return f"{bits / 1e6:.1f} Mbit/s" if bits >= 1e6 else f"{bits / 1e3:.0f} kbit/s"


def study_text(job: StationJob) -> str:
    name = job.patient_name.replace("^", " ").strip() or job.patient_id or "?"
    when = f"{job.study_date[:4]}-{job.study_date[4:6]}-{job.study_date[6:8]}" if len(job.study_date) >= 8 else ""
    return " · ".join(x for x in (name, when, job.description or "/".join(job.modalities)) if x)


class StationPrefetchPanel(JobQueuePanel):
    """The queue table and its controls; emits what the person asks, the controller does it."""

    COLUMNS = COLUMNS
    ALERT_COLUMNS = frozenset({3, 7})
    FINISHED = frozenset({"done", "cancelled"})
    pauseRequested = Signal(bool)  # True: pause, False: resume
    cancelRequested = Signal(int)  # job id
    retryRequested = Signal(int)
    lookRequested = Signal()
    rateChanged = Signal(float)  # bytes/s, 0: no cap

    def __init__(self, parent: QWidget | None = None):
        super().__init__("stationPrefetchPanel", "stationPrefetchTable", "Prefetch to this station: off", parent)
        header = self.table.horizontalHeader()
        for col in range(1, 7):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(7, QHeaderView.ResizeMode.Stretch)
        self.table.setColumnWidth(0, 260)
        self.pause_button = self.button(
            "Pause", "stationPauseButton", "Hold the whole queue (the study being fetched stops where it is)"
        )
        self.cancel_button = self.button("Cancel", "stationCancelButton", "Stop fetching the selected study")
        self.retry_button = self.button(
            "Retry", "stationRetryButton", "Fetch the selected failed or cancelled study again (what is missing only)"
        )
        self.look_button = self.button("Look now", "stationLookButton", "Search the remote worklist now")
        self.clear_button = self.button("Clear finished", "stationClearButton", "Remove the finished studies")
        self.rate_spin = QDoubleSpinBox(self)
        self.rate_spin.setObjectName("stationRateSpin")
        self.rate_spin.setRange(0.0, 10000.0)
        self.rate_spin.setDecimals(1)
        self.rate_spin.setSingleStep(1.0)
        self.rate_spin.setSuffix(" Mbit/s")
        self.rate_spin.setSpecialValueText("no cap")
        self.rate_spin.setKeyboardTracking(False)
        self.rate_spin.setToolTip("Bandwidth cap of the prefetch (0: none)")
        cap_label = QLabel("Cap:", self)
        cap_label.setBuddy(self.rate_spin)
        for w in (self.pause_button, self.cancel_button, self.retry_button, self.look_button):
            self.buttons.addWidget(w)
        self.buttons.addStretch(1)
        self.buttons.addWidget(cap_label)
        self.buttons.addWidget(self.rate_spin)
        self.buttons.addWidget(self.clear_button)
        self.paused = False
        self.pause_button.clicked.connect(lambda _checked=False: self.pauseRequested.emit(not self.paused))
        self.cancel_button.clicked.connect(lambda _checked=False: self._emit_selected(self.cancelRequested))
        self.retry_button.clicked.connect(lambda _checked=False: self._emit_selected(self.retryRequested))
        self.look_button.clicked.connect(lambda _checked=False: self.lookRequested.emit())
        self.clear_button.clicked.connect(lambda _checked=False: self.clear_finished())
        self.rate_spin.valueChanged.connect(lambda v: self.rateChanged.emit(float(v) * MBIT))
        self._update_buttons()

    def row_values(self, job: StationJob) -> tuple[list[str], list[str]]:
        why = {"worklist": "worklist", "prior": "prior", "manual": "by hand"}.get(job.kind, job.kind)
        images = f"{job.instances}/{job.total}" if job.total else (str(job.instances) if job.instances else "")
        speed = human_rate(job.speed) if job.speed and job.state in ("running", "done") else ""
        values = [
            study_text(job),
            why,
            job.source,
            _STATES.get(job.state, job.state),
            images,
            human_bytes(job.bytes) if job.bytes else "",
            speed,
            job.message,
        ]
        tips = dict(enumerate(values))
        tips.update({0: f"{study_text(job)}\nStudy Instance UID {job.study_uid}", 1: job.reason or why,
                     7: job.error or job.message})  # fmt: skip
        return values, [tips[c] for c in range(len(values))]

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.pause_button.setText("Resume" if paused else "Pause")
        self.pause_button.setToolTip(
            "Go on fetching" if paused else "Hold the whole queue (the study being fetched stops where it is)"
        )

    def set_rate(self, bytes_per_s: float) -> None:
        """Show the cap without announcing a change."""
        self.rate_spin.blockSignals(True)
        self.rate_spin.setValue(bytes_per_s / MBIT)
        self.rate_spin.blockSignals(False)

    def _emit_selected(self, signal: Any) -> None:
        job = self.selected()
        if job is not None:
            signal.emit(job.id)

    def _update_buttons(self) -> None:
        job = self.selected()
        self.cancel_button.setEnabled(job is not None and job.active)
        self.retry_button.setEnabled(job is not None and job.state in ("failed", "cancelled"))
        self.clear_button.setEnabled(any(j.state in ("done", "cancelled") for j in self.jobs))


class StationPrefetchController(QObject):
    """The dock, the automatic looks, and the prefetcher's life (module docstring)."""

    _job = Signal(object)  # from the prefetch threads

    def __init__(self, window: Any):
        super().__init__(window)
        self.window = window
        self.prefetcher: StationPrefetcher | None = None
        self._own_cache: Any = None
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False
        self._asked: dict[str, float] = {}
        try:
            self.settings = StationPrefetchSettings.from_config(window.config)
            self._problem = ""
        except ConfigError as exc:
            self.settings = StationPrefetchSettings()
            self._problem = str(exc)
        self.panel = StationPrefetchPanel()
        self.dock = QDockWidget("Prefetch to this station", window)
        self.dock.setObjectName("stationPrefetchDock")
        self.dock.setWidget(self.panel)
        self.dock.setAllowedAreas(Qt.DockWidgetArea.BottomDockWidgetArea | Qt.DockWidgetArea.RightDockWidgetArea)
        window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.dock)
        other = getattr(getattr(window, "prefetch", None), "dock", None)
        if isinstance(other, QDockWidget):
            window.tabifyDockWidget(other, self.dock)
        self.dock.hide()
        self.show_action = self.dock.toggleViewAction()
        self.show_action.setText("Prefetch to this &station")
        self.show_action.setObjectName("showStationPrefetchAction")
        self.show_action.setShortcut(SHORTCUT)
        self.show_action.setStatusTip("Show the studies being fetched ahead of need from the remote sources")
        window.view_menu.addAction(self.show_action)
        window.addAction(self.show_action)
        window.add_shortcut_help(
            "General", SHORTCUT, "Show the prefetch to this station (queue, pause, cap, cancel, retry)"
        )
        self._job.connect(self._on_job, Qt.ConnectionType.QueuedConnection)
        self.panel.pauseRequested.connect(self.set_paused)
        self.panel.cancelRequested.connect(self.cancel)
        self.panel.retryRequested.connect(self.retry)
        self.panel.lookRequested.connect(self.look_now)
        self.panel.rateChanged.connect(self.set_rate)
        self.panel.clear_button.clicked.connect(self._clear)
        self.panel.set_rate(self.settings.rate_bytes)
        self.timer = QTimer(self)
        self.timer.setInterval(int(self.settings.interval_s * 1000))
        self.timer.timeout.connect(self._tick)
        worklist = getattr(window, "worklist", None)
        if worklist is not None:
            window.tabs.currentChanged.connect(lambda _i: self._worklist_shown())
            worklist.refreshed.connect(lambda _n: self._worklist_shown())
        window.browser.openRequested.connect(self.study_opening)  # the browser's open, local or remote
        window.installEventFilter(self)
        self._start()

    # ------------------------------------------------------------ the prefetcher

    def _cache(self) -> Any:
        """This process's remote cache of the data folder (:meth:`RemoteCache.shared`): the one the study
        browser opens remote studies from, so its pins and the prefetch's writes see each other."""
        from hilum.dicomweb.cache import RemoteCache

        if self._own_cache is None:
            self._own_cache = RemoteCache.shared(self.window.config)
        return self._own_cache

    def _sources(self) -> dict[str, Any]:
        known = getattr(getattr(self.window, "remote_sources", None), "sources", None) or []
        return sources_for(self.window.config, self.settings, known)

    def _start(self) -> None:
        """Start the prefetcher when there is something to fetch from (a source), else say why not;
        nothing is opened (no cache folder made) for a workstation without remote sources."""
        if self._problem:
            self.panel.state_label.setText(f"Prefetch to this station: off — {self._problem}")
            return
        if self._ensure() is None:
            return
        if self.settings.enabled:
            self.timer.start()
            QTimer.singleShot(0, self._tick)

    def _ensure(self) -> StationPrefetcher | None:
        """The prefetcher, made on first need (a DICOMweb source known); None, with the reason shown."""
        if self.prefetcher is not None or self._closed or self._problem:
            return self.prefetcher
        sources = self._sources()
        if not sources:
            self.panel.state_label.setText(
                "Prefetch to this station: no DICOMweb source yet (add one in the study browser, then Look now)"
            )
            return None
        try:
            cache = self._cache()
        except Exception as exc:  # noqa: BLE001 - the workstation opens without the prefetch
            log.warning("station prefetch: no remote cache: %s", exc)
            self.panel.state_label.setText(f"Prefetch to this station: off — the remote cache cannot open: {exc}")
            return None
        self.prefetcher = StationPrefetcher(
            cache,
            sources,
            self.settings,
            archive=self.window.archive,
            rules=getattr(self.window.config, "prefetch", None),
        )
        self._unsubscribe = self.prefetcher.subscribe(self._from_worker)
        self.prefetcher.start()
        self._update_label()
        return self.prefetcher

    def _from_worker(self, job: StationJob) -> None:
        if not self._closed:
            try:
                self._job.emit(job)
            except RuntimeError:  # the window is gone; the unsubscribe is racing us
                pass

    def _on_job(self, job: StationJob) -> None:
        if self._closed:
            return
        self.panel.show_job(job)
        self._update_label()
        if job.state == "failed":
            self.window.statusBar().showMessage(f"Prefetch to this station failed: {job.message}", 10000)

    def _update_label(self) -> None:
        pf = self.prefetcher
        if pf is None:
            return
        c = pf.counts()
        names = ", ".join(pf.sources) or "none (add a DICOMweb source in the study browser)"
        mode = "on" if self.settings.enabled else "by hand ([station_prefetch] enabled = false)"
        cap = human_rate(pf.bucket.rate) if pf.bucket.rate else "no cap"
        parts = [f"Prefetch to this station: {mode}", f"sources: {names}", cap]
        if pf.paused:
            parts.append("PAUSED")
        busy = c["running"] + c["paused"]
        parts.append(
            f"{c['queued']} queued, {busy} fetching, {c['done']} done"
            + (f", {c['failed']} failed" if c["failed"] else "")
        )
        if pf.errors:
            parts.append("; ".join(f"{k}: {v}" for k, v in pf.errors.items()))
        self.panel.state_label.setText(" · ".join(parts))

    # ------------------------------------------------------------ what the person asks

    def set_paused(self, paused: bool) -> None:
        pf = self.prefetcher
        if pf is None:
            return
        if paused:
            pf.pause()
        else:
            pf.resume()
        self.panel.set_paused(paused)
        self._update_label()
        self.window.statusBar().showMessage("Prefetch to this station " + ("paused" if paused else "resumed"), 4000)

    def cancel(self, job_id: int) -> None:
        if self.prefetcher is not None:
            self.prefetcher.cancel(job_id)

    def retry(self, job_id: int) -> None:
        if self.prefetcher is not None:
            self.prefetcher.set_sources(self._sources())
            self.prefetcher.retry(job_id)

    def set_rate(self, bytes_per_s: float) -> None:
        if self.prefetcher is not None:
            self.prefetcher.set_rate(bytes_per_s)
            self._update_label()

    def look_now(self) -> None:
        """Search the remote worklist now (and hand over the worklist tab's orders)."""
        pf = self._ensure()
        if pf is not None:
            pf.set_sources(self._sources())
        if pf is None or not pf.sources:
            self.window.statusBar().showMessage("No DICOMweb source to look on: add one in the study browser", 6000)
            return
        pf.refresh()
        self._asked.clear()
        self._worklist_shown(force=True)
        self.window.statusBar().showMessage("Looking for the worklist's studies on the remote sources…", 4000)

    def study_opening(self, study_uid: str) -> None:
        """The reader opens a study: if it is waiting in the queue, it goes first."""
        if self.prefetcher is not None and study_uid and self.prefetcher.bump(study_uid):
            log.info("station prefetch: a queued study is being opened: fetched next")

    def _clear(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.clear_finished()
        self._update_label()

    def _tick(self) -> None:
        pf = self._ensure()
        if pf is None or self._closed:
            return
        pf.set_sources(self._sources())
        if pf.sources:
            pf.refresh()
        self._update_label()  # the last search's failures, if any

    def _worklist_shown(self, *, force: bool = False) -> None:
        """The worklist is the current tab: hand over the orders it lists that were not handed over lately."""
        worklist = getattr(self.window, "worklist", None)
        pf = self.prefetcher
        if pf is None or worklist is None or not pf.sources:
            return
        if not force and (
            not self.settings.enabled
            or not self.settings.from_worklist
            or self.window.tabs.currentWidget() is not worklist
        ):
            return
        now = time.monotonic()
        rows = []
        for row in worklist.model.rows():
            uid = str(row.get("StudyInstanceUID") or "")
            if not uid or row.get("_status") in (CANCELLED, DISCONTINUED):
                continue
            if now - self._asked.get(uid, -REASK_S) < REASK_S:
                continue
            self._asked[uid] = now
            rows.append(row)
        if rows:
            pf.for_worklist(rows)

    # ------------------------------------------------------------ closing

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.timer.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.prefetcher is not None:
            self.prefetcher.stop(timeout=3.0)
        if self._own_cache is not None:
            self._own_cache.close()
            self._own_cache = None

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        if watched is self.window and event.type() == QEvent.Type.Close:
            self.shutdown()
        return False


def install_station_prefetch(window: Any) -> StationPrefetchController | None:
    """Add the *Prefetch to this station* dock to *window*; never fatal."""
    try:
        return StationPrefetchController(window)
    except Exception:  # noqa: BLE001 - the workstation must open without it
        log.exception("the station prefetch panel could not be installed")
        return None
