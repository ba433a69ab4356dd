"""The workstation's main window: menus, workspace tabs (the study browser first), status bar.

The window owns no data: it is handed a :class:`hilum.config.Config` and an
open :class:`hilum.archive.Archive`, subscribes to the archive's events
(unsubscribing on close) and lets other parts add workspace tabs (the
viewer, issue 4) through :meth:`MainWindow.add_workspace_tab` and react to
:attr:`MainWindow.studyOpenRequested`.
"""

from __future__ import annotations

import html
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPushButton,
    QTabWidget,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from hilum import __version__
from hilum.archive import Archive, ArchiveEvent
from hilum.config import Config
from hilum.ui.icons import preload as preload_icons
from hilum.ui.importing import ImportController, ImportSummary
from hilum.ui.study_browser import StudyBrowser
from hilum.ui.study_search import format_size
from hilum.ui.tasks import TaskRunner

log = logging.getLogger(__name__)

STATS_THROTTLE_MS = 500


class ArchiveWatcher(QObject):
    """Re-emits the archive's events as a Qt signal on the GUI thread, in batches.

    :meth:`hilum.archive.Archive.subscribe` calls back on the ingesting
    thread, once per instance.  Events are queued here and handed over as a
    list (oldest first) once per turn of the GUI event loop, so an import of
    10,000 files costs a few dozen deliveries, not 10,000 (STYLE.md §4:
    models emit, widgets subscribe and disconnect on close).
    """

    changed = Signal(list)  # list[ArchiveEvent] since the last delivery
    _poke = Signal()

    def __init__(self, archive: Archive, parent: QObject | None = None):
        super().__init__(parent)
        self._lock = threading.Lock()
        self._pending: list[ArchiveEvent] = []
        self._closed = False
        self._poke.connect(self._drain, Qt.ConnectionType.QueuedConnection)
        self._unsubscribe: Any = archive.subscribe(self._on_event)

    def _on_event(self, event: ArchiveEvent) -> None:
        with self._lock:
            if self._closed:
                return
            first = not self._pending
            self._pending.append(event)
        if first:
            try:
                self._poke.emit()
            except RuntimeError:  # the window is gone; the unsubscribe is racing us
                pass

    @Slot()
    def _drain(self) -> None:
        with self._lock:
            events, self._pending = self._pending, []
            closed = self._closed
        if events and not closed:
            self.changed.emit(events)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pending = []
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


@dataclass(frozen=True)
class ShortcutHelp:
    """One line of Help → Keyboard shortcuts."""

    section: str
    keys: str
    description: str


class EmptyArchiveBanner(QFrame):
    """An info bar shown while the archive holds no study: load the demo studies, or import."""

    demoRequested = Signal()
    importFilesRequested = Signal()
    importFolderRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("emptyArchiveBanner")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet(
            "#emptyArchiveBanner { background: #e8f1fb; border: 1px solid #9cc0e6; border-radius: 4px; }"
            "#emptyArchiveBanner QLabel { color: #1d3b5c; }"
        )
        self.label = QLabel(
            "<b>This archive is empty.</b> Load a few generated demo studies to try Hilum, "
            "or import your own DICOM files.",
            self,
        )
        self.label.setWordWrap(True)
        self.demo_button = QPushButton("Load demo studies", self)
        self.demo_button.setObjectName("loadDemoButton")
        self.demo_button.setDefault(True)
        self.files_button = QPushButton("Import files…", self)
        self.folder_button = QPushButton("Import folder…", self)
        self.close_button = QToolButton(self)
        self.close_button.setText("✕")
        self.close_button.setAutoRaise(True)
        self.close_button.setToolTip("Hide this message")
        self.demo_button.clicked.connect(self.demoRequested)
        self.files_button.clicked.connect(self.importFilesRequested)
        self.folder_button.clicked.connect(self.importFolderRequested)
        self.close_button.clicked.connect(self.dismiss)
        self.dismissed = False
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 6, 6, 6)
        row.addWidget(self.label, 1)
        row.addWidget(self.demo_button)
        row.addWidget(self.files_button)
        row.addWidget(self.folder_button)
        row.addWidget(self.close_button)

    def dismiss(self) -> None:
        self.dismissed = True
        self.hide()

    def set_busy(self, busy: bool) -> None:
        for b in (self.demo_button, self.files_button, self.folder_button):
            b.setEnabled(not busy)


class MainWindow(QMainWindow):
    """Hilum's main window.

    Public API for other parts of the workstation:

    - ``studyOpenRequested(study_uid)``: a study was opened from the browser
      (double-click, Enter, :meth:`open_study`); the viewer connects here.
    - ``seriesOpenRequested(study_uid, series_uid)``: a series was
      double-clicked in the browser's series list.
    - :meth:`add_workspace_tab`, :meth:`close_workspace_tab`,
      :meth:`workspace_tabs` for viewer tabs; the study browser is tab 0 and
      the worklist tab 1 (neither closable nor listed by workspace_tabs).
    - :attr:`file_menu`, :attr:`view_menu`, :attr:`help_menu` to add actions;
      :meth:`add_shortcut_help` to list new shortcuts in Help.
    - :attr:`archive_changed` (``list[ArchiveEvent]``, batched, on the GUI
      thread; from :class:`ArchiveWatcher`), :attr:`tasks`
      (a :class:`TaskRunner` whose results arrive on the GUI thread).
    - :meth:`set_node_status` for the DICOM node's line in the status bar.
    """

    studyOpenRequested = Signal(str)
    seriesOpenRequested = Signal(str, str)
    importFinished = Signal(object)  # ImportSummary
    statsUpdated = Signal(dict)

    def __init__(self, config: Config, archive: Archive, parent: QWidget | None = None):
        super().__init__(parent)
        self.config = config
        self.archive = archive
        self.stats: dict[str, int] | None = None
        self._shortcuts: list[ShortcutHelp] = []
        self._closed = False
        self.demo_small = False
        self.prefetch: Any = None  # hilum.ui.prefetch_panel.PrefetchController, once installed below
        self.storage: Any = None  # hilum.ui.storage_panel.StorageController, once installed below
        self.setWindowTitle("Hilum")
        self.setObjectName("hilumMainWindow")
        self.resize(1320, 820)
        self.setAcceptDrops(True)
        preload_icons()  # the viewer's toolbar icons: here, before the window shows, not in the first open

        self.tasks = TaskRunner(max_workers=2, name="hilum-query", parent=self)
        self._import_runner = TaskRunner(max_workers=1, name="hilum-import", parent=self)
        self.watcher = ArchiveWatcher(archive, self)
        self.archive_changed = self.watcher.changed

        # Central area: tabs, the study browser first (not closable).
        self.tabs = QTabWidget(self)
        self.tabs.setObjectName("workspaceTabs")
        self.tabs.setDocumentMode(True)
        self.tabs.setTabsClosable(True)
        self.tabs.setMovable(True)
        self.tabs.tabCloseRequested.connect(self.close_workspace_tab)
        self.tabs.currentChanged.connect(self._on_tab_changed)
        self.browser = StudyBrowser(archive, self.tasks, self)
        self.banner = EmptyArchiveBanner(self)
        self.banner.hide()
        self.browser_page = QWidget(self)
        page = QVBoxLayout(self.browser_page)
        page.setContentsMargins(10, 8, 10, 2)
        page.setSpacing(6)
        page.addWidget(self.banner)
        page.addWidget(self.browser, 1)
        self._fixed_pages: list[QWidget] = [self.browser_page]
        self.add_workspace_tab(self.browser_page, "Studies", closable=False, tooltip="The local study browser")
        self.worklist = self._make_worklist()
        self.setCentralWidget(self.tabs)

        self.importer = ImportController(archive, self._import_runner, self)
        self.importer.started.connect(lambda: self.banner.set_busy(True))
        self.importer.finished.connect(self._on_import_finished)

        self.browser.openRequested.connect(self.open_study)
        self.browser.seriesOpenRequested.connect(self.open_series)
        self.banner.demoRequested.connect(lambda: self.load_demo())
        self.banner.importFilesRequested.connect(self.import_files_dialog)
        self.banner.importFolderRequested.connect(self.import_folder_dialog)
        self.archive_changed.connect(self._on_archive_changed)

        self._build_status_bar()
        self._build_menus()

        self._stats_timer = QTimer(self)
        self._stats_timer.setSingleShot(True)
        self._stats_timer.setInterval(STATS_THROTTLE_MS)
        self._stats_timer.timeout.connect(self.refresh_status)

        from hilum.ui.remote_source import install_remote_sources  # DICOMweb servers, DICOM peers as sources
        from hilum.ui.transfers import install_transfers  # View → Transfers, File → Send to

        self.transfers: Any = None
        install_transfers(self)
        install_remote_sources(self)
        from hilum.ui.study_browser import install_web_viewer  # Open in web viewer, Copy link (issue 18)

        install_web_viewer(self)
        from hilum.ui.prefetch_panel import install_prefetch  # priors prefetched from peers (issue 15)

        self.prefetch = install_prefetch(self)
        from hilum.ui.station_prefetch_panel import install_station_prefetch  # remote studies ahead of need (#18)

        self.station_prefetch = install_station_prefetch(self)
        from hilum.ui.storage_panel import install_storage  # View → Storage: use, tiers, forwarding (issue 17)

        self.storage = install_storage(self)
        self.browser.search()
        self.refresh_status()

    # ------------------------------------------------------------ building

    def _make_worklist(self) -> QWidget | None:
        """The worklist tab (orders from HL7/MWL), if its module is there; never fatal."""
        try:
            from hilum.ui.worklist import WorklistBrowser

            worklist = WorklistBrowser(self.archive, self)
        except Exception:  # noqa: BLE001 - the study browser must open even if the worklist cannot
            log.exception("the worklist tab is not available")
            return None
        worklist.openRequested.connect(self.open_study)
        self._fixed_pages.append(worklist)
        self.add_workspace_tab(
            worklist,
            "Worklist",
            closable=False,
            activate=False,
            tooltip="Scheduled procedures (HL7 orders, Modality Worklist)",
        )
        return worklist

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        bar.setSizeGripEnabled(True)
        self.archive_label = QLabel("Archive: …", self)
        self.archive_label.setObjectName("archiveStatus")
        self.folder_label = QLabel(self)
        self.folder_label.setObjectName("dataFolder")
        folder = str(self.config.data_dir)
        self.folder_label.setText(self._elide_path(folder, 48))
        self.folder_label.setToolTip(f"Data folder: {folder}")
        self.node_label = QLabel("DICOM node: off", self)
        self.node_label.setObjectName("nodeStatus")
        for w in (self.archive_label, self.folder_label, self.node_label):
            w.setContentsMargins(6, 0, 6, 0)
            bar.addPermanentWidget(w)

    @staticmethod
    def _elide_path(path: str, limit: int) -> str:
        home = os.path.expanduser("~")
        if home and home != "/" and path.startswith(home):
            path = "~" + path[len(home) :]
        return path if len(path) <= limit else "…" + path[-(limit - 1) :]

    def _action(
        self,
        menu: QMenu,
        text: str,
        slot: Any,
        shortcut: QKeySequence | QKeySequence.StandardKey | str | None = None,
        tip: str = "",
        name: str = "",
    ) -> QAction:
        act = QAction(text, self)
        if shortcut is not None:
            act.setShortcut(QKeySequence(shortcut))
            act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if tip:
            act.setStatusTip(tip)
        if name:
            act.setObjectName(name)
        act.triggered.connect(lambda _checked=False: slot())
        menu.addAction(act)
        self.addAction(act)  # shortcuts work even with the menu bar hidden
        return act

    def _build_menus(self) -> None:
        mb = self.menuBar()
        self.file_menu = mb.addMenu("&File")
        self.import_files_action = self._action(
            self.file_menu,
            "&Import files…",
            self.import_files_dialog,
            "Ctrl+I",
            "Import DICOM files into the local archive",
            "importFilesAction",
        )
        self.import_folder_action = self._action(
            self.file_menu,
            "Import &folder…",
            self.import_folder_dialog,
            "Ctrl+Shift+I",
            "Import every DICOM file in a folder and its subfolders",
            "importFolderAction",
        )
        self.load_demo_action = self._action(
            self.file_menu,
            "Load &demo studies",
            lambda: self.load_demo(),
            None,
            "Generate demo studies and import them",
            "loadDemoAction",
        )
        self.file_menu.addSeparator()
        self.open_action = self._action(
            self.file_menu,
            "&Open selected study",
            self.browser.open_selected,
            None,
            "Open the study selected in the browser (Enter)",
            "openStudyAction",
        )
        self.file_menu.addSeparator()
        self.quit_action = self._action(self.file_menu, "&Quit", self.close, "Ctrl+Q", "Quit Hilum", "quitAction")

        self.view_menu = mb.addMenu("&View")
        self.show_browser_action = self._action(
            self.view_menu, "&Study browser", self.show_browser, "Ctrl+B", "Show the study browser", "showBrowserAction"
        )
        self.show_worklist_action = self._action(
            self.view_menu, "&Worklist", self.show_worklist, "Ctrl+Shift+L", "Show the worklist", "showWorklistAction"
        )
        self.show_worklist_action.setEnabled(self.worklist is not None)
        self.find_action = self._action(
            self.view_menu,
            "&Find studies",
            self.focus_search,
            QKeySequence.StandardKey.Find,
            "Put the cursor in the patient name field",
            "findAction",
        )
        self.refresh_action = self._action(
            self.view_menu,
            "&Refresh",
            self.refresh,
            "F5",
            "Search again and update the archive status",
            "refreshAction",
        )
        self.view_menu.addSeparator()

        # the current viewer tab's own actions (their shortcuts shown), rebuilt each time one opens
        self.viewer_menu = mb.addMenu("Vie&wer")  # Alt+I is the browser's ID field
        self.viewer_menu.setObjectName("viewerMenu")
        self.tools_menu = mb.addMenu("&Tools")
        self.tools_menu.setObjectName("toolsMenu")
        for menu, which in ((self.viewer_menu, "viewer"), (self.tools_menu, "tools")):
            menu.aboutToShow.connect(partial(self._fill_workspace_menu, menu, which))
        self._update_workspace_menus()

        self.help_menu = mb.addMenu("&Help")
        self.shortcuts_action = self._action(
            self.help_menu,
            "&Keyboard shortcuts",
            self.show_shortcuts,
            "F1",
            "List the keyboard shortcuts",
            "shortcutsAction",
        )
        self.about_action = self._action(self.help_menu, "&About Hilum", self.show_about, None, "", "aboutAction")

        for keys, text in [
            ("Ctrl+I", "Import files"),
            ("Ctrl+Shift+I", "Import a folder (recursively)"),
            ("Ctrl+F", "Find studies: focus the patient name field"),
            ("Enter", "Open the selected study"),
            ("Double-click", "Open a study; on a series: open that series"),
            ("F5", "Refresh the study list"),
            ("Ctrl+B", "Show the study browser"),
            ("Ctrl+Shift+L", "Show the worklist"),
            ("Up / Down", "Move through the study list"),
            ("Alt+N, Alt+I, Alt+D, Alt+M, Alt+A", "Go to the name, ID, date, modality or accession field"),
            ("F1", "This list"),
            ("Ctrl+Q", "Quit"),
        ]:
            self.add_shortcut_help("Study browser" if keys not in ("F1", "Ctrl+Q") else "General", keys, text)
        self._build_deid_menu()
        self._build_report_menu()
        self._build_ai_menu()

    def _build_deid_menu(self) -> None:
        """File → Send anonymised to… and Export to CD/USB… (issue 21b, :mod:`hilum.ui.deid_media`)."""
        from hilum.ui.deid_media import install

        self.deid_media = install(self)

    def _build_report_menu(self) -> None:
        """Report menu and the Report dock (issue 20b: :mod:`hilum.ui.report.dock`); never fatal."""
        self.reporting: Any = None
        try:
            from hilum.ui.report.dock import install_reporting

            self.reporting = install_reporting(self)
        except Exception:  # noqa: BLE001 - the workstation must open even if reporting cannot
            log.exception("the report editor is not available")

    def _build_ai_menu(self) -> None:
        """The AI menu (before Help), the AI results dock and Tools → AI plugins… (issue 19,
        :mod:`hilum.ui.ai`); never fatal: the workstation opens without it."""
        self.ai: Any = None
        try:
            from hilum.ui.ai import install_ai

            install_ai(self)
        except Exception:  # noqa: BLE001 - the study browser must open even if the AI parts cannot
            log.exception("the AI plugins are not available")

    # ------------------------------------------------------------ public API

    def open_study(self, study_uid: str) -> None:
        """Ask for a study to be opened (the viewer listens to ``studyOpenRequested``)."""
        if not study_uid:
            return
        log.info("open study %s", study_uid)
        self.statusBar().showMessage("Opening study…", 3000)
        if self.prefetch is not None:
            self.prefetch.study_opened(study_uid)  # the LRU cache of prefetched priors: accessed now
        self.studyOpenRequested.emit(study_uid)

    def open_series(self, study_uid: str, series_uid: str) -> None:
        """Ask for one series of a study to be opened (``seriesOpenRequested``)."""
        if study_uid and series_uid:
            self.seriesOpenRequested.emit(study_uid, series_uid)

    def add_workspace_tab(
        self, widget: QWidget, title: str, *, closable: bool = True, tooltip: str = "", activate: bool = True
    ) -> int:
        """Add a tab after the existing ones; returns its index.

        The widget is reparented to the tab widget.  When the tab is closed
        (its ✕, :meth:`close_workspace_tab`, or the window closing) the
        widget's ``close()`` is called — put clean-up in its closeEvent — and
        it is deleted.
        """
        index = self.tabs.addTab(widget, title)
        if tooltip:
            self.tabs.setTabToolTip(index, tooltip)
        if not closable:
            bar = self.tabs.tabBar()
            bar.setTabButton(index, bar.ButtonPosition.RightSide, None)
            bar.setTabButton(index, bar.ButtonPosition.LeftSide, None)
        if activate:
            self.tabs.setCurrentIndex(index)
        if self.prefetch is not None:
            self.prefetch.tab_added(widget)  # a study open in a tab is held: the prefetch cache keeps it
        return index

    def workspace_tabs(self) -> list[QWidget]:
        """The widgets of every tab after the study browser, left to right."""
        tabs = (self.tabs.widget(i) for i in range(self.tabs.count()))
        return [w for w in tabs if w is not None and w not in self._fixed_pages]

    def close_workspace_tab(self, index: int) -> bool:
        """Close a workspace tab (the study browser cannot be closed)."""
        widget = self.tabs.widget(index)
        if widget is None or widget in self._fixed_pages:
            return False
        if not widget.close():
            return False  # the widget refused (e.g. unsaved work)
        self.tabs.removeTab(self.tabs.indexOf(widget))
        if self.prefetch is not None:
            self.prefetch.tab_closed(widget)
        widget.deleteLater()
        return True

    def show_browser(self) -> None:
        self.tabs.setCurrentWidget(self.browser_page)

    def show_worklist(self) -> None:
        if self.worklist is not None:
            self.tabs.setCurrentWidget(self.worklist)

    def focus_search(self) -> None:
        self.show_browser()
        self.browser.focus_search()

    def refresh(self) -> None:
        """F5: run the current search again and update the archive status."""
        self.browser.refresh()
        self.refresh_status()

    def import_paths(self, paths: Sequence[str | os.PathLike[str]]) -> bool:
        """Import files and folders with a progress dialog; ``importFinished`` carries the summary."""
        if not paths:
            return False
        if not self.importer.import_paths(list(paths)):
            self.statusBar().showMessage("An import is already running", 4000)
            return False
        return True

    def load_demo(self, small: bool | None = None) -> bool:
        """Generate the demo studies and import them (``importFinished`` when done).

        ``small`` (default :attr:`demo_small`) makes tiny images: quick, for tests.
        """
        if not self.importer.import_demo(small=self.demo_small if small is None else small):
            self.statusBar().showMessage("An import is already running", 4000)
            return False
        return True

    def import_files_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Import DICOM files", "", "All files (*)")
        if files:
            self.import_paths(files)

    def import_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import a folder of DICOM files")
        if folder:
            self.import_paths([folder])

    def attach_node(self, node: Any) -> None:
        """The workstation's node is running (:class:`hilum.ui.app.NodeRunner`): its prefetch of
        priors, when ``[prefetch] enabled``, is fed by the worklist and shown in View → Prefetch."""
        if self.prefetch is not None:
            self.prefetch.set_prefetcher(getattr(node, "prefetcher", None))

    def set_node_status(self, text: str, ok: bool = True, tooltip: str = "") -> None:
        """The DICOM node's line in the status bar (ports, or why it is not running)."""
        self.node_label.setText(text)
        self.node_label.setStyleSheet("" if ok else "color: #b00020;")
        self.node_label.setToolTip(tooltip or text)

    def add_shortcut_help(self, section: str, keys: str, description: str) -> None:
        """List a shortcut under Help → Keyboard shortcuts (the viewer adds its own)."""
        self._shortcuts.append(ShortcutHelp(section, keys, description))

    def shortcut_help(self) -> list[ShortcutHelp]:
        return list(self._shortcuts)

    def refresh_status(self) -> None:
        """Update the archive line of the status bar (counted off the GUI thread)."""
        self._stats_timer.stop()
        if self._closed:
            return
        self.tasks.submit(
            self.archive.stats,
            on_done=self._on_stats,
            on_error=lambda exc: self.archive_label.setText(f"Archive: {exc}"),
        )

    # ------------------------------------------------------------ dialogs

    def shortcuts_html(self) -> str:
        """Help → Keyboard shortcuts as one two-column table, a heading row per section."""
        sections: dict[str, list[ShortcutHelp]] = {}
        for s in self._shortcuts:
            sections.setdefault(s.section, []).append(s)
        parts = ["<table width='100%' cellspacing='0' cellpadding='3'>"]
        for name, items in sections.items():
            parts.append(
                f"<tr><td colspan='2' style='padding-top:10px'><b style='font-size:large'>"
                f"{html.escape(name)}</b></td></tr>"
            )
            for s in items:
                parts.append(
                    f"<tr><td width='38%'><b>{html.escape(s.keys)}</b></td><td>{html.escape(s.description)}</td></tr>"
                )
        parts.append("</table>")
        return "".join(parts)

    def show_shortcuts(self) -> QDialog:
        """Help → Keyboard shortcuts (non-modal; returns the dialog)."""
        existing = self.findChild(QDialog, "shortcutsDialog")
        if existing is not None:
            existing.raise_()
            existing.activateWindow()
            return existing
        dlg = QDialog(self)
        dlg.setObjectName("shortcutsDialog")
        dlg.setWindowTitle("Keyboard shortcuts")
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        text = QTextBrowser(dlg)
        text.setHtml(self.shortcuts_html())
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, dlg)
        buttons.rejected.connect(dlg.close)
        lay = QVBoxLayout(dlg)
        lay.addWidget(text)
        lay.addWidget(buttons)
        dlg.resize(620, 560)
        dlg.show()
        return dlg

    def show_about(self) -> QMessageBox:
        box = QMessageBox(
            QMessageBox.Icon.Information,
            "About Hilum",
            f"<b>Hilum {html.escape(__version__)}</b><br>"
            "A DICOM workstation with an integrated mini-PACS.<br><br>"
            f"Data folder: {html.escape(str(self.config.data_dir))}<br>"
            f"AE title: {html.escape(self.config.aet)}",
            QMessageBox.StandardButton.Ok,
            self,
        )
        box.setObjectName("aboutBox")
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setWindowModality(Qt.WindowModality.NonModal)
        box.show()
        return box

    # ------------------------------------------------------------ events

    def _on_archive_changed(self, _events: list[ArchiveEvent]) -> None:
        if self.browser.logic.archive is self.archive:  # not a remote source: its list did not change
            self.browser.schedule_refresh()
        if not self._stats_timer.isActive():
            self._stats_timer.start()

    def _on_stats(self, stats: dict[str, int]) -> None:
        self.stats = stats
        self.archive_label.setText(
            f"{stats['patients']:,} patients · {stats['studies']:,} studies · "
            f"{stats['instances']:,} images · {format_size(stats['bytes'])}"
        )
        self.archive_label.setToolTip(f"{stats['series']:,} series in the local archive")
        self.banner.setVisible(stats["studies"] == 0 and not self.banner.dismissed)
        self.statsUpdated.emit(stats)

    def _on_import_finished(self, summary: ImportSummary) -> None:
        self.banner.set_busy(False)
        self.statusBar().showMessage(summary.headline(), 10000)
        self.browser.refresh()
        self.refresh_status()
        self.importFinished.emit(summary)

    def _on_tab_changed(self, _index: int) -> None:
        self._update_workspace_menus()
        self._focus_workspace()

    def _current_viewer(self) -> Any:
        """The current tab when it is a viewer (it has menus to offer), else None."""
        widget = self.tabs.currentWidget() if hasattr(self, "tabs") else None
        return widget if callable(getattr(widget, "fill_menu", None)) else None

    def _update_workspace_menus(self) -> None:
        """The Viewer and Tools menus are enabled only while a viewer tab is the current one."""
        if not hasattr(self, "viewer_menu"):
            return  # tabs added while the window is being built
        enabled = self._current_viewer() is not None
        for menu, which in ((self.viewer_menu, "viewer"), (self.tools_menu, "tools")):
            menu.menuAction().setEnabled(enabled)
            if enabled:
                self._fill_workspace_menu(menu, which)
            else:
                menu.clear()

    def _fill_workspace_menu(self, menu: QMenu, which: str) -> None:
        viewer = self._current_viewer()
        if viewer is not None:
            viewer.fill_menu(menu, which)

    def _focus_workspace(self) -> None:
        """The keyboard focus to the current workspace's own focus target (a viewer: its active
        viewport), so its keys work without a click."""
        focus = getattr(self.tabs.currentWidget(), "focus_active_viewport", None)
        if callable(focus):
            focus()

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802
        if event.type() == QEvent.Type.WindowStateChange:
            # maximised / restored: the re-layout can leave the focus on the tab bar (issue 23)
            QTimer.singleShot(0, self._focus_workspace)
        super().changeEvent(event)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and all(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.import_paths(paths)

    def closeEvent(self, event: QCloseEvent) -> None:
        for widget in self.workspace_tabs():
            if not widget.close():
                event.ignore()
                return
        self._shutdown()
        super().closeEvent(event)

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.importer.shutdown()
        if self.ai is not None:
            self.ai.shutdown()
        self.watcher.close()
        self._stats_timer.stop()
        self.browser.shutdown()
        if self.transfers is not None:
            self.transfers.shutdown()
        if self.prefetch is not None:
            self.prefetch.shutdown()
        if self.storage is not None:
            self.storage.shutdown()
        if self.reporting is not None:
            self.reporting.shutdown()  # drafts saved (also on the way in: ReportController.eventFilter)
        if self.worklist is not None:
            shutdown = getattr(self.worklist, "shutdown", None)
            if shutdown is not None:
                shutdown()
        self.tasks.shutdown(wait=True)
        self._import_runner.shutdown(wait=True)
        for box in (self.importer.summary_box, self.importer.dialog):
            if box is not None:
                box.close()
