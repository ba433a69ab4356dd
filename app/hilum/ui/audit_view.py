"""View → Audit trail: the audit events of this archive, read-only, filterable, with a chain check.

A window over :meth:`hilum.archive.audit.AuditLog.search` and
:meth:`~hilum.archive.audit.AuditLog.verify` (issue 21a).  Who may see it is
not enforceable on the workstation itself (whoever runs it can read the
database), so it is shown to every user; nothing here can change the trail.
Searching and verifying run on the window's task runner, never on the GUI
thread; the answer comes back by signal.  Opening the view is recorded as
"Audit Log Used".
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, TypeVar

from PySide6.QtCore import QAbstractTableModel, QDate, QModelIndex, QObject, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
    QDateEdit,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from hilum.archive.audit import EVENT_TYPES, EVENTS, workstation_user
from hilum.ui.icons import icon

log = logging.getLogger(__name__)

COLUMNS = [
    ("pk", "#"),
    ("at", "Time (UTC)"),
    ("event", "Event"),
    ("event_type", "Type"),
    ("action", "Action"),
    ("outcome", "Outcome"),
    ("user", "User / AE"),
    ("peer", "Address"),
    ("patient_id", "Patient ID"),
    ("patient_name", "Patient name"),
    ("study_uids", "Studies"),
    ("instances", "Instances"),
    ("detail", "Detail"),
]
OUTCOMES = {0: "success", 4: "minor failure", 8: "serious failure", 12: "major failure"}
LIMIT = 5000


W = TypeVar("W", bound=QWidget)


def _named(widget: W, name: str) -> W:
    widget.setObjectName(name)
    return widget


class AuditModel(QAbstractTableModel):
    """The rows of one search, newest first."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.rows: list[dict[str, Any]] = []

    def set_rows(self, rows: list[dict[str, Any]]) -> None:
        self.beginResetModel()
        self.rows = rows
        self.endResetModel()

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section][1]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        key = COLUMNS[index.column()][0]
        value = row.get(key)
        if role == Qt.ItemDataRole.DisplayRole:
            if key == "at" and isinstance(value, datetime):
                return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
            if key == "outcome":
                return OUTCOMES.get(int(value or 0), str(value))
            if key == "user" and row.get("ae_title") and row["ae_title"] != value:
                return f"{value} ({row['ae_title']})"
            return "" if value is None else str(value)
        if role == Qt.ItemDataRole.ToolTipRole and key in ("detail", "study_uids"):
            return str(value or "")
        if role == Qt.ItemDataRole.ForegroundRole and key == "outcome" and int(value or 0):
            from PySide6.QtGui import QColor

            return QColor(200, 40, 40)
        return None


class AuditView(QDialog):
    """The audit trail window (non-modal): filters, the table, Verify."""

    loaded = Signal(object)
    verified = Signal(object)
    failed = Signal(str)

    def __init__(self, archive: Any, tasks: Any, parent: QWidget | None = None, *, config: Any = None):
        super().__init__(parent)
        self.setObjectName("auditView")
        self.setWindowTitle("Audit trail")
        self.resize(1200, 640)
        self.archive = archive
        self.tasks = tasks
        self.config = config
        self.user_edit = _named(QLineEdit(self, placeholderText="user or AE title"), "auditUser")
        self.patient_edit = _named(QLineEdit(self, placeholderText="patient ID or name (*)"), "auditPatient")
        self.study_edit = _named(QLineEdit(self, placeholderText="Study Instance UID"), "auditStudy")
        self.event_combo = _named(QComboBox(self), "auditEvent")
        self.event_combo.addItem("Any event", "")
        for name in [*EVENTS, *EVENT_TYPES]:
            self.event_combo.addItem(name, name)
        self.since_edit = _named(QDateEdit(self), "auditSince")
        self.since_edit.setCalendarPopup(True)
        self.since_edit.setDisplayFormat("yyyy-MM-dd")
        self.since_edit.setDate(QDate.currentDate().addDays(-30))
        self.search_button = _named(QPushButton(icon("mdi6.magnify", "S"), "&Search", self), "auditSearch")
        self.search_button.setToolTip("Search the audit trail with these filters (Enter)")
        self.verify_button = _named(
            QPushButton(icon("mdi6.shield-check-outline", "V"), "&Verify chain", self), "auditVerify"
        )
        self.verify_button.setToolTip(
            "Recompute the hash chain of the whole trail (Ctrl+Shift+V): a modified, deleted or inserted event is found"
        )
        self.status = _named(QLabel("", self), "auditStatus")
        self.model = AuditModel(self)
        self.table = _named(QTableView(self), "auditTable")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QTableView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().hide()

        filters = QHBoxLayout()
        for w in (self.user_edit, self.patient_edit, self.study_edit, self.event_combo):
            filters.addWidget(w)
        filters.addWidget(QLabel("since", self))
        filters.addWidget(self.since_edit)
        filters.addWidget(self.search_button)
        filters.addWidget(self.verify_button)
        layout = QVBoxLayout(self)
        layout.addLayout(filters)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)

        self.search_button.clicked.connect(self.search)
        self.verify_button.clicked.connect(self.verify)
        for edit in (self.user_edit, self.patient_edit, self.study_edit):
            edit.returnPressed.connect(self.search)
        QShortcut(QKeySequence("Ctrl+Shift+V"), self, self.verify)
        self.loaded.connect(self._on_loaded)
        self.verified.connect(self._on_verified)
        self.failed.connect(self._on_failed)
        self._noted = False

    def filters(self) -> dict[str, Any]:
        q = self.since_edit.date()
        return {
            "user": self.user_edit.text().strip() or None,
            "patient": self.patient_edit.text().strip() or None,
            "study": self.study_edit.text().strip() or None,
            "event": self.event_combo.currentData() or None,
            "since": datetime(q.year(), q.month(), q.day(), tzinfo=UTC),
        }

    def search(self) -> None:
        """Search off the GUI thread; the table fills when the answer comes."""
        self.status.setText("Searching…")
        self.search_button.setEnabled(False)
        filters = self.filters()
        if not self._noted:  # PS3.15 A.5.3.2: reading the trail is an event of its own
            self._noted = True
            self.archive.audit(
                "Audit Log Used",
                action="R",
                user=workstation_user(self.config),
                detail="audit trail viewed in the workstation",
            )
        self.tasks.submit(
            lambda: self.archive.audit.search(**filters, limit=LIMIT, newest_first=True),
            on_done=self.loaded.emit,
            on_error=lambda exc: self.failed.emit(f"Cannot search: {exc}"),
        )

    def verify(self) -> None:
        self.status.setText("Verifying the hash chain…")
        self.verify_button.setEnabled(False)
        self.tasks.submit(
            self.archive.audit.verify,
            on_done=self.verified.emit,
            on_error=lambda exc: self.failed.emit(f"Cannot verify: {exc}"),
        )

    def _on_loaded(self, rows: list[dict[str, Any]]) -> None:
        self.search_button.setEnabled(True)
        self.model.set_rows(rows)
        self.table.resizeColumnsToContents()
        more = " (the newest; narrow the filters for older ones)" if len(rows) >= LIMIT else ""
        self.status.setText(f"{len(rows)} events{more}")

    def _on_verified(self, result: Any) -> None:
        self.verify_button.setEnabled(True)
        self.status.setText(result.line())
        self.status.setStyleSheet("" if result.ok else "color: rgb(200, 40, 40); font-weight: bold")

    def _on_failed(self, message: str) -> None:
        self.search_button.setEnabled(True)
        self.verify_button.setEnabled(True)
        self.status.setText(message)
