"""The MPR / 3D layout: three linked planes and a 3D view of one volume.

Top-left axial, top-right coronal, bottom-left sagittal, bottom-right 3D (or
the 3D view alone, ``layout="3d"``, whose window shows only the 3D controls).
The three planes share one :class:`hilum.render.mpr.Crosshair`: clicking or
dragging in one moves the 3D cursor in all; dragging a crosshair line (or
Ctrl + drag) rotates the other two planes for oblique MPR; each plane has its
own window/level and zoom and shows orientation letters and a scale bar.  The
toolbar sets slab thickness and mode (MIP, MinIP, average), window presets, and
resets; the side panel controls the 3D view: preset, shading, isosurface, a
clipping box, a cut plane through the 3D cursor, the transfer-function editor,
capture and turntable movie.

The widget binds the headless logic of :mod:`hilum.render.mpr` and
:mod:`hilum.render.volume3d`.  Building the volume from files, and its VTK
scenes (:meth:`MPRWidget.prepare`), runs on a worker thread
(:meth:`MPRWidget.load`, :meth:`MPRWidget.build_async`) and the 3D view renders
on a thread of its own, so the event loop keeps running while a volume opens
(see :mod:`hilum.ui.mpr.canvas`).  :attr:`MPRWidget.cursorMoved` reports the 3D
cursor and the nearest original slice, so a 2D viewer can follow it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from hilum.dicom.volume import Volume, build_volume
from hilum.render.mpr import VIEWS, MPRScene
from hilum.render.volume3d import VolumeScene, VRPreset, load_presets, save_presets
from hilum.ui.mpr.canvas import SliceCanvas, VolumeCanvas, background_priority
from hilum.ui.mpr.curved import CurvedMPRView
from hilum.ui.mpr.tf_editor import TransferFunctionEditor
from hilum.ui.mpr.warm import WarmWindows, warm_in_background
from hilum.ui.mpr.warm import take as take_warm_windows

__all__ = ["SLAB_MODES", "MPRWidget"]

logger = logging.getLogger(__name__)

SLAB_MODES = (("Thin", None), ("MIP", "mip"), ("MinIP", "minip"), ("Average", "mean"))
CUT_PLANES = ("None", "Axial", "Coronal", "Sagittal")
DEFAULT_WINDOWS = {
    "CT": (("Soft tissue", 40.0, 400.0), ("Lung", -600.0, 1500.0), ("Bone", 400.0, 1800.0), ("Brain", 40.0, 80.0)),
}


@dataclass
class _Prepared:
    """A volume with its MPR and 3D scenes, made off the GUI thread."""

    volume: Volume
    scene: MPRScene
    volume_scene: VolumeScene | None
    later_3d: bool = False
    """The 3D scene is made after the planes are shown (:meth:`MPRWidget._on_built_3d`)."""
    warm: WarmWindows | None = None
    """The warmed windows the planes render in (:mod:`hilum.ui.mpr.warm`), freed after the scene."""


class _Owned:
    """The VTK scenes and the 3D render thread of a widget: freed by its close, or, when Qt deletes
    the widget without one (its parent window deleted), from its ``destroyed`` signal, so that no
    OpenGL context is left to the garbage collector (:mod:`hilum.render.gl`)."""

    def __init__(self) -> None:
        self.scene: MPRScene | None = None
        self.volume_scene: VolumeScene | None = None
        self.worker: tuple[Callable[[], None], Any] | None = None
        self.warm: WarmWindows | None = None

    def release(self, *_: object) -> None:
        if self.worker is not None:
            stop, thread = self.worker
            self.worker = None
            stop()
            thread.join(timeout=10.0)  # before the scene it renders is closed
        scene, volume_scene = self.scene, self.volume_scene
        self.scene = self.volume_scene = None
        if scene is not None:
            scene.close()
        if volume_scene is not None:
            volume_scene.close()
        warm, self.warm = self.warm, None
        if warm is not None:  # after the scene that rendered in its windows
            warm.close()


class MPRWidget(QWidget):
    """MPR and 3D of one volume (see the module docstring)."""

    cursorMoved = Signal(object, str, int)  # patient point (3 floats), SOP Instance UID, frame
    volumeLoaded = Signal(object)  # Volume
    loadFailed = Signal(str)
    _built = Signal(object, object)  # worker -> GUI thread: Volume or None, error or None
    _built_3d = Signal(object, object)  # worker -> GUI thread: the Volume, its VolumeScene (None: failed)

    def __init__(
        self,
        volume: Volume | None = None,
        *,
        layout: str = "mpr",
        data_dir: str | os.PathLike[str] | None = None,
        with_3d: bool = True,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("mpr-widget")
        self.setWindowTitle("MPR / 3D")
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.layout_name = layout
        self.with_3d = with_3d or layout == "3d"
        self.volume: Volume | None = None
        self.scene: MPRScene | None = None
        self.volume_scene: VolumeScene | None = None
        self.slice_canvases: dict[str, SliceCanvas] = {}
        self.volume_canvas: VolumeCanvas | None = None
        self.tf_editor: TransferFunctionEditor | None = None
        self.curved: CurvedMPRView | None = None
        self.active_view = "axial"
        self.presets = load_presets(self.data_dir)
        self._iso_wanted: float | None = None
        self._unsubscribe: Any = None
        self._closed = False
        self._pending_3d: QLabel | None = None
        self._owned = _Owned()
        owned = self._owned
        self.destroyed.connect(lambda *_: owned.release())  # not a method of self: runs after it is gone
        self._built.connect(self._on_built)
        self._built_3d.connect(self._on_built_3d)
        self._build_ui()
        if volume is not None:
            self.set_volume(volume)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.toolbar = QToolBar(self)
        outer.addWidget(self.toolbar)

        self.slab_mode = QComboBox(self)
        self.slab_mode.setObjectName("slab-mode")
        for name, _ in SLAB_MODES:
            self.slab_mode.addItem(name)
        self.slab_thickness = QDoubleSpinBox(self)
        self.slab_thickness.setObjectName("slab-thickness")
        self.slab_thickness.setRange(0.0, 200.0)
        self.slab_thickness.setValue(10.0)
        self.slab_thickness.setSuffix(" mm")
        self.slab_mode.currentIndexChanged.connect(lambda _i: self._apply_slab())
        self.slab_thickness.valueChanged.connect(lambda _v: self._apply_slab())
        # what only the planes use: hidden in the 3D-only layout
        mpr_only = self.mpr_only_actions = [
            self.toolbar.addWidget(QLabel(" Slab ", self)),
            self.toolbar.addWidget(self.slab_mode),
            self.toolbar.addWidget(self.slab_thickness),
            self.toolbar.addSeparator(),
        ]
        self.window_preset = QComboBox(self)
        self.window_preset.setObjectName("window-preset")
        self.window_preset.activated.connect(self._apply_window_preset)
        mpr_only += [
            self.toolbar.addWidget(QLabel(" W/L ", self)),
            self.toolbar.addWidget(self.window_preset),
            self.toolbar.addSeparator(),
            self.toolbar.addAction("Reset", self.reset),
        ]
        self.crosshair_action = self.toolbar.addAction("Crosshair")
        self.crosshair_action.setCheckable(True)
        self.crosshair_action.setChecked(True)
        self.crosshair_action.toggled.connect(self._set_crosshair_visible)
        self.annotations_action = self.toolbar.addAction("Annotations")
        self.annotations_action.setCheckable(True)
        self.annotations_action.setChecked(True)
        self.annotations_action.toggled.connect(self._set_annotations_visible)
        mpr_only += [
            self.crosshair_action,
            self.annotations_action,
            self.toolbar.addAction("Clear rulers", self._clear_measurements),
            self.toolbar.addAction("Curved MPR…", self.show_curved),
            self.toolbar.addAction("Clear path", self._clear_path),
            self.toolbar.addSeparator(),
        ]
        for act in mpr_only:
            act.setVisible(self.layout_name != "3d")
        self.toolbar.addAction("Capture…", self._capture_dialog)
        self.status = QLabel("", self)
        self.status.setObjectName("mpr-status")

        body = QHBoxLayout()
        outer.addLayout(body, 1)
        self.grid = QGridLayout()
        self.grid.setSpacing(2)
        body.addLayout(self.grid, 1)
        self.panel = self._build_3d_panel()
        body.addWidget(self.panel)
        self.panel.setVisible(self.with_3d)
        outer.addWidget(self.status)

    def _build_3d_panel(self) -> QWidget:
        panel = QGroupBox("3D", self)
        panel.setObjectName("panel-3d")
        panel.setMaximumWidth(320)
        form = QFormLayout(panel)
        self.vr_preset = QComboBox(panel)
        self.vr_preset.setObjectName("vr-preset")
        self.vr_preset.currentIndexChanged.connect(self._apply_vr_preset)
        form.addRow("Preset", self.vr_preset)
        self.shading = QCheckBox("Shading", panel)
        self.shading.setObjectName("vr-shading")
        self.shading.toggled.connect(self._set_shading)
        self.show_vr = QCheckBox("Volume", panel)
        self.show_vr.setChecked(True)
        self.show_vr.toggled.connect(self._set_volume_visible)
        row = QHBoxLayout()
        row.addWidget(self.shading)
        row.addWidget(self.show_vr)
        form.addRow(row)
        self.iso_on = QCheckBox("Surface at", panel)
        self.iso_on.setObjectName("iso-on")
        self.iso_threshold = QDoubleSpinBox(panel)
        self.iso_threshold.setObjectName("iso-threshold")
        self.iso_threshold.setRange(-1e6, 1e6)
        self.iso_threshold.setDecimals(0)
        self.iso_threshold.setValue(300.0)
        self.iso_on.toggled.connect(lambda _c: self._apply_isosurface())
        self.iso_threshold.editingFinished.connect(self._apply_isosurface)
        row = QHBoxLayout()
        row.addWidget(self.iso_on)
        row.addWidget(self.iso_threshold)
        form.addRow(row)
        self.cut_plane = QComboBox(panel)
        self.cut_plane.setObjectName("cut-plane")
        self.cut_plane.addItems(CUT_PLANES)
        self.cut_flip = QCheckBox("Flip", panel)
        self.cut_plane.currentIndexChanged.connect(lambda _i: self._apply_cut())
        self.cut_flip.toggled.connect(lambda _c: self._apply_cut())
        row = QHBoxLayout()
        row.addWidget(self.cut_plane, 1)
        row.addWidget(self.cut_flip)
        form.addRow("Cut at cursor", row)
        if self.layout_name == "3d":  # no planes, no cursor to cut at
            form.setRowVisible(row, False)
        self.clip_sliders: list[QSlider] = []
        box = QGridLayout()
        for a, name in enumerate(("i", "j", "k")):
            box.addWidget(QLabel(name, panel), a, 0)
            for side in range(2):
                s = QSlider(Qt.Orientation.Horizontal, panel)
                s.setObjectName(f"clip-{name}{side}")
                s.setRange(0, 1000)
                s.setValue(1000 * side)
                s.valueChanged.connect(lambda _v: self._apply_clip_box())
                box.addWidget(s, a, 1 + side)
                self.clip_sliders.append(s)
        form.addRow("Clip box", box)
        buttons = QHBoxLayout()
        tf = QPushButton("Edit transfer function", panel)
        tf.setObjectName("tf-button")
        tf.clicked.connect(self.show_tf_editor)
        buttons.addWidget(tf)
        form.addRow(buttons)
        row = QHBoxLayout()
        reset3d = QPushButton("Front", panel)
        reset3d.clicked.connect(lambda: self._reset_3d())
        turn = QPushButton("Turntable…", panel)
        turn.clicked.connect(self._turntable_dialog)
        row.addWidget(reset3d)
        row.addWidget(turn)
        form.addRow(row)
        self.tf_holder = QVBoxLayout()
        form.addRow(self.tf_holder)
        return panel

    # ------------------------------------------------------------------ volume
    def load(self, paths: Sequence[str | os.PathLike[str]], runner: Any = None) -> None:
        """Build the volume from files off the GUI thread, then show it; :attr:`loadFailed` on error."""
        files = [os.fspath(p) for p in paths]
        self.status.setText(f"Building the volume from {len(files)} file(s)…")
        self.build_async(lambda: build_volume(files), runner=runner)

    def build_async(self, build: Any, runner: Any = None) -> None:
        """Run ``build() -> Volume`` off the GUI thread (on a :class:`hilum.ui.tasks.TaskRunner`
        when given, else a plain thread) and show the result.  The MPR and 3D scenes of the
        volume (VTK pipelines, a block-averaged copy for software 3D) are made there too
        (:meth:`prepare`), so the GUI thread only places them.

        On the plain thread the MPR layout shows its three planes as soon as they are ready
        and the 3D pane when its scene is (block-averaging a 512 x 512 x 600 CT for the 3D
        view took longer than the planes themselves); the 3D layout waits for its 3D scene."""

        self._closed = False

        if runner is not None:
            runner.submit(
                lambda: self.prepare(build()),
                on_done=lambda v: self._on_built(v, None),
                on_error=lambda e: self._on_built(None, e),
            )
            return
        import threading

        presets = dict(self.presets)
        defer_3d = self.with_3d and self.layout_name != "3d"

        def run() -> None:
            background_priority()
            try:
                prepared = self.prepare(build(), defer_3d=defer_3d)
            except Exception as exc:  # delivered to the GUI thread as a message
                with contextlib.suppress(RuntimeError):  # the widget is gone
                    self._built.emit(None, exc)
                return
            try:
                self._built.emit(prepared, None)
            except RuntimeError:  # the widget was deleted meanwhile: free the scenes here
                self._dispose(prepared)
                return
            if not prepared.later_3d:
                return
            try:
                volume_scene: VolumeScene | None = VolumeScene(prepared.volume, presets=presets)
            except Exception:  # the planes are shown: the 3D pane stays empty, with a message
                logger.exception("MPR: the 3D view could not be made")
                volume_scene = None
            try:
                self._built_3d.emit(prepared.volume, volume_scene)
            except RuntimeError:  # the widget is gone
                if volume_scene is not None:
                    volume_scene.close()

        # Not a daemon: the interpreter waits for a build (seconds at most) at exit instead of
        # finalizing while the thread is inside VTK ("PyGILState_Release ... finalizing": abort).
        threading.Thread(target=run, name="hilum-mpr-build").start()

    def prepare(self, volume: Volume, *, defer_3d: bool = False) -> _Prepared:
        """The scenes :meth:`set_volume` shows for ``volume``; no Qt, safe on a worker thread.
        With *defer_3d* the 3D scene is left out (``later_3d``: the caller makes it afterwards)."""
        warm = take_warm_windows()  # windows that have rendered a plane: no context or shaders to make
        try:
            # the 2D viewer's display of the series (hilum.render.mpr.volume_display)
            scene = MPRScene(volume, windows=warm.windows if warm is not None else None)
        except BaseException:
            if warm is not None:
                warm.close()
            raise
        try:
            if self.layout_name != "3d":
                for vp in scene.viewports.values():  # a window's first frame (context, shaders) costs 50-100 ms
                    vp.render_window.SetOffScreenRendering(1)
                    vp.render()  # holding the VTK lock, the context left current nowhere (hilum.render.gl)
            later = defer_3d and self.with_3d
            volume_scene = VolumeScene(volume, presets=dict(self.presets)) if self.with_3d and not later else None
        except BaseException:
            scene.close()
            if warm is not None:
                warm.close()
            raise
        return _Prepared(volume, scene, volume_scene, later_3d=later, warm=warm)

    @staticmethod
    def _dispose(prepared: _Prepared) -> None:
        """Free the scenes of a volume that will not be shown (their windows, :mod:`hilum.render.gl`)."""
        prepared.scene.close()
        if prepared.volume_scene is not None:
            prepared.volume_scene.close()
        if prepared.warm is not None:
            prepared.warm.close()

    def _on_built(self, prepared: _Prepared | Volume | None, error: BaseException | None) -> None:
        if error is not None or prepared is None:
            msg = str(error) if error is not None else "no volume"
            logger.warning("MPR: cannot build a volume: %s", msg)
            self.status.setText(f"Cannot build a volume: {msg}")
            self.loadFailed.emit(msg)
            return
        if isinstance(prepared, _Prepared):
            if self._closed:  # closed while the volume was being built: nothing to show it in
                self._dispose(prepared)
                return
            self.set_volume(prepared.volume, prepared=prepared)
        else:
            self.set_volume(prepared)

    def _on_built_3d(self, volume: Volume, volume_scene: VolumeScene | None) -> None:
        """The 3D scene made after the planes were shown: into the 3D pane, unless the widget has
        closed or shows another volume meanwhile (then it is freed)."""
        if volume_scene is None:
            if not self._closed and self.volume is volume:
                self.status.setText(self.status.text() + " — the 3D view could not be made")
                if self._pending_3d is not None:
                    self._pending_3d.setText("No 3D view")
            return
        if self._closed or self.volume is not volume or self.volume_scene is not None:
            volume_scene.close()
            return
        self._drop_pending_3d()
        self.grid.addWidget(self._attach_3d(volume_scene), 1, 1)  # the MPR layout's 3D pane (the 3D layout never waits)
        # what the reader set in the 3D panel while the scene was being made
        self._apply_isosurface()
        if self.cut_plane.currentIndex() > 0:
            self._apply_cut()
        if [s.value() for s in self.clip_sliders] != [0, 1000] * 3:
            self._apply_clip_box()

    def set_volume(self, volume: Volume, *, prepared: _Prepared | None = None) -> None:
        """Show ``volume`` (replacing any shown one), with its scenes from :meth:`prepare` when given
        (its 3D scene may follow: :meth:`_on_built_3d`)."""
        self._teardown()
        self._iso_wanted = None
        if prepared is None or prepared.volume is not volume:
            prepared = self.prepare(volume)
        self.volume = volume
        self.scene = prepared.scene
        self._owned.scene = self.scene
        self._owned.warm = prepared.warm
        self._unsubscribe = self.scene.crosshair.subscribe(self._on_crosshair)
        for view in VIEWS:
            canvas = SliceCanvas(self.scene[view], self)
            canvas.activated.connect(lambda v=view: self.set_active_view(v))
            self.slice_canvases[view] = canvas
        if self.with_3d and not prepared.later_3d:
            self._attach_3d(prepared.volume_scene or VolumeScene(volume, presets=dict(self.presets)))
        elif self.with_3d:  # the 3D pane's place is kept, so the planes do not move when it comes
            self._pending_3d = self._placeholder("Rendering…")
        self._fill_window_presets()
        self._place()
        self.set_active_view("axial")
        issues = "; ".join(i.message for i in volume.issues)
        sx, sy, sz = volume.size
        self.status.setText(
            f"{sx}x{sy}x{sz} voxels, {' x '.join(f'{v:.3g}' for v in volume.spacing)} mm"
            + (f" — {issues}" if issues else "")
        )
        self.volumeLoaded.emit(volume)

    def _attach_3d(self, volume_scene: VolumeScene) -> VolumeCanvas:
        """The 3D pane's canvas for ``volume_scene`` (of :attr:`volume`), the 3D panel set from it."""
        assert self.volume is not None and self.scene is not None
        self.volume_scene = volume_scene
        if self.layout_name != "3d":  # the MPR's 3D cursor (no planes, no cursor in the 3D-only layout)
            self.volume_scene.set_cursor(self.scene.crosshair.centre)
        self.volume_canvas = VolumeCanvas(self.volume_scene, self)
        self._owned.volume_scene = self.volume_scene
        self._owned.worker = self.volume_canvas.worker()
        self.vr_preset.blockSignals(True)
        self.vr_preset.clear()
        for pid, p in self.presets.items():
            self.vr_preset.addItem(p.name, pid)
        self.vr_preset.setCurrentIndex(max(0, self.vr_preset.findData(self.volume_scene.preset.id)))
        self.vr_preset.blockSignals(False)
        self.shading.blockSignals(True)
        self.shading.setChecked(self.volume_scene.shading)
        self.shading.blockSignals(False)
        lo, hi = self.scene.data.value_range  # computed with the scene, off the GUI thread
        self.iso_threshold.setValue(300.0 if self.volume.modality == "CT" else lo + 0.3 * (hi - lo))
        return self.volume_canvas

    def _placeholder(self, text: str) -> QLabel:
        """What holds the 3D pane's place (sized like a canvas) until its scene comes."""
        label = QLabel(text, self)
        label.setObjectName("mpr-3d-pending")
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        label.setStyleSheet("background: black; color: lightgray;")
        label.setMinimumSize(96, 96)
        label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        return label

    def _drop_pending_3d(self) -> None:
        if self._pending_3d is not None:
            self.grid.removeWidget(self._pending_3d)
            self._pending_3d.hide()
            self._pending_3d.deleteLater()
            self._pending_3d = None

    def _teardown(self) -> None:
        self._drop_pending_3d()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for c in self.slice_canvases.values():
            c.close_viewport()
            c.hide()  # no queued render of a closed scene
            self.grid.removeWidget(c)
            c.deleteLater()
        self.slice_canvases = {}
        if self.volume_canvas is not None:
            self.volume_canvas.shutdown()
            self.volume_canvas.hide()
            self.grid.removeWidget(self.volume_canvas)
            self.volume_canvas.deleteLater()
            self.volume_canvas = None
        if self.tf_editor is not None:
            self.tf_editor.deleteLater()
            self.tf_editor = None
        if self.curved is not None:
            self.curved.close()
            self.curved.deleteLater()
            self.curved = None
        if self.scene is not None:
            self.scene.close()
            self.scene = None
        if self.volume_scene is not None:
            self.volume_scene.close()
            self.volume_scene = None
        self._owned.release()  # what is left (nothing after the above)

    def _place(self) -> None:
        if self.layout_name == "3d" and self.volume_canvas is not None:
            for c in self.slice_canvases.values():
                c.hide()
            self.grid.addWidget(self.volume_canvas, 0, 0)
            return
        positions = {"axial": (0, 0), "coronal": (0, 1), "sagittal": (1, 0)}
        for view, (row, col) in positions.items():
            self.grid.addWidget(self.slice_canvases[view], row, col)
        if self.volume_canvas is not None:
            self.grid.addWidget(self.volume_canvas, 1, 1)
        elif self._pending_3d is not None:
            self.grid.addWidget(self._pending_3d, 1, 1)

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        self._closed = True
        had_scene = self.scene is not None
        self._teardown()
        super().closeEvent(event)
        if had_scene:  # the next MPR finds its windows warm again
            warm_in_background()

    # ------------------------------------------------------------------ linked state
    def set_active_view(self, view: str) -> None:
        self.active_view = view
        for v, c in self.slice_canvases.items():
            c.set_active(v == view)
        mode = self.scene.crosshair.slabs[view] if self.scene else None
        if mode is not None:
            self.slab_mode.blockSignals(True)
            self.slab_thickness.blockSignals(True)
            idx = 0 if mode.thickness <= 0 else [m for _, m in SLAB_MODES].index(mode.mode)
            self.slab_mode.setCurrentIndex(idx)
            if mode.thickness > 0:
                self.slab_thickness.setValue(mode.thickness)
            self.slab_mode.blockSignals(False)
            self.slab_thickness.blockSignals(False)

    def _on_crosshair(self, kind: str) -> None:
        if self.scene is None or self.volume is None:
            return
        centre = self.scene.crosshair.centre
        if self.volume_scene is not None and kind in ("centre", "orientation") and self.layout_name != "3d":
            point = np.array(centre, dtype=np.float64)
            self._change_3d(lambda s: s.set_cursor(point))
            if self.cut_plane.currentIndex() > 0:
                self._apply_cut()
        if kind == "centre":
            near = self.volume.nearest_source_slice(centre)
            sop, frame = (near[1].sop_instance_uid, near[1].frame) if near else ("", 0)
            self.cursorMoved.emit(tuple(float(v) for v in centre), sop, frame)

    def set_cursor(self, point: npt.ArrayLike) -> None:
        """Move the 3D cursor (e.g. from a click in the 2D viewer)."""
        if self.scene is not None:
            self.scene.crosshair.set_centre(np.asarray(point, dtype=np.float64))

    def reset(self) -> None:
        """Standard planes through the volume centre, zoom 1, header window."""
        if self.scene is None or self.volume is None:
            return
        self.scene.crosshair.reset(self.volume.center)
        for vp in self.scene.viewports.values():
            vp.reset_camera()
        self._render_all()

    def _render_all(self) -> None:
        for c in self.slice_canvases.values():
            c.request_render()
        if self.volume_canvas is not None:
            self.volume_canvas.request_render()

    # ------------------------------------------------------------------ slab, window
    def _apply_slab(self) -> None:
        """Slab mode and thickness apply to all three planes."""
        if self.scene is None:
            return
        mode = SLAB_MODES[self.slab_mode.currentIndex()][1]
        for view in VIEWS:
            if mode is None:
                self.scene.crosshair.set_slab(view, 0.0)
            else:
                self.scene.crosshair.set_slab(view, self.slab_thickness.value(), mode)  # type: ignore[arg-type]

    def set_slab(self, thickness: float, mode: str | None) -> None:
        """Programmatic slab: ``mode`` None (thin), ``"mip"``, ``"minip"`` or ``"mean"``."""
        self.slab_thickness.setValue(thickness)
        self.slab_mode.setCurrentIndex([m for _, m in SLAB_MODES].index(mode))
        self._apply_slab()

    def _fill_window_presets(self) -> None:
        """The "Header" item (the series' own VOI: window with its function, or VOI LUT table), then the
        window presets of ``resources/window_presets.toml`` (or the user's copy) for the modality."""
        self.window_preset.clear()
        if self.volume is None or self.scene is None:
            return
        header = self.scene["axial"].display
        self.window_preset.addItem(f"Header ({header.label})", None)
        items: list[tuple[str, float, float]] = []
        try:
            from hilum.ui.viewer.presets import PresetStore

            items = [(p.name, p.center, p.width) for p in PresetStore(self.data_dir).for_modality(self.volume.modality)]
        except Exception:  # the viewer's presets are optional here
            logger.debug("window presets unavailable", exc_info=True)
        if not items:
            items = list(DEFAULT_WINDOWS.get(self.volume.modality, ()))
        for name, c, w in items:
            self.window_preset.addItem(f"{name} ({c:g}/{w:g})", (c, w))

    def _apply_window_preset(self, index: int) -> None:
        """A preset sets center/width in every plane, keeping the VOI LUT Function and inversion
        (:meth:`hilum.dicom.pixels_lut.DisplayTransform.with_window`); "Header" restores the series' display."""
        if self.scene is None or not 0 <= index < self.window_preset.count():
            return
        data = self.window_preset.itemData(index)
        if data is None:
            self.scene.set_display(None)
        else:
            self.scene.set_window(*data)
        self._render_all()

    def _set_crosshair_visible(self, on: bool) -> None:
        if self.scene is not None:
            for vp in self.scene.viewports.values():
                vp.set_crosshair_visible(on)
            self._render_all()

    def _set_annotations_visible(self, on: bool) -> None:
        if self.scene is not None:
            for vp in self.scene.viewports.values():
                vp.set_annotations_visible(on)
            self._render_all()

    def _clear_path(self) -> None:
        if self.scene is not None:
            self.scene.crosshair.clear_path()

    def show_curved(self) -> CurvedMPRView | None:
        """Open (or raise) the curved-MPR window for the path drawn with Alt + click."""
        if self.scene is None:
            return None
        if self.curved is None:
            self.curved = CurvedMPRView(self.scene[self.active_view], self)
            self.curved.resize(500, 600)
        self.curved.refresh()
        self.curved.show()
        self.curved.raise_()
        return self.curved

    def _clear_measurements(self) -> None:
        if self.scene is not None:
            self.scene.crosshair.clear_measurements()

    # ------------------------------------------------------------------ 3D controls
    def _change_3d(self, op: Callable[[VolumeScene], Any], done: Callable[[Any], None] | None = None) -> None:
        """Change the 3D scene with ``op(scene)`` without waiting for a frame being rendered
        (:meth:`VolumeCanvas.change`), then render it; ``done(result)`` afterwards."""
        scene, canvas = self.volume_scene, self.volume_canvas
        if scene is None or canvas is None:
            return
        canvas.change(lambda: op(scene), done)

    def _apply_vr_preset(self, index: int) -> None:
        pid = self.vr_preset.itemData(index)
        preset = self.presets.get(pid) if pid is not None else None
        if self.volume_scene is None or preset is None:
            return
        self._change_3d(lambda s: s.set_preset(preset))
        self.shading.blockSignals(True)
        self.shading.setChecked(preset.shade)
        self.shading.blockSignals(False)
        if self.tf_editor is not None:
            self.tf_editor.set_preset(preset)

    def apply_preset(self, preset: VRPreset) -> None:
        """Apply an edited preset (from the transfer-function editor)."""
        self._change_3d(lambda s: s.set_preset(preset))

    def _set_shading(self, on: bool) -> None:
        self._change_3d(lambda s: s.set_shading(on))

    def _set_volume_visible(self, on: bool) -> None:
        self._change_3d(lambda s: s.show_volume(on))

    def _apply_isosurface(self) -> None:
        if self.volume_scene is None:
            return
        threshold = self.iso_threshold.value() if self.iso_on.isChecked() else None
        if threshold == self._iso_wanted:
            return
        self._iso_wanted = threshold

        def report(n: int) -> None:
            if threshold is not None:
                self.status.setText(f"Surface at {threshold:g}: {n} triangles")

        if threshold is not None:
            self.status.setText(f"Surface at {threshold:g}…")
        self._change_3d(lambda s: s.set_isosurface(threshold), report)

    def _apply_cut(self) -> None:
        if self.volume_scene is None or self.scene is None:
            return
        idx = self.cut_plane.currentIndex()
        if idx == 0:
            self._change_3d(lambda s: s.set_cut_plane(None))
        else:
            plane = self.scene.crosshair.plane(VIEWS[idx - 1])
            normal = -plane.normal if self.cut_flip.isChecked() else plane.normal
            self._change_3d(lambda s: s.set_cut_plane(plane.centre, normal))

    def _apply_clip_box(self) -> None:
        if self.volume_scene is None or self.volume is None:
            return
        vals = [s.value() / 1000.0 for s in self.clip_sliders]
        if vals == [0.0, 1.0] * 3:
            self._change_3d(lambda s: s.set_clip_box(None))
        else:
            n = self.volume_scene.volume.size  # the rendered (possibly block-averaged) grid
            box = [vals[2 * a + side] * (n[a] - 1) for a in range(3) for side in range(2)]
            self._change_3d(lambda s: s.set_clip_box(box))

    def _reset_3d(self) -> None:
        self._change_3d(lambda s: s.reset_camera("anterior"))

    def _render_3d(self) -> None:
        if self.volume_canvas is not None:
            self.volume_canvas.request_render()

    def show_tf_editor(self) -> TransferFunctionEditor | None:
        """Show the transfer-function editor for the current preset (in the 3D panel)."""
        if self.volume_scene is None or self.volume is None:
            return None
        if self.tf_editor is None:
            value_range = self.scene.data.value_range if self.scene is not None else None
            self.tf_editor = TransferFunctionEditor(
                self.volume_scene.preset, self.volume.array, value_range=value_range, parent=self.panel
            )
            self.tf_editor.changed.connect(self.apply_preset)
            self.tf_holder.addWidget(self.tf_editor)
            save = QPushButton("Save as preset…", self.panel)
            save.clicked.connect(self._save_preset_dialog)
            self.tf_holder.addWidget(save)
        self.tf_editor.show()
        return self.tf_editor

    def save_user_preset(self, preset: VRPreset) -> Path | None:
        """Add ``preset`` to ``<data dir>/vr_presets.toml`` (keeping the user's others)."""
        if self.data_dir is None:
            return None
        from hilum.render.volume3d import USER_PRESETS, _parse_presets

        path = self.data_dir / USER_PRESETS
        mine = _parse_presets(path.read_text(encoding="utf-8"), str(path)) if path.is_file() else {}
        mine[preset.id] = preset
        out = save_presets(list(mine.values()), path)
        self.presets[preset.id] = preset
        if self.vr_preset.findData(preset.id) < 0:
            self.vr_preset.addItem(preset.name, preset.id)
        return out

    def _save_preset_dialog(self) -> None:
        if self.tf_editor is None:
            return
        name, ok = QInputDialog.getText(self, "Save preset", "Name:")
        if ok and name.strip():
            pid = "user-" + "".join(ch if ch.isalnum() else "-" for ch in name.strip().lower())
            from dataclasses import replace

            self.save_user_preset(replace(self.tf_editor.preset, id=pid, name=name.strip()))

    # ------------------------------------------------------------------ output
    def capture(self, path: str | os.PathLike[str], view: str | None = None) -> Path:
        """Save the active plane (or ``view``: a plane name or ``"3d"``) as PNG."""
        from PIL import Image

        view = view or ("3d" if self.layout_name == "3d" else self.active_view)
        canvas = self.volume_canvas if view == "3d" else self.slice_canvases[view]
        if canvas is None:
            raise ValueError("there is no 3D view")
        rgb = canvas.render_now()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(out)
        return out

    def _capture_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Capture view", "view.png", "PNG (*.png)")
        if path:
            self.capture(path)

    def _turntable_dialog(self) -> None:
        if self.volume_scene is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Turntable movie", "turntable.gif", "GIF (*.gif)")
        if path:
            self.volume_scene.save_turntable(path, frames=36)
            self._render_3d()
