"""The study viewer: series strip, a grid of viewports, toolbar, shortcuts, background loads.

:class:`StudyViewer` binds the headless :class:`~hilum.ui.viewer.model.ViewerModel`
(layout, links, reference lines) and one
:class:`~hilum.ui.viewer.viewport_widget.ViewportWidget` per viewport. Series
load through :class:`~hilum.ui.viewer.study.StudySession` on background
threads; their callbacks come back to the GUI thread through Qt signals
(queued connections): first the preview image, then the sorted volume, then
progress as slices decode (nearest the viewed slice first).

Priors and comparison (issue 15): after :meth:`StudyViewer.open` the patient's
earlier studies are looked for off the GUI thread (the local archive first,
then the configured peers) and listed, ranked, in the priors panel beside the
series strip (:attr:`StudyViewer.priors`, :attr:`StudyViewer.priorsFound`).
:meth:`StudyViewer.add_study` makes another study's series showable here (their
own :class:`StudySession`, sharing the volume cache and decoder pool; the strip
lists them below a date header), and :meth:`StudyViewer.compare` puts the
current series and a prior's best-matching one side by side, scrolling by
anatomy (same Frame of Reference: by patient position; another one: through a
rigid registration computed in the background), with window/level and zoom
linked and each viewport's overlay naming the date of its study.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import QElapsedTimer, QObject, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QBoxLayout,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMenu,
    QMessageBox,
    QProgressBar,
    QSizePolicy,
    QSpinBox,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from hilum.dicom.annotations import AnnotationSet
from hilum.dicom.registration import AlignmentStore
from hilum.dicom.stack_load import LoadHandle, SeriesVolume
from hilum.errors import HilumError
from hilum.ui.icons import ACTION_ICONS, action_icon, icon
from hilum.ui.viewer.export import export_cine, mp4_available, view_frames
from hilum.ui.viewer.hanging import (
    Catalog,
    LoadError,
    Placement,
    Protocol,
    SeriesFacts,
    StudyFacts,
    choose,
    exact,
    load_protocols,
    place,
    protocol_toml,
)
from hilum.ui.viewer.hanging import (
    save_protocol as write_protocol,
)
from hilum.ui.viewer.model import LAYOUTS, Layout, ViewerModel
from hilum.ui.viewer.overlay import OverlayConfig
from hilum.ui.viewer.persistence import PersistenceMixin
from hilum.ui.viewer.presets import PresetStore, WindowPreset
from hilum.ui.viewer.priors_panel import PriorsPanel, date_text
from hilum.ui.viewer.seg_panel import install_segmentation
from hilum.ui.viewer.series_strip import SeriesStrip
from hilum.ui.viewer.shortcuts import SHORTCUTS
from hilum.ui.viewer.state import ViewportState
from hilum.ui.viewer.study import SeriesEntry, StudySession, VolumeCache, best_match
from hilum.ui.viewer.thumbnails import ThumbnailCache
from hilum.ui.viewer.tools import TOOLS, Tool, make_tool
from hilum.ui.viewer.viewport_widget import ViewportWidget

__all__ = ["StudyViewer"]

logger = logging.getLogger(__name__)


ANNOTATION_ICONS = {
    "tool_select": "mdi6.cursor-default-outline",
    "tool_arrow": "mdi6.arrow-top-right",
    "tool_text": "mdi6.format-text-variant-outline",
    "tool_cobb": "mdi6.angle-obtuse",
    "tool_freehand": "mdi6.vector-polygon",
    "tool_point": "mdi6.map-marker-outline",
    "undo": "mdi6.undo",
    "redo": "mdi6.redo",
}
"""Icons (qtawesome names, drawn by :func:`hilum.ui.icons.icon`) of the annotation actions."""


def _menu_text(description: str) -> str:
    """A menu entry's text from a shortcut's description: up to its first parenthesis."""
    return description.split(" (")[0].strip()


class _LoadBridge(QObject):
    """Loader-thread callbacks → GUI-thread signals."""

    preview = Signal(str, object)
    ready = Signal(str, object)
    progress = Signal(str, object, int, int)
    done = Signal(str, object)


def _loaded(vp: ViewportState) -> bool:
    """The viewport shows its series' whole stack, every slice decoded (not the first preview)."""
    return vp.volume is not None and vp.volume.complete and not vp.volume.preview


class _PriorsBridge(QObject):
    """Priors-search and registration threads → GUI-thread signals."""

    found = Signal(object, bool)  # priors, more to come (the peers are still being asked)
    failed = Signal(str, bool)  # what went wrong, more to come
    registered = Signal(object, object)  # (fixed series, moving series), Alignment or the exception


class StudyViewer(QWidget, PersistenceMixin):
    """A workspace tab showing one study."""

    seriesShown = Signal(int, str)
    firstImage = Signal(str)
    loadFinished = Signal(str)
    priorsFound = Signal(list)
    """The ranked priors (:attr:`priors`), after the local search and again after the peers'."""
    compared = Signal(str)
    """:meth:`compare` laid out the comparison with this prior study."""
    alignmentReady = Signal(str, str)
    """A registration between two series (fixed, moving) was set on the model."""

    def __init__(self, archive: Any, study_uid: str, *, data_dir: str | Path | None = None,
                 executor: str = "auto", cache: VolumeCache | None = None, pool: Executor | None = None,
                 parent: QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.setObjectName("studyViewer")
        self.archive = archive
        self.study_uid = study_uid
        self.data_dir = Path(data_dir) if data_dir else None
        self.session = StudySession(archive, study_uid, cache=cache, executor=executor, pool=pool)
        self.sessions: dict[str, StudySession] = {study_uid: self.session}
        """Every study this viewer can show, the current one first (:meth:`add_study`)."""
        self.priors: list[Any] = []
        """The patient's other studies (:class:`hilum.priors.Prior`), most relevant first."""
        self.peers: Mapping[str, Any] | None = None
        """The peers asked for priors; None: the main window's configured peers that may be queried."""
        self.presets = PresetStore(self.data_dir)
        self.overlay = replace(OverlayConfig.load(self.data_dir), current_study=study_uid)
        self.model = ViewerModel(Layout(1, 1))
        self.model.alignment_store = AlignmentStore(self.data_dir)  # registrations and hand re-alignments
        self.tools: dict[str, Tool] = {}
        self.tool_name = "window"
        self.annotations = AnnotationSet()
        """The study's annotations: one set, every viewport paints and edits it (undo / redo here)."""
        self._assigned: dict[int, str] = {}  # viewport index -> series uid
        self._loads: dict[str, LoadHandle] = {}
        self._finished: set[str] = set()  # series whose load's end this viewer has handled (_on_done)
        self._widgets: list[ViewportWidget] = []
        self._maximized: int | None = None
        self._thumbnail_later: set[str] = set()
        self.timings: dict[str, float] = {}
        self._t_open = 0.0
        self._bridge = _LoadBridge(self)
        self._bridge.preview.connect(self._on_preview)
        self._bridge.ready.connect(self._on_ready)
        self._bridge.progress.connect(self._on_progress)
        self._bridge.done.connect(self._on_done)
        self._priors_bridge = _PriorsBridge(self)
        self._priors_bridge.found.connect(self._on_priors)
        self._priors_bridge.failed.connect(self._on_priors_failed)
        self._priors_bridge.registered.connect(self._on_registered)
        self._priors_thread: threading.Thread | None = None
        self._priors_error = ""
        self._retrieves: dict[int, str] = {}  # transfer id -> prior study uid
        self._peer_map: dict[str, Any] = {}  # the peers asked for priors, by name
        self._registering: set[tuple[str, str]] = set()  # (fixed, moving) series asked for
        self._registration_jobs: Any = None
        self._closed = False
        self.priors_panel = PriorsPanel(self)
        self.priors_panel.priorActivated.connect(lambda uid: self.compare(uid))
        self.priors_panel.retrieveRequested.connect(self.retrieve_prior)
        thumbs_dir = self.data_dir / "cache" / "thumbnails" if self.data_dir else None
        self.strip = SeriesStrip(ThumbnailCache(thumbs_dir, pool=pool), self)  # headers parsed off this process
        self.strip.seriesActivated.connect(lambda uid: self.show_series(uid, self.model.active))
        self._init_persistence()  # annotations, key images, GSPS/SR/KOS (hilum.ui.viewer.persistence)
        self._build_ui()
        self._build_actions()
        self.seg = install_segmentation(self)  # segmentation editing: tools, panel, overlay (seg_panel)
        self.model.subscribe(self._on_model)
        self._cine_timer = QTimer(self)
        self._cine_timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._cine_timer.timeout.connect(self._cine_tick)
        self._cine_clock = QElapsedTimer()
        self._apply_layout()

    # ------------------------------------------------------------ UI

    def _build_ui(self) -> None:
        self.toolbar = QToolBar(self)
        self.toolbar.setObjectName("viewerToolbar")
        self.grid_host = QWidget(self)
        self.grid = QGridLayout(self.grid_host)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(2)
        self.progress = QProgressBar(self)
        self.progress.setMaximumHeight(14)
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.status = QLabel("", self)
        centre = QVBoxLayout()
        centre.setContentsMargins(0, 0, 0, 0)
        centre.addWidget(self.toolbar)
        centre.addWidget(self.grid_host, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.progress)
        centre.addLayout(bottom)
        outer = QHBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.strip)
        outer.addWidget(self.priors_panel)
        outer.addLayout(centre, 1)

    def _action(self, name: str, text: str, slot: Callable[..., object] | None = None, keys: str = "", *,
                toggled: Callable[[bool], object] | None = None, checkable: bool = False) -> QAction:  # fmt: skip
        """A named viewer action: ``slot()`` runs when it is triggered, or, for a checkable action,
        ``toggled(checked)`` runs when the user checks or unchecks it (exactly one of the two;
        ``checkable=True`` with a *slot* means that slot takes the flag, as ``toggled`` does).

        Keeping the two apart is what makes ``partial(f, arg)`` safe as either: a checkable
        action's ``triggered(bool)`` must never reach a slot that takes no flag (issue 23: the
        tools' ``partial(set_tool, name)`` got ``checked`` as a second argument and raised).
        """
        if checkable and toggled is None:
            slot, toggled = None, slot
        if (slot is None) == (toggled is None):
            raise TypeError(f"action {name!r}: give either slot or toggled")
        act = QAction(text, self)
        act.setObjectName(name)
        if keys:
            act.setShortcuts([QKeySequence(k) for k in keys.split(";")])
            act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        if toggled is not None:
            act.setCheckable(True)
            on_toggle = toggled
            act.triggered.connect(lambda checked=False: on_toggle(bool(checked)))
        else:
            assert slot is not None
            on_trigger = slot
            act.triggered.connect(lambda _checked=False: on_trigger())
        self.addAction(act)
        self.actions_by_name[name] = act
        return act

    def _build_actions(self) -> None:
        self.actions_by_name: dict[str, QAction] = {}
        keys = {name: k for name, k, _ in SHORTCUTS}
        texts = {name: t for name, _, t in SHORTCUTS}
        av = self.active_viewport
        simple = {
            "next_slice": lambda: av().scroll_down(1),
            "prev_slice": lambda: av().scroll_down(-1),
            "page_down": lambda: av().page_down(1),
            "page_up": lambda: av().page_down(-1),
            "first_slice": lambda: av().to_top(),
            "last_slice": lambda: av().to_bottom(),
            "next_series": lambda: self.step_series(1),
            "prev_series": lambda: self.step_series(-1),
            "cine": lambda: self.toggle_cine(),
            "cine_faster": lambda: self.set_cine_fps(av().cine_fps + 5),
            "cine_slower": lambda: self.set_cine_fps(av().cine_fps - 5),
            "window_header": lambda: av().reset_window(),
            "invert": lambda: av().toggle_invert(),
            "flip_h": lambda: av().flip_horizontal(),
            "flip_v": lambda: av().flip_vertical(),
            "rotate_cw": lambda: av().rotate(90),
            "rotate_ccw": lambda: av().rotate(-90),
            "zoom_in": lambda: av().zoom_by(1.25),
            "zoom_out": lambda: av().zoom_by(0.8),
            "fit": lambda: self._fit(),
            "reset": lambda: av().reset_view(),
            "undo": lambda: self._route_undo(False),
            "redo": lambda: self._route_undo(True),
            "delete_measurement": lambda: self.delete_measurement(),
            "clear_measurements": lambda: self.clear_measurements(),
            "cancel": lambda: self.cancel_tool(),
            "layout_custom": lambda: self.custom_layout_dialog(),
            "next_viewport": lambda: self.model.cycle_active(1),
            "prev_viewport": lambda: self.model.cycle_active(-1),
            "overlay": lambda: self.toggle_overlay(),
            "export_view": lambda: self.export_view_dialog(),
            "export_cine": lambda: self.export_cine_dialog(),
        }
        for name, slot in simple.items():
            self._action(name, _menu_text(texts[name]), slot, keys[name])
        self._build_hanging_actions()
        for name in ("layout_custom", "export_view", "export_cine"):  # these open a dialog
            self.actions_by_name[name].setText(self.actions_by_name[name].text() + "…")
        for i, layout in enumerate(LAYOUTS, start=1):
            self._action(f"layout_{i}", f"Layout {layout.rows}×{layout.columns}", partial(self.set_layout, layout),
                         keys[f"layout_{i}"])  # fmt: skip
        for d in range(1, 10):
            self._action(f"preset_{d}", f"Window preset {d}", partial(self.apply_preset_key, str(d)), str(d))
        self._action("save_preset", "Save the current window as a preset…", self.save_preset_dialog)
        links = {"link_scroll": "scroll", "link_window": "window", "link_zoom": "zoom"}
        for name, what in links.items():
            act = self._action(name, _menu_text(texts[name]), keys=keys[name], toggled=partial(self._set_link, what))
            act.setChecked(getattr(self.model, f"link_{what}"))
        ref = self._action("reference_lines", _menu_text(texts["reference_lines"]), keys=keys["reference_lines"],
                           toggled=self._set_reference_lines)  # fmt: skip
        ref.setChecked(self.model.show_reference_lines)
        planes = self._action("overlay_planes", _menu_text(texts["overlay_planes"]), keys=keys["overlay_planes"],
                              toggled=self.set_overlay_planes)  # fmt: skip
        planes.setChecked(True)
        group = QActionGroup(self)
        group.setExclusive(True)
        for name, cls in TOOLS.items():
            act = self._action(f"tool_{name}", cls.label, keys=keys.get(f"tool_{name}", ""),
                               toggled=partial(self._tool_toggled, name))  # fmt: skip
            group.addAction(act)
            self.toolbar.addAction(act)
        self.actions_by_name[f"tool_{self.tool_name}"].setChecked(True)
        for name, glyph in ANNOTATION_ICONS.items():  # hilum.ui.icons names the older tools' icons
            self.actions_by_name[name].setIcon(icon(glyph, self.actions_by_name[name].text()))
        self.toolbar.addSeparator()
        # layouts
        layout_btn = QToolButton(self)
        layout_btn.setObjectName("layoutButton")
        layout_btn.setText("Layout")
        layout_btn.setIcon(icon(ACTION_ICONS["layout_menu"], "Layout"))
        layout_btn.setToolTip("Layout of the viewports (Ctrl+1 … Ctrl+7)")
        layout_btn.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(layout_btn)
        for i in range(1, len(LAYOUTS) + 1):
            menu.addAction(self.actions_by_name[f"layout_{i}"])
        menu.addAction(self.actions_by_name["layout_custom"])
        layout_btn.setMenu(menu)
        self.toolbar.addWidget(layout_btn)
        # window presets
        self.preset_btn = QToolButton(self)
        self.preset_btn.setObjectName("presetButton")
        self.preset_btn.setText("W/L")
        self.preset_btn.setIcon(icon(ACTION_ICONS["preset_menu"], "W/L"))
        self.preset_btn.setToolTip("Window presets (0: the header's window, 1 … 9: presets)")
        self.preset_btn.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.preset_menu = QMenu(self.preset_btn)
        self.preset_menu.aboutToShow.connect(self._fill_preset_menu)
        self.preset_btn.setMenu(self.preset_menu)
        self.toolbar.addWidget(self.preset_btn)
        for name in ("invert", "rotate_cw", "flip_h", "flip_v", "fit", "reset"):
            self.toolbar.addAction(self.actions_by_name[name])
        self.toolbar.addSeparator()
        self.toolbar.addAction(self.actions_by_name["cine"])
        self.fps_box = QSpinBox(self)
        self.fps_box.setRange(1, 120)
        self.fps_box.setValue(15)
        self.fps_box.setSuffix(" fps")
        self.fps_box.setToolTip("Cine frame rate (] faster, [ slower)")
        self.fps_box.valueChanged.connect(lambda v: self.set_cine_fps(float(v)))
        self.toolbar.addWidget(self.fps_box)
        self.toolbar.addSeparator()
        for name in ("link_scroll", "link_window", "link_zoom", "reference_lines", "overlay"):
            self.toolbar.addAction(self.actions_by_name[name])
        self.toolbar.addSeparator()
        self.toolbar.addAction(self.actions_by_name["export_view"])
        self.toolbar.addAction(self.actions_by_name["export_cine"])
        self.toolbar.addSeparator()
        from hilum.ui.mpr.viewer_hook import add_mpr_actions  # MPR / 3D of the active series (hilum.ui.mpr)

        add_mpr_actions(self)
        # priors and comparison (issue 15)
        self._action("compare_prior", _menu_text(texts["compare_prior"]), lambda: self.compare_most_relevant(),
                     keys["compare_prior"])  # fmt: skip
        self._action("compare_prior_2x2", _menu_text(texts["compare_prior_2x2"]),
                     lambda: self.compare_most_relevant(rows=2), keys["compare_prior_2x2"])  # fmt: skip
        show_priors = self._action("show_priors", _menu_text(texts["show_priors"]), keys=keys["show_priors"],
                                   toggled=self.priors_panel.setVisible)  # fmt: skip
        show_priors.setChecked(True)
        self.toolbar.addAction(self.actions_by_name["compare_prior"])
        self._build_persistence_actions()  # Save (Ctrl+S), key image, presentation states
        self._decorate_actions()
        for name, glyph, text in (("compare_prior", "mdi6.compare", "Cmp"), ("compare_prior_2x2", "mdi6.view-grid",
                                  "C4"), ("show_priors", "mdi6.history", "Pri")):  # fmt: skip
            self.actions_by_name[name].setIcon(icon(glyph, text))
        self._context_menu = QMenu(self)
        self._context_menu.setObjectName("viewportContextMenu")

    def _route_undo(self, redo: bool) -> bool:
        """Ctrl+Z / Ctrl+Y: a segmentation's strokes while a segmentation tool is in use, else the
        annotations (:func:`hilum.ui.viewer.seg_panel.route_undo`)."""
        from hilum.ui.viewer.seg_panel import route_undo

        return route_undo(self, redo)

    def _decorate_actions(self) -> None:
        """Icons and tooltips that name the shortcut, for every action (the toolbar shows icons only)."""
        descriptions = {name: t for name, _, t in SHORTCUTS}
        for name, act in self.actions_by_name.items():
            ico = action_icon(name, act.text())
            if ico is not None:
                act.setIcon(ico)
            base = descriptions.get(name) or act.toolTip() or act.text()
            act.setStatusTip(base)
            shown = " or ".join(k.toString(QKeySequence.SequenceFormat.NativeText) for k in act.shortcuts())
            act.setToolTip(f"{base} ({shown})" if shown else base)

    # ------------------------------------------------------------ menus

    def menu_sections(self, which: str) -> list[tuple[str, list[str]]]:
        """The entries of the viewer's ``"viewer"`` or ``"tools"`` menu, by action name.

        A section is ``(title, names)``: a titled one is a submenu, an untitled one a group
        between separators; ``""`` in *names* is a separator. The viewer menu ends with every
        action no section names, so an action added to the viewer shows up without a change here.
        """
        if which == "tools":
            return [
                ("", [f"tool_{name}" for name in TOOLS]),
                ("", ["undo", "redo", "delete_measurement", "clear_measurements", "cancel"]),
                ("", ["mpr", "volume_3d"]),
            ]
        if which != "viewer":
            raise ValueError(f"no menu {which!r}")
        sections = [
            ("&Edit", ["undo", "redo", "", "delete_measurement", "clear_measurements"]),
            ("&Slices and series", ["next_slice", "prev_slice", "page_down", "page_up", "first_slice", "last_slice",
                                    "", "next_series", "prev_series", "", "next_viewport", "prev_viewport"]),
            ("&Cine", ["cine", "cine_faster", "cine_slower", "", "export_cine"]),
            ("&Window", ["window_header", *(f"preset_{d}" for d in range(1, 10)), "", "save_preset"]),
            ("&Image", ["invert", "flip_h", "flip_v", "rotate_cw", "rotate_ccw", "", "zoom_in", "zoom_out", "fit",
                        "", "reset"]),
            ("&Layout", [*(f"layout_{i}" for i in range(1, len(LAYOUTS) + 1)), "layout_custom", "",
                         "next_stage", "prev_stage", "save_protocol"]),
            ("", ["link_scroll", "link_window", "link_zoom", "reference_lines", "overlay", "overlay_planes"]),
            ("&Priors", ["compare_prior", "compare_prior_2x2", "", "show_priors"]),
            ("", ["save_annotations", "key_image", "presentation_states", "", "export_view"]),
        ]  # fmt: skip
        placed = {n for _, names in sections + self.menu_sections("tools") for n in names}
        rest = [n for n in self.actions_by_name if n not in placed]
        return sections + ([("", rest)] if rest else [])

    def fill_menu(self, menu: QMenu, which: str) -> None:
        """Fill *menu* (emptied first) with this viewer's own actions: their shortcuts work and show."""
        self._add_sections(menu, self.menu_sections(which))

    def _add_sections(self, menu: QMenu, sections: list[tuple[str, list[str]]]) -> None:
        for sub in menu.findChildren(QMenu, options=Qt.FindChildOption.FindDirectChildrenOnly):
            sub.deleteLater()  # the submenus of the last time
        menu.clear()
        for title, names in sections:
            if title:
                target = menu.addMenu(title)
                if "preset_1" in names:
                    target.aboutToShow.connect(self._name_presets)
            else:
                if menu.actions() and not menu.actions()[-1].isSeparator():
                    menu.addSeparator()
                target = menu
            for name in names:
                if not name:
                    target.addSeparator()
                elif name in self.actions_by_name:
                    target.addAction(self.actions_by_name[name])
        self._name_presets()

    def _name_presets(self) -> None:
        """Name the preset keys' actions after the active viewport's presets (CT: 1 = brain …)."""
        modality = self.active_viewport().modality
        for d in range(1, 10):
            p = self.presets.by_key(str(d), modality)
            act = self.actions_by_name[f"preset_{d}"]
            act.setText(f"{p.name} ({p.center:g}/{p.width:g})" if p is not None else f"Window preset {d}")

    def context_menu(self) -> QMenu:
        """The viewport's right-click menu: Delete on a selected annotation, the tools, MPR and 3D,
        then the viewer menu (built afresh)."""
        first = [("", [f"tool_{n}" for n in TOOLS]), ("", ["mpr", "volume_3d"])]
        if self.active_viewport().selected in self.annotations:
            first.insert(0, ("", ["delete_measurement", "undo", "redo"]))
        self._add_sections(self._context_menu, first + self.menu_sections("viewer"))
        return self._context_menu

    def _show_context_menu(self, index: int, global_pos: QPoint) -> None:
        self.model.set_active(index)
        self.context_menu().popup(global_pos)

    def _fill_preset_menu(self) -> None:
        menu = self.preset_menu
        menu.clear()
        vp = self.active_viewport()
        menu.addAction("Header window\t0", lambda: vp.reset_window())
        f = vp.frame_info
        for i, w in enumerate(f.pipeline.windows if f is not None and f.pipeline is not None else ()):
            if i:  # the first is "Header window"
                label = w.explanation or f"Header window {i + 1}"
                menu.addAction(f"{label} ({w.center:g}/{w.width:g})", partial(vp.set_voi, w, label))  # its own function
        for p in self.presets.for_modality(self.active_viewport().modality):
            menu.addAction(f"{p.name} ({p.center:g}/{p.width:g})\t{p.key}", partial(self.apply_preset, p))
        menu.addSeparator()
        menu.addAction("Save current window as preset…", self.save_preset_dialog)

    # ------------------------------------------------------------ layout

    def _make_widget(self, index: int) -> ViewportWidget:
        state = self.model.viewports[index]
        state.set_annotations(self.annotations)
        state.set_overlay_planes(self.actions_by_name["overlay_planes"].isChecked())  # a viewport added later
        w = ViewportWidget(state, model=self.model, overlay=self.overlay, tool_provider=self.current_tool,
                           parent=self.grid_host)  # fmt: skip
        w.canvas.activated.connect(partial(self.model.set_active, index))
        w.canvas.seriesDropped.connect(lambda uid, i=index: self.show_series(uid, i))
        w.canvas.doubleClicked.connect(partial(self.toggle_maximize, index))
        w.canvas.contextMenuRequested.connect(partial(self._show_context_menu, index))
        state.subscribe(self._on_viewport)
        self._watch_persistence(index, w)
        return w

    def _apply_layout(self) -> None:
        while len(self._widgets) < len(self.model.viewports):
            self._widgets.append(self._make_widget(len(self._widgets)))
        for w in self._widgets:
            self.grid.removeWidget(w)
            w.hide()
        lay = self.model.layout
        for r in range(self.grid.rowCount()):
            self.grid.setRowStretch(r, 0)
        for c in range(self.grid.columnCount()):
            self.grid.setColumnStretch(c, 0)
        for i in range(lay.count):
            r, c = divmod(i, lay.columns)
            self.grid.addWidget(self._widgets[i], r, c)
            self.grid.setRowStretch(r, 1)
            self.grid.setColumnStretch(c, 1)
            self._widgets[i].setVisible(self._maximized is None or self._maximized == i)
        self._mark_active()
        # hiding the focused canvas handed the focus to the next widget in the chain (the tab bar):
        # give it back to the active viewport, or the keys do nothing until a click (issue 23)
        self.focus_active_viewport()

    def _mark_active(self) -> None:
        for i, w in enumerate(self._widgets):
            w.set_active(i == self.model.active and self.model.layout.count > 1)
        if self.model.active < len(self._widgets):
            # viewer.setFocus() (opening the study, its tab coming forward) lands on the active canvas
            self.setFocusProxy(self._widgets[self.model.active].canvas)

    def focus_active_viewport(self) -> bool:
        """Give the keyboard focus to the active viewport's canvas (when the viewer is on screen)."""
        if not self.isVisible() or self.model.active >= len(self._widgets):
            return False
        canvas = self._widgets[self.model.active].canvas
        if not canvas.isVisible():
            return False
        canvas.setFocus(Qt.FocusReason.OtherFocusReason)
        return True

    def _on_model(self, what: str) -> None:
        if what == "layout":
            self._maximized = None
            self._apply_layout()
            self._fill_empty_viewports()
        elif what == "active":
            had_focus = self._has_focus()
            self._mark_active()
            if had_focus:  # Tab / Shift+Tab: the keys follow the active viewport
                self.focus_active_viewport()
            self.fps_box.blockSignals(True)
            self.fps_box.setValue(int(self.active_viewport().cine_fps))
            self.fps_box.blockSignals(False)
        elif what == "reference":
            for w in self._widgets[: self.model.layout.count]:
                w.canvas.update()

    def _has_focus(self) -> bool:
        fw = QApplication.focusWidget()
        return fw is not None and (fw is self or self.isAncestorOf(fw))

    def set_layout(self, layout: Layout | str) -> None:
        self.model.set_layout(layout)

    def custom_layout_dialog(self) -> None:
        text, ok = QInputDialog.getText(self, "Custom layout", "Rows x columns (up to 6x6):",
                                        text=self.model.layout.name)  # fmt: skip
        if ok and text:
            try:
                self.set_layout(Layout.parse(text))
            except ValueError as exc:
                QMessageBox.warning(self, "Custom layout", str(exc))

    def toggle_maximize(self, index: int) -> None:
        self._maximized = None if self._maximized is not None else index
        self.model.set_active(index)
        self._apply_layout()

    def viewport_widget(self, index: int) -> ViewportWidget:
        return self._widgets[index]

    def active_viewport(self) -> ViewportState:
        return self.model.active_viewport

    # ------------------------------------------------------------ tools

    def current_tool(self) -> Tool:
        tool = self.tools.get(self.tool_name)
        if tool is None:
            tool = self.tools[self.tool_name] = make_tool(self.tool_name)
        return tool

    def set_tool(self, name: str) -> None:
        if name not in TOOLS and name not in self.tools:  # the segmentation tools are in self.tools
            raise ValueError(f"unknown tool {name!r}")
        self.cancel_tool()
        self.tool_name = name
        act = self.actions_by_name.get(f"tool_{name}")
        if act is not None and not act.isChecked():
            act.setChecked(True)

    def _tool_toggled(self, name: str, checked: bool) -> None:
        """A tool's button or key: choosing it (an exclusive group never unchecks the chosen one)."""
        if checked:
            self.set_tool(name)

    def cancel_tool(self) -> None:
        tool = self.tools.get(self.tool_name)
        if tool is not None:
            tool.cancel(self.active_viewport())
        vp = self.active_viewport()
        if vp.probe_result is not None:
            vp.probe_result = None
            vp.emit("measurements")

    def delete_measurement(self) -> None:
        """Delete the annotation selected in the active viewport, else the last one on its image."""
        vp = self.active_viewport()
        uid = vp.selected
        if uid is not None and uid in self.annotations:
            self.annotations.remove(uid)
            return
        here = vp.annotations_here()
        if here:
            self.annotations.remove(here[-1].uid)

    def clear_measurements(self) -> None:
        """Delete every annotation of the active viewport's series (one undoable step)."""
        self.annotations.remove_many(a.uid for a in self.active_viewport().measurements)

    def toggle_overlay(self) -> None:
        for vp in self.model.viewports:
            vp.overlay_enabled = not vp.overlay_enabled
            vp.emit("view")

    def set_overlay_planes(self, show: bool) -> None:
        """Show or hide the images' overlay planes (60xx) in every viewport (the checkable action's slot)."""
        for vp in self.model.viewports:
            vp.set_overlay_planes(show)
        act = self.actions_by_name.get("overlay_planes")
        if act is not None and act.isChecked() != bool(show):
            act.setChecked(bool(show))

    def _fit(self) -> None:
        vp = self.active_viewport()
        vp.view.zoom, vp.view.pan_x, vp.view.pan_y = 1.0, 0.0, 0.0
        vp.emit("view")

    def _set_link(self, what: str, checked: bool) -> None:
        self.model.set_links(**{what: bool(checked)})

    def _set_reference_lines(self, checked: bool) -> None:
        self.model.show_reference_lines = bool(checked)
        self._on_model("reference")

    # ------------------------------------------------------------ window presets

    def apply_preset(self, preset: WindowPreset) -> None:
        self.active_viewport().set_window(preset.center, preset.width, preset.name)

    def apply_preset_key(self, key: str) -> bool:
        vp = self.active_viewport()
        preset = self.presets.by_key(key, vp.modality)
        if preset is None:
            return False
        self.apply_preset(preset)
        return True

    def save_preset_dialog(self) -> None:
        vp = self.active_viewport()
        w = vp.current_window()
        if w is None:
            return
        name, ok = QInputDialog.getText(self, "Save window preset", f"Name for {w.center:g}/{w.width:g}:")
        if ok and name.strip():
            used = {p.key for p in self.presets.presets}
            key = next((str(d) for d in range(1, 10) if str(d) not in used), "")
            path = self.presets.add(WindowPreset(name.strip(), w.center, w.width, vp.modality, key))
            self.status.setText(f"Saved preset {name.strip()!r} to {path}")

    # ------------------------------------------------------------ cine

    def toggle_cine(self) -> None:
        vp = self.active_viewport()
        vp.set_cine(not vp.cine_playing)
        self._update_cine_timer()

    def set_cine_fps(self, fps: float) -> None:
        vp = self.active_viewport()
        vp.set_cine_fps(fps)
        if self.fps_box.value() != int(vp.cine_fps):
            self.fps_box.blockSignals(True)
            self.fps_box.setValue(int(vp.cine_fps))
            self.fps_box.blockSignals(False)
        self._update_cine_timer()

    def _update_cine_timer(self) -> None:
        playing = [vp for vp in self.model.visible if vp.cine_playing]
        if not playing:
            self._cine_timer.stop()
            return
        fps = max(vp.cine_fps for vp in playing)
        self._cine_timer.setInterval(max(4, int(500 / fps)))
        if not self._cine_timer.isActive():
            self._cine_clock.start()
            self._cine_timer.start()

    def _cine_tick(self) -> None:
        dt = self._cine_clock.restart() / 1000.0
        for vp in self.model.visible:
            vp.advance_cine(dt)

    # ------------------------------------------------------------ series

    def open(self) -> None:
        """Read the study's series, fill the strip and hang the study: the best hanging protocol's
        first stage (layout, the series of each viewport, windows, links) is applied here, before
        control returns to the event loop, so the first image painted is already the protocol's
        (:mod:`hilum.ui.viewer.hanging`). No protocol or nothing placed: the first series, 1x1."""
        self._t_open = time.perf_counter()
        entries = self.session.refresh()
        placements = self._choose_protocol(entries) if entries else []
        placed = [p.series.series_uid for p in placements if p.series is not None and p.series.study == 0]
        # the placed series' thumbnails come from their loads' sorted stacks (their headers are read once)
        self._thumbnail_later = set(placed or [e.series_uid for e in entries[:1]])
        self.strip.set_series(entries, later=self._thumbnail_later)
        if not entries:
            self.status.setText("This study has no images to show.")
            return
        if not placed or not self._apply_placements(placements):
            self.show_series(entries[0].series_uid, 0)
        self.timings["hung"] = time.perf_counter() - self._t_open  # layout set, series assigned, loads started
        self._start_priors()
        self._load_presentation_objects()  # the study's GSPS / SR / KOS / SEG, off the GUI thread

    def _fill_empty_viewports(self) -> None:
        """After a bigger layout: put the next series not yet shown into empty viewports."""
        if getattr(self, "_hanging", False):
            return  # a hanging protocol's stage places its own series (and leaves viewports empty)
        shown = set(self._assigned.values())
        pending = [e.series_uid for e in self.session.series if e.series_uid not in shown]
        active = self.model.active
        for i, vp in enumerate(self.model.visible):
            if vp.volume is None and i not in self._assigned and pending:
                self.show_series(pending.pop(0), i)
        if active < self.model.layout.count:  # the viewport the reader was in stays the active one
            self.model.set_active(active)

    def step_series(self, step: int) -> None:
        """The next (previous) series of the study the active viewport shows (a prior's: its own)."""
        current = self._assigned.get(self.model.active)
        uids = [e.series_uid for e in self.session_of(current or "").series]
        if not uids:
            return
        current = self._assigned.get(self.model.active)
        i = uids.index(current) if current in uids else -1
        self.show_series(uids[(i + step) % len(uids)], self.model.active)

    def show_series(self, series_uid: str, viewport: int | None = None) -> None:
        """Show a series in a viewport (default: the active one), loading it if needed."""
        index = self.model.active if viewport is None else viewport
        self.model._ensure(index + 1)
        self._assigned[index] = series_uid
        vp = self.model.viewports[index]
        vp.set_cine(False)
        handle = self._loads.get(series_uid)
        if handle is not None and handle.cancelled:  # evicted from the cache meanwhile
            handle = None
        if handle is None:
            self._t_open = self._t_open or time.perf_counter()
            in_use = set(self._assigned.values())
            bridge, uid = self._bridge, series_uid

            def emit(signal: Any, *args: Any) -> None:
                try:
                    signal.emit(*args)
                except RuntimeError:  # the viewer was closed (its bridge deleted) while the load ran
                    pass

            def on_preview(v: SeriesVolume) -> None:
                emit(bridge.preview, uid, v)

            def on_ready(v: SeriesVolume) -> None:
                emit(bridge.ready, uid, v)

            def on_progress(v: SeriesVolume, n: int, t: int) -> None:
                emit(bridge.progress, uid, v, n, t)

            def on_done(h: LoadHandle) -> None:
                emit(bridge.done, uid, h)

            session = self.session_of(uid)
            cached = session.cache.get(uid)
            handle = session.load(uid, in_use=in_use, on_preview=on_preview, on_ready=on_ready,
                                  on_progress=on_progress, on_done=on_done)  # fmt: skip
            if handle is cached and not handle.done.is_set():
                self._follow_foreign(uid, handle)  # another tab's load: its callbacks are that tab's
            if handle is cached and handle.done.is_set():
                self._finished.add(uid)  # loaded already (another tab, or earlier here): no end to wait for
            else:
                self._finished.discard(uid)
            self._loads[series_uid] = handle
            if handle.volume is not None:  # from the session's cache
                vp.set_volume(handle.volume)
                self._thumbnail_from(series_uid, handle.volume)
        elif handle.volume is not None:
            vp.set_volume(handle.volume)
            vp.status = "" if handle.done.is_set() else vp.status
        elif handle.preview is not None:
            vp.set_volume(handle.preview)
        self.model.set_active(index)
        item = self.strip.item_for(series_uid)
        if item is not None:
            self.strip.setCurrentItem(item)
        self.seriesShown.emit(index, series_uid)

    def _follow_foreign(self, uid: str, handle: LoadHandle) -> None:
        """Follow a load another tab started (the shared cache gave it to us, still running): its
        stages reach this viewer by polling, as they would by its own callbacks."""
        timer = QTimer(self)
        timer.setInterval(40)
        seen: dict[str, Any] = {"preview": None, "volume": None, "loaded": -1}

        def tick() -> None:
            if self._closed or self._loads.get(uid) is not handle:
                timer.stop()
                timer.deleteLater()
                return
            if handle.volume is None and handle.preview is not None and seen["preview"] is None:
                seen["preview"] = handle.preview
                self._on_preview(uid, handle.preview)
            volume = handle.volume
            if volume is not None and seen["volume"] is not volume:
                seen["volume"] = volume
                self._on_ready(uid, volume)
            if volume is not None and volume.loaded_count != seen["loaded"]:
                seen["loaded"] = volume.loaded_count
                self._on_progress(uid, volume, volume.loaded_count, len(volume))
            if handle.done.is_set():
                timer.stop()
                timer.deleteLater()
                self._on_done(uid, handle)

        timer.timeout.connect(tick)
        timer.start()

    def series_volume(self, series_uid: str) -> SeriesVolume | None:
        """The loaded (or loading) stack of a series shown in this viewer, None when none."""
        handle = self._loads.get(series_uid)
        return handle.volume if handle is not None else None

    def is_loading(self, series_uid: str) -> bool:
        """True while the series' background load runs, and until this viewer has taken its end in
        (the stack shown, :attr:`loadFinished` emitted): the load thread's end and the viewer's are
        apart by the queued signals, more so while other work (the priors search) holds the GUI
        thread a moment."""
        handle = self._loads.get(series_uid)
        return handle is not None and (not handle.done.is_set() or series_uid not in self._finished)

    def _viewports_of(self, series_uid: str) -> list[ViewportState]:
        return [self.model.viewports[i] for i, uid in self._assigned.items() if uid == series_uid]

    def _on_preview(self, uid: str, volume: SeriesVolume) -> None:
        for vp in self._viewports_of(uid):
            if vp.volume is None or vp.series_uid != uid:
                vp.status = "Loading…"
                vp.set_volume(volume, 0)
        if "first_image" not in self.timings and self._t_open:
            self.timings["first_image"] = time.perf_counter() - self._t_open
        self.firstImage.emit(uid)

    def _thumbnail_from(self, uid: str, volume: SeriesVolume | None) -> None:
        """The strip's thumbnail of a series held back by :meth:`open`: the middle of its loaded
        stack, or (no volume: the load failed) from its headers."""
        if uid not in self._thumbnail_later:
            return
        self._thumbnail_later.discard(uid)
        entry = self.session_of(uid).entry(uid)
        if entry is None:
            return
        middle = None
        if volume is not None and not volume.preview and len(volume):
            f = volume.stack.frames[len(volume) // 2]
            middle = (f.path, f.frame)
        self.strip.make_thumbnail(uid, entry.paths, middle)

    def _on_ready(self, uid: str, volume: SeriesVolume) -> None:
        self._thumbnail_from(uid, volume)
        for vp in self._viewports_of(uid):
            f = vp.frame_info
            index = volume.stack.index_of(*f.key) if f is not None else None
            vp.set_volume(volume, index, keep_view=vp.series_uid == uid)
            if hasattr(volume, "lossy"):  # a remote series streamed: lossy first, then full fidelity
                vp.status = f"Full fidelity {int((volume.loaded & ~volume.lossy).sum())}/{len(volume)}"
            else:
                vp.status = f"Loading {volume.loaded_count}/{len(volume)}"
        self._resync_priors(uid)
        handle = self._loads.get(uid)
        if handle is not None and self._viewports_of(uid):
            handle.focus(self._viewports_of(uid)[0].index)
        self.progress.setRange(0, len(volume))
        self.progress.setValue(volume.loaded_count)
        self.progress.show()

    def _on_progress(self, uid: str, volume: SeriesVolume, loaded: int, total: int) -> None:
        for vp in self._viewports_of(uid):
            if vp.volume is volume:
                what = "Full fidelity" if hasattr(volume, "lossy") else "Loading"  # a remote series streamed
                vp.status = f"{what} {loaded}/{total}" if loaded < total else ""
                vp.notify_loaded()
        self.progress.setRange(0, total)
        self.progress.setValue(loaded)

    def _on_done(self, uid: str, handle: LoadHandle) -> None:
        if self._loads.get(uid) is handle:
            self._finished.add(uid)
        self._thumbnail_from(uid, handle.volume)
        for vp in self._viewports_of(uid):
            vp.status = ""
            vp.notify_loaded()
        self.progress.hide()
        self._resync_priors(uid)
        self._check_alignments()
        if handle.error is not None:
            self.status.setText(f"Cannot load series: {handle.error}")
        elif handle.volume is not None:
            t = handle.timings.get("total", 0.0)
            self.status.setText(f"Loaded {len(handle.volume)} images in {t:.2f} s")
            if "full_load" not in self.timings and self._t_open:
                self.timings["full_load"] = time.perf_counter() - self._t_open
        self.loadFinished.emit(uid)

    def _on_viewport(self, vp: ViewportState, what: str) -> None:
        if what == "index":
            uid = vp.series_uid
            h = self._loads.get(uid)
            if h is not None and not h.done.is_set():
                h.focus(vp.index)
            if vp.probe_result is not None:
                vp.probe_result = None

    # ------------------------------------------------------------ hanging protocols (issue 15)

    def _build_hanging_actions(self) -> None:
        """Next / Previous stage (N, Shift+N) and Save layout as protocol… (Ctrl+Shift+H)."""
        keys = {name: k for name, k, _ in SHORTCUTS}
        texts = {name: t for name, _, t in SHORTCUTS}
        self.hanging: Protocol | None = None
        self.hanging_stage = 0
        self.hanging_errors: list[LoadError] = []
        self.hanging_notes: list[str] = []
        self._catalog = Catalog()
        self._catalog_priors: dict[int, str] = {}  # prior N in the catalog -> its Study Instance UID
        self._hang_windows: dict[int, tuple[str, str]] = {}  # viewport -> (series uid, preset name)
        self._hang_watched: set[int] = set()
        self._hanging_priors_known = False
        self.priorsFound.connect(self._on_priors_for_hanging)  # "prior N" viewports filled when found
        self.hanging_label = QLabel("", self)
        self.hanging_label.setObjectName("hangingStatus")
        self.hanging_label.hide()
        # a long line (skipped files) is clipped, never widens the window; the tooltip has it all
        self.hanging_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        bottom = self._layout_holding(self.status)
        if bottom is not None:
            bottom.insertWidget(bottom.indexOf(self.status), self.hanging_label, 1)
        entries = {
            "next_stage": ("mdi6.page-next-outline", lambda: self.step_stage(1)),
            "prev_stage": ("mdi6.page-previous-outline", lambda: self.step_stage(-1)),
            "save_protocol": ("mdi6.content-save-cog-outline", self.save_protocol_dialog),
        }
        for name, (glyph, slot) in entries.items():
            act = self._action(name, _menu_text(texts[name]), slot, keys[name])
            act.setIcon(icon(glyph, act.text()))
        self.actions_by_name["save_protocol"].setText("Save layout as protocol…")

    def _layout_holding(self, widget: QWidget) -> QBoxLayout | None:
        """The box layout of this viewer that holds *widget* directly."""
        todo: list[Any] = [self.layout()]
        while todo:
            lay = todo.pop()
            if lay is None:
                continue
            if isinstance(lay, QBoxLayout) and lay.indexOf(widget) >= 0:
                return lay
            todo += [lay.itemAt(i).layout() for i in range(lay.count())]
        return None

    def _series_facts(self, entry: Any, study: int) -> SeriesFacts:
        row = entry.row or {}
        return SeriesFacts(series_uid=entry.series_uid, study=study, modality=entry.modality.upper(),
                           description=entry.description, number=entry.number,
                           body_part=str(row.get("BodyPartExamined") or "").upper(), images=entry.frames)  # fmt: skip

    def _local_prior_count(self) -> int:
        """How many other studies of this patient the archive holds (one indexed query: the
        "priors" match rules at open; the ranked list itself comes from the priors search)."""
        row = self.session.study_row
        pid = str(row.get("PatientID") or "")
        if not pid:
            return 0
        try:
            keys = {"PatientID": pid, "IssuerOfPatientID": str(row.get("IssuerOfPatientID") or "")}
            rows = self.archive.query("STUDY", keys)
        except Exception as exc:  # noqa: BLE001 - the count only weighs protocols: never fail the open on it
            logger.warning("hanging protocols: cannot count the priors: %s", exc)
            return 0
        return sum(1 for r in rows if r.get("StudyInstanceUID") != self.study_uid)

    def _choose_protocol(self, entries: list[Any]) -> list[Placement]:
        """Load the protocols, choose the best for this study, place its first stage's series."""
        t0 = time.perf_counter()
        protocols, self.hanging_errors = load_protocols(self.data_dir)
        facts = [self._series_facts(e, 0) for e in entries]
        self._catalog = Catalog()
        self._catalog_priors.clear()
        self._catalog.add(0, facts, {e.series_uid: m[0] for e in entries if (m := e.middle) is not None})
        study = StudyFacts.from_rows(self.session.study_row, facts, n_priors=self._local_prior_count(),
                                     catalog=self._catalog)  # fmt: skip
        self.hanging = choose(protocols, study)
        self.hanging_stage = 0
        placements = self._place_stage(0) if self.hanging is not None else []
        self.timings["hanging"] = time.perf_counter() - t0
        return placements

    def _prior_into_catalog(self, n: int) -> str:
        """Prior *n* (contract C: :attr:`priors`, ranked) added to the catalog; '' or why not."""
        priors = self.priors
        if not self._hanging_priors_known and not priors:
            return "not found yet (the priors search runs)"
        if len(priors) < n:
            return "not found"
        prior = priors[n - 1]
        if n in self._catalog.series and self._catalog_priors.get(n) == prior.study_uid:
            return ""
        self._catalog.series.pop(n, None)
        if not prior.local:
            return f"is not local (on {prior.source}: retrieve it from the priors panel)"
        try:
            session = self.add_study(prior.study_uid)
        except Exception as exc:  # noqa: BLE001 - a prior that cannot be opened leaves its viewport empty
            return f"cannot be opened: {exc}"
        entries = session.series or session.refresh()
        facts = [self._series_facts(e, n) for e in entries]
        self._catalog.add(n, facts, {e.series_uid: m[0] for e in entries if (m := e.middle) is not None})
        self._catalog_priors[n] = prior.study_uid
        return ""

    def _place_stage(self, k: int) -> list[Placement]:
        assert self.hanging is not None
        stage = self.hanging.stages[k]
        missing = {n: why for n in range(1, stage.priors_needed + 1) if (why := self._prior_into_catalog(n))}
        return place(stage, self._catalog, missing_priors=missing)

    def _apply_placements(self, placements: list[Placement]) -> bool:
        """Set the stage's layout and links, show each placed series in its viewport (windows as
        the protocol says, once each volume arrives), empty the others. False: nothing placed."""
        if self.hanging is None or not any(p.series is not None for p in placements):
            return False
        stage = self.hanging.stages[self.hanging_stage]
        self._hanging = True
        try:
            self._hang_windows.clear()
            self.model.set_layout(stage.layout)
            links = {"scroll": stage.link_scroll, "window": stage.link_window, "zoom": stage.link_zoom}
            if any(v is not None for v in links.values()):
                self.model.set_links(**links)
                for what, on in links.items():
                    act = self.actions_by_name.get(f"link_{what}")
                    if on is not None and act is not None and act.isChecked() != on:
                        act.blockSignals(True)
                        act.setChecked(on)
                        act.blockSignals(False)
            notes = []
            by_index = {p.viewport: p for p in placements}
            for i in range(stage.layout.count):
                p = by_index.get(i)
                if p is not None and p.note:
                    notes.append(f"viewport {i + 1}: {p.note}")
                if p is None or p.series is None:
                    self._clear_viewport(i)
                    continue
                if p.selector.window:
                    self._hang_windows[i] = (p.series.series_uid, p.selector.window)
                    self._watch_viewport(i)
                self.show_series(p.series.series_uid, i)
            self.model.set_active(0)
        finally:
            self._hanging = False
        self.hanging_notes = notes
        self._show_hanging_status()
        return True

    def _clear_viewport(self, index: int) -> None:
        self.model._ensure(index + 1)
        self._assigned.pop(index, None)
        vp = self.model.viewports[index]
        if vp.volume is not None:
            vp.set_cine(False)
            vp.set_volume(None)

    def _watch_viewport(self, index: int) -> None:
        """Apply the protocol's window preset to a viewport when its series' volume arrives (before
        it is painted: the state emits ``volume`` inside :meth:`ViewportState.set_volume`)."""
        if index in self._hang_watched:
            return
        self._hang_watched.add(index)
        self.model.viewports[index].subscribe(partial(self._on_hung_viewport, index))

    def _on_hung_viewport(self, index: int, vp: ViewportState, what: str) -> None:
        want = self._hang_windows.get(index)
        if what != "volume" or want is None or vp.volume is None or vp.series_uid != want[0]:
            return
        del self._hang_windows[index]
        name = want[1].lower()
        preset = next((p for p in self.presets.for_modality(vp.modality) if p.name.lower() == name), None)
        if preset is None:
            self.hanging_notes.append(f"viewport {index + 1}: no window preset {want[1]!r} for {vp.modality}")
            self._show_hanging_status()
            return
        vp.set_window(preset.center, preset.width, preset.name)

    def _show_hanging_status(self) -> None:
        """The protocol, its stage, what it could not place, and skipped protocol files: in the
        viewer's status line (its own label, which loads do not overwrite) and its tooltip."""
        parts = []
        if self.hanging is not None:
            n = len(self.hanging.stages)
            stage = self.hanging.stages[self.hanging_stage]
            parts.append(f"Protocol {self.hanging.name} — stage {self.hanging_stage + 1}/{n}: {stage.name}")
        parts += self.hanging_notes
        if self.hanging_errors:
            files = "; ".join(str(e) for e in self.hanging_errors)
            parts.append(f"skipped {len(self.hanging_errors)} protocol file(s): {files}")
        text = " · ".join(parts)
        self.hanging_label.setText(text)
        self.hanging_label.setToolTip("\n".join(parts))
        self.hanging_label.setVisible(bool(text))

    def step_stage(self, step: int) -> bool:
        """Next (+1) or previous (-1) stage of the hanging protocol (keys N, Shift+N)."""
        if self.hanging is None:
            self.status.setText("No hanging protocol applies to this study.")
            return False
        k = self.hanging_stage + step
        if not 0 <= k < len(self.hanging.stages):
            self.status.setText("Last stage of the protocol." if step > 0 else "First stage of the protocol.")
            return False
        self.hanging_stage = k
        placements = self._place_stage(k)
        if not self._apply_placements(placements):
            self.hanging_notes = [f"stage {k + 1} places no series of this study"]
            self._show_hanging_status()
        return True

    def _on_priors_for_hanging(self, _priors: Any = None) -> None:
        """The priors search finished: place the current stage's "prior N" viewports still empty."""
        self._hanging_priors_known = True
        if self.hanging is None:
            return
        stage = self.hanging.stages[self.hanging_stage]
        if not stage.priors_needed:
            return
        placements = self._place_stage(self.hanging_stage)
        notes = [n for n in self.hanging_notes if "prior" not in n]
        self._hanging = True
        try:
            for p in placements:
                if p.selector.study == 0 or p.viewport >= self.model.layout.count:
                    continue
                if p.note:
                    notes.append(f"viewport {p.viewport + 1}: {p.note}")
                if p.series is not None and self._assigned.get(p.viewport) != p.series.series_uid:
                    if p.selector.window:
                        self._hang_windows[p.viewport] = (p.series.series_uid, p.selector.window)
                        self._watch_viewport(p.viewport)
                    active = self.model.active
                    self.show_series(p.series.series_uid, p.viewport)
                    self.model.set_active(active)
        finally:
            self._hanging = False
        self.hanging_notes = notes
        self._show_hanging_status()

    def protocol_from_view(self, name: str) -> str:
        """The TOML of a protocol that hangs this study as it is shown now: the layout, each
        viewport's series (by description, plane, current or prior N), its window preset and the
        links; it matches this study's modality, body part and description."""
        study = self.session.study_row
        current = self._catalog.of(0)
        mods = sorted({f.modality for f in current if f.modality}) or [
            m for m in str(study.get("ModalitiesInStudy") or "").split("\\") if m
        ]
        rules: list[dict[str, Any]] = [{"modality": mods, "weight": 10, "required": True}]
        parts = sorted({f.body_part for f in current if f.body_part})
        if parts:
            rules.append({"body_part": parts, "weight": 5, "required": True})
        if study.get("StudyDescription"):
            rules.append({"description": exact(str(study["StudyDescription"])), "weight": 5})
        viewports: list[dict[str, Any]] = []
        most_prior = 0
        for i in range(self.model.layout.count):
            uid = self._assigned.get(i)
            facts = next((f for fs in self._catalog.series.values() for f in fs if f.series_uid == uid), None)
            if facts is None and uid is not None:  # put there by hand (the strip, a drag, compare)
                session = self.session_of(uid)
                entry = session.entry(uid)
                ranks = [k + 1 for k, p in enumerate(self.priors) if p.study_uid == session.study_uid]
                study_index = 0 if session is self.session else (ranks[0] if ranks else None)
                if entry is not None and study_index is not None and entry.paths:
                    facts = self._series_facts(entry, study_index)
                    self._catalog.paths.setdefault(uid, entry.paths[len(entry.paths) // 2])
            if facts is None:
                viewports.append({"empty": True})
                continue
            facts = self._catalog.full(facts)
            most_prior = max(most_prior, facts.study)
            sel: dict[str, Any] = {"study": "current" if facts.study == 0 else f"prior {facts.study}"}
            if facts.description:
                sel["description"] = exact(facts.description)
            if facts.plane:
                sel["plane"] = facts.plane
            if facts.modality:
                sel["modality"] = facts.modality
            if "LOCALIZER" in facts.image_type:
                sel["image_type"] = ["LOCALIZER"]
            vp = self.model.viewports[i]
            label = vp.window_label.lower()
            preset = next((p for p in self.presets.for_modality(vp.modality) if p.name.lower() == label), None)
            if preset is not None:
                sel["window"] = preset.name
            if facts.study == 0:
                sel["fallback"] = i == 0
            viewports.append(sel)
        if most_prior:
            rules.append({"min_priors": most_prior, "weight": 2, "required": True})
        m = self.model
        stage = {"name": "Saved layout", "layout": m.layout.name, "link_scroll": m.link_scroll,
                 "link_window": m.link_window, "link_zoom": m.link_zoom, "viewport": viewports}  # fmt: skip
        return protocol_toml(name, rules, [stage])

    def save_protocol(self, name: str) -> Path:
        """Write :meth:`protocol_from_view` as *name* to the user's protocol folder."""
        if self.data_dir is None:
            raise HilumError("no data folder: cannot save a hanging protocol")
        path = write_protocol(self.data_dir, name, self.protocol_from_view(name))
        logger.info("saved hanging protocol %r to %s", name, path)
        return path

    def save_protocol_dialog(self) -> None:
        """Save layout as protocol…: asks for a name, writes the protocol, says where."""
        row = self.session.study_row
        suggested = " ".join(x for x in (str(row.get("ModalitiesInStudy") or "").replace("\\", "/"),
                                         str(row.get("StudyDescription") or "")) if x).strip() or "My layout"  # fmt: skip
        name, ok = QInputDialog.getText(self, "Save layout as protocol", "Name of the hanging protocol:",
                                        text=suggested)  # fmt: skip
        if not ok or not name.strip():
            return
        try:
            path = self.save_protocol(name.strip())
        except (HilumError, OSError) as exc:
            QMessageBox.warning(self, "Save layout as protocol", str(exc))
            return
        self.status.setText(f"Saved hanging protocol {name.strip()!r} to {path}")

    # ------------------------------------------------------------ studies and priors

    def add_study(self, study_uid: str) -> StudySession:
        """Make another study's series showable in this viewer (a prior): its own
        :class:`StudySession` sharing the volume cache and decoder pool, its series listed in the
        strip below a date header. Idempotent; the current study gives :attr:`session`."""
        session = self.sessions.get(study_uid)
        if session is not None:
            return session
        session = StudySession(self.archive, study_uid, cache=self.session.cache, executor=self.session.executor,
                               pool=self.session.pool)  # fmt: skip
        session.refresh()
        self.sessions[study_uid] = session
        prefetch = getattr(self.window(), "prefetch", None)
        if prefetch is not None:  # the prefetch cache's LRU: a prior read beside the current is used now
            prefetch.study_opened(study_uid)
        row = session.study_row
        tip = f"{date_text(session.study_date)} {row.get('StudyDescription') or ''}".strip()
        self.strip.add_study(study_uid, f"PRIOR\n{date_text(session.study_date)}", session.series, tooltip=tip)
        return session

    def session_of(self, series_uid: str) -> StudySession:
        """The session (current study or an added one) a series belongs to; the current one when none."""
        for session in self.sessions.values():
            if session.entry(series_uid) is not None:
                return session
        return self.session

    def is_prior_series(self, series_uid: str) -> bool:
        """True for a series of an added study (not the current one)."""
        return self.session_of(series_uid) is not self.session

    def _config(self) -> Any:
        """The main window's :class:`hilum.config.Config` (None outside a main window)."""
        return getattr(self.window(), "config", None)

    def _peers(self, config: Any) -> dict[str, Any]:
        """The peers asked for priors: :attr:`peers`, else those of *config* (the main window's)
        that may be queried (DIMSE ``[peers]``, then the DICOMweb sources: a file read, so this
        runs on the priors thread)."""
        if self.peers is not None:
            return dict(self.peers)
        if config is None:
            return {}
        from hilum.priors.remote import configured_peers

        try:
            return dict(configured_peers(config))
        except Exception as exc:  # noqa: BLE001 - a bad sources file must not stop the viewer
            logger.warning("no peers for priors: %s", exc)
            return {}

    def _start_priors(self) -> None:
        """Look for the patient's other studies off the GUI thread: the local archive's first (they
        are listed as soon as found), then the configured peers' (C-FIND / QIDO-RS)."""
        if self._priors_thread is not None or self._closed:
            return
        self.priors_panel.current_date = self.session.study_date
        config = self._config()
        self.priors_panel.set_priors([], searching=True)
        archive, uid, bridge = self.archive, self.study_uid, self._priors_bridge

        def emit(signal: Any, *args: Any) -> None:
            try:
                signal.emit(*args)
            except RuntimeError:  # the viewer was closed (and its bridge deleted) meanwhile
                pass

        def work() -> None:
            peers = self._peer_map = self._peers(config)
            try:
                from hilum.priors import find_local_priors

                emit(bridge.found, find_local_priors(archive, uid), bool(peers))
            except Exception as exc:  # noqa: BLE001 - shown in the panel, the viewer goes on
                logger.warning("local priors of %s: %s", uid, exc)
                emit(bridge.failed, f"Local search failed: {exc}", bool(peers))
            if peers and not self._closed:
                try:
                    from hilum.priors import find_remote_priors

                    errors: dict[str, str] = {}
                    found = find_remote_priors(archive, uid, peers, errors=errors, config=config)
                    if errors:
                        emit(bridge.failed, "; ".join(f"{n}: {e}" for n, e in errors.items()), True)
                    emit(bridge.found, found, False)
                except Exception as exc:  # noqa: BLE001
                    logger.warning("remote priors of %s: %s", uid, exc)
                    emit(bridge.failed, f"Peers not reached: {exc}", False)

        self._priors_thread = threading.Thread(target=work, name="hilum-priors", daemon=True)
        self._priors_thread.start()

    def _on_priors(self, found: list[Any], more: bool) -> None:
        if self._closed:
            return
        if "priors_local" not in self.timings and self._t_open:
            self.timings["priors_local"] = time.perf_counter() - self._t_open
        merged = {p.study_uid: p for p in self.priors}
        for p in found:
            old = merged.get(p.study_uid)
            if p.study_uid != self.study_uid and (old is None or not old.local):
                merged[p.study_uid] = p
        self.priors = sorted(merged.values(), key=lambda p: -p.score)  # stable: the finder's order on ties
        self.priors_panel.set_priors(self.priors, searching=more, error=self._priors_error if not more else "")
        self.priorsFound.emit(list(self.priors))

    def _on_priors_failed(self, text: str, more: bool) -> None:
        self._priors_error = text
        self.priors_panel.set_priors(self.priors, searching=more, error=text)

    def retrieve_prior(self, study_uid: str) -> Any:
        """Retrieve a remote prior into the local archive through the main window's transfers
        queue (C-GET / C-MOVE as the peer says); its row shows the progress or the failure, and the
        prior becomes local (click to compare) when it is all here."""
        prior = next((p for p in self.priors if p.study_uid == study_uid), None)
        row = self.priors_panel.row(study_uid)
        if prior is None or row is None or prior.local:
            return None
        transfers = getattr(self.window(), "transfers", None)
        if transfers is None:
            row.set_state("retrieving is not available in this window", failed=True)
            return None
        label = f"Prior {date_text(prior.study_date)}"
        try:
            source = self._peer_map.get(prior.source)
            if source is not None and not hasattr(source, "aet"):  # a DICOMweb source: WADO-RS
                transfer = transfers.queue.submit("retrieve", prior.source, label,
                                                  self._wado_work(source, study_uid, prior.n_instances))  # fmt: skip
            else:  # a DICOM peer: C-GET / C-MOVE as the peer's settings say
                transfer = transfers.retrieve(prior.source, study_uid, None, label=label,
                                              expected=prior.n_instances or None)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - an unknown peer, a bad configuration
            row.set_state(f"failed: {exc}", failed=True)
            return None
        if not self._retrieves:
            transfers.queue.changed.connect(self._on_transfer)
            transfers.queue.finished.connect(self._on_transfer)
        self._retrieves[transfer.id] = study_uid
        row.set_state("queued…")
        return transfer

    def _wado_work(self, source: Any, study_uid: str, expected: int) -> Callable[..., str]:
        """A transfers-queue work item retrieving a study from a DICOMweb source (WADO-RS) into
        the local archive through the one ingest call."""
        archive = self.archive

        def work(progress: Callable[[int, int], None], cancel: threading.Event) -> str:
            from hilum.dicomweb.client import DicomWebClient

            client = DicomWebClient(source)
            done = 0

            def one(_result: Any) -> None:
                nonlocal done
                done += 1
                progress(done, expected)

            try:
                results = client.retrieve(archive, study_uid, progress=one, cancel=cancel)
            finally:
                client.close()
            failed = sum(1 for r in results if not r.ok)
            if failed:
                raise HilumError(f"{failed} of {len(results)} instances refused by the archive")
            return f"{len(results)} retrieved by WADO-RS"

        return work

    def _on_transfer(self, transfer: Any) -> None:
        uid = self._retrieves.get(transfer.id)
        row = self.priors_panel.row(uid) if uid else None
        if uid is None or row is None or self._closed:
            return
        state = str(getattr(transfer.state, "value", transfer.state))
        if state == "failed":
            row.set_state(f"failed: {transfer.error}", failed=True)
        elif state == "cancelled":
            row.set_state("cancelled", failed=True)
        elif state == "done":
            del self._retrieves[transfer.id]
            self.priors = [replace(p, local=True) if p.study_uid == uid else p for p in self.priors]
            self.priors_panel.set_priors(self.priors)
            row = self.priors_panel.row(uid)
            if row is not None:
                row.set_state("")
            self.status.setText(f"Prior {date_text(next(p.study_date for p in self.priors if p.study_uid == uid))} "
                                "retrieved: click it to compare")  # fmt: skip
            self.priorsFound.emit(list(self.priors))
        else:
            total = transfer.total or 0
            row.set_state(f"{transfer.done}/{total}" if total else "retrieving…", transfer.done, total)

    # ------------------------------------------------------------ comparison

    def compare_most_relevant(self, rows: int = 1) -> bool:
        """Compare with the first prior of the ranking that is local (the key C; Shift+C: 2x2)."""
        prior = next((p for p in self.priors if p.local), None)
        if prior is None:
            remote = next((p for p in self.priors if not p.local), None)
            self.status.setText("No prior to compare with." if remote is None else
                                f"The priors are on {remote.source}: Retrieve one first.")  # fmt: skip
            return False
        return bool(self.compare(prior.study_uid, rows=rows))

    def _reference_series(self, rows: int) -> list[SeriesEntry]:
        """The current study's series to compare: the one in the first viewport (or the active
        one) when it is the current study's, then the next ones of the strip."""
        out: list[SeriesEntry] = []
        for index in (0, self.model.active):
            entry = self.session.entry(self._assigned.get(index, ""))
            if entry is not None and entry not in out:
                out.append(entry)
                break
        rest = [e for e in self.session.series if e not in out]
        if out:
            rest.sort(key=lambda e: e.modality != out[0].modality)  # the same modality first (stable)
        out += rest
        return out[:rows]

    def compare(self, prior_study_uid: str, *, rows: int = 1) -> list[tuple[int, str]]:
        """Current and prior side by side: ``rows`` rows of two viewports (1x2, or 2x2), the current
        study's series on the left, the prior's best-matching series on the right
        (:func:`~hilum.ui.viewer.study.best_match`), scrolling, window/level and zoom linked.
        Returns ``(viewport, series uid)`` of what was placed."""
        if prior_study_uid == self.study_uid:
            raise ValueError("compare() takes another study than the current one")
        rows = max(1, min(int(rows), 3))
        session = self.add_study(prior_study_uid)
        if not session.series:
            self.status.setText(f"The prior of {date_text(session.study_date)} has no images to show.")
            return []
        placed: list[tuple[int, str]] = []
        used: set[str] = set()
        for r, ref in enumerate(self._reference_series(rows)):
            match = best_match(ref, session.series, exclude=used)
            if match is None:
                break
            used.add(match.series_uid)
            placed += [(2 * r, ref.series_uid), (2 * r + 1, match.series_uid)]
        for index, uid in placed:  # before the layout changes: its empty viewports are not filled
            if self._assigned.get(index) != uid or self.model.viewports[index].volume is None:
                self.show_series(uid, index)
        target = Layout(max(1, len(placed) // 2), 2)
        if self.model.layout != target:
            self.set_layout(target)
        self.set_links(scroll=True, window=True, zoom=True)
        self.model.set_active(0)
        self.focus_active_viewport()
        self.status.setText(f"Comparing with the prior of {date_text(session.study_date)}")
        item = self.priors_panel.item(prior_study_uid)
        if item is not None:  # the panel shows which prior is beside the current study
            self.priors_panel.list.setCurrentItem(item)
        self.compared.emit(prior_study_uid)
        self._check_alignments()
        return placed

    def set_links(self, *, scroll: bool | None = None, window: bool | None = None, zoom: bool | None = None) -> None:
        """Turn links on or off as their toolbar toggles do (the toggles show it)."""
        for name, value in (("link_scroll", scroll), ("link_window", window), ("link_zoom", zoom)):
            act = self.actions_by_name.get(name)
            if value is not None and act is not None and act.isChecked() != value:
                act.setChecked(value)
        self.model.set_links(scroll=scroll, window=window, zoom=zoom)

    def _resync_priors(self, uid: str) -> None:
        """A prior's stack arrived next to the current study: it follows the current viewport (not
        the other way round: the reader's slice stays where it is) — its slice when scrolling is
        linked, the reader's own window (same modality) and zoom when those are."""
        if not self.is_prior_series(uid):
            return
        leaders = [vp for i, vp in enumerate(self.model.visible)
                   if vp.volume is not None and not self.is_prior_series(self._assigned.get(i, ""))]  # fmt: skip
        if not leaders:
            return
        leader = self.model.active_viewport if self.model.active_viewport in leaders else leaders[0]
        for vp in self._viewports_of(uid):
            if vp.volume is None or vp not in self.model.visible:
                continue
            w = leader.current_window()
            if self.model.link_window and leader.window is not None and w is not None:
                if vp.modality == leader.modality:
                    vp.set_window(w.center, w.width, leader.window_label)
            if self.model.link_zoom and abs(vp.view.zoom - leader.view.zoom) > 1e-9:
                vp.set_zoom(leader.view.zoom)
        if self.model.link_scroll:
            self.model.sync_from(leader)

    # ------------------------------------------------------------ registration (different Frames of Reference)

    def _check_alignments(self) -> None:
        """For each visible prior series beside a current one of another Frame of Reference (both
        loaded), ask once for a rigid registration on the background worker
        (:class:`hilum.dicom.registration.RegistrationJobs`, which answers from the
        :class:`~hilum.dicom.registration.AlignmentStore` under the data folder when it can);
        the prior's viewport says "Registering…" until the alignment is set on the model."""
        alignment_between = getattr(self.model, "alignment_between", None)
        if self._closed or alignment_between is None:
            return  # a model without cross-FoR links: nothing to register for
        visible = [(i, vp) for i, vp in enumerate(self.model.visible) if i in self._assigned]
        current = [(i, vp) for i, vp in visible if not self.is_prior_series(self._assigned[i])]
        for i, vp in visible:
            uid = self._assigned[i]
            if not current or not self.is_prior_series(uid) or not _loaded(vp):
                continue
            # the current viewport on its left (same row), else the first current one
            j, leader = next(((j, c) for j, c in current if j == i - 1), current[0])
            f, g = vp.frame_info, leader.frame_info
            if not _loaded(leader) or f is None or g is None:
                continue
            if not f.frame_of_reference_uid or not g.frame_of_reference_uid:
                continue
            if f.frame_of_reference_uid == g.frame_of_reference_uid:
                continue
            key = (self._assigned[j], uid)
            if key in self._registering or alignment_between(leader, vp) is not None:
                continue
            parts = {self._body_part(u) for u in key}
            if len(parts - {""}) > 1:  # a head MR beside a chest CT: no anatomy in common to align
                continue
            self._registering.add(key)
            vp.status = "Registering…"
            assert leader.volume is not None and vp.volume is not None  # _loaded
            self._submit_registration(key, leader.volume, vp.volume)

    def _body_part(self, series_uid: str) -> str:
        entry = self.session_of(series_uid).entry(series_uid)
        return str((entry.row if entry is not None else {}).get("BodyPartExamined") or "").strip().upper()

    def _submit_registration(self, key: tuple[str, str], fixed: SeriesVolume, moving: SeriesVolume) -> None:
        from hilum.dicom.registration import RegistrationJobs
        from hilum.dicom.volume import volume_from_series

        bridge = self._priors_bridge

        def emit(result: Any) -> None:  # on the worker thread
            try:
                bridge.registered.emit(key, result)
            except RuntimeError:  # the viewer was closed meanwhile
                pass

        if self._registration_jobs is None:
            self._registration_jobs = RegistrationJobs(self.model.alignment_store)
        self._registration_jobs.submit(partial(volume_from_series, fixed), partial(volume_from_series, moving),
                                       fixed_series=key[0], moving_series=key[1], on_done=emit,
                                       on_error=emit)  # fmt: skip

    def _on_registered(self, key: tuple[str, str], result: Any) -> None:
        if self._closed:
            return
        fixed_uid, moving_uid = key
        if isinstance(result, BaseException):
            self._registering.discard(key)  # asked again when the pair shows again
            for vp in self._viewports_of(moving_uid):
                vp.status = ""
                vp.emit("view")
            self.status.setText(f"Registration of the prior failed: {result}")
            return
        for vp in self._viewports_of(moving_uid):
            vp.status = ""
            vp.emit("view")
        set_alignment = getattr(self.model, "set_alignment", None)
        if set_alignment is not None:
            set_alignment(result)
        self.status.setText(f"Prior aligned to the current study by registration ({result.seconds:.1f} s)"
                            if getattr(result, "source", "") == "registration" and result.seconds else
                            "Prior aligned to the current study")  # fmt: skip
        leaders = self._viewports_of(fixed_uid)
        if leaders and self.model.link_scroll:
            self.model.sync_from(leaders[0])
        self.alignmentReady.emit(fixed_uid, moving_uid)

    # ------------------------------------------------------------ export

    def export_view(self, path: str | Path, viewport: int | None = None, *, annotations: str = "burn") -> Path:
        """Save what a viewport shows as PNG / JPEG. *annotations*: ``"burn"`` draws them in (as on
        screen); ``"separate"`` leaves them out of the picture and writes them beside it as DICOM
        (``OUT.gsps.dcm``, and ``OUT.sr.dcm`` for measurements: :meth:`write_sidecars`)."""
        index = self.model.active if viewport is None else viewport
        if annotations not in ("burn", "separate"):
            raise ValueError(f"annotations must be 'burn' or 'separate', not {annotations!r}")
        if annotations == "separate":
            with self.annotations_hidden(index):
                ok = self._widgets[index].export_view(str(path))
        else:
            ok = self._widgets[index].export_view(str(path))
        if not ok:
            raise HilumError(f"cannot write {path}")
        if annotations == "separate":
            self.write_sidecars(Path(path), index)
        return Path(path)
    def export_cine(self, path: str | Path, fps: float | None = None, viewport: int | None = None) -> Path:
        vp = self.model.viewports[self.model.active if viewport is None else viewport]
        return export_cine(view_frames(vp), path, fps or vp.cine_fps)

    def _default_dir(self) -> str:
        return str(self.data_dir / "exports") if self.data_dir else str(Path.home())

    EXPORT_FILTERS = {
        "PNG, annotations burnt in (*.png)": "burn",
        "PNG, image only; annotations beside it as DICOM GSPS / SR (*.png)": "separate",
        "JPEG, annotations burnt in (*.jpg)": "burn",
        "JPEG, image only; annotations beside it as DICOM GSPS / SR (*.jpg)": "separate",
    }

    def export_view_dialog(self) -> None:
        filters = ";;".join(self.EXPORT_FILTERS)
        path, chosen = QFileDialog.getSaveFileName(self, "Export view", self._default_dir(), filters)
        if path:
            mode = self.EXPORT_FILTERS.get(chosen, "burn")
            try:
                self.export_view(path, annotations=mode)
                extra = " (annotations beside it: .gsps.dcm / .sr.dcm)" if mode == "separate" else ""
                self.status.setText(f"Saved {path}{extra}")
            except HilumError as exc:
                QMessageBox.warning(self, "Export view", str(exc))

    def export_cine_dialog(self) -> None:
        filters = "GIF (*.gif)" + (";;MP4 (*.mp4)" if mp4_available() else "")
        path, _ = QFileDialog.getSaveFileName(self, "Export cine", self._default_dir(), filters)
        if path:
            try:
                self.export_cine(path)
                self.status.setText(f"Saved {path}")
            except HilumError as exc:
                QMessageBox.warning(self, "Export cine", str(exc))

    # ------------------------------------------------------------ closing

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        if not self.confirm_close():  # unsaved annotations: Save / Discard / Cancel
            event.ignore()
            return
        self._cine_timer.stop()
        self.strip.shutdown()
        self._closed = True
        if self._registration_jobs is not None:
            self._registration_jobs.shutdown(wait=False)
        # a series another tab shows too (this one's prior, that one's current study, through the
        # shared cache) keeps loading and stays cached for it; the others stop and leave the cache
        top = self.window()
        others = [w for w in top.findChildren(StudyViewer) if w is not self] if top is not self else []
        shared = {uid for w in others if not w._closed for uid in w._loads}
        for uid, h in self._loads.items():
            if uid not in shared:
                h.cancel()
                self.session_of(uid).cache.drop(uid)
        super().closeEvent(event)
