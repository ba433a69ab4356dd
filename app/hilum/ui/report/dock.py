"""The Report dock of the workstation: one editor per study, beside the viewer, and the Report menu.

:func:`install_reporting` (called by ``MainWindow._build_report_menu``) adds a
``QDockWidget`` ("Report", right side, hidden until used) holding a
:class:`~hilum.ui.report.editor.ReportEditor` per study reported on, the one of
the current viewer tab shown; a **Report** menu; and the worklist's "Report"
button. *Report on this study* (Ctrl+Shift+D) works from a viewer tab, the
worklist (the selected order's study) and the study browser (the selected
study): the study opens in the viewer and its report in the dock, the cursor in
the first section. The editor gets the viewer's view of the study
(:class:`ViewerContext`: the annotations and key images on screen, saved or
not, and the prior being compared). Closing a viewer tab or the window saves
the drafts first.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDockWidget, QLabel, QMainWindow, QMenu, QStackedWidget

from hilum.ui.icons import icon
from hilum.ui.report.editor import EDITOR_SHORTCUTS, SECTION_KEYS_HELP, ReportEditor

__all__ = ["REPORT_KEY", "ReportController", "ViewerContext", "install_reporting"]

log = logging.getLogger(__name__)

REPORT_KEY = "Ctrl+Shift+D"
"""Report on this study (the viewer's, the worklist's selected order's, the browser's selected study)."""
DOCK_KEY = "Ctrl+Alt+D"
"""Show / hide the Report dock."""


class ViewerContext:
    """What a :class:`~hilum.ui.viewer.viewer_widget.StudyViewer` shows, for the editor's inserts."""

    def __init__(self, viewer: Any) -> None:
        self._viewer = weakref.ref(viewer)

    def live_measurements(self) -> list[tuple[Any, dict[str, Any]]] | None:
        v = self._viewer()
        if v is None:
            return None
        from hilum.ui.viewer.persistence import MEASUREMENT_KINDS, _values_of, frames_of

        anns = [a for a in v.annotations.all() if a.kind in MEASUREMENT_KINDS]
        if not anns:
            return None
        volumes = [h.volume for h in v._loads.values() if h.volume is not None]
        where = frames_of(volumes)
        out = [(a, vals) for a in anns if (vals := _values_of(a, where))]
        return out or None

    def live_key_images(self) -> list[Any] | None:
        v = self._viewer()
        keys = list(getattr(v, "key_images", []) or []) if v is not None else []
        return keys or None

    def comparison_prior(self) -> Any:
        """The prior compared in the viewer (a study of its sessions), else the most relevant local one."""
        v = self._viewer()
        if v is None:
            return None
        priors = list(getattr(v, "priors", []) or [])
        shown = [uid for uid in getattr(v, "sessions", {}) if uid != v.study_uid]
        for p in priors:
            if p.study_uid in shown:
                return p
        local = [p for p in priors if getattr(p, "local", False)]
        return local[0] if local else None


class ReportController(QObject):
    """The dock, its editors (one per study) and the Report menu of a main window."""

    def __init__(self, window: QMainWindow) -> None:
        super().__init__(window)
        self.main: Any = window
        self.editors: dict[str, ReportEditor] = {}
        self.reports: Any = None
        """The :class:`hilum.archive.reports.Reports` the editors use (None: one from the config each)."""
        self.dock = QDockWidget("Report", window)
        self.dock.setObjectName("reportDock")
        self.dock.setAllowedAreas(Qt.DockWidgetArea.LeftDockWidgetArea | Qt.DockWidgetArea.RightDockWidgetArea)
        self.stack = QStackedWidget(self.dock)
        self.placeholder = QLabel(
            f"No report open for this study.\nReport on this study: "
            f"{QKeySequence(REPORT_KEY).toString(QKeySequence.SequenceFormat.NativeText)}",
            self.stack,
        )
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setWordWrap(True)
        self.stack.addWidget(self.placeholder)
        self.dock.setWidget(self.stack)
        self.dock.setMinimumWidth(380)
        window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()
        tabs: Any = getattr(window, "tabs")  # noqa: B009 - MainWindow's, not QMainWindow's
        tabs.currentChanged.connect(lambda _i: self._follow_tab())
        window.installEventFilter(self)

    # ------------------------------------------------------------ the menu

    def build_menu(self) -> QMenu:
        w = self.main
        mb = w.menuBar()
        menu = QMenu("&Report", w)
        menu.setObjectName("reportMenu")
        mb.insertMenu(w.help_menu.menuAction(), menu)
        self.menu = menu
        self.report_action = QAction(icon("mdi6.file-document-edit-outline", "Rep"), "&Report on this study", w)
        self.report_action.setObjectName("reportOnStudyAction")
        self.report_action.setShortcut(QKeySequence(REPORT_KEY))
        self.report_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        tip = "Open the report editor for this study (viewer, worklist row or selected study)"
        self.report_action.setStatusTip(tip)
        self.report_action.setToolTip(f"{tip} ({REPORT_KEY})")
        self.report_action.triggered.connect(lambda _c=False: self.report_current())
        w.addAction(self.report_action)
        menu.addAction(self.report_action)
        toggle = self.dock.toggleViewAction()
        toggle.setText("Report &panel")
        toggle.setObjectName("reportDockAction")
        toggle.setShortcut(QKeySequence(DOCK_KEY))
        toggle.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        toggle.setIcon(icon("mdi6.dock-right", "Dock"))
        toggle.setToolTip(f"Show / hide the report panel ({DOCK_KEY})")
        w.addAction(toggle)
        menu.addAction(toggle)
        menu.addSeparator()
        menu.aboutToShow.connect(self._fill_menu)
        self._fixed = len(menu.actions())
        add = getattr(w, "add_shortcut_help", None)
        if add is not None:
            add(
                "Report",
                REPORT_KEY,
                "Report on this study: the editor in the Report panel, cursor in the first section",
            )
            add("Report", DOCK_KEY, "Show / hide the Report panel")
            for _name, keys, text, _glyph in EDITOR_SHORTCUTS:
                add("Report", keys, text + (" (in the report editor)" if keys == "Esc" else ""))
            for keys, text in SECTION_KEYS_HELP:
                add("Report", keys, text.removeprefix("Report: "))
        worklist = getattr(w, "worklist", None)
        if worklist is not None and hasattr(worklist, "reportRequested"):
            worklist.reportRequested.connect(self.open_report)
        return menu

    def _fill_menu(self) -> None:
        """The current editor's actions below the fixed entries (their keys shown)."""
        for act in self.menu.actions()[self._fixed :]:
            self.menu.removeAction(act)
        editor = self.current_editor()
        if editor is None:
            return
        for name, *_rest in EDITOR_SHORTCUTS:
            if name == "back_to_images":
                continue
            self.menu.addAction(editor.actions_by_name[name])

    # ------------------------------------------------------------ editors

    def current_editor(self) -> ReportEditor | None:
        w = self.stack.currentWidget()
        return w if isinstance(w, ReportEditor) else None

    def _viewer_for(self, study_uid: str) -> Any:
        for tab in self.main.workspace_tabs():
            if getattr(tab, "study_uid", None) == study_uid and callable(getattr(tab, "fill_menu", None)):
                return tab
        return None

    def editor_for(self, study_uid: str, *, create: bool = True) -> ReportEditor | None:
        editor = self.editors.get(study_uid)
        if editor is None and create:
            viewer = self._viewer_for(study_uid)
            editor = ReportEditor(self.main.archive, study_uid, config=getattr(self.main, "config", None),
                                  reports=self.reports,
                                  context=ViewerContext(viewer) if viewer is not None else None,
                                  parent=self.stack)  # fmt: skip
            editor.backRequested.connect(self._back_to_images)
            self.editors[study_uid] = editor
            self.stack.addWidget(editor)
            if viewer is not None:
                viewer.destroyed.connect(lambda _o=None, uid=study_uid: self.close_editor(uid))
            editor.open()
        return editor

    def show_editor(self, study_uid: str, *, focus: bool = True) -> ReportEditor:
        editor = self.editor_for(study_uid)
        assert editor is not None
        self.stack.setCurrentWidget(editor)
        self.dock.show()
        self.dock.raise_()
        if focus:
            if editor.sections:
                editor.focus_section(0)
            else:
                editor.loaded.connect(lambda: editor.focus_section(0), Qt.ConnectionType.SingleShotConnection)
        return editor

    def close_editor(self, study_uid: str) -> None:
        editor = self.editors.pop(study_uid, None)
        if editor is None:
            return
        editor.shutdown()
        self.stack.removeWidget(editor)
        editor.deleteLater()
        if self.stack.currentWidget() is None:
            self.stack.setCurrentWidget(self.placeholder)

    def flush_all(self) -> None:
        for editor in list(self.editors.values()):
            try:
                editor.flush()
            except Exception as exc:  # noqa: BLE001 - one editor must not keep the others from saving
                log.warning("report draft not saved: %s", exc)

    def shutdown(self) -> None:
        for uid in list(self.editors):
            self.close_editor(uid)

    # ------------------------------------------------------------ actions

    def current_study(self) -> str:
        """The study *Report on this study* means: the viewer tab's, the worklist's selected order's
        (once its images are in), the study browser's selected study."""
        w = self.main
        tab = w.tabs.currentWidget()
        uid = getattr(tab, "study_uid", None)
        if uid:
            return str(uid)
        worklist = getattr(w, "worklist", None)
        if worklist is not None and tab is worklist:
            from hilum.ui.worklist import WorklistQuery

            row = worklist.selected_row()
            return (WorklistQuery.study_to_open(row) or "") if row is not None else ""
        browser = getattr(w, "browser", None)
        selected = getattr(browser, "selected_study_uid", None)
        if callable(selected):
            return str(selected() or "")
        return ""

    def report_current(self) -> ReportEditor | None:
        uid = self.current_study()
        if not uid:
            self.main.statusBar().showMessage("Choose a study (with images) to report on", 4000)
            return None
        return self.open_report(uid)

    def open_report(self, study_uid: str) -> ReportEditor:
        """Open the study in the viewer (if it is not the current tab) and its report in the dock."""
        if getattr(self.main.tabs.currentWidget(), "study_uid", None) != study_uid:
            self.main.open_study(study_uid)
        return self.show_editor(study_uid)

    def _follow_tab(self) -> None:
        uid = getattr(self.main.tabs.currentWidget(), "study_uid", None)
        editor = self.editors.get(str(uid)) if uid else None
        if editor is not None:
            self.stack.setCurrentWidget(editor)
        elif uid:
            self.stack.setCurrentWidget(self.placeholder)

    def _back_to_images(self) -> None:
        focus = getattr(self.main.tabs.currentWidget(), "focus_active_viewport", None)
        if callable(focus):
            focus()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        if obj is self.main and event.type() == QEvent.Type.Close:
            self.flush_all()  # before the window and its tabs go (MainWindow._shutdown closes the editors)
        return False


def install_reporting(window: QMainWindow) -> ReportController:
    """Add the Report dock and menu to the workstation's main window (``window.reporting``)."""
    controller = ReportController(window)
    controller.build_menu()
    window.reporting = controller  # type: ignore[attr-defined]
    return controller
