"""AI plugins in the workstation: the AI menu, runs off the GUI thread, results on the viewer.

:func:`install_ai` (called by the main window's ``_build_ai_menu``) makes one
:class:`AIController` for the window:

- an **AI** menu (before Help) and an AI button in each viewer's toolbar: the discovered plugins
  (:func:`hilum.ai.discover`, in the background) — those that accept the active viewport's series
  (modality, body part, SOP class, 2D/3D: the manifest's ``[accepts]``) enabled, the others
  disabled with the reason as tooltip —, "Run on this series" (Ctrl+Alt+I), "Cancel the AI run"
  (Esc while one runs), the AI results panel (Ctrl+Alt+N), the segmentation and heat-map
  overlays (Ctrl+Alt+G, Ctrl+Alt+H), their opacity (Ctrl+Alt+= / Ctrl+Alt+-) and the plugin
  manager (Ctrl+Alt+U; also Tools → AI plugins…);
- a run loads the plugin, reads the series from the archive, runs it (:func:`hilum.ai.run`) and
  stores the results (:func:`hilum.ai.store`: SEG / FRACTIONAL SEG / SR through the archive's
  one ingest call), all on a worker thread (DESIGN.md "The GUI never waits"); progress shows in
  the status bar with a Cancel button; a cancel between batches stores nothing; an error is one
  sentence in a message box and the workstation keeps running;
- the result is shown on the series: segments as the viewer's label overlay (the segmentation
  editor of :mod:`hilum.ui.viewer.seg_panel`: per-segment check boxes in the segments panel), a
  heat map as a colour-mapped translucent layer (:class:`hilum.ui.ai.overlay.HeatmapLayer`, a
  viewport paint hook), findings and score in the AI results dock
  (:class:`hilum.ui.ai.findings.FindingsDock`: double-click or Enter jumps to the slice and
  centres the finding);
- when a series is shown, the AI objects of the archive that reference it (Series Description
  "AI: …") are looked up in the background and offered in the dock (choose, Show).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QAction, QActionGroup, QKeyEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QToolButton,
    QWidget,
)

from hilum.ai.model import PluginCancelled, PluginError, PluginInfo, PluginResult
from hilum.ui.ai.findings import FindingsDock
from hilum.ui.ai.overlay import HeatmapLayer
from hilum.ui.ai.plugins_dialog import PluginsDialog, rules_of
from hilum.ui.ai.results import ArchivedResult, ResultSet, archived_results, load_archived
from hilum.ui.icons import icon
from hilum.ui.tasks import Job, TaskRunner

__all__ = ["SHORTCUTS", "AIController", "install_ai"]

logger = logging.getLogger(__name__)

SHORTCUTS: list[tuple[str, str, str]] = [
    ("ai_run", "Ctrl+Alt+I", "AI: run the chosen plugin on the active series"),
    ("ai_cancel", "Esc", "AI: cancel the running plugin (while one runs; nothing is stored)"),
    ("ai_panel", "Ctrl+Alt+N", "AI: show / hide the AI results panel (findings, score, archived results)"),
    ("ai_seg", "Ctrl+Alt+G", "AI: show / hide the segmentation overlay (all segments)"),
    ("ai_heat", "Ctrl+Alt+H", "AI: show / hide the heat-map overlay"),
    ("ai_more", "Ctrl+Alt+=", "AI: overlays more opaque"),
    ("ai_less", "Ctrl+Alt+-", "AI: overlays more transparent"),
    ("ai_plugins", "Ctrl+Alt+U", "AI plugins: installed plugins, intended use, problems, auto-run rules"),
]
"""``(action, keys, description)`` of the AI actions (listed in Help → Keyboard shortcuts)."""

ICONS = {
    "ai_run": ("mdi6.robot-outline", "AI"),
    "ai_cancel": ("mdi6.stop-circle-outline", "X"),
    "ai_panel": ("mdi6.format-list-bulleted", "Fi"),
    "ai_seg": ("mdi6.layers-outline", "Sg"),
    "ai_heat": ("mdi6.fire", "Ht"),
    "ai_more": ("mdi6.opacity", "+"),
    "ai_less": ("mdi6.circle-opacity", "-"),
    "ai_plugins": ("mdi6.puzzle-outline", "Pl"),
}


@dataclass
class _Run:
    plugin: str
    title: str
    series_uid: str
    viewer: Any
    job: Job


def _viewer_of(window: Any) -> Any:
    """The current tab when it is a study viewer (it has a segmentation editor), else None."""
    w = window.tabs.currentWidget()
    return w if w is not None and hasattr(w, "seg") and hasattr(w, "active_viewport") else None


def _series_facts(vp: Any) -> dict[str, Any]:
    v = vp.volume
    header = v.header
    order = v.stack.order
    return {
        "modality": str(header.get("Modality", "") or ""),
        "body_part": str(header.get("BodyPartExamined", "") or ""),
        "sop_class": str(header.get("SOPClassUID", "") or ""),
        "volume": len(order.unique) > 1 and order.normal is not None,
    }


def _sentence(text: str) -> str:
    text = " ".join(str(text).split()).rstrip(".")
    return text[:1].upper() + text[1:] + "." if text else "Unknown error."


class _EscFilter(QObject):
    """While a run is going: Esc anywhere in the main window cancels it (before the viewer's own Esc)."""

    def __init__(self, controller: AIController) -> None:
        super().__init__(controller)
        self.controller = controller

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        kind = event.type()
        if kind not in (QEvent.Type.ShortcutOverride, QEvent.Type.KeyPress):
            return False
        if not isinstance(event, QKeyEvent) or event.key() != Qt.Key.Key_Escape or event.modifiers():
            return False
        widget = obj if isinstance(obj, QWidget) else None
        if widget is None or widget.window() is not self.controller.window or self.controller.run is None:
            return False
        if kind == QEvent.Type.ShortcutOverride:
            event.accept()  # the key goes to us as a key press, not to the viewer's Esc shortcut
            return True
        self.controller.cancel()
        return True


class AIController(QObject):
    """The AI side of one main window (see the module docstring)."""

    pluginsChanged = Signal(list)  # list[PluginInfo]
    runStarted = Signal(str, str)  # plugin name, series uid
    runFinished = Signal(object, str)  # PluginResult or None, error ("" / "cancelled" / one sentence)
    resultShown = Signal(str)  # series uid
    archivedOffered = Signal(str, list)  # series uid, list[ArchivedResult]

    def __init__(self, window: Any, path: Sequence[str] | None = None) -> None:
        super().__init__(window)
        self.window = window
        self.archive = window.archive
        self.path: list[str] | None = list(path) if path is not None else None
        """Where to look for plugins (None: the installed distributions; tests give a folder)."""
        self.plugins: list[PluginInfo] | None = None
        self.chosen = ""
        """The plugin "Run on this series" runs (picked in the AI menu; default the first that fits)."""
        self.run: _Run | None = None
        self.results: dict[int, dict[str, ResultSet]] = {}
        """Per viewer (id) and series: the AI result shown."""
        self.error_box: QMessageBox | None = None
        self.dialog: PluginsDialog | None = None
        self._closed = False
        self._discovering = False
        self._run_after_discovery = False
        self._viewers: list[Any] = []
        self._offered_for: tuple[int, str] | None = None
        self.runner = TaskRunner(max_workers=1, name="hilum-ai", parent=self)
        self.readers = TaskRunner(max_workers=1, name="hilum-ai-read", parent=self)
        self.esc = _EscFilter(self)
        self._build_actions()
        self._build_menu()
        self._build_status()
        self.dock = FindingsDock(window)
        self.dock.hide()
        window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.jumpRequested.connect(self.jump_to)
        self.dock.archivedRequested.connect(self.show_archived)
        self.dock.segVisibleChanged.connect(self.set_seg_visible)
        self.dock.heatVisibleChanged.connect(self.set_heat_visible)
        self.dock.opacityChanged.connect(self.set_opacity)
        self.dock.visibilityChanged.connect(lambda on: self.actions["ai_panel"].setChecked(on))
        window.tabs.currentChanged.connect(lambda _i: self._on_tab())
        changed = getattr(window, "archive_changed", None)
        if changed is not None:
            changed.connect(self._on_archive_changed)  # results of the auto-run service arrive too
        tools = getattr(window, "tools_menu", None)
        if tools is not None:
            tools.aboutToShow.connect(self._add_to_tools_menu)  # after the viewer has filled it
        self.discover()

    # ------------------------------------------------------------ building

    def _build_actions(self) -> None:
        self.actions: dict[str, QAction] = {}
        texts = {
            "ai_run": "&Run on this series",
            "ai_cancel": "&Cancel the AI run",
            "ai_panel": "AI results &panel",
            "ai_seg": "&Segmentation overlay",
            "ai_heat": "&Heat-map overlay",
            "ai_more": "Overlays more &opaque",
            "ai_less": "Overlays more &transparent",
            "ai_plugins": "AI p&lugins…",
        }
        slots = {
            "ai_run": self.run_current,
            "ai_cancel": self.cancel,
            "ai_more": lambda: self.step_opacity(0.1),
            "ai_less": lambda: self.step_opacity(-0.1),
            "ai_plugins": self.show_plugins,
        }
        toggles = {"ai_panel": self.set_panel_visible, "ai_seg": self.set_seg_visible,
                   "ai_heat": self.set_heat_visible}  # fmt: skip
        for name, keys, tip in SHORTCUTS:
            act = QAction(texts[name], self.window)
            act.setObjectName(name)
            if name != "ai_cancel":  # Esc is caught while a run goes (_EscFilter): the viewer's Esc stays its own
                act.setShortcut(QKeySequence(keys))
                act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            glyph, fallback = ICONS[name]
            act.setIcon(icon(glyph, fallback))
            act.setStatusTip(tip)
            act.setToolTip(f"{tip} ({keys})")
            if name in toggles:
                act.setCheckable(True)
                act.setChecked(name != "ai_panel")
                slot = toggles[name]
                act.triggered.connect(lambda checked=False, s=slot: s(bool(checked)))
            else:
                fn = slots[name]
                act.triggered.connect(lambda _checked=False, f=fn: f())
            self.window.addAction(act)
            self.actions[name] = act
        self.actions["ai_cancel"].setEnabled(False)

    def _build_menu(self) -> None:
        mb = self.window.menuBar()
        self.menu = QMenu("AI", self.window)  # no mnemonic: Alt+A / Alt+I are the study browser's fields
        self.menu.setObjectName("aiMenu")
        self.menu.setToolTipsVisible(True)
        help_menu = getattr(self.window, "help_menu", None)
        if help_menu is not None:
            mb.insertMenu(help_menu.menuAction(), self.menu)
        else:
            mb.addMenu(self.menu)
        self.menu.aboutToShow.connect(self._fill_menu)
        self.plugin_group = QActionGroup(self)
        self.plugin_group.setExclusive(True)
        self._fill_menu()

    def _build_status(self) -> None:
        bar = self.window.statusBar()
        self.progress = QProgressBar(self.window)
        self.progress.setObjectName("aiProgress")
        self.progress.setMaximumWidth(220)
        self.progress.setMaximumHeight(16)
        self.progress.setTextVisible(True)
        self.cancel_btn = QPushButton("Cancel", self.window)
        self.cancel_btn.setObjectName("aiCancelButton")
        self.cancel_btn.setIcon(icon(*ICONS["ai_cancel"]))
        self.cancel_btn.setToolTip("Cancel the AI run (Esc); nothing is stored")
        self.cancel_btn.clicked.connect(lambda _c=False: self.cancel())
        bar.insertPermanentWidget(0, self.progress)
        bar.insertPermanentWidget(1, self.cancel_btn)
        self.progress.hide()
        self.cancel_btn.hide()

    def _fill_menu(self) -> None:
        m = self.menu
        m.clear()
        for act in self.plugin_group.actions():
            self.plugin_group.removeAction(act)
            act.deleteLater()
        m.addAction(self.actions["ai_run"])
        m.addAction(self.actions["ai_cancel"])
        m.addSeparator()
        vp = self._active_viewport()
        facts = _series_facts(vp) if vp is not None and vp.volume is not None else None
        if self.plugins is None:
            a = m.addAction("Looking for plugins…")
            a.setEnabled(False)
        elif not self.plugins:
            a = m.addAction("No AI plugin installed")
            a.setEnabled(False)
        chosen = self.chosen_plugin(facts)
        for info in self.plugins or []:
            why = self.why_not(info, facts)
            act = QAction(f"{info.title or info.name} {info.version}", self.plugin_group)
            act.setObjectName(f"aiPlugin:{info.name}")
            act.setCheckable(True)
            act.setEnabled(not why)
            act.setToolTip(why or (info.manifest.intended_use.strip().splitlines()[0] if info.manifest else ""))
            act.setChecked(info.name == chosen)
            act.triggered.connect(lambda _c=False, n=info.name: self.choose(n))
            m.addAction(act)
        m.addSeparator()
        for name in ("ai_panel", "ai_seg", "ai_heat", "ai_more", "ai_less"):
            m.addAction(self.actions[name])
        m.addSeparator()
        m.addAction(self.actions["ai_plugins"])

    def _add_to_tools_menu(self) -> None:
        tools = self.window.tools_menu
        tools.addSeparator()
        tools.addAction(self.actions["ai_run"])
        tools.addAction(self.actions["ai_plugins"])

    # ------------------------------------------------------------ plugins

    def discover(self) -> None:
        """Look for installed plugins again (off the GUI thread); :attr:`pluginsChanged` when done."""
        if self._closed:
            return
        self._discovering = True  # one worker: a second scan queues behind the first, the last one wins
        from hilum.ai import discover

        self.runner.submit(discover, self.path, on_done=self._on_discovered, on_error=self._on_discover_failed)

    def _on_discovered(self, plugins: list[PluginInfo]) -> None:
        self._discovering = False
        self.plugins = list(plugins)
        if self.dialog is not None:
            self.dialog.set_plugins(self.plugins)
        self.pluginsChanged.emit(self.plugins)
        if self._run_after_discovery:
            self._run_after_discovery = False
            self.run_current()

    def _on_discover_failed(self, exc: BaseException) -> None:
        self._discovering = False
        self.plugins = []
        logger.error("AI plugin discovery failed", exc_info=exc)
        self._run_after_discovery = False
        self.window.statusBar().showMessage(f"AI plugins could not be listed: {_sentence(str(exc))}", 8000)
        self.pluginsChanged.emit([])

    def why_not(self, info: PluginInfo, facts: dict[str, Any] | None) -> str:
        """'' when *info* can run on a series with *facts*, else why not (one sentence)."""
        if not info.ok or info.manifest is None:
            return "It has problems: " + "; ".join(info.problems or ("no manifest",))
        if facts is None:
            return "No series is shown"
        why = info.manifest.accepts.why_not(**facts)
        return _sentence(why) if why else ""

    def applicable(self, facts: dict[str, Any] | None = None) -> list[PluginInfo]:
        if facts is None:
            vp = self._active_viewport()
            facts = _series_facts(vp) if vp is not None and vp.volume is not None else None
        return [p for p in self.plugins or [] if not self.why_not(p, facts)]

    def chosen_plugin(self, facts: dict[str, Any] | None) -> str:
        fits = [p.name for p in self.applicable(facts)] if facts is not None else []
        if self.chosen in fits:
            return self.chosen
        return fits[0] if fits else ""

    def choose(self, name: str) -> None:
        self.chosen = name
        self.window.statusBar().showMessage(f"AI plugin for Ctrl+Alt+I: {name}", 4000)

    def show_plugins(self) -> PluginsDialog:
        """Tools → AI plugins… (non-modal; returns the dialog)."""
        if self.dialog is not None:
            self.dialog.raise_()
            self.dialog.activateWindow()
            return self.dialog
        dlg = PluginsDialog(self.plugins or [], rules_of(getattr(self.window.config, "extra", {}) or {}),
                            rescan=self.discover, parent=self.window)  # fmt: skip
        dlg.destroyed.connect(lambda *_: setattr(self, "dialog", None))
        self.dialog = dlg
        dlg.show()
        return dlg

    # ------------------------------------------------------------ viewers

    def _active_viewport(self) -> Any:
        viewer = _viewer_of(self.window)
        return viewer.active_viewport() if viewer is not None else None

    def _on_tab(self) -> None:
        viewer = _viewer_of(self.window)
        if viewer is None:
            return
        self.attach(viewer)
        self._follow(viewer)

    def attach(self, viewer: Any) -> HeatmapLayer:
        """Give *viewer* its heat-map layer, AI toolbar button and result following (once)."""
        layer: HeatmapLayer | None = getattr(viewer, "ai_heat", None)
        if layer is not None:
            return layer
        layer = HeatmapLayer()
        layer.visible = self.actions["ai_heat"].isChecked()
        layer.opacity = getattr(viewer.seg, "opacity", 0.5)
        layer.set_opacity(self.dock.opacity.value() / 100.0)
        viewer.ai_heat = layer
        viewer.model.paint_hooks = [*getattr(viewer.model, "paint_hooks", ()), layer.paint]
        viewer.seg.set_opacity(self.dock.opacity.value() / 100.0)
        viewer.seg.set_visible(self.actions["ai_seg"].isChecked())

        def repaint(uid: str) -> None:
            for vp in viewer.model.viewports:
                if not uid or vp.series_uid == uid:
                    vp.emit("segmentation")

        layer.subscribe(repaint)
        btn = QToolButton(viewer)
        btn.setObjectName("aiToolButton")
        btn.setDefaultAction(self.actions["ai_run"])
        btn.setMenu(self.menu)
        # one icon wide, the menu on a press: the reading toolbar must fit 1900 px without its overflow
        btn.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        btn.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        # after the tools (before the layout button), where it is seen without the toolbar's overflow
        before = next((a for a in viewer.toolbar.actions()
                       if getattr(viewer.toolbar.widgetForAction(a), "objectName", lambda: "")() == "layoutButton"),
                      None)  # fmt: skip
        if before is not None:
            viewer.toolbar.insertWidget(before, btn)
        else:
            viewer.toolbar.addSeparator()
            viewer.toolbar.addWidget(btn)
        viewer.seriesShown.connect(lambda *_: self._follow(viewer))
        viewer.loadFinished.connect(lambda *_: self._follow(viewer))
        viewer.model.subscribe(lambda what: self._follow(viewer) if what == "active" else None)
        key = id(viewer)
        viewer.destroyed.connect(lambda *_: self.results.pop(key, None))
        self._viewers.append(viewer)
        return layer

    def _follow(self, viewer: Any) -> None:
        """The dock shows what it has for the viewer's active series, and offers the archive's results."""
        if self._closed or viewer is not _viewer_of(self.window):
            return
        vp = viewer.active_viewport()
        uid = vp.series_uid
        if not uid:
            return
        rs = self.results.get(id(viewer), {}).get(uid)
        if rs is not None:
            self.dock.show_result(rs.title, rs.findings, rs.score, self._numbers(vp))
        else:
            self.dock.clear_result()
        key = (id(viewer), uid)
        if self._offered_for == key or vp.volume is None or viewer.is_loading(uid):
            return
        self._offered_for = key
        study = str(vp.volume.header.get("StudyInstanceUID", "") or viewer.study_uid)

        def offer(found: Any) -> None:
            self._offer(viewer, uid, found)

        def failed(exc: Any) -> None:
            logger.warning("AI results not listed: %s", exc)

        self.readers.submit(archived_results, self.archive, study, uid, on_done=offer, on_error=failed)

    def _on_archive_changed(self, events: list[Any]) -> None:
        """New AI objects (ingest origin "ai": a run here or the node's auto-run rules) in the study
        shown: offer them again."""
        viewer = _viewer_of(self.window)
        if viewer is None or self._closed:
            return
        studies = set(getattr(viewer, "sessions", {}) or {viewer.study_uid})
        if any(getattr(e, "kind", "") == "stored" and getattr(e, "origin", "") == "ai"
               and getattr(e, "study_instance_uid", None) in studies for e in events):  # fmt: skip
            self.refresh_offers()

    def refresh_offers(self) -> None:
        """Look up the archive's AI results of the current series again."""
        self._offered_for = None
        viewer = _viewer_of(self.window)
        if viewer is not None:
            self._follow(viewer)

    def _offer(self, viewer: Any, series_uid: str, found: list[ArchivedResult]) -> None:
        if viewer is not _viewer_of(self.window) or viewer.active_viewport().series_uid != series_uid:
            return
        self.dock.offer(found)
        if found:
            self.window.statusBar().showMessage(
                f"{len(found)} AI result(s) of this series in the archive: AI results panel (Ctrl+Alt+N)", 6000
            )
        self.archivedOffered.emit(series_uid, found)

    # ------------------------------------------------------------ running

    def run_current(self) -> bool:
        """Run the chosen plugin on the active viewport's series (Ctrl+Alt+I); False when it cannot start."""
        bar = self.window.statusBar()
        if self.run is not None:
            bar.showMessage("An AI plugin is already running (Esc cancels it)", 5000)
            return False
        viewer = _viewer_of(self.window)
        vp = viewer.active_viewport() if viewer is not None else None
        if vp is None or vp.volume is None:
            bar.showMessage("Open a series first: AI plugins run on the active viewport's series", 5000)
            return False
        if getattr(vp.volume, "preview", False):
            bar.showMessage("The series is still loading: run the AI plugin when it is shown in full", 5000)
            return False
        if self.plugins is None:
            self._run_after_discovery = True
            self.discover()
            bar.showMessage("Looking for AI plugins…", 3000)
            return False
        facts = _series_facts(vp)
        name = self.chosen_plugin(facts)
        if not name:
            if not self.plugins:
                self._error("No AI plugin is installed (AI → AI plugins… says how to add one).")
            else:
                reasons = "; ".join(f"{p.name}: {self.why_not(p, facts).rstrip('.')}" for p in self.plugins)
                self._error(f"No installed AI plugin accepts this series ({reasons}).")
            return False
        info = next(p for p in self.plugins if p.name == name)
        job = Job(self)
        self.run = _Run(name, info.title or name, vp.series_uid, viewer, job)
        job.progressed.connect(self._on_progress)
        self.progress.setRange(0, 0)
        self.progress.setFormat(f"{info.title or name}: starting")
        self.progress.show()
        self.cancel_btn.show()
        self.cancel_btn.setEnabled(True)
        self.actions["ai_cancel"].setEnabled(True)
        self.actions["ai_run"].setEnabled(False)
        QApplication.instance().installEventFilter(self.esc)  # type: ignore[union-attr]
        bar.showMessage(f"Running {info.title or name} on series {vp.series_uid}…", 4000)
        loaded = vp.volume if getattr(vp.volume, "complete", False) else None
        self.runner.submit(self._work, name, vp.series_uid, job, loaded, on_done=self._on_done,
                           on_error=self._on_error)  # fmt: skip
        self.runStarted.emit(name, vp.series_uid)
        return True

    def _work(self, name: str, series_uid: str, job: Job, loaded: Any = None) -> tuple[PluginResult, list[Any]]:
        """On the worker thread: load, read, run, store (nothing stored once cancelled). The series is
        the viewer's *loaded* volume when it has one (no second decode), else read from the archive."""
        import hilum.ai as ai

        job.report(0, 0, "loading the plugin", force=True)
        plugin = ai.load(name, self.path)
        if job.cancelled:
            raise PluginCancelled(name)
        job.report(0, 0, "reading the series", force=True)
        series = None
        if loaded is not None:
            try:
                series = ai.SeriesInput.from_loaded(loaded)
            except PluginError as exc:  # not a volume (2D images): the archive's files, in instance order
                logger.info("AI input from the archive, not the loaded series: %s", exc.reason)
        if series is None:
            series = ai.SeriesInput.from_archive(self.archive, series_uid)
        if job.cancelled:
            raise PluginCancelled(name)
        job.report(0, 0, "running", force=True)
        result = ai.run(plugin, series, progress=lambda d, t: job.report(d, t, "running"), cancel=job.cancel_event)
        if job.cancelled:
            raise PluginCancelled(name)
        job.report(1, 1, "storing the results", force=True)
        stored = list(ai.store(self.archive, result)) if not result.empty else []
        return result, stored

    def _on_progress(self, done: int, total: int, label: str) -> None:
        run = self.run
        if run is None:
            return
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            self.progress.setFormat(f"{run.title}: {label} %v/%m")
        else:
            self.progress.setRange(0, 0)
            self.progress.setFormat(f"{run.title}: {label}")

    def cancel(self) -> bool:
        """Cancel the running plugin (Esc, the Cancel button); False when none runs."""
        run = self.run
        if run is None:
            return False
        run.job.cancel()
        self.cancel_btn.setEnabled(False)
        self.progress.setFormat(f"{run.title}: cancelling…")
        self.window.statusBar().showMessage("Cancelling the AI run…", 3000)
        return True

    def _end_run(self) -> _Run | None:
        run, self.run = self.run, None
        QApplication.instance().removeEventFilter(self.esc)  # type: ignore[union-attr]
        self.progress.hide()
        self.cancel_btn.hide()
        self.actions["ai_cancel"].setEnabled(False)
        self.actions["ai_run"].setEnabled(True)
        return run

    def _on_done(self, out: tuple[PluginResult, list[Any]]) -> None:
        run = self._end_run()
        result, stored = out
        refused = [r for r in stored if not getattr(r, "ok", True)]
        bar = self.window.statusBar()
        t = result.timings
        if refused:
            reason = getattr(refused[0], "reason", "refused")
            self._error(f"The archive refused a result of {run.title if run else 'the plugin'}: {reason}")
        elif result.empty:
            bar.showMessage(f"{run.title if run else 'AI'}: nothing found, nothing stored ({t.total:.1f} s)", 8000)
        else:
            bar.showMessage(f"{run.title if run else 'AI'}: done in {t.total:.1f} s, {len(stored)} object(s) "
                            "stored in the archive", 8000)  # fmt: skip
        if run is not None and not result.empty:
            rs = ResultSet(result.series_uid or run.series_uid, title=result.plugin.series_description,
                           labels=result.labels, heatmap=result.heatmap, findings=list(result.findings),
                           score=result.score, source="run")  # fmt: skip
            self.show_result(run.viewer, rs)
        self._offered_for = None
        self.runFinished.emit(result, "")

    def _on_error(self, exc: BaseException) -> None:
        run = self._end_run()
        if isinstance(exc, PluginCancelled):
            self.window.statusBar().showMessage("AI run cancelled: nothing was stored", 8000)
            self.runFinished.emit(None, "cancelled")
            return
        title = run.title if run else "the AI plugin"
        if isinstance(exc, PluginError):
            text = f"The AI plugin “{title}” failed: {exc.reason}"
        else:
            logger.error("AI run failed", exc_info=exc)
            text = f"The AI plugin “{title}” failed: {exc}"
        box = self._error(text)
        self.runFinished.emit(None, box.text())

    def _error(self, text: str) -> QMessageBox:
        """One sentence in a non-modal message box (the workstation keeps going)."""
        if self.error_box is not None:
            self.error_box.close()
        box = QMessageBox(QMessageBox.Icon.Warning, "AI plugin", _sentence(text), QMessageBox.StandardButton.Ok,
                          self.window)  # fmt: skip
        box.setObjectName("aiErrorBox")
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setWindowModality(Qt.WindowModality.NonModal)
        box.destroyed.connect(lambda *_: setattr(self, "error_box", None))
        self.error_box = box
        box.show()
        self.window.statusBar().showMessage(box.text(), 8000)
        return box

    # ------------------------------------------------------------ showing results

    def show_result(self, viewer: Any, rs: ResultSet) -> None:
        """Put *rs* on *viewer*'s series: label overlay, heat map, findings in the dock."""
        if viewer is None or getattr(viewer, "_closed", False):
            return
        layer = self.attach(viewer)
        if rs.labels is not None:
            rs.labels.dirty = False
            viewer.seg.set_labels(rs.series_uid, rs.labels)
            viewer.seg.set_visible(self.actions["ai_seg"].isChecked())
        if rs.heatmap is not None:
            layer.set_map(rs.series_uid, rs.heatmap, rs.title)
        shown = self.results.setdefault(id(viewer), {})
        old = shown.get(rs.series_uid)
        if old is not None and rs.source != "run" and not rs.findings and rs.score is None:
            rs.findings, rs.score = old.findings, old.score  # an archived SEG keeps the findings on show
        shown[rs.series_uid] = rs
        vp = viewer.active_viewport()
        if viewer is _viewer_of(self.window) and vp.series_uid == rs.series_uid:
            self.dock.show_result(rs.title, rs.findings, rs.score, self._numbers(vp))
        if rs.findings or rs.score is not None:
            self.set_panel_visible(True)
        self.resultShown.emit(rs.series_uid)

    def show_archived(self, item: ArchivedResult) -> None:
        """Read an archived AI object (off the GUI thread) and show it on the current viewer."""
        viewer = _viewer_of(self.window)
        volume = viewer.series_volume(item.series_uid) if viewer is not None else None
        if volume is None:
            self.window.statusBar().showMessage("Show the series first", 4000)
            return

        def shown(rs: Any) -> None:
            self.show_result(viewer, rs)

        def failed(exc: Any) -> None:
            self._error(f"The AI result cannot be shown: {exc}")

        self.readers.submit(load_archived, item, volume.stack, on_done=shown, on_error=failed)

    @staticmethod
    def _numbers(vp: Any) -> Any:
        """Volume slice → the viewer's image number (1-based, the overlay's "Im") in *vp*."""
        if vp.volume is None:
            return None
        first: dict[int, int] = {}
        for k, m in enumerate(vp.volume.stack.order.volume_index):
            first.setdefault(int(m), k + 1)
        return first.get

    def result_for(self, viewer: Any, series_uid: str) -> ResultSet | None:
        return self.results.get(id(viewer), {}).get(series_uid)

    def jump_to(self, index: int) -> bool:
        """Show finding *index* of the dock: its slice in the viewport of its series, centred."""
        viewer = _viewer_of(self.window)
        if viewer is None or not 0 <= index < len(self.dock.findings):
            return False
        f = self.dock.findings[index]
        vp = viewer.active_viewport()
        rs_uid = next((uid for uid, rs in self.results.get(id(viewer), {}).items() if f in rs.findings), "")
        if rs_uid and vp.series_uid != rs_uid:
            vp = next((v for v in viewer.model.viewports if v.series_uid == rs_uid), vp)
        if vp.volume is None or f.slice_index is None:
            return False
        order = vp.volume.stack.order
        ks = [k for k, m in enumerate(order.volume_index) if int(m) == int(f.slice_index)]
        if not ks:
            return False
        vp.set_index(ks[0])
        if f.centre is not None:
            row, col = f.centre
            x, y = vp.image_to_canvas(col, row)
            w, h = vp.canvas_size
            vp.pan_by(w / 2.0 - x, h / 2.0 - y)
        return True

    # ------------------------------------------------------------ overlays

    def set_panel_visible(self, on: bool) -> None:
        self.dock.setVisible(on)
        if self.actions["ai_panel"].isChecked() != on:
            self.actions["ai_panel"].setChecked(on)

    def set_seg_visible(self, on: bool) -> None:
        for viewer in self._live_viewers():
            viewer.seg.set_visible(on)
        if self.actions["ai_seg"].isChecked() != on:
            self.actions["ai_seg"].setChecked(on)
        self.dock.sync(seg=on)

    def set_heat_visible(self, on: bool) -> None:
        for viewer in self._live_viewers():
            viewer.ai_heat.set_visible(on)
        if self.actions["ai_heat"].isChecked() != on:
            self.actions["ai_heat"].setChecked(on)
        self.dock.sync(heat=on)

    def set_opacity(self, value: float) -> None:
        value = max(0.0, min(1.0, float(value)))
        for viewer in self._live_viewers():
            viewer.seg.set_opacity(value)
            viewer.ai_heat.set_opacity(value)
        if abs(self.dock.opacity.value() / 100.0 - value) > 1e-6:
            self.dock.set_opacity(value)  # echoes back here once, harmless

    def step_opacity(self, step: float) -> None:
        self.set_opacity(self.dock.opacity.value() / 100.0 + step)

    def _live_viewers(self) -> list[Any]:
        live = []
        for v in self._viewers:
            try:
                v.objectName()
            except RuntimeError:  # deleted
                continue
            live.append(v)
        self._viewers = live
        return live

    # ------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """Cancel a run and stop the workers (the window is closing)."""
        if self._closed:
            return
        self._closed = True
        if self.run is not None:
            self.run.job.cancel()
            app = QApplication.instance()
            if app is not None:
                app.removeEventFilter(self.esc)
        self.runner.shutdown(wait=True)
        self.readers.shutdown(wait=True)


def install_ai(window: Any, path: Sequence[str] | None = None) -> AIController:
    """The AI menu, dock and runs for the workstation's main window; lists the keys in Help."""
    controller = AIController(window, path)
    window.ai = controller
    add_help = getattr(window, "add_shortcut_help", None)
    if add_help is not None:
        for _name, keys, text in SHORTCUTS:
            add_help("AI plugins", keys, text)
    window.destroyed.connect(lambda *_: controller.shutdown())
    return controller
