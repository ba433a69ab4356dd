"""The workstation's side of the prefetch of priors (issue 15): triggers, progress, the cache's open studies.

:class:`PrefetchController` binds the node's :class:`hilum.priors.prefetch.Prefetcher`
(``node.prefetcher``, there when ``[prefetch] enabled``) to the main window:

* the worklist being shown, and its rows refreshing while it is shown, hand the
  listed orders to :meth:`Prefetcher.for_orders` (it returns at once; an order
  handed over is not handed over again for :data:`REASK_S` seconds, so the
  worklist's 30-second poll does not ask the peers again and again);
* every job's state, counts and message are rows of the *Prefetch* panel
  (View → Prefetch, Ctrl+Shift+F, a dock next to the transfers): failures in
  red with the reason, Retry for a failed job; the worklist's *Priors* column
  shows each patient's "queued / fetching / ready (n) / failed";
* a study open in a workspace tab is held (:meth:`Prefetcher.hold`: the LRU
  cache never removes it, and its access time is now) and released when the
  tab closes; opening a study touches it, and a prior added to an open viewer
  (``StudyViewer.sessions``, announced through :meth:`PrefetchController.study_opened`)
  is held with that viewer's tab.

Job changes come from :meth:`Prefetcher.subscribe` on the prefetch worker
thread and reach the widgets through a queued signal; hold, release, touch
and retry run on one worker thread of their own, in order (they write the
index), never on the GUI thread (DESIGN.md "The GUI never waits").  Without a
node, or with prefetch off, nothing is handed over and the panel says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QDockWidget,
    QHeaderView,
    QWidget,
)

from hilum.archive.orders import CANCELLED, DISCONTINUED
from hilum.priors.prefetch import Prefetcher, PrefetchJob
from hilum.ui.tasks import TaskRunner
from hilum.ui.transfers import JobQueuePanel
from hilum.ui.worklist import PriorsMark, priors_key

log = logging.getLogger(__name__)

__all__ = ["PrefetchController", "PrefetchPanel", "install_prefetch", "job_mark"]

REASK_S = 300.0
"""Seconds before an order handed over to the prefetcher from the worklist is handed over again."""
MAX_ORDERS = 500
"""At most this many worklist rows are handed over at a time."""

COLUMNS = ("Job", "Patient", "Trigger", "Priors", "State", "Message")
FAILED_COLOUR = "#b00020"
_STATES = {"queued": "Queued", "running": "Running", "done": "Done", "failed": "Failed"}
_TRIGGERS = {"order": "HL7 order", "study": "study arrived", "worklist": "worklist", "manual": "by hand"}


def job_counts(job: PrefetchJob) -> str:
    """``2 relevant, 1 of 1 fetched (12 images)`` (what a job found and did so far)."""
    if job.state == "queued" or (job.state == "running" and not job.found and not job.to_fetch):
        return ""
    text = f"{job.found} relevant"
    if job.to_fetch:
        text += f", {job.fetched} of {job.to_fetch} fetched"
        if job.instances:
            text += f" ({job.instances} images)"
    if job.failed:
        text += f", {job.failed} failed"
    return text


def job_mark(job: PrefetchJob) -> PriorsMark:
    """The worklist's Priors cell for a job: queued, fetching i/n, ready (n), failed."""
    if job.state == "queued":
        return PriorsMark("queued", "queued", "Prefetch of the priors is waiting")
    if job.state == "running":
        text = f"fetching {job.fetched}/{job.to_fetch}" if job.to_fetch else "fetching…"
        return PriorsMark("running", text, job.message)
    if job.state == "failed":
        return PriorsMark("failed", "failed", "\n".join([job.message, *job.errors[-3:]]))
    if not job.found:
        return PriorsMark("done", "none", job.message or "No relevant prior")
    return PriorsMark("done", f"ready ({job.found})", job.message)


class PrefetchPanel(JobQueuePanel):
    """The prefetch jobs: number, patient, trigger, counts, state, message; Retry and Clear finished."""

    COLUMNS = COLUMNS
    ALERT_COLUMNS = frozenset({4, 5})
    retryRequested = Signal(object)  # PrefetchJob

    def __init__(self, parent: QWidget | None = None):
        super().__init__("prefetchPanel", "prefetchTable", "Prefetch of priors: off (no DICOM node running)", parent)
        header = self.table.horizontalHeader()
        for col in (0, 2, 4):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(5, QHeaderView.ResizeMode.Stretch)
        self.table.setColumnWidth(1, 120)
        self.table.setColumnWidth(3, 230)
        self.retry_button = self.button(
            "Retry", "prefetchRetryButton", "Prefetch the selected failed job's priors again"
        )
        self.clear_button = self.button(
            "Clear finished", "prefetchClearButton", "Remove the jobs that are done from the list"
        )
        self.buttons.addWidget(self.retry_button)
        self.buttons.addStretch(1)
        self.buttons.addWidget(self.clear_button)
        self.retry_button.clicked.connect(self._retry)
        self.clear_button.clicked.connect(self.clear_finished)
        self._update_buttons()

    def row_values(self, job: PrefetchJob) -> tuple[list[str], list[str]]:
        values = [
            str(job.id),
            job.patient_id + (f" ({job.issuer})" if job.issuer else ""),
            _TRIGGERS.get(job.trigger, job.trigger),
            job_counts(job),
            _STATES.get(job.state, job.state),
            job.message,
        ]
        tip = "\n".join([job.message, *job.errors]) if job.errors else job.message
        return values, [tip if col >= 4 else value for col, value in enumerate(values)]

    def _update_buttons(self) -> None:
        job = self.selected()
        self.retry_button.setEnabled(job is not None and job.state == "failed")
        self.clear_button.setEnabled(any(j.state == "done" for j in self.jobs))

    def _retry(self) -> None:
        job = self.selected()
        if job is not None and job.state == "failed":
            self.retryRequested.emit(job)


class PrefetchController(QObject):
    """The Prefetch dock, the worklist's hand-over and Priors column, the open studies held (module docstring)."""

    _job = Signal(object)  # from the prefetch worker thread

    def __init__(self, window: Any):
        super().__init__(window)
        self.window = window
        self.prefetcher: Prefetcher | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False
        self._asked: dict[str, float] = {}  # order UID -> when handed over
        # id(tab) -> (tab, the studies it shows): held by the prefetcher (when there is one) while open
        self._open: dict[int, tuple[QWidget, set[str]]] = {}
        self.runner = TaskRunner(max_workers=1, name="hilum-prefetch-ui", parent=self)
        self.panel = PrefetchPanel()
        self.dock = QDockWidget("Prefetch", window)
        self.dock.setObjectName("prefetchDock")
        self.dock.setWidget(self.panel)
        self.dock.setAllowedAreas(Qt.DockWidgetArea.BottomDockWidgetArea | Qt.DockWidgetArea.RightDockWidgetArea)
        window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.dock)
        transfers = getattr(getattr(window, "transfers", None), "dock", None)
        if isinstance(transfers, QDockWidget):
            window.tabifyDockWidget(transfers, self.dock)
        self.dock.hide()
        self.show_action = self.dock.toggleViewAction()
        self.show_action.setText("&Prefetch of priors")
        self.show_action.setObjectName("showPrefetchAction")
        self.show_action.setShortcut("Ctrl+Shift+F")
        self.show_action.setStatusTip("Show the prefetch of priors from the peers: jobs, progress, failures")
        window.view_menu.addAction(self.show_action)
        window.addAction(self.show_action)
        window.add_shortcut_help("General", "Ctrl+Shift+F", "Show the prefetch of priors (jobs, failures, Retry)")
        self._job.connect(self._on_job, Qt.ConnectionType.QueuedConnection)
        self.panel.retryRequested.connect(self.retry)
        worklist = getattr(window, "worklist", None)
        if worklist is not None:
            window.tabs.currentChanged.connect(lambda _i: self._worklist_shown())
            worklist.refreshed.connect(lambda _n: self._worklist_shown())

    # ------------------------------------------------------------ the prefetcher

    def set_prefetcher(self, prefetcher: Prefetcher | None) -> None:
        """The running node's prefetcher (None: no node, or prefetch off); its jobs so far are listed,
        the studies open now are held, and the worklist's orders are handed over if it is shown."""
        if self._closed:
            return
        self._detach()
        self.prefetcher = prefetcher
        if prefetcher is None:
            self.panel.state_label.setText("Prefetch of priors: off ([prefetch] enabled = false, or no DICOM node)")
            return
        peers = ", ".join(prefetcher.peers) or "none: check [peers] and [prefetch] peers in hilum.toml"
        self.panel.state_label.setText(f"Prefetch of priors: on; peers: {peers}")
        self._unsubscribe = prefetcher.subscribe(self._from_worker)
        for job in prefetcher.jobs():
            self._on_job(job)
        for _tab, uids in self._open.values():
            for uid in uids:
                self._run(prefetcher.hold, uid)
        self._worklist_shown()

    def _detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        pf, self.prefetcher = self.prefetcher, None
        if pf is not None:
            for _tab, uids in self._open.values():
                for uid in uids:
                    self._run(pf.release, uid)

    def _from_worker(self, job: PrefetchJob) -> None:
        if not self._closed:
            try:
                self._job.emit(job)
            except RuntimeError:  # the window is gone; the unsubscribe is racing us
                pass

    def _on_job(self, job: PrefetchJob) -> None:
        if self._closed:
            return
        self.panel.show_job(job)
        worklist = getattr(self.window, "worklist", None)
        if worklist is not None:
            worklist.model.set_priors(
                priors_key({"PatientID": job.patient_id, "IssuerOfPatientID": job.issuer}), job_mark(job)
            )
        if job.state == "failed":
            self.window.statusBar().showMessage(f"Prefetch of priors failed: {job.message}", 10000)

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Off the GUI thread, in order (hold before release); a failure is logged."""
        if self._closed:
            return
        self.runner.submit(
            fn, *args, on_error=lambda exc: log.warning("prefetch: %s failed: %s", fn.__name__, exc), **kwargs
        )

    # ------------------------------------------------------------ triggers

    def _worklist_shown(self) -> None:
        """The worklist is the current tab: hand over the orders it lists that were not handed over lately."""
        worklist = getattr(self.window, "worklist", None)
        pf = self.prefetcher
        if pf is None or worklist is None or self.window.tabs.currentWidget() is not worklist:
            return
        now = time.monotonic()
        rows = []
        for row in worklist.model.rows():
            uid = str(row.get("StudyInstanceUID") or "")
            if (
                not uid
                or row.get("_status") in (CANCELLED, DISCONTINUED)
                or now - self._asked.get(uid, -REASK_S) < REASK_S
            ):
                continue
            self._asked[uid] = now
            rows.append(row)
            if len(rows) >= MAX_ORDERS:
                break
        if rows:
            n = pf.for_orders(rows)
            log.info("worklist shown: the priors of %d order(s) handed to the prefetch", n)

    def retry(self, job: PrefetchJob) -> None:
        """Queue the failed job's priors again (a new job, listed as it is queued)."""
        pf = self.prefetcher
        if pf is None:
            self.window.statusBar().showMessage("Prefetch of priors is off: nothing to retry", 5000)
            return
        self._run(pf.enqueue, job.patient_id, job.issuer, study_uid=job.study_uid, trigger="manual")

    # ------------------------------------------------------------ open studies

    def study_opened(self, study_uid: str) -> None:
        """A study is being opened, in its own tab or beside another in a viewer (a prior added to it,
        ``StudyViewer.sessions``): its access time is now; one shown in an open tab is held with it."""
        if not study_uid:
            return
        for widget, uids in self._open.values():
            if study_uid not in uids and study_uid in (getattr(widget, "sessions", None) or {}):
                uids.add(study_uid)
                if self.prefetcher is not None:
                    self._run(self.prefetcher.hold, study_uid)
        if self.prefetcher is not None:
            self._run(self.prefetcher.touch, study_uid)

    def tab_added(self, widget: QWidget) -> None:
        """A workspace tab showing a study (a viewer: ``study_uid``) holds that study while it is open."""
        uid = getattr(widget, "study_uid", None)
        if not isinstance(uid, str) or not uid or id(widget) in self._open:
            return
        self._open[id(widget)] = (widget, {uid})
        if self.prefetcher is not None:
            self._run(self.prefetcher.hold, uid)

    def tab_closed(self, widget: QWidget) -> None:
        """The tab closed: its studies are released (kept in the cache, least recently used from now)."""
        entry = self._open.pop(id(widget), None)
        if entry is not None and self.prefetcher is not None:
            for uid in entry[1]:
                self._run(self.prefetcher.release, uid)

    def shutdown(self) -> None:
        """The window is closing: the open studies released, no more updates."""
        if self._closed:
            return
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.runner.shutdown(wait=True)  # a hold in flight ends first; the releases are then done here
        pf = self.prefetcher
        if pf is not None:
            for uid in [uid for _widget, uids in self._open.values() for uid in uids]:
                try:
                    pf.release(uid)
                except Exception as exc:  # noqa: BLE001 - closing: log and go on
                    log.warning("prefetch: release failed: %s", exc)
        self._open.clear()


def install_prefetch(window: Any) -> PrefetchController | None:
    """Add the Prefetch dock and the worklist's hand-over to *window*; never fatal."""
    try:
        return PrefetchController(window)
    except Exception:  # noqa: BLE001 - the workstation must open without the prefetch panel
        log.exception("the prefetch panel could not be installed")
        return None
