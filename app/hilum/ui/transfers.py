"""Transfers with DICOM peers: one queue for sends and retrieves, a panel to watch and steer them.

:class:`TransferQueue` runs each transfer on a worker thread (DESIGN.md "The
GUI never waits": no DIMSE on the GUI thread) and reports its state and
progress (instances done of total) by signal.  :class:`TransfersPanel` lists
them — queued, running, done, failed with the error text — with Retry and
Cancel.  :class:`TransferController` binds both to the main window: a
"Transfers" dock (View → Transfers), File → Send to ▸ *peer* for the study
shown (a viewer tab) or selected (the study browser), the browser's "Send
to" context menus, and :meth:`TransferController.retrieve`, through which
the study browser opens studies from a peer (:mod:`hilum.ui.remote_source`).

The DIMSE work itself is :mod:`hilum.ui.dimse_source` (Qt-free).
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from hilum.config import Peer
from hilum.dimse.scu import DimseError
from hilum.ui.dimse_source import peer_target, retrieve_study, send_study
from hilum.ui.study_search import format_person_name
from hilum.ui.tasks import TaskRunner

log = logging.getLogger(__name__)

__all__ = ["Transfer", "TransferController", "TransferQueue", "TransferState", "TransfersPanel", "install_transfers"]

PROGRESS_INTERVAL = 0.05
"""Seconds between two progress reports of one transfer (the first and the last always go)."""

Work = Callable[[Callable[[int, int], None], threading.Event], str]
"""``work(progress, cancel) -> summary``: runs on a worker thread; raises to fail."""


class TransferState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class Transfer:
    """One send or retrieve: what, with whom, how far, how it ended."""

    id: int
    kind: str  # "send" | "retrieve"
    peer: str
    what: str
    work: Work
    then: Callable[[Transfer], None] | None = None  # on the GUI thread, after success
    state: TransferState = TransferState.QUEUED
    done: int = 0
    total: int = 0  # 0: not known yet
    error: str = ""
    summary: str = ""
    attempts: int = 0
    cancel_event: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.state in (TransferState.DONE, TransferState.FAILED, TransferState.CANCELLED)

    def status_text(self) -> str:
        if self.state is TransferState.FAILED:
            return f"Failed: {self.error}"
        if self.state is TransferState.DONE:
            return f"Done: {self.summary}" if self.summary else "Done"
        if self.state is TransferState.RUNNING:
            return "Running…"
        return self.state.value.capitalize()


class TransferQueue(QObject):
    """Runs transfers off the GUI thread; ``changed(transfer)`` after every state or progress change."""

    added = Signal(object)
    changed = Signal(object)
    finished = Signal(object)  # done, failed or cancelled
    removed = Signal(object)
    _started = Signal(object, object)  # transfer, its attempt's cancel event
    _progress = Signal(object, object, int, int)

    def __init__(self, parent: QObject | None = None, workers: int = 2):
        super().__init__(parent)
        self.runner = TaskRunner(max_workers=workers, name="hilum-transfer", parent=self)
        self.transfers: list[Transfer] = []
        self._ids = itertools.count(1)
        self._closed = False
        self._started.connect(self._on_started)
        self._progress.connect(self._on_progress)

    def submit(
        self, kind: str, peer: str, what: str, work: Work, then: Callable[[Transfer], None] | None = None
    ) -> Transfer:
        t = Transfer(next(self._ids), kind, peer, what, work, then)
        self.transfers.append(t)
        self.added.emit(t)
        self._start(t)
        return t

    def retry(self, t: Transfer) -> bool:
        """Run a failed or cancelled transfer again (from the start)."""
        if t.state not in (TransferState.FAILED, TransferState.CANCELLED) or self._closed:
            return False
        self._start(t)
        return True

    def cancel(self, t: Transfer) -> bool:
        """Stop a queued or running transfer.

        It is shown cancelled at once; a running one stops at its next step (after the instance in
        flight, or when the association in progress ends: every association has timeouts), and
        whatever it reports after that is dropped.
        """
        if t.finished:
            return False
        t.cancel_event.set()
        t.state = TransferState.CANCELLED
        self.changed.emit(t)
        self.finished.emit(t)
        return True

    def clear_finished(self) -> None:
        """Forget the transfers that are done or cancelled (failed ones stay, to be retried)."""
        for t in [t for t in self.transfers if t.state in (TransferState.DONE, TransferState.CANCELLED)]:
            self.transfers.remove(t)
            self.removed.emit(t)

    def shutdown(self) -> None:
        self._closed = True
        for t in self.transfers:
            t.cancel_event.set()
        self.runner.shutdown(wait=False)

    # ------------------------------------------------------------ running

    def _start(self, t: Transfer) -> None:
        t.state, t.error, t.summary, t.done, t.total = TransferState.QUEUED, "", "", 0, 0
        t.cancel_event = threading.Event()
        t.attempts += 1
        ev = t.cancel_event
        self.changed.emit(t)
        self.runner.submit(
            self._run, t, ev, on_done=partial(self._on_done, t, ev), on_error=partial(self._on_failed, t, ev)
        )

    def _run(self, t: Transfer, cancel: threading.Event) -> str | None:
        """On a worker thread."""
        if cancel.is_set():
            return None
        self._started.emit(t, cancel)
        last = [0.0]

        def report(done: int, total: int) -> None:
            # At most ~20 updates a second reach the GUI (a study of 5,000 instances is not 5,000 repaints).
            now = time.monotonic()
            if 0 < done < total and now - last[0] < PROGRESS_INTERVAL:
                return
            last[0] = now
            self._progress.emit(t, cancel, done, total)

        return t.work(report, cancel)

    def _on_started(self, t: Transfer, ev: threading.Event) -> None:
        if t.cancel_event is ev and t.state is TransferState.QUEUED:
            t.state = TransferState.RUNNING
            self.changed.emit(t)

    def _on_progress(self, t: Transfer, ev: threading.Event, done: int, total: int) -> None:
        if t.cancel_event is not ev or t.finished:
            return
        t.done, t.total = done, total
        self.changed.emit(t)

    def _on_done(self, t: Transfer, ev: threading.Event, summary: str | None) -> None:
        if t.cancel_event is not ev or ev.is_set():
            return  # a later attempt runs, or it was cancelled (and shown so) meanwhile
        t.state, t.summary = TransferState.DONE, summary or ""
        if t.total:
            t.done = t.total
        self.changed.emit(t)
        self.finished.emit(t)
        if t.state is TransferState.DONE and t.then is not None:
            t.then(t)

    def _on_failed(self, t: Transfer, ev: threading.Event, exc: BaseException) -> None:
        if t.cancel_event is not ev or ev.is_set():
            return
        if not isinstance(exc, (DimseError, OSError)):
            log.error("transfer %d failed", t.id, exc_info=exc)
        t.state = TransferState.FAILED
        t.error = (str(exc).splitlines() or [type(exc).__name__])[0]
        self.changed.emit(t)
        self.finished.emit(t)


COLUMNS = ("", "Peer", "What", "Progress", "Status")


def job_table(columns: tuple[str, ...], name: str, parent: QWidget) -> QTableWidget:
    """A read-only table of background jobs, one selectable row each (transfers, prefetch of priors)."""
    table = QTableWidget(0, len(columns), parent)
    table.setObjectName(name)
    table.setHorizontalHeaderLabels(list(columns))
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    return table


class JobQueuePanel(QWidget):
    """A queue of background jobs shown as a table over a row of buttons: one row per job (``job.id``),
    added or updated by :meth:`show_job`, finished ones cleared by :meth:`clear_finished`.

    A subclass gives its columns (:attr:`COLUMNS`), what a job's row says (:meth:`row_values`: the
    cells' texts and tooltips), which columns turn red when the job failed (:attr:`ALERT_COLUMNS`),
    which states are finished (:attr:`FINISHED`), and enables its buttons in :meth:`_update_buttons`.
    (The priors prefetch and the prefetch to this station.)
    """

    COLUMNS: tuple[str, ...] = ()
    ALERT_COLUMNS: frozenset[int] = frozenset()
    FINISHED: frozenset[str] = frozenset({"done"})

    def __init__(self, name: str, table_name: str, state_text: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName(name)
        self.state_label = QLabel(state_text, self)
        self.state_label.setObjectName(name.removesuffix("Panel") + "State")
        self.state_label.setWordWrap(True)
        self.table = job_table(self.COLUMNS, table_name, self)
        self.buttons = QHBoxLayout()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.state_label)
        layout.addWidget(self.table, 1)
        layout.addLayout(self.buttons)
        self.jobs: list[Any] = []
        self.table.itemSelectionChanged.connect(self._update_buttons)

    def button(self, text: str, name: str, tip: str) -> QPushButton:
        b = QPushButton(text, self)
        b.setObjectName(name)
        b.setToolTip(tip)
        return b

    def row_of(self, job_id: int) -> int:
        return next((i for i, j in enumerate(self.jobs) if j.id == job_id), -1)

    def text(self, row: int, column: str) -> str:
        item = self.table.item(row, self.COLUMNS.index(column))
        return item.text() if item is not None else ""

    def selected(self) -> Any:
        rows = {i.row() for i in self.table.selectedIndexes()}
        return self.jobs[min(rows)] if rows else None

    def row_values(self, job: Any) -> tuple[Sequence[str], Sequence[str]]:
        """The texts of the job's cells and their tooltips."""
        raise NotImplementedError

    def show_job(self, job: Any) -> None:
        """Add or update the job's row."""
        row = self.row_of(job.id)
        if row < 0:
            row = self.table.rowCount()
            self.table.insertRow(row)
            self.jobs.append(job)
            for col in range(len(self.COLUMNS)):
                self.table.setItem(row, col, QTableWidgetItem(""))
        else:
            self.jobs[row] = job
        failed = job.state == "failed"
        values, tips = self.row_values(job)
        for col, (value, tip) in enumerate(zip(values, tips, strict=True)):
            item = self.table.item(row, col)
            if item is None:
                continue
            item.setText(value)
            item.setToolTip(tip)
            if col in self.ALERT_COLUMNS:
                item.setForeground(Qt.GlobalColor.darkRed if failed else self.palette().text().color())
        self._update_buttons()

    def clear_finished(self) -> None:
        for row in reversed(range(len(self.jobs))):
            if self.jobs[row].state in self.FINISHED:
                self.table.removeRow(row)
                self.jobs.pop(row)
        self._update_buttons()

    def _update_buttons(self) -> None:
        """Enable the buttons for the selection (the subclass's)."""


class TransfersPanel(QWidget):
    """The transfers table (direction, peer, what, instances done/total, status or error) and its buttons."""

    def __init__(self, queue: TransferQueue, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("transfersPanel")
        self.queue = queue
        self.table = job_table(COLUMNS, "transfersTable", self)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        self.table.setColumnWidth(3, 160)
        self.retry_button = QPushButton("Retry", self)
        self.retry_button.setObjectName("transferRetryButton")
        self.retry_button.setToolTip("Run the selected failed or cancelled transfer again")
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setObjectName("transferCancelButton")
        self.cancel_button.setToolTip("Stop the selected transfer")
        self.clear_button = QPushButton("Clear finished", self)
        self.clear_button.setObjectName("transferClearButton")
        self.clear_button.setToolTip("Remove done and cancelled transfers from the list")
        buttons = QHBoxLayout()
        buttons.addWidget(self.retry_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        buttons.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        self._rows: list[Transfer] = []
        self.retry_button.clicked.connect(self._retry)
        self.cancel_button.clicked.connect(self._cancel)
        self.clear_button.clicked.connect(queue.clear_finished)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        queue.added.connect(self._add)
        queue.changed.connect(self._update)
        queue.removed.connect(self._remove)
        for t in queue.transfers:
            self._add(t)
        self._update_buttons()

    def row_of(self, t: Transfer) -> int:
        return self._rows.index(t) if t in self._rows else -1

    def status_text(self, row: int) -> str:
        item = self.table.item(row, 4)
        return item.text() if item is not None else ""

    def progress_bar(self, row: int) -> QProgressBar:
        bar = self.table.cellWidget(row, 3)
        assert isinstance(bar, QProgressBar)
        return bar

    def selected(self) -> Transfer | None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        return self._rows[min(rows)] if rows else None

    def _add(self, t: Transfer) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        self._rows.append(t)
        arrow = QTableWidgetItem("↑" if t.kind == "send" else "↓")
        arrow.setToolTip("Send (C-STORE)" if t.kind == "send" else "Retrieve")
        arrow.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
        self.table.setItem(row, 0, arrow)
        self.table.setItem(row, 1, QTableWidgetItem(t.peer))
        what = QTableWidgetItem(t.what)
        what.setToolTip(t.what)
        self.table.setItem(row, 2, what)
        bar = QProgressBar(self.table)
        bar.setTextVisible(True)
        self.table.setCellWidget(row, 3, bar)
        self.table.setItem(row, 4, QTableWidgetItem(""))
        self._update(t)

    def _remove(self, t: Transfer) -> None:
        row = self.row_of(t)
        if row >= 0:
            self.table.removeRow(row)
            self._rows.pop(row)
        self._update_buttons()

    def _update(self, t: Transfer) -> None:
        row = self.row_of(t)
        if row < 0:
            return
        bar = self.progress_bar(row)
        if t.total > 0:
            bar.setRange(0, t.total)
            bar.setValue(min(t.done, t.total))
            bar.setFormat("%v / %m")
        elif t.state is TransferState.RUNNING:
            bar.setRange(0, 0)  # busy until the total is known
        else:
            bar.setRange(0, 1)
            bar.setValue(1 if t.state is TransferState.DONE else 0)
            bar.setFormat(f"{t.done}" if t.done else "")
        item = self.table.item(row, 4)
        if item is not None:
            item.setText(t.status_text())
            item.setToolTip(t.error or t.summary)
            item.setForeground(
                Qt.GlobalColor.darkRed if t.state is TransferState.FAILED else self.palette().text().color()
            )
        self._update_buttons()

    def _update_buttons(self) -> None:
        t = self.selected()
        self.retry_button.setEnabled(t is not None and t.state in (TransferState.FAILED, TransferState.CANCELLED))
        self.cancel_button.setEnabled(t is not None and not t.finished)
        self.clear_button.setEnabled(any(t.state in (TransferState.DONE, TransferState.CANCELLED) for t in self._rows))

    def _retry(self) -> None:
        t = self.selected()
        if t is not None:
            self.queue.retry(t)

    def _cancel(self) -> None:
        t = self.selected()
        if t is not None:
            self.queue.cancel(t)


def _study_label(archive: Any, study_uid: str, series_uid: str | None) -> str:
    """``Müller, Jürgen — CT chest (2026-07-07)`` (or ``, series 2 CT``) for the transfers list."""
    try:
        rows = archive.query("STUDY", {"StudyInstanceUID": study_uid}, limit=1)
        series = (
            archive.query("SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}, limit=1)
            if series_uid
            else []
        )
    except Exception:  # noqa: BLE001 - a label is not worth failing over (a peer may be down)
        rows, series = [], []
    row = rows[0] if rows else {}
    name = format_person_name(row.get("PatientName")) or "study"
    desc = str(row.get("StudyDescription") or "")
    text = f"{name} — {desc}" if desc else name
    if series_uid:
        s = series[0] if series else {}
        number = s.get("SeriesNumber")
        text += f", series {number}" if number not in (None, "") else ", one series"
        if s.get("Modality"):
            text += f" {s['Modality']}"
    return text


class TransferController(QObject):
    """The transfers dock, View → Transfers, File → Send to, and the queue behind them."""

    def __init__(self, window: Any):
        super().__init__(window)
        self.window = window
        self.queue = TransferQueue(self)
        self.panel = TransfersPanel(self.queue)
        self.dock = QDockWidget("Transfers", window)
        self.dock.setObjectName("transfersDock")
        self.dock.setWidget(self.panel)
        self.dock.setAllowedAreas(Qt.DockWidgetArea.BottomDockWidgetArea | Qt.DockWidgetArea.RightDockWidgetArea)
        window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.dock)
        self.dock.hide()
        self.show_action = self.dock.toggleViewAction()
        self.show_action.setText("&Transfers")
        self.show_action.setObjectName("showTransfersAction")
        self.show_action.setShortcut("Ctrl+Shift+T")
        self.show_action.setStatusTip("Show the sends and retrieves with DICOM peers")
        window.view_menu.addAction(self.show_action)
        window.addAction(self.show_action)
        self.send_menu = QMenu("&Send to", window)
        self.send_menu.setObjectName("sendToMenu")
        self.send_menu.setStatusTip("Send the study shown or selected to a DICOM peer (C-STORE)")
        self.send_menu.aboutToShow.connect(self._fill_send_menu)
        window.file_menu.insertMenu(window.quit_action, self.send_menu)
        window.file_menu.insertSeparator(window.quit_action)
        window.add_shortcut_help("General", "Ctrl+Shift+T", "Show the transfers with DICOM peers")
        self.queue.added.connect(lambda _t: self.dock.show())
        browser = window.browser
        if hasattr(browser, "sendRequested"):
            # Only what the local archive holds can be sent: nothing while the browser shows a remote source.
            browser.send_targets = lambda: self.send_targets() if browser.logic.archive is window.archive else []
            browser.sendRequested.connect(self.send)

    # ------------------------------------------------------------ peers

    @property
    def peers(self) -> dict[str, Peer]:
        return dict(self.window.config.peers)

    def send_targets(self) -> list[tuple[str, str]]:
        """``(name, label)`` of every configured peer, for the Send to menus."""
        return [(name, f"{name} ({p.aet}@{p.host}:{p.port})") for name, p in sorted(self.peers.items())]

    def _peer(self, name: str) -> Peer:
        peer = self.peers.get(name)
        if peer is None:
            raise KeyError(f"no peer called {name!r} in hilum.toml")
        return peer

    # ------------------------------------------------------------ send

    def current_selection(self) -> tuple[str | None, str | None]:
        """The local study (and series) File → Send to would send: the viewer tab's, else the browser's."""
        widget = self.window.tabs.currentWidget()
        study = getattr(widget, "study_uid", None)
        if isinstance(study, str) and study and getattr(widget, "archive", None) is self.window.archive:
            series: str | None = None
            active = getattr(widget, "active_viewport", None)
            if callable(active):
                try:
                    series = str(active().series_uid or "") or None
                except Exception:  # noqa: BLE001 - no active viewport yet
                    series = None
            return study, series
        browser = self.window.browser
        if browser.logic.archive is not self.window.archive:
            return None, None  # the browser shows a remote source: nothing local is selected
        return browser.selected_study_uid(), None

    def _fill_send_menu(self) -> None:
        self.send_menu.clear()
        study, series = self.current_selection()
        targets = self.send_targets()
        if not targets:
            act = self.send_menu.addAction("No DICOM peers in hilum.toml")
            act.setEnabled(False)
            return
        groups: list[tuple[str, str | None]] = [("Study", None)]
        if series:
            groups.append(("Shown series", series))
        for title, series_uid in groups:
            if len(groups) > 1:
                self.send_menu.addSection(title)
            for name, label in targets:
                act = QAction(label, self.send_menu)
                act.setObjectName(f"sendTo:{name}" if series_uid is None else f"sendSeriesTo:{name}")
                act.setEnabled(study is not None)
                act.triggered.connect(lambda _c=False, n=name, s=series_uid: self.send(study or "", s or "", n))
                self.send_menu.addAction(act)

    def send(self, study_uid: str, series_uid: str, peer_name: str) -> Transfer | None:
        """Queue a C-STORE of a local study (or one series, when ``series_uid``) to a peer."""
        if not study_uid:
            self._message("Select a local study to send first.")
            return None
        try:
            peer = self._peer(peer_name)
        except KeyError as exc:
            self._message(str(exc.args[0]))
            return None
        target = peer_target(self.window.config, peer)
        archive = self.window.archive
        series = series_uid or None

        def work(progress: Callable[[int, int], None], cancel: threading.Event) -> str:
            result = send_study(archive, target, study_uid, series, progress=progress, cancel=cancel)
            if cancel.is_set():
                return "cancelled"
            if result.failed:
                first = next((i.error or f"status 0x{i.status or 0:04X}" for i in result.items if not i.ok), "")
                raise DimseError(f"{result.failed} of {len(result.items)} not stored by {target}: {first}")
            return f"{result.sent} sent to {target}"

        what = _study_label(archive, study_uid, series)
        self._message(f"Sending {what} to {peer_name}…")
        return self.queue.submit("send", peer_name, what, work, then=lambda t: self._message(f"{t.what}: {t.summary}."))

    # ------------------------------------------------------------ retrieve

    def retrieve(
        self,
        peer_name: str,
        study_uid: str,
        series_uid: str | None = None,
        *,
        label: str = "",
        expected: int | None = None,
        then: Callable[[Transfer], None] | None = None,
    ) -> Transfer:
        """Queue the retrieve of a study (or series) from a peer into the local archive (C-GET or C-MOVE,
        as the peer's ``retrieve`` setting says); ``then`` runs on the GUI thread once it is all here.

        ``expected``: how many instances the peer said it holds (its C-FIND row); when the local
        archive already holds that many of them, nothing is asked of the peer.
        """
        peer = self._peer(peer_name)
        target = peer_target(self.window.config, peer)
        archive = self.window.archive
        method = peer.retrieve
        destination = self.window.config.aet
        keys = {"StudyInstanceUID": study_uid, **({"SeriesInstanceUID": series_uid} if series_uid else {})}

        def work(progress: Callable[[int, int], None], cancel: threading.Event) -> str:
            if expected:
                here = archive.count("IMAGE", keys)
                if here >= expected:
                    progress(here, here)
                    return f"all {here} already in the local archive"
            result = retrieve_study(
                archive,
                target,
                study_uid,
                series_uid,
                method=method,
                destination=destination,
                progress=progress,
                cancel=cancel,
            )
            n = result.received if method == "get" else result.completed + result.warning
            return f"{n} retrieved by C-{method.upper()}"

        return self.queue.submit("retrieve", peer_name, label or study_uid, work, then=then)

    # ------------------------------------------------------------ housekeeping

    def _message(self, text: str) -> None:
        log.info("%s", text)
        self.window.statusBar().showMessage(text, 8000)

    def shutdown(self) -> None:
        """The window is closing: cancel what is queued or running, deliver nothing more."""
        self.queue.shutdown()


def install_transfers(window: Any) -> TransferController | None:
    """Add the transfers dock and the Send to menu to *window*; never fatal."""
    try:
        controller = TransferController(window)
    except Exception:  # noqa: BLE001 - the workstation must open without the transfers panel
        log.exception("the transfers panel could not be installed")
        window.transfers = None
        return None
    window.transfers = controller
    return controller
