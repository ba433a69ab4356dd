"""The worklist browser: today's and upcoming orders, filters, status colours, open the study.

:class:`WorklistQuery` is the headless logic (STYLE.md §3): filters →
worklist keys for :meth:`hilum.archive.orders.OrderBook.worklist` (the same
DICOM matching the MWL SCP uses), rows → display values.
:class:`WorklistBrowser` binds it to widgets: a filter bar (date span,
modality, status, patient/accession search), a table whose status column is
coloured, and an *Open study* action enabled when images have arrived (it
emits :attr:`WorklistBrowser.openRequested` with the study's UID; the main
window connects it to its open-study path).  The *Priors* column shows the
prefetch of each patient's priors (:meth:`WorklistTableModel.set_priors`, fed
by :mod:`hilum.ui.prefetch_panel`: queued, fetching, ready (n), failed).

Reporting (issue 20): the *Report* column shows the state of the study's newest
report (:meth:`hilum.archive.reports.Reports.status_of`: draft, preliminary,
final, amended; coloured as the editor's badge), *Since images* and *Since
order* the turnaround so far (time since the images arrived and since the order
was placed, counting on every minute), STAT orders come first (then HIGH, then by time), and *Report*
(button, or Ctrl+Shift+D from the main window) emits :attr:`WorklistBrowser.reportRequested`.

Queries run on a worker thread; results come back by a queued signal, stale
ones dropped (DESIGN.md "The GUI never waits").  The list refreshes when
the order book reports a change (HL7 ORM/ADT, MPPS, images reconciled),
throttled, and every :attr:`WorklistBrowser.POLL_MS` as a fallback for
changes made by another process on the same database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QKeyEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from hilum.archive.orders import CANCELLED, COMPLETED, DISCONTINUED, IN_PROGRESS, SCHEDULED, OrderBook

log = logging.getLogger(__name__)

#: Status → (label, colour of the status cell).
STATUS_STYLE: dict[str, tuple[str, str]] = {
    SCHEDULED: ("Scheduled", "#2f6fb3"),
    IN_PROGRESS: ("In progress", "#c77c00"),
    COMPLETED: ("Completed", "#2e8b3d"),
    DISCONTINUED: ("Discontinued", "#8e44ad"),
    CANCELLED: ("Cancelled", "#8a8a8a"),
}
ARRIVED_STYLE = ("Images", "#1b7f6b")

DATE_SPANS = ("Today and upcoming", "Today", "Next 7 days", "Past 7 days", "All dates")
STATUS_FILTERS: dict[str, tuple[str, ...]] = {
    "Active": (SCHEDULED, IN_PROGRESS),
    "Scheduled": (SCHEDULED,),
    "In progress": (IN_PROGRESS,),
    "Completed": (COMPLETED,),
    "Discontinued": (DISCONTINUED,),
    "Cancelled": (CANCELLED,),
    "All": (),
}
MODALITIES = ("All", "CT", "MR", "US", "CR", "DX", "MG", "NM", "PT", "XA", "RF", "OT")


@dataclass(frozen=True)
class Column:
    title: str
    key: str
    width: int = 110


COLUMNS = (
    Column("Status", "_status", 100),
    Column("Date", "ScheduledProcedureStepStartDate", 90),
    Column("Time", "ScheduledProcedureStepStartTime", 60),
    Column("Modality", "Modality", 70),
    Column("Station", "ScheduledStationAETitle", 90),
    Column("Patient", "PatientName", 200),
    Column("Patient ID", "PatientID", 100),
    Column("Accession", "AccessionNumber", 120),
    Column("Procedure", "RequestedProcedureDescription", 200),
    Column("Priority", "RequestedProcedurePriority", 70),
    Column("Images", "_images_at", 70),
    Column("Priors", "_priors", 110),
    # issue 20: appended, so the columns above keep their places
    Column("Report", "_report", 90),
    Column("Since images", "_since_images", 90),
    Column("Since order", "_since_order", 90),
)

#: Report state (hilum.archive.reports) → (label, colour of the Report cell): the editor's badge colours.
REPORT_STYLE: dict[str, tuple[str, str]] = {
    "draft": ("Draft", "#2f6fb3"),
    "preliminary": ("Preliminary", "#c77c00"),
    "final": ("Final", "#2e8b3d"),
    "amended": ("Amended", "#8e44ad"),
}
#: Requested Procedure Priority (PS3.3 C.4.11: STAT, HIGH, ROUTINE, MEDIUM, LOW) → sort rank.
PRIORITY_RANK = {"STAT": 0, "HIGH": 1, "ROUTINE": 2, "MEDIUM": 3, "LOW": 4}


def priority_rank(row: Mapping[str, Any]) -> int:
    """STAT first, then HIGH; unknown or empty priorities sort as ROUTINE."""
    return PRIORITY_RANK.get(str(row.get("RequestedProcedurePriority") or "").strip().upper(), 2)


def elapsed_text(since: Any, now: datetime | None = None) -> str:
    """How long ago *since* (a datetime; naive = UTC) was: "45 min", "3 h 05", "2 d 4 h" ("" if None)."""
    if not isinstance(since, datetime):
        return ""
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    seconds = int(((now or datetime.now(UTC)) - since).total_seconds())
    if seconds < 0:
        return ""
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d}"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


#: Prefetch state of a patient's priors → colour of the worklist's Priors cell.
PRIORS_COLOURS = {"queued": "#666666", "running": "#2f6fb3", "done": "#2e8b3d", "failed": "#b00020"}


@dataclass(frozen=True)
class PriorsMark:
    """What the Priors column shows for a patient: the state of its last prefetch job."""

    state: str  # queued | running | done | failed
    text: str  # "fetching 1/2", "ready (2)", "failed"
    tip: str = ""


def priors_key(row: Mapping[str, Any]) -> tuple[str, str]:
    """The patient a worklist row (or a prefetch job's fields) is about: (Patient ID, issuer)."""
    return str(row.get("PatientID") or ""), str(row.get("IssuerOfPatientID") or "")


def _da(d: date) -> str:
    return d.strftime("%Y%m%d")


@dataclass(frozen=True)
class WorklistFilter:
    """What the user filters on; :meth:`identifiers` turns it into worklist keys."""

    span: str = "Today and upcoming"
    modality: str = "All"
    status: str = "Active"
    text: str = ""

    def date_key(self, today: date | None = None) -> str:
        t = today or date.today()
        return {
            "Today and upcoming": f"{_da(t)}-",
            "Today": _da(t),
            "Next 7 days": f"{_da(t)}-{_da(t + timedelta(days=7))}",
            "Past 7 days": f"{_da(t - timedelta(days=7))}-{_da(t)}",
        }.get(self.span, "")

    def identifiers(self, today: date | None = None) -> list[dict[str, Any]]:
        """One identifier per alternative (the text matches a name, an ID or an accession number)."""
        base: dict[str, Any] = {"ScheduledProcedureStepStartDate": self.date_key(today)}
        if self.modality and self.modality != "All":
            base["Modality"] = self.modality
        statuses = STATUS_FILTERS.get(self.status, ())
        if statuses:
            base["ScheduledProcedureStepStatus"] = list(statuses)
        text = self.text.strip().replace("\\", "")
        if not text:
            return [base]
        pattern = text if ("*" in text or "?" in text) else f"*{text}*"
        return [{**base, "PatientName": pattern}, {**base, "PatientID": text}, {**base, "AccessionNumber": text}]


class WorklistQuery:
    """Headless worklist logic on an archive's order book."""

    LIMIT = 2000

    def __init__(self, archive: Any):
        self.book = OrderBook(archive)
        self.archive = archive

    def rows(self, flt: WorklistFilter, today: date | None = None) -> list[dict[str, Any]]:
        seen: dict[int, dict[str, Any]] = {}
        for ident in flt.identifiers(today):
            for row in self.book.worklist(ident, active_only=False, limit=self.LIMIT, fold_names=True):
                seen.setdefault(row["_sps_pk"], row)
        rows = sorted(seen.values(), key=lambda r: (priority_rank(r), r["ScheduledProcedureStepStartDate"] or "99999999",
                                                    r["ScheduledProcedureStepStartTime"], r["_sps_pk"]))  # fmt: skip
        self.add_report_status(rows)
        return rows

    def add_report_status(self, rows: Sequence[dict[str, Any]]) -> None:
        """``_report`` of each row: the state of its study's newest report ("" without one)."""
        uids = {uid for r in rows if (uid := self.report_study(r))}
        status: Mapping[str, str] = {}
        if uids:
            try:
                from hilum.archive.reports import Reports

                status = Reports(self.archive).status_of(uids)
            except Exception as exc:  # noqa: BLE001 - the worklist shows orders without report status
                log.warning("report status not available: %s", exc)
        for r in rows:
            r["_report"] = status.get(self.report_study(r), "")

    @staticmethod
    def report_study(row: Mapping[str, Any]) -> str:
        """The study a row's report is about: the performed study, else the ordered one."""
        return str(row.get("_performed_study_uid") or row.get("StudyInstanceUID") or "")

    @staticmethod
    def study_to_open(row: Mapping[str, Any]) -> str | None:
        """The study to open for a row: the one its images arrived in, or None before they have."""
        if row.get("_images_at") is None:
            return None
        return str(row.get("_performed_study_uid") or row.get("StudyInstanceUID") or "") or None


def display(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "_status":
        return STATUS_STYLE.get(str(value), (str(value), ""))[0]
    if key == "_images_at":
        return ARRIVED_STYLE[0] if value is not None else ""
    if key == "_report":
        return REPORT_STYLE.get(str(value or ""), (str(value or ""), ""))[0]
    if key == "_since_images":
        return elapsed_text(row.get("_images_at"))
    if key == "_since_order":
        return elapsed_text(row.get("_created_at"))
    if value is None:
        return ""
    text = str(value)
    if key == "ScheduledProcedureStepStartDate" and len(text) == 8:
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    if key == "ScheduledProcedureStepStartTime" and len(text) >= 4:
        return f"{text[:2]}:{text[2:4]}"
    if key == "PatientName":
        parts = text.split("=")[0].split("^")
        return ", ".join(p for p in parts[:2] if p) if len(parts) > 1 else text
    return text


class WorklistTableModel(QAbstractTableModel):
    """Rows of :meth:`WorklistQuery.rows`; the status and images columns are coloured."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._rows: list[dict[str, Any]] = []
        self._priors: dict[tuple[str, str], PriorsMark] = {}
        self._priors_col = next(i for i, c in enumerate(COLUMNS) if c.key == "_priors")

    def set_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def row_at(self, r: int) -> dict[str, Any] | None:
        return self._rows[r] if 0 <= r < len(self._rows) else None

    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows)

    def set_priors(self, patient: tuple[str, str], mark: PriorsMark) -> None:
        """Show the prefetch state of a patient's priors on each of its rows."""
        self._priors[patient] = mark
        for i, row in enumerate(self._rows):
            if priors_key(row) == patient:
                cell = self.index(i, self._priors_col)
                self.dataChanged.emit(cell, cell)

    def priors_mark(self, row: Mapping[str, Any]) -> PriorsMark | None:
        return self._priors.get(priors_key(row))

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section].title
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        row = self.row_at(index.row())
        if row is None or not index.isValid():
            return None
        key = COLUMNS[index.column()].key
        if key == "_priors":
            mark = self.priors_mark(row)
            if mark is None:
                return None
            if role == Qt.ItemDataRole.DisplayRole:
                return mark.text
            if role == Qt.ItemDataRole.ToolTipRole:
                return mark.tip or None
            if role == Qt.ItemDataRole.ForegroundRole:
                return QBrush(QColor(PRIORS_COLOURS.get(mark.state, "#666666")))
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return display(row, key)
        if key == "_report" and row.get("_report") and role == Qt.ItemDataRole.ForegroundRole:
            return QBrush(QColor(REPORT_STYLE.get(row["_report"], ("", "#666666"))[1]))
        if key == "RequestedProcedurePriority" and priority_rank(row) == 0:
            if role == Qt.ItemDataRole.ForegroundRole:
                return QBrush(QColor("#b00020"))
            if role == Qt.ItemDataRole.FontRole:
                from PySide6.QtGui import QFont

                f = QFont()
                f.setBold(True)
                return f
        if role == Qt.ItemDataRole.ToolTipRole and key in ("_since_images", "_since_order"):
            return "Time since the images arrived" if key == "_since_images" else "Time since the order was placed"
        if role == Qt.ItemDataRole.ToolTipRole and key == "_images_at" and row.get("_images_at") is not None:
            return "Images have arrived: double-click to open the study"
        if key == "_status" and role in (Qt.ItemDataRole.BackgroundRole, Qt.ItemDataRole.ForegroundRole):
            colour = STATUS_STYLE.get(row["_status"], ("", "#666666"))[1]
            return QBrush(QColor(colour)) if role == Qt.ItemDataRole.BackgroundRole else QBrush(QColor("white"))
        if key == "_images_at" and row.get("_images_at") is not None and role == Qt.ItemDataRole.ForegroundRole:
            return QBrush(QColor(ARRIVED_STYLE[1]))
        if role == Qt.ItemDataRole.ForegroundRole and row["_status"] == CANCELLED:
            return QBrush(QColor("#8a8a8a"))
        return None


class WorklistBrowser(QWidget):
    """The worklist tab of the workstation.

    Signals: ``openRequested(study_uid)`` when the user opens an order whose
    images have arrived; ``refreshed(count)`` after each refresh.
    """

    openRequested = Signal(str)
    reportRequested = Signal(str)
    """Report on the selected order's study (its images have arrived): the Report button."""
    refreshed = Signal(int)
    _results = Signal(int, object, object)  # generation, rows, error
    _orders_changed = Signal()

    THROTTLE_MS = 250
    POLL_MS = 30_000

    def __init__(self, archive: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("worklistBrowser")
        self.query = WorklistQuery(archive)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hilum-worklist")
        self._generation = 0
        self._gen_lock = threading.Lock()
        self._closed = False

        self.span = QComboBox(self)
        self.span.addItems(DATE_SPANS)
        self.modality = QComboBox(self)
        self.modality.addItems(MODALITIES)
        self.status = QComboBox(self)
        self.status.addItems(list(STATUS_FILTERS))
        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Patient name, ID or accession number")
        self.search.setClearButtonEnabled(True)
        self.refresh_button = QPushButton("Refresh", self)
        self.open_button = QPushButton("Open study", self)
        self.open_button.setEnabled(False)
        self.report_button = QPushButton("Report", self)
        self.report_button.setObjectName("worklistReportButton")
        self.report_button.setToolTip("Open the study and its report editor (Ctrl+Shift+D)")
        self.report_button.setEnabled(False)
        bar = QHBoxLayout()
        for label, w in (("Date", self.span), ("Modality", self.modality), ("Status", self.status)):
            bar.addWidget(QLabel(label, self))
            bar.addWidget(w)
        bar.addWidget(self.search, 1)
        bar.addWidget(self.refresh_button)
        bar.addWidget(self.open_button)
        bar.addWidget(self.report_button)

        self.model = WorklistTableModel(self)
        self.table = QTableView(self)
        self.table.setObjectName("worklistTable")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        for i, col in enumerate(COLUMNS):
            self.table.setColumnWidth(i, col.width)
        self.summary = QLabel(self)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 4)
        layout.addLayout(bar)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.summary)

        self._throttle = QTimer(self)
        self._throttle.setSingleShot(True)
        self._throttle.setInterval(self.THROTTLE_MS)
        self._throttle.timeout.connect(self.refresh)
        self._poll = QTimer(self)
        self._poll.setInterval(self.POLL_MS)
        self._poll.timeout.connect(self.refresh)
        self._poll.start()
        self._tick = QTimer(self)  # the turnaround columns count on between refreshes
        self._tick.setInterval(60_000)
        self._tick.timeout.connect(self._update_elapsed)
        self._tick.start()

        self._results.connect(self._on_results)
        self._orders_changed.connect(self._throttle.start)
        for combo in (self.span, self.modality, self.status):
            combo.currentIndexChanged.connect(self.refresh)
        self.search.textChanged.connect(lambda _t: self._throttle.start())
        self.refresh_button.clicked.connect(self.refresh)
        self.open_button.clicked.connect(self.open_selected)
        self.report_button.clicked.connect(self.report_selected)
        self.table.doubleClicked.connect(lambda idx: self.open_row(idx.row()))
        self.table.selectionModel().selectionChanged.connect(lambda *_: self._update_open_button())
        self._unsubscribe = self.query.book.subscribe(self._on_order_event)
        self._unsubscribe_reports = self._subscribe_reports(archive)
        self.refresh()

    # ------------------------------------------------------------ filters and refresh

    def current_filter(self) -> WorklistFilter:
        return WorklistFilter(span=self.span.currentText(), modality=self.modality.currentText(),
                              status=self.status.currentText(), text=self.search.text())

    def refresh(self) -> None:
        """Re-run the query on the worker thread (results by signal; stale ones dropped)."""
        if self._closed:
            return
        with self._gen_lock:
            self._generation += 1
            gen = self._generation
        flt = self.current_filter()

        def work() -> None:
            try:
                rows, err = self.query.rows(flt), None
            except Exception as exc:  # noqa: BLE001 - shown in the summary line
                rows, err = [], exc
            if not self._closed:
                try:
                    self._results.emit(gen, rows, err)
                except RuntimeError:  # the widget is gone
                    pass

        self._pool.submit(work)

    def _on_results(self, gen: int, rows: list[dict[str, Any]], err: BaseException | None) -> None:
        if gen != self._generation or self._closed:
            return
        selected = self._selected_step()
        self.model.set_rows(rows)
        if selected is not None:
            for i, r in enumerate(rows):
                if r["_sps_pk"] == selected:
                    self.table.selectRow(i)
                    break
        if err is not None:
            log.warning("worklist query failed: %s", err)
            self.summary.setText(f"Query failed: {err}")
        else:
            arrived = sum(1 for r in rows if r.get("_images_at") is not None)
            self.summary.setText(f"{len(rows)} order(s), {arrived} with images")
        self._update_open_button()
        self.refreshed.emit(len(rows))

    def _subscribe_reports(self, archive: Any) -> Any:
        """Refresh when a report is created, marked preliminary, signed or amended (not on each autosave)."""
        try:
            from hilum.archive.reports import ReportChanged

            def on_report(event: Any) -> None:
                if getattr(event, "what", "") not in ("saved", "stored"):
                    self._on_order_event(event)

            return archive.events.subscribe(ReportChanged, on_report)
        except Exception as exc:  # noqa: BLE001 - the 30 s poll still shows report states
            log.warning("the worklist does not follow report changes: %s", exc)
            return lambda: None

    def _on_order_event(self, _event: Any) -> None:
        # Called from the thread that committed the change: hop to the GUI thread.
        if not self._closed:
            try:
                self._orders_changed.emit()
            except RuntimeError:
                pass

    # ------------------------------------------------------------ opening

    def _selected_step(self) -> int | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        row = self.model.row_at(rows[0].row()) if rows else None
        return None if row is None else int(row["_sps_pk"])

    def selected_row(self) -> dict[str, Any] | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.row_at(rows[0].row()) if rows else None

    def _update_open_button(self) -> None:
        row = self.selected_row()
        can = row is not None and WorklistQuery.study_to_open(row) is not None
        self.open_button.setEnabled(can)
        self.report_button.setEnabled(can)

    def _update_elapsed(self) -> None:
        cols = [i for i, c in enumerate(COLUMNS) if c.key in ("_since_images", "_since_order")]
        if self.model.rowCount() and cols:
            self.model.dataChanged.emit(self.model.index(0, min(cols)),
                                        self.model.index(self.model.rowCount() - 1, max(cols)))

    def report_selected(self) -> bool:
        """Report on the selected order's study (``reportRequested``); False before its images came."""
        row = self.selected_row()
        uid = WorklistQuery.study_to_open(row) if row is not None else None
        if uid is None:
            self.summary.setText("No images for this order yet: nothing to report on")
            return False
        self.reportRequested.emit(uid)
        return True

    def open_row(self, r: int) -> bool:
        """Open row ``r``'s study if its images have arrived; returns whether it did."""
        row = self.model.row_at(r)
        uid = WorklistQuery.study_to_open(row) if row is not None else None
        if uid is None:
            self.summary.setText("No images for this order yet")
            return False
        self.openRequested.emit(uid)
        return True

    def open_selected(self) -> bool:
        rows = self.table.selectionModel().selectedRows()
        return self.open_row(rows[0].row()) if rows else False

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.open_selected():
            return
        super().keyPressEvent(event)

    # ------------------------------------------------------------ closing

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._unsubscribe()
        self._unsubscribe_reports()
        self._throttle.stop()
        self._poll.stop()
        self._tick.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(event)
