"""The priors timeline beside the series strip: the patient's earlier studies, most relevant first.

The viewer fills it off the GUI thread (:meth:`StudyViewer._start_priors`): the
local archive's priors first, a remote peer's when they come. One row per
prior: date and how long before the current study, modality, description,
where it is (this archive or a peer's name) and the relevance; the ranking's
reason is the tooltip. Clicking a local prior opens the comparison; a remote
prior has a "Retrieve" button and shows the retrieve's progress or failure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from hilum.priors import Prior

__all__ = ["PriorsPanel", "age_text", "date_text"]

logger = logging.getLogger(__name__)
UID_ROLE = Qt.ItemDataRole.UserRole + 1


def date_text(da: str) -> str:
    """``YYYYMMDD`` → ``YYYY-MM-DD`` (anything else as it is; "" → "date unknown")."""
    da = (da or "").strip()
    if len(da) == 8 and da.isdigit():
        return f"{da[:4]}-{da[4:6]}-{da[6:]}"
    return da or "date unknown"


def _parse(da: str) -> date | None:
    try:
        return date(int(da[:4]), int(da[4:6]), int(da[6:8])) if len(da) == 8 and da.isdigit() else None
    except ValueError:
        return None


def age_text(prior_date: str, current_date: str) -> str:
    """How long before the current study a prior was made: "1 y 2 m", "3 m", "12 d" ("" unknown)."""
    a, b = _parse(prior_date), _parse(current_date)
    if a is None or b is None:
        return ""
    days = (b - a).days
    if days < 0:
        return "later"
    months = (b.year - a.year) * 12 + (b.month - a.month) - (1 if b.day < a.day else 0)
    if months <= 0:
        return f"{days} d"
    years, months = divmod(months, 12)
    if not years:
        return f"{months} m"
    return f"{years} y {months} m" if months else f"{years} y"


class PriorRow(QWidget):
    """One prior: two lines of text, and for a remote prior a Retrieve button and a progress bar."""

    retrieveClicked = Signal(str)

    def __init__(self, prior: Prior, current_date: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.prior = prior
        self.setObjectName("priorRow")
        modalities = "/".join(prior.modalities) or "?"
        age = age_text(prior.study_date, current_date)
        self.title = QLabel(f"<b>{date_text(prior.study_date)}</b> {modalities}" + (f" · {age}" if age else ""), self)
        self.title.setObjectName("priorTitle")
        self.description = QLabel(prior.description or "(no description)", self)
        self.description.setObjectName("priorDescription")
        self.source = QLabel("", self)
        self.source.setObjectName("priorSource")
        self.retrieve = QPushButton("Retrieve", self)
        self.retrieve.setObjectName("priorRetrieve")
        self.retrieve.setToolTip(f"Retrieve this study from {prior.source} into the local archive")
        self.retrieve.clicked.connect(lambda: self.retrieveClicked.emit(self.prior.study_uid))
        self.progress = QProgressBar(self)
        self.progress.setObjectName("priorProgress")
        self.progress.setMaximumHeight(10)
        self.progress.setTextVisible(False)
        self.progress.hide()
        for label in (self.title, self.description, self.source):
            label.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents, True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 3, 4, 3)
        lay.setSpacing(1)
        lay.addWidget(self.title)
        lay.addWidget(self.description)
        bottom = QHBoxLayout()
        bottom.setContentsMargins(0, 0, 0, 0)
        bottom.addWidget(self.source, 1)
        bottom.addWidget(self.retrieve)
        lay.addLayout(bottom)
        lay.addWidget(self.progress)
        self.set_prior(prior)

    def set_prior(self, prior: Prior) -> None:
        self.prior = prior
        where = "local" if prior.local else f"remote: {prior.source}"
        self.source.setText(f"{where} · {prior.n_series} se · relevance {prior.score:.2g}")
        self.retrieve.setVisible(not prior.local)
        self.setToolTip(
            f"{prior.reason}\n{prior.description}\n{prior.n_series} series, {prior.n_instances} images"
            + ("" if prior.local else f"\nOn {prior.source}: Retrieve to compare")
        )

    def set_state(self, text: str, done: int = 0, total: int = 0, *, failed: bool = False) -> None:
        """A retrieve's progress (*total* 0: not known yet) or its failure."""
        self.progress.setVisible(not failed and bool(text))
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        self.retrieve.setEnabled(failed or not text)
        if failed:
            self.retrieve.setText("Retry")
        base = "local" if self.prior.local else f"remote: {self.prior.source}"
        self.source.setText(f"{base} · {text}" if text else base)
        self.source.setStyleSheet("color: #e05050;" if failed else "")


class PriorsPanel(QWidget):
    """The priors timeline (see the module docstring)."""

    priorActivated = Signal(str)
    """A local prior was clicked (or Enter on it): its Study Instance UID."""
    retrieveRequested = Signal(str)
    """A remote prior's Retrieve button: its Study Instance UID."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("priorsPanel")
        self.heading = QLabel("Priors", self)
        self.heading.setObjectName("priorsHeading")
        self.note = QLabel("Searching…", self)
        self.note.setObjectName("priorsNote")
        self.note.setWordWrap(True)
        self.list = QListWidget(self)
        self.list.setObjectName("priorsList")
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.list.itemClicked.connect(self._clicked)
        self.list.itemActivated.connect(self._clicked)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.setSpacing(2)
        lay.addWidget(self.heading)
        lay.addWidget(self.note)
        lay.addWidget(self.list, 1)
        self.setFixedWidth(230)
        self.current_date = ""
        self._rows: dict[str, tuple[QListWidgetItem, PriorRow]] = {}

    # ------------------------------------------------------------ content

    def set_priors(self, priors: Sequence[Prior], *, searching: bool = False, error: str = "") -> None:
        """Show *priors* in this order (ranked by the caller); rows of priors already shown keep
        their widget (and a retrieve's progress)."""
        keep = {p.study_uid for p in priors}
        for uid in [u for u in self._rows if u not in keep]:
            item, _row = self._rows.pop(uid)
            self.list.takeItem(self.list.row(item))
        for i, p in enumerate(priors):
            if p.study_uid in self._rows:
                item, row = self._rows[p.study_uid]
                row.set_prior(p)
                if self.list.row(item) != i:
                    self.list.takeItem(self.list.row(item))
                    self.list.insertItem(i, item)
                    row = self._make_row(p)  # a taken item loses its widget
                    self.list.setItemWidget(item, row)
                    self._rows[p.study_uid] = (item, row)
            else:
                item = QListWidgetItem()
                item.setData(UID_ROLE, p.study_uid)
                self.list.insertItem(i, item)
                row = self._make_row(p)
                self.list.setItemWidget(item, row)
                self._rows[p.study_uid] = (item, row)
            item.setSizeHint(QSize(self.list.viewport().width() - 4, row.sizeHint().height()))
        if error:
            self.note.setText(error)
        elif searching:
            self.note.setText("Searching…" if not priors else f"{len(priors)} found; asking the peers…")
        else:
            self.note.setText(f"{len(priors)} earlier studies" if priors else "No earlier studies")
        self.heading.setText(f"Priors ({len(priors)})" if priors else "Priors")

    def _make_row(self, prior: Prior) -> PriorRow:
        row = PriorRow(prior, self.current_date)
        row.retrieveClicked.connect(self.retrieveRequested)
        return row

    def study_uids(self) -> list[str]:
        """The priors shown, top to bottom."""
        return [self.list.item(i).data(UID_ROLE) for i in range(self.list.count())]

    def row(self, study_uid: str) -> PriorRow | None:
        entry = self._rows.get(study_uid)
        return entry[1] if entry is not None else None

    def item(self, study_uid: str) -> QListWidgetItem | None:
        entry = self._rows.get(study_uid)
        return entry[0] if entry is not None else None

    def _clicked(self, item: QListWidgetItem) -> None:
        uid = item.data(UID_ROLE)
        entry = self._rows.get(uid)
        if entry is not None and entry[1].prior.local:
            self.priorActivated.emit(uid)
