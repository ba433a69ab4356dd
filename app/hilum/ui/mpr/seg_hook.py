"""The viewer's segmentation on the MPR planes: the label overlay, and a brush/eraser on any plane.

An MPR window opened from the viewer (:mod:`hilum.ui.mpr.viewer_hook`) shows the
series' :class:`~hilum.dicom.segmentation.LabelMap` (the viewer's
:class:`~hilum.ui.viewer.seg_tools.SegEditor`) over each plane in the segments'
colours, resliced with nearest neighbour on the plane's grid
(:meth:`hilum.render.mpr.MPRViewport.set_labels`; the label array is shared, not
copied). The MPR volume is the viewer's loaded stack in its volume order
(:func:`hilum.dicom.volume.volume_from_series`), so label voxel ``[m, row, col]``
is MPR voxel ``[k, j, i]`` one for one; a stack that had to be resampled to a
regular grid (uneven spacing) does not match and shows no labels.

The toolbar's "Brush labels" / "Erase labels" make a left drag on a plane paint
(or erase) the active segment: a disc of the panel's radius (mm) one voxel thick
on the plane — orthogonal or oblique — (:meth:`MPRViewport.brush_voxels`),
written through :meth:`LabelMap.write_slice` as one undoable stroke per drag, so
the 2D viewer's overlay and the panel's mL follow.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from PySide6.QtGui import QAction

from hilum.dicom.segmentation import LabelMap

__all__ = ["MPRSegBrush", "link_segmentation", "label_colours"]

logger = logging.getLogger(__name__)


def label_colours(lm: LabelMap, opacity: float = 0.5) -> np.ndarray:
    """256 x RGBA of *lm*'s segments (hidden ones and 0 transparent)."""
    out = np.zeros((256, 4), dtype=np.uint8)
    a = int(round(255 * opacity))
    for n, s in lm.segments.items():
        if s.visible:
            out[n, :3] = s.color
            out[n, 3] = a
    return out


class MPRSegBrush:
    """What a left drag on an MPR plane does to the labels while "Brush labels"/"Erase labels" is on."""

    def __init__(self, editor: Any, series_uid: str) -> None:
        self.editor = editor
        self.series_uid = series_uid
        self.mode = ""  # "", "brush" or "erase"
        self._lm: LabelMap | None = None
        self._number = 0
        self._last: tuple[float, float] | None = None

    @property
    def active(self) -> bool:
        return bool(self.mode) and self.series_uid in self.editor.labels

    def press(self, viewport: Any, x: float, y: float) -> None:
        lm = self.editor.labels.get(self.series_uid)
        n = self.editor.active_segment(self.series_uid)
        if lm is None or n is None:
            return
        self._lm, self._number = lm, n
        lm.begin_stroke("mpr " + self.mode)
        self._last = (x, y)
        self._dab(viewport, x, y)

    def move(self, viewport: Any, x: float, y: float) -> None:
        if self._lm is None or self._last is None:
            return
        lx, ly = self._last
        step_px = max(self.editor.radius_mm * 0.5 * viewport.pixels_per_mm, 1.0)
        n = max(1, int(math.ceil(math.hypot(x - lx, y - ly) / step_px)))
        for i in range(1, n + 1):
            self._dab(viewport, lx + (x - lx) * i / n, ly + (y - ly) * i / n)
        self._last = (x, y)

    def release(self) -> None:
        if self._lm is not None:
            self._lm.end_stroke()
        self._lm = None
        self._last = None

    def _dab(self, viewport: Any, x: float, y: float) -> None:
        lm = self._lm
        if lm is None:
            return
        for k, mask, rect in viewport.brush_voxels(x, y, self.editor.radius_mm):
            lm.write_slice(k, mask, rect, self._number, erase=self.mode == "erase")


def link_segmentation(viewer: Any, widget: Any, uid: str) -> MPRSegBrush | None:
    """Show the viewer's label map of series *uid* on *widget*'s planes and add the brush/eraser
    toggles to its toolbar (nothing when the viewer has no segmentation editor)."""
    editor = getattr(viewer, "seg", None)
    if editor is None:
        return None
    brush = MPRSegBrush(editor, uid)
    state: dict[str, Any] = {"lm": None, "unsub": None}
    widget.seg_brush = brush

    def render_all() -> None:
        for canvas in getattr(widget, "slice_canvases", {}).values():
            canvas.request_render()

    def detach() -> None:
        if state["unsub"] is not None:
            state["unsub"]()
        state["unsub"] = state["lm"] = None

    def attach(*_: object) -> None:
        lm = editor.labels.get(uid)
        scene = widget.scene
        if scene is None or lm is None or lm is state["lm"]:
            return
        detach()
        colours = label_colours(lm, editor.opacity)
        try:
            for view, canvas in widget.slice_canvases.items():
                scene[view].set_labels(lm.array, colours)
                canvas.seg_brush = brush
        except ValueError as exc:  # a resampled (irregular) stack: its grid is not the label map's
            logger.info("MPR: labels not shown: %s", exc)
            widget.status.setText(widget.status.text() + " — segmentation not shown (resampled grid)")
            return
        state["lm"] = lm

        def on_voxels(_m: int, _rect: Any) -> None:
            for view in widget.slice_canvases:
                scene[view].labels_modified()
            render_all()

        def on_segments() -> None:
            for view in widget.slice_canvases:
                scene[view].labels_modified(label_colours(lm, editor.opacity))
            render_all()

        u1 = lm.subscribe(on_voxels)
        u2 = lm.subscribe_segments(on_segments)
        state["unsub"] = lambda: (u1(), u2())
        render_all()

    def on_editor(what: str, series: str) -> None:
        if series == uid and what == "labels":
            attach()

    unsub_editor = editor.subscribe(on_editor)
    widget.volumeLoaded.connect(attach)
    def forget(*_: object) -> None:
        unsub_editor()
        detach()

    widget.destroyed.connect(forget)
    actions: dict[str, QAction] = {}

    def toggled(mode: str, on: bool) -> None:
        if on:
            volume = viewer.series_volume(uid)
            if volume is not None:
                editor.labels_for(volume)  # a label map with a first segment, ready to paint
                attach()
            for other, act in actions.items():
                if other != mode and act.isChecked():
                    act.setChecked(False)
            brush.mode = mode
        elif brush.mode == mode:
            brush.mode = ""

    widget.toolbar.addSeparator()
    for mode, text in (("brush", "Brush labels"), ("erase", "Erase labels")):
        act = widget.toolbar.addAction(text)
        act.setObjectName(f"mpr_seg_{mode}")
        act.setCheckable(True)
        act.setToolTip(f"{text}: a left drag on a plane paints the active segment of the Segments panel "
                       "(a disc of its radius, one voxel thick)" if mode == "brush" else
                       f"{text}: a left drag on a plane clears the active segment")  # fmt: skip
        act.toggled.connect(lambda on, m=mode: toggled(m, bool(on)))
        actions[mode] = act
    widget.seg_actions = actions
    attach()
    return brush
