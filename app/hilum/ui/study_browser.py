"""The local study browser: search fields, a sortable study table, the selected study's series.

It binds :class:`hilum.ui.study_search.StudySearch` (Qt-free logic) to
widgets.  Every query runs on a worker thread through
:class:`hilum.ui.tasks.TaskRunner`; results come back by signal and stale
ones (a newer search started meanwhile) are dropped, so typing stays fluid.
Archive changes (a C-STORE, an import) re-run the current search, throttled.

For a study of the local archive, "Open in web viewer" (Ctrl+Shift+B) opens
the node's web viewer on it in the system browser, and "Copy link"
(Ctrl+Shift+C) puts a time-limited, read-only link to it on the clipboard
(:class:`hilum.dicomweb.viewer.WebViewerLinks`): buttons over the series
list, entries of the study table's context menu, and the shortcuts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QDate,
    QItemSelectionModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QPoint,
    Qt,
    QTimer,
    QUrl,
    Signal,
)
from PySide6.QtGui import QAction, QDesktopServices, QGuiApplication, QKeyEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDateEdit,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from hilum.ui.study_search import (
    MODALITIES,
    SERIES_COLUMNS,
    STUDY_COLUMNS,
    Column,
    QueryableArchive,
    StudyCriteria,
    StudySearch,
    StudySearchResult,
    format_date,
    format_person_name,
    order_by_for,
)
from hilum.ui.tasks import TaskRunner

log = logging.getLogger(__name__)

ROW_ROLE = Qt.ItemDataRole.UserRole  # the row's dict
UID_ROLE = Qt.ItemDataRole.UserRole + 1  # StudyInstanceUID / SeriesInstanceUID

_ALIGN = {
    "left": Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
    "right": Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
    "center": Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter,
}

ANY_DATE = QDate(1900, 1, 1)
"""The date edits' minimum, shown as "any" (QDateTimeEdit special value text)."""

REFRESH_THROTTLE_MS = 400
TYPING_DEBOUNCE_MS = 250
OPEN_WEB_SHORTCUT = "Ctrl+Shift+B"
COPY_LINK_SHORTCUT = "Ctrl+Shift+C"


class RowTableModel(QAbstractTableModel):
    """Rows of archive query results shown through a tuple of :class:`Column`.

    Sorting does not reorder rows here: :meth:`sort` asks (``sortRequested``)
    for the query to be run again with an ``order_by``, so the order is the
    archive's over the whole result, not just the rows fetched.
    """

    sortRequested = Signal(int, Qt.SortOrder)

    def __init__(self, columns: Sequence[Column], uid_key: str, parent: QObject | None = None):
        super().__init__(parent)
        self.columns = tuple(columns)
        self.uid_key = uid_key
        self._rows: list[dict[str, Any]] = []
        self._text: list[list[Any]] = []

    # --- data in
    def set_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.beginResetModel()
        self._rows = [dict(r) for r in rows]
        self._text = [[c.text(r) for c in self.columns] for r in self._rows]
        self.endResetModel()

    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows)

    def row(self, i: int) -> dict[str, Any]:
        return self._rows[i]

    def uid(self, i: int) -> str:
        return str(self._rows[i].get(self.uid_key) or "")

    def find(self, uid: str) -> int:
        for i, r in enumerate(self._rows):
            if r.get(self.uid_key) == uid:
                return i
        return -1

    def display_text(self, row: int, column: int) -> str:
        """What the table shows in a cell (tests read this to check decoding)."""
        return str(self._text[row][column])

    # --- Qt model API
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        r, c = index.row(), index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return str(self._text[r][c])
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(_ALIGN[self.columns[c].align].value)
        if role == Qt.ItemDataRole.ToolTipRole:
            text = str(self._text[r][c])
            return text or None
        if role == ROW_ROLE:
            return self._rows[r]
        if role == UID_ROLE:
            return self.uid(r)
        return None

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(self.columns):
            return None
        col = self.columns[section]
        if role == Qt.ItemDataRole.DisplayRole:
            return col.title
        if role == Qt.ItemDataRole.ToolTipRole:
            return col.tooltip or (f"Sort by {col.title.lower()}" if col.sort_key else None)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(_ALIGN[col.align].value)
        return None

    def flags(self, index: QModelIndex | QPersistentModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self.sortRequested.emit(column, order)


class ResultTable(QTableView):
    """A read-only row-selecting table; Enter/Return activates the current row."""

    rowActivated = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setAlternatingRowColors(True)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.setShowGrid(False)
        self.setTabKeyNavigation(False)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 10)
        header = self.horizontalHeader()
        header.setHighlightSections(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(False)
        header.setSectionsMovable(True)
        self.user_resized: set[int] = set()
        self.fitting = False
        self.fitted_once = False
        header.sectionResized.connect(self._on_section_resized)
        self.doubleClicked.connect(lambda index: self.rowActivated.emit(index.row()))

    def _on_section_resized(self, index: int, _old: int, _new: int) -> None:
        if not self.fitting and self.horizontalHeader().sectionResizeMode(index) != QHeaderView.ResizeMode.Stretch:
            self.user_resized.add(index)

    def set_stretch_column(self, column: int) -> None:
        self.horizontalHeader().setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.currentIndex().isValid():
            self.rowActivated.emit(self.currentIndex().row())
            event.accept()
            return
        super().keyPressEvent(event)


def _qdate(d: date | None) -> QDate:
    return ANY_DATE if d is None else QDate(d.year, d.month, d.day)


def _pydate(q: QDate) -> date | None:
    if not q.isValid() or q <= ANY_DATE:
        return None
    return date(q.year(), q.month(), q.day())


class StudyBrowser(QWidget):
    """Search the local archive and pick a study.

    Signals: ``openRequested(study_uid)`` on double-click or Enter,
    ``seriesOpenRequested(study_uid, series_uid)`` on a series double-click,
    ``searchFinished(StudySearchResult)`` after each search shown,
    ``seriesLoaded(study_uid, count)``, ``currentStudyChanged(study_uid)``,
    ``sendRequested(study_uid, series_uid or "", peer)`` from the tables' context
    menus ("Send to" ▸ the peers :attr:`send_targets` lists; :mod:`hilum.ui.transfers`),
    ``webViewerOpened(url)`` and ``linkCopied(url)`` after "Open in web viewer" /
    "Copy link" (available while :attr:`web_viewer` gives a
    :class:`~hilum.dicomweb.viewer.WebViewerLinks`: see :func:`install_web_viewer`).
    """

    openRequested = Signal(str)
    seriesOpenRequested = Signal(str, str)
    searchFinished = Signal(object)
    seriesLoaded = Signal(str, int)
    currentStudyChanged = Signal(str)
    sendRequested = Signal(str, str, str)
    webViewerOpened = Signal(str)
    linkCopied = Signal(str)

    def __init__(self, archive: QueryableArchive, runner: TaskRunner, parent: QWidget | None = None):
        super().__init__(parent)
        self.logic = StudySearch(archive)
        self._runner = runner
        self._generation = 0
        self._series_generation = 0
        self._order_by: list[str] | None = None
        self._pending_select: str | None = None
        self.last_result: StudySearchResult | None = None
        self.searching = False
        self._closed = False
        self._selecting = False
        self._user_chose = False  # the user picked a row: keep it across refreshes
        self.send_targets: Callable[[], list[tuple[str, str]]] | None = None  # (peer, label) for "Send to"
        self.context_menu: QMenu | None = None  # the last context menu shown (non-blocking popup)
        self.web_viewer: Callable[[], Any] | None = None  # -> WebViewerLinks | None (None: not for this source)
        self.extra_study_actions: list[QAction] = []  # added to the study context menu (anonymised send, media)

        self._build_search_bar()
        self.model = RowTableModel(STUDY_COLUMNS, "StudyInstanceUID", self)
        self.table = ResultTable(self)
        self.table.setObjectName("studyTable")
        self.table.setModel(self.model)
        self.table.set_stretch_column(5)  # Description
        self.table.setSortingEnabled(False)
        self.table.horizontalHeader().setSortIndicator(4, Qt.SortOrder.DescendingOrder)
        self.table.horizontalHeader().setSortIndicatorShown(True)
        self.table.setSortingEnabled(True)  # calls model.sort once; harmless (it only asks for a search)
        self.model.sortRequested.connect(self._on_sort)
        self.table.rowActivated.connect(self._on_study_activated)
        self.table.selectionModel().currentRowChanged.connect(self._on_current_changed)

        self.series_model = RowTableModel(SERIES_COLUMNS, "SeriesInstanceUID", self)
        self.series_table = ResultTable(self)
        self.series_table.setObjectName("seriesTable")
        self.series_table.setModel(self.series_model)
        self.series_table.set_stretch_column(2)  # Series description
        self.series_table.rowActivated.connect(self._on_series_activated)
        for table in (self.table, self.series_table):
            table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._study_context_menu)
        self.series_table.customContextMenuRequested.connect(self._series_context_menu)
        self.series_title = QLabel("Series", self)
        self.series_title.setObjectName("seriesTitle")
        self.series_title.setTextFormat(Qt.TextFormat.PlainText)

        self._build_web_actions()
        series_box = QWidget(self)
        sl = QVBoxLayout(series_box)
        sl.setContentsMargins(0, 4, 0, 0)
        sl.setSpacing(4)
        head = QHBoxLayout()
        head.setContentsMargins(0, 0, 0, 0)
        head.addWidget(self.series_title, 1)
        head.addWidget(self.web_button)
        head.addWidget(self.link_button)
        sl.addLayout(head)
        sl.addWidget(self.series_table)

        self.splitter = QSplitter(Qt.Orientation.Vertical, self)
        self.splitter.addWidget(self.table)
        self.splitter.addWidget(series_box)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 6, 0, 6)
        layout.setSpacing(6)
        layout.addWidget(self.search_bar)
        layout.addWidget(self.splitter, 1)

        self._typing_timer = QTimer(self)
        self._typing_timer.setSingleShot(True)
        self._typing_timer.setInterval(TYPING_DEBOUNCE_MS)
        self._typing_timer.timeout.connect(self.search)
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_THROTTLE_MS)
        self._refresh_timer.timeout.connect(self.refresh)

    # ------------------------------------------------------------ web viewer

    def _build_web_actions(self) -> None:
        self.open_web_action = QAction("Open in &web viewer", self)
        self.open_web_action.setObjectName("openInWebViewerAction")
        self.open_web_action.setShortcut(QKeySequence(OPEN_WEB_SHORTCUT))
        self.open_web_action.setStatusTip("Open the selected study in the node's web viewer (system browser)")
        self.copy_link_action = QAction("Copy &link (read only, time-limited)", self)
        self.copy_link_action.setObjectName("copyStudyLinkAction")
        self.copy_link_action.setShortcut(QKeySequence(COPY_LINK_SHORTCUT))
        self.copy_link_action.setStatusTip("Copy a read-only link to the selected study that expires")
        for act, slot in ((self.open_web_action, self.open_in_web_viewer), (self.copy_link_action, self.copy_link)):
            act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            act.triggered.connect(lambda _checked=False, f=slot: f())
            self.addAction(act)
        self.web_button = QPushButton("Open in web viewer", self)
        self.web_button.setObjectName("openInWebViewerButton")
        self.web_button.setToolTip(f"Open the selected study in the node's web viewer ({OPEN_WEB_SHORTCUT})")
        self.link_button = QPushButton("Copy link", self)
        self.link_button.setObjectName("copyStudyLinkButton")
        self.link_button.setToolTip(f"Copy a read-only, time-limited link to the selected study ({COPY_LINK_SHORTCUT})")
        for b in (self.web_button, self.link_button):
            b.setAutoDefault(False)
        self.web_button.clicked.connect(self.open_in_web_viewer)
        self.link_button.clicked.connect(self.copy_link)
        self.update_web_actions()

    def _web_links(self) -> Any:
        return self.web_viewer() if self.web_viewer is not None else None

    def update_web_actions(self) -> None:
        """Enable the web viewer's actions when a study of a source that has them is selected."""
        ok = self._web_links() is not None and self.selected_study_uid() is not None
        for w in (self.open_web_action, self.copy_link_action, self.web_button, self.link_button):
            w.setEnabled(ok)

    def open_in_web_viewer(self) -> str | None:
        """Open the selected study in the node's web viewer, in the system browser; the URL opened."""
        links, uid = self._web_links(), self.selected_study_uid()
        if links is None or uid is None:
            return None
        url = links.open_url(uid)
        if not QDesktopServices.openUrl(QUrl(url)):
            self._set_result_text("No web browser could be started", error=True)
            log.warning("could not open %s in a browser", url)
            return None
        self.webViewerOpened.emit(url)
        return str(url)

    def copy_link(self) -> str | None:
        """Put a read-only, time-limited link to the selected study on the clipboard; the link."""
        links, uid = self._web_links(), self.selected_study_uid()
        if links is None or uid is None:
            return None
        try:
            url, expires = links.share(uid)
        except Exception as exc:  # noqa: BLE001 - a key file that cannot be written: say so, never crash
            log.warning("cannot make a link to %s: %s", uid, exc)
            self._set_result_text(f"No link: {exc}", error=True)
            return None
        QGuiApplication.clipboard().setText(url)
        self._set_result_text(f"Link copied (read only, until {expires.astimezone():%d %b %H:%M})")
        self.linkCopied.emit(url)
        return str(url)

    # ------------------------------------------------------------ search bar

    def _build_search_bar(self) -> None:
        bar = QWidget(self)
        bar.setObjectName("searchBar")
        grid = QGridLayout(bar)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(2)

        self.name_edit = QLineEdit(bar)
        self.name_edit.setPlaceholderText("e.g. Müller or doe, j")
        self.name_edit.setClearButtonEnabled(True)
        self.name_edit.setToolTip(
            "Patient name: the start of the family name; case and accents do not matter; "
            "* and ? are wildcards; 'Family, Given' searches both"
        )
        self.id_edit = QLineEdit(bar)
        self.id_edit.setPlaceholderText("Patient ID")
        self.id_edit.setClearButtonEnabled(True)
        self.accession_edit = QLineEdit(bar)
        self.accession_edit.setPlaceholderText("Accession")
        self.accession_edit.setClearButtonEnabled(True)

        self.date_from = self._date_edit(bar, "From (inclusive); 'any' = no lower bound")
        self.date_to = self._date_edit(bar, "To (inclusive); 'any' = no upper bound")
        self.today_button = QPushButton("Today", bar)
        self.week_button = QPushButton("7 days", bar)
        self.week_button.setToolTip("The last 7 days, today included")
        self.any_date_button = QPushButton("Any", bar)
        self.any_date_button.setToolTip("Any study date")
        for b in (self.today_button, self.week_button, self.any_date_button):
            b.setAutoDefault(False)
            b.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        self.today_button.clicked.connect(lambda: self.set_date_range(date.today(), date.today()))
        self.week_button.clicked.connect(
            lambda: self.set_date_range(date.fromordinal(date.today().toordinal() - 6), date.today())
        )
        self.any_date_button.clicked.connect(lambda: self.set_date_range(None, None))

        self.modality_combo = QComboBox(bar)
        self.modality_combo.addItem("Any", "")
        for m in MODALITIES:
            self.modality_combo.addItem(m, m)
        self.modality_combo.setToolTip("Studies having at least one series of this modality")

        self.search_button = QPushButton("Search", bar)
        self.search_button.setDefault(True)
        self.clear_button = QPushButton("Clear", bar)
        self.search_button.clicked.connect(self.search)
        self.clear_button.clicked.connect(self.clear)

        dates = QWidget(bar)
        dl = QHBoxLayout(dates)
        dl.setContentsMargins(0, 0, 0, 0)
        dl.setSpacing(4)
        dl.addWidget(self.date_from)
        dl.addWidget(QLabel("–", dates))
        dl.addWidget(self.date_to)
        dl.addWidget(self.today_button)
        dl.addWidget(self.week_button)
        dl.addWidget(self.any_date_button)

        buttons = QWidget(bar)
        bl = QHBoxLayout(buttons)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.setSpacing(4)
        bl.addWidget(self.search_button)
        bl.addWidget(self.clear_button)

        self.result_label = QLabel("", bar)
        self.result_label.setObjectName("resultLabel")
        self.result_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.result_label.setMinimumWidth(120)

        fields: list[tuple[str, QWidget, int]] = [
            ("Patient &name", self.name_edit, 3),
            ("Patient &ID", self.id_edit, 2),
            ("Study &date", dates, 0),
            ("&Modality", self.modality_combo, 0),
            ("&Accession", self.accession_edit, 2),
            ("", buttons, 0),
        ]
        for col, (text, widget, stretch) in enumerate(fields):
            label = QLabel(text, bar)
            if text:
                label.setBuddy(self.date_from if widget is dates else widget)
            grid.addWidget(label, 0, col)
            grid.addWidget(widget, 1, col)
            grid.setColumnStretch(col, stretch)
        grid.addWidget(self.result_label, 1, len(fields))
        grid.setColumnStretch(len(fields), 1)

        for edit in (self.name_edit, self.id_edit, self.accession_edit):
            edit.textEdited.connect(self._on_typing)
            edit.returnPressed.connect(self.search)
        self.date_from.dateChanged.connect(self._on_typing)
        self.date_to.dateChanged.connect(self._on_typing)
        self.modality_combo.currentIndexChanged.connect(self._on_typing)
        self.search_bar = bar

    @staticmethod
    def _date_edit(parent: QWidget, tip: str) -> QDateEdit:
        edit = QDateEdit(parent)
        edit.setCalendarPopup(True)
        edit.setDisplayFormat("yyyy-MM-dd")
        edit.setMinimumDate(ANY_DATE)
        edit.setSpecialValueText("any")
        edit.setDate(ANY_DATE)
        edit.setToolTip(tip)
        edit.setMinimumWidth(edit.fontMetrics().horizontalAdvance("0000-00-00") + 48)
        return edit

    # ------------------------------------------------------------ criteria

    def criteria(self) -> StudyCriteria:
        """The search fields as :class:`StudyCriteria`."""
        return StudyCriteria(
            patient_name=self.name_edit.text(),
            patient_id=self.id_edit.text(),
            date_from=_pydate(self.date_from.date()),
            date_to=_pydate(self.date_to.date()),
            modality=str(self.modality_combo.currentData() or ""),
            accession=self.accession_edit.text(),
        )

    def set_criteria(self, criteria: StudyCriteria, *, search: bool = True) -> None:
        """Fill the search fields (and search, unless told not to)."""
        widgets = (self.name_edit, self.id_edit, self.accession_edit, self.date_from, self.date_to, self.modality_combo)
        for w in widgets:
            w.blockSignals(True)
        try:
            self.name_edit.setText(criteria.patient_name)
            self.id_edit.setText(criteria.patient_id)
            self.accession_edit.setText(criteria.accession)
            self.date_from.setDate(_qdate(criteria.date_from))
            self.date_to.setDate(_qdate(criteria.date_to))
            i = self.modality_combo.findData(criteria.modality.strip().upper())
            self.modality_combo.setCurrentIndex(max(i, 0))
        finally:
            for w in widgets:
                w.blockSignals(False)
        if search:
            self.search()

    def set_date_range(self, start: date | None, end: date | None) -> None:
        self.set_criteria(
            StudyCriteria(
                patient_name=self.name_edit.text(),
                patient_id=self.id_edit.text(),
                date_from=start,
                date_to=end,
                modality=str(self.modality_combo.currentData() or ""),
                accession=self.accession_edit.text(),
            )
        )

    def clear(self) -> None:
        """Empty every field and show all studies."""
        self.set_criteria(StudyCriteria())

    def focus_search(self) -> None:
        self.name_edit.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.name_edit.selectAll()

    # ------------------------------------------------------------ searching

    def _on_typing(self, *_: object) -> None:
        self._typing_timer.start()

    def search(self) -> None:
        """Run the current criteria now (off the GUI thread); keeps the selected study if still there."""
        self._typing_timer.stop()
        self._run(self.criteria(), self.selected_study_uid())

    def refresh(self) -> None:
        """Run the last search again (F5, archive changes)."""
        self._refresh_timer.stop()
        self._run(self.criteria(), self.selected_study_uid(), refresh=True)

    def schedule_refresh(self) -> None:
        """Refresh soon: many changes in a burst (an import) cause one query per interval."""
        if not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def shutdown(self) -> None:
        """Stop searching (the window is closing): pending timers are stopped, late results dropped."""
        self._closed = True
        self._typing_timer.stop()
        self._refresh_timer.stop()
        self._generation += 1
        self._series_generation += 1

    def _run(self, criteria: StudyCriteria, keep_uid: str | None, refresh: bool = False) -> None:
        if self._closed:
            return
        self._generation += 1
        gen = self._generation
        self.searching = True
        if not refresh:
            self.result_label.setText("Searching…")
        self._pending_select = keep_uid
        order = self._order_by
        self._runner.submit(
            self.logic.studies,
            criteria,
            order,
            on_done=lambda res: self._on_result(gen, res),
            on_error=lambda exc: self._on_error(gen, exc),
        )

    def _on_error(self, gen: int, exc: BaseException) -> None:
        if gen != self._generation:
            return
        log.error("study search failed", exc_info=exc)
        self.searching = False
        self._set_result_text(f"Search failed: {exc}", error=True)
        self.searchFinished.emit(StudySearchResult(self.criteria(), self._order_by, [], 0, 0.0, error=str(exc)))

    def _on_result(self, gen: int, result: StudySearchResult) -> None:
        if gen != self._generation:
            return  # a newer search is under way
        self.searching = False
        self.last_result = result
        keep = self._pending_select if self._user_chose else None
        scroll = self.table.verticalScrollBar().value()
        self.model.set_rows(result.rows)
        self.table.verticalScrollBar().setValue(scroll)
        if result.rows:
            self._fit_columns(self.table, STUDY_COLUMNS)
        if result.error:
            self._set_result_text(f"Invalid search: {result.error}", error=True)
        elif not result.rows:
            self._set_result_text("No studies match" if not result.criteria.empty else "No studies yet")
        elif result.truncated:
            self._set_result_text(f"First {len(result.rows):,} of {result.total:,} studies")
        else:
            n = len(result.rows)
            self._set_result_text(f"{n:,} stud{'y' if n == 1 else 'ies'}")
        row = self.model.find(keep) if keep else -1
        if row < 0 and self.model.rowCount() > 0:
            row = 0
        if row >= 0:
            self._select_row(row)
        else:
            self._show_series(None)
        self.searchFinished.emit(result)

    def _set_result_text(self, text: str, error: bool = False) -> None:
        self.result_label.setText(text)
        self.result_label.setStyleSheet("color: #b00020;" if error else "")

    def _on_sort(self, column: int, order: Qt.SortOrder) -> None:
        new = order_by_for(STUDY_COLUMNS, column, order == Qt.SortOrder.DescendingOrder)
        if new == self._order_by:
            return
        self._order_by = new
        self._run(self.criteria(), self.selected_study_uid())

    def sort_by(self, column: int, descending: bool = False) -> None:
        """Sort the study table by a column (as a header click does)."""
        order = Qt.SortOrder.DescendingOrder if descending else Qt.SortOrder.AscendingOrder
        self.table.sortByColumn(column, order)

    # ------------------------------------------------------------ selection

    def _select_row(self, row: int) -> None:
        sm = self.table.selectionModel()
        index = self.model.index(row, 0)
        self._selecting = True
        try:
            sm.setCurrentIndex(
                index, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows
            )
            self.table.scrollTo(index)
            # currentRowChanged does not fire when the same row index stays current after a reset.
            self._on_current_changed(index, QModelIndex())
        finally:
            self._selecting = False

    def select_study(self, study_uid: str) -> bool:
        """Select a study shown in the table (kept across refreshes, as a click would be)."""
        row = self.model.find(study_uid)
        if row < 0:
            return False
        self._select_row(row)
        self._user_chose = True
        return True

    def selected_study_uid(self) -> str | None:
        index = self.table.selectionModel().currentIndex() if self.table.selectionModel() else QModelIndex()
        if not index.isValid() or index.row() >= self.model.rowCount():
            return None
        return self.model.uid(index.row()) or None

    def selected_study(self) -> dict[str, Any] | None:
        index = self.table.currentIndex()
        return self.model.row(index.row()) if index.isValid() else None

    def _on_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid() and not self._selecting:
            self._user_chose = True  # a click or a key: the user's choice survives refreshes
        if not current.isValid():
            self._show_series(None)
            return
        uid = self.model.uid(current.row())
        self._show_series(self.model.row(current.row()))
        self.currentStudyChanged.emit(uid)

    def _show_series(self, study: Mapping[str, Any] | None) -> None:
        self.update_web_actions()
        self._series_generation += 1
        gen = self._series_generation
        if study is None or self._closed:
            self.series_model.set_rows([])
            self.series_title.setText("Series")
            return
        uid = str(study.get("StudyInstanceUID") or "")
        name = format_person_name(study.get("PatientName")) or "(no name)"
        desc = study.get("StudyDescription") or "study"
        when = format_date(study.get("StudyDate"))
        self.series_title.setText(f"Series of {name} — {desc}{f' ({when})' if when else ''}")
        self._runner.submit(
            self.logic.series,
            uid,
            on_done=lambda rows: self._on_series(gen, uid, rows),
            on_error=lambda exc: log.error("series query failed", exc_info=exc),
        )

    def _on_series(self, gen: int, study_uid: str, rows: list[dict[str, Any]]) -> None:
        if gen != self._series_generation:
            return
        self.series_model.set_rows(rows)
        if rows:
            self._fit_columns(self.series_table, SERIES_COLUMNS)
        self.seriesLoaded.emit(study_uid, len(rows))

    def open_selected(self) -> None:
        uid = self.selected_study_uid()
        if uid:
            self.openRequested.emit(uid)

    def _on_study_activated(self, row: int) -> None:
        if 0 <= row < self.model.rowCount():
            self.openRequested.emit(self.model.uid(row))

    def _on_series_activated(self, row: int) -> None:
        study_uid = self.selected_study_uid()
        if study_uid and 0 <= row < self.series_model.rowCount():
            self.seriesOpenRequested.emit(study_uid, self.series_model.uid(row))

    # ------------------------------------------------------------ context menus

    def _popup(self, table: ResultTable, pos: QPoint, build: Callable[[QMenu], None]) -> QMenu:
        if self.context_menu is not None:
            self.context_menu.close()
        menu = QMenu(self)
        menu.setObjectName("browserContextMenu")
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        menu.destroyed.connect(lambda *_: setattr(self, "context_menu", None) if self.context_menu is menu else None)
        build(menu)
        self.context_menu = menu
        menu.popup(table.viewport().mapToGlobal(pos))
        return menu

    def _send_submenu(self, menu: QMenu, title: str, study_uid: str, series_uid: str) -> None:
        targets = self.send_targets() if self.send_targets is not None else []
        sub = menu.addMenu(title)
        sub.setObjectName("sendToSubmenu")
        if not targets:
            sub.setEnabled(False)
            sub.setToolTip("No DICOM peers configured, or the study is not in the local archive")
            return
        for name, label in targets:
            act = sub.addAction(label)
            act.setObjectName(f"sendTo:{name}")
            act.triggered.connect(lambda _c=False, n=name: self.sendRequested.emit(study_uid, series_uid, n))

    def _study_context_menu(self, pos: QPoint) -> None:
        index = self.table.indexAt(pos)
        if not index.isValid():
            return
        self._select_row(index.row())
        self._user_chose = True
        uid = self.model.uid(index.row())

        def build(menu: QMenu) -> None:
            menu.addAction("Open", lambda: self.openRequested.emit(uid)).setObjectName("openStudyContextAction")
            self._send_submenu(menu, "Send study to", uid, "")
            self.update_web_actions()
            menu.addSeparator()
            menu.addAction(self.open_web_action)
            menu.addAction(self.copy_link_action)
            if self.extra_study_actions:
                menu.addSeparator()
                menu.addActions(self.extra_study_actions)

        self._popup(self.table, pos, build)

    def _series_context_menu(self, pos: QPoint) -> None:
        index = self.series_table.indexAt(pos)
        study_uid = self.selected_study_uid()
        if not index.isValid() or not study_uid:
            return
        self.series_table.selectRow(index.row())
        series_uid = self.series_model.uid(index.row())

        def build(menu: QMenu) -> None:
            open_act = menu.addAction("Open series", lambda: self.seriesOpenRequested.emit(study_uid, series_uid))
            open_act.setObjectName("openSeriesContextAction")
            self._send_submenu(menu, "Send series to", study_uid, series_uid)

        self._popup(self.series_table, pos, build)

    # ------------------------------------------------------------ layout

    def _fit_columns(self, table: ResultTable, columns: Sequence[Column]) -> None:
        """Size columns to their contents, within bounds; later results only widen them.

        Columns the user resized by hand are left alone; the stretch column
        (the description) takes whatever width is left.
        """
        fm = table.fontMetrics()
        cap = fm.horizontalAdvance("M" * 20)
        header = table.horizontalHeader()
        table.fitting = True
        try:
            for i, col in enumerate(columns):
                if i in table.user_resized or header.sectionResizeMode(i) == QHeaderView.ResizeMode.Stretch:
                    continue
                title = fm.horizontalAdvance(col.title) + 30  # room for the sort arrow
                width = min(max(table.sizeHintForColumn(i) + 10, title), cap)
                if width > table.columnWidth(i) or not table.fitted_once:
                    table.setColumnWidth(i, width)
            table.fitted_once = True
        finally:
            table.fitting = False


def install_web_viewer(window: Any) -> None:
    """Give the window's study browser "Open in web viewer" and "Copy link" for the local archive; never fatal.

    The links point at the node of the window's config (``[web]`` settings,
    bind address and web port) and are signed with its data folder's key.
    """
    from hilum.dicomweb.viewer import WebViewerLinks

    try:
        links = WebViewerLinks.from_config(window.config)
    except Exception:  # noqa: BLE001 - a bad [web] section must not keep the workstation from opening
        log.exception("the web viewer's actions are not available")
        return
    browser = window.browser
    # Only the local archive is served by this node's web viewer: nothing while a remote source is shown.
    browser.web_viewer = lambda: links if browser.logic.archive is window.archive else None
    browser.update_web_actions()
    window.add_shortcut_help("Study browser", OPEN_WEB_SHORTCUT, "Open the selected study in the web viewer (browser)")
    window.add_shortcut_help("Study browser", COPY_LINK_SHORTCUT, "Copy a read-only, time-limited link to the study")
