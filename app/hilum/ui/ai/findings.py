"""The "AI results" dock: findings and score of the shown result, results in the archive, overlays.

:class:`FindingsDock` lists the findings of an AI result (label, score, slice, measurements) and
the series' score above them; a double-click or Enter on a row asks the viewer to jump to the
finding (:attr:`FindingsDock.jumpRequested`, handled by the controller: the slice is shown and the
finding centred). Above: the AI objects of the archive that reference the series ("offered"
when a series is opened; choose one and press Show). Below: the overlay switches — the AI
segmentation (all segments; per segment: the segments panel, Ctrl+Shift+G), the heat map, and
one opacity slider for both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from hilum.ai.model import Finding, Score
from hilum.ui.ai.results import ArchivedResult

__all__ = ["FindingsDock", "FindingsTable"]

COL_LABEL, COL_SCORE, COL_SLICE, COL_MEASURE = range(4)


def _measure_text(f: Finding) -> str:
    parts = []
    for name, (value, unit) in f.measurements.items():
        u = {"ml": "mL", "mm2": "mm²", "1": ""}.get(unit, unit)
        parts.append(f"{name} {value:.4g} {u}".strip())
    return "; ".join(parts)


class FindingsTable(QTableWidget):
    """The findings list; Enter/Return on a row activates it like a double-click."""

    activated = Signal(int)  # row

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, 4, parent)
        self.setObjectName("aiFindingsTable")
        self.setHorizontalHeaderLabels(["Finding", "Score", "Slice", "Measurements"])
        self.verticalHeader().hide()
        self.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.horizontalHeader().setStretchLastSection(True)
        self.setColumnWidth(COL_LABEL, 130)
        self.setColumnWidth(COL_SCORE, 50)
        self.setColumnWidth(COL_SLICE, 44)
        self.cellDoubleClicked.connect(lambda row, _col: self.activated.emit(row))

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.currentRow() >= 0:
            self.activated.emit(self.currentRow())
            event.accept()
            return
        super().keyPressEvent(event)


class FindingsDock(QDockWidget):
    """Findings, score, archived results and overlay switches of the current series."""

    jumpRequested = Signal(int)  # index into :attr:`findings`
    archivedRequested = Signal(object)  # ArchivedResult
    segVisibleChanged = Signal(bool)
    heatVisibleChanged = Signal(bool)
    opacityChanged = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("AI results", parent)
        self.setObjectName("aiFindingsDock")
        self.findings: list[Finding] = []
        self.archived: list[ArchivedResult] = []
        body = QWidget(self)
        lay = QVBoxLayout(body)
        lay.setContentsMargins(6, 4, 6, 4)
        self.title = QLabel("No AI result shown. AI → Run on this series (Ctrl+Alt+I).", body)
        self.title.setObjectName("aiResultTitle")
        self.title.setWordWrap(True)
        lay.addWidget(self.title)
        row = QHBoxLayout()
        self.archive_box = QComboBox(body)
        self.archive_box.setObjectName("aiArchivedBox")
        self.archive_box.setToolTip("AI results of this series already in the archive")
        self.archive_box.setEnabled(False)
        self.archive_box.addItem("No AI result in the archive for this series")
        self.show_btn = QPushButton("Show", body)
        self.show_btn.setObjectName("aiShowArchived")
        self.show_btn.setToolTip("Show the chosen AI result of the archive on the series")
        self.show_btn.setEnabled(False)
        self.show_btn.clicked.connect(self._show_archived)
        row.addWidget(self.archive_box, 1)
        row.addWidget(self.show_btn)
        lay.addLayout(row)
        self.score = QLabel("", body)
        self.score.setObjectName("aiScore")
        self.score.hide()
        lay.addWidget(self.score)
        self.table = FindingsTable(body)
        self.table.activated.connect(self.jumpRequested)
        lay.addWidget(self.table, 1)
        self.seg_box = QCheckBox("Segmentation overlay", body)
        self.seg_box.setObjectName("aiSegVisible")
        self.seg_box.setToolTip("Show / hide all segments (Ctrl+Alt+G); each segment: the segments panel")
        self.seg_box.setChecked(True)
        self.seg_box.toggled.connect(self.segVisibleChanged)
        self.heat_box = QCheckBox("Heat map", body)
        self.heat_box.setObjectName("aiHeatVisible")
        self.heat_box.setToolTip("Show / hide the heat map (Ctrl+Alt+H)")
        self.heat_box.setChecked(True)
        self.heat_box.toggled.connect(self.heatVisibleChanged)
        row = QHBoxLayout()
        row.addWidget(self.seg_box)
        row.addWidget(self.heat_box)
        lay.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Opacity", body))
        self.opacity = QSlider(Qt.Orientation.Horizontal, body)
        self.opacity.setObjectName("aiOpacity")
        self.opacity.setRange(0, 100)
        self.opacity.setValue(50)
        self.opacity.setPageStep(10)
        self.opacity.setToolTip("Opacity of the AI overlays (Ctrl+Alt+= more, Ctrl+Alt+- less)")
        self.opacity.valueChanged.connect(lambda v: self.opacityChanged.emit(v / 100.0))
        row.addWidget(self.opacity, 1)
        lay.addLayout(row)
        self.setWidget(body)
        self.setMinimumWidth(280)

    # ------------------------------------------------------------ content

    def show_result(self, title: str, findings: list[Finding], score: Score | None,
                    image_number: Callable[[int], int | None] | None = None) -> None:  # fmt: skip
        """List *findings* (and *score*) of the result called *title*; *image_number* gives the
        viewer's image number (1-based, as the overlay's "Im") of a volume slice."""
        self.title.setText(title or "AI result")
        self.findings = list(findings)
        if score is not None:
            unit = "" if score.unit in ("", "1") else f" {score.unit}"
            self.score.setText(f"<b>{score.label}</b>: {score.value:.3g}{unit}")
            self.score.show()
        else:
            self.score.hide()
        self.table.setRowCount(0)
        for f in self.findings:
            r = self.table.rowCount()
            self.table.insertRow(r)
            self.table.setItem(r, COL_LABEL, QTableWidgetItem(f.label))
            self.table.setItem(r, COL_SCORE, QTableWidgetItem("" if f.score is None else f"{f.score:.2f}"))
            number = None
            if f.slice_index is not None:
                number = image_number(f.slice_index) if image_number is not None else f.slice_index + 1
            s = QTableWidgetItem("" if number is None else str(number))
            s.setToolTip("The image number in the viewer (Im)")
            s.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(r, COL_SLICE, s)
            self.table.setItem(r, COL_MEASURE, QTableWidgetItem(_measure_text(f)))
        if self.findings:
            self.table.selectRow(0)

    def clear_result(self, text: str = "") -> None:
        self.show_result(text or "No AI result shown. AI → Run on this series (Ctrl+Alt+I).", [], None)

    def offer(self, results: list[ArchivedResult]) -> None:
        """The archive's AI results of the current series, newest selected."""
        self.archived = list(results)
        self.archive_box.clear()
        if not results:
            self.archive_box.addItem("No AI result in the archive for this series")
        for r in results:
            self.archive_box.addItem(r.text)
        self.archive_box.setEnabled(bool(results))
        self.show_btn.setEnabled(bool(results))
        if results:
            self.archive_box.setCurrentIndex(len(results) - 1)

    def _show_archived(self) -> None:
        i = self.archive_box.currentIndex()
        if 0 <= i < len(self.archived):
            self.archivedRequested.emit(self.archived[i])

    def row_text(self, row: int) -> list[str]:
        """The cells of one row as shown (for tests and accessibility)."""
        out = []
        for c in range(self.table.columnCount()):
            item = self.table.item(row, c)
            out.append(item.text() if item is not None else "")
        return out

    def set_opacity(self, value: float) -> None:
        self.opacity.setValue(int(round(max(0.0, min(1.0, value)) * 100)))

    def sync(self, *, seg: bool | None = None, heat: bool | None = None) -> None:
        """Check boxes set from the model without echoing back."""
        for box, on in ((self.seg_box, seg), (self.heat_box, heat)):
            if on is not None and box.isChecked() != on:
                box.blockSignals(True)
                box.setChecked(on)
                box.blockSignals(False)

    def current_archived(self) -> Any:
        i = self.archive_box.currentIndex()
        return self.archived[i] if 0 <= i < len(self.archived) else None
