"""Segmentation editing in the 2D viewer: the editor (headless), its mouse tools and the overlay.

:class:`SegEditor` is the viewer's one segmentation state: a
:class:`~hilum.dicom.segmentation.LabelMap` per series (on the series' volume
order, so viewer slice ``k`` edits volume slice ``stack.order.volume_index[k]``),
the active segment, the brush radius (mm), the threshold range, 2D/3D growing.
It has no widgets: tests and the CLI use it as the viewer does.

The tools follow :class:`hilum.ui.viewer.tools.Tool` (``press / move / release``
with canvas coordinates, mapped to image coordinates by the viewport state):

- ``seg_brush`` paints a disc of the brush radius (mm; an ellipse in pixels when
  the pixel spacing is anisotropic), swept between mouse events so a fast drag
  leaves no gap; ``seg_threshold`` paints only pixels within [lo, hi] (modality
  values) under it; ``seg_eraser`` clears the active segment;
- ``seg_grow`` grows a region from the click within [lo, hi] (2D on the slice,
  or 3D in the volume, capped: :meth:`hilum.dicom.segmentation.LabelMap.grow`);
- ``seg_fill`` fills the closed outline around the click.

A press…release is one stroke: one undo step.

The overlay (:func:`paint_labels`, called from the canvas' ``paintEvent``) is
the label slice through a 256-entry colour table into a premultiplied ARGB
image, cached per (label map, slice) and updated in the DIRTY RECTANGLE only
that each edit reports (:meth:`LabelMap.subscribe`), never the whole volume:
a brush dab costs the dab's rectangle, not the slice.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QTransform

from hilum.dicom.segmentation import GrowResult, LabelMap, Segment, volume_spacing
from hilum.dicom.stack_load import SeriesVolume
from hilum.ui.viewer.state import ViewportState
from hilum.ui.viewer.tools import Tool

__all__ = [
    "SEG_TOOLS",
    "BrushTool",
    "EraserTool",
    "FillTool",
    "GrowTool",
    "SegEditor",
    "ThresholdBrushTool",
    "paint_labels",
]

logger = logging.getLogger(__name__)

Point = tuple[float, float]


class SegEditor:
    """The segmentation state of one viewer: label maps by series, active segment, tool settings."""

    def __init__(self) -> None:
        self.labels: dict[str, LabelMap] = {}
        self.active: dict[str, int] = {}
        """The active segment number per series."""
        self.radius_mm = 5.0
        self.lo = 100.0
        self.hi = 3000.0
        self.grow_3d = False
        self.max_grow_voxels = 5_000_000
        self.opacity = 0.5
        self.visible = True
        self.cursor: tuple[ViewportState, Point] | None = None
        """Where the brush outline is drawn (the state and image point of the last hover)."""
        self.last_grow: GrowResult | None = None
        self._listeners: list[Callable[[str, str], None]] = []
        self._unsubs: dict[str, Callable[[], None]] = {}
        self._cache: OrderedDict[tuple[int, int], tuple[np.ndarray, QImage]] = OrderedDict()
        self._luts: dict[int, np.ndarray] = {}
        self._states: list[ViewportState] = []
        self.tool_active = False
        """True while a segmentation tool is the viewer's tool (Ctrl+Z goes to the label map)."""
        self.current_series = ""

    # ------------------------------------------------------------ model

    def subscribe(self, callback: Callable[[str, str], None]) -> Callable[[], None]:
        """``callback(what, series_uid)``: ``"labels"`` (a label map added/replaced), ``"segments"``,
        ``"active"``, ``"voxels"`` (voxels changed)."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _emit(self, what: str, uid: str) -> None:
        for cb in list(self._listeners):
            cb(what, uid)

    def watch(self, state: ViewportState) -> None:
        """Repaint *state*'s viewport when the label map of what it shows changes."""
        if state not in self._states:
            self._states.append(state)

    def set_labels(self, series_uid: str, lm: LabelMap) -> LabelMap:
        """Show and edit *lm* on series *series_uid* (replacing the one it had)."""
        old = self._unsubs.pop(series_uid, None)
        if old is not None:
            old()
        for key in [k for k in self._cache if k[0] == id(self.labels.get(series_uid))]:
            del self._cache[key]
        lm.series_uid = series_uid
        self.labels[series_uid] = lm
        self._luts.pop(id(lm), None)

        def changed(m: int, rect: tuple[int, int, int, int] | None) -> None:
            self._on_voxels(lm, m, rect)

        unsub_vox = lm.subscribe(changed)
        unsub_seg = lm.subscribe_segments(lambda: self._on_segments(lm))

        def unsub() -> None:
            unsub_vox()
            unsub_seg()

        self._unsubs[series_uid] = unsub
        if lm.segments:
            self.active[series_uid] = min(lm.segments)
        self._emit("labels", series_uid)
        self._repaint(series_uid)
        return lm

    def labels_for(self, volume: SeriesVolume, create: bool = True) -> LabelMap | None:
        """The label map of *volume*'s series (a new empty one with one segment when *create*)."""
        uid = volume.series_uid
        lm = self.labels.get(uid)
        if lm is None and create:
            f = volume.stack.frames[0]
            lm = LabelMap((len(volume.stack.order.unique), f.rows, f.columns))
            lm.add_segment()
            self.set_labels(uid, lm)
        return lm

    def active_segment(self, series_uid: str) -> int | None:
        lm = self.labels.get(series_uid)
        if lm is None or not lm.segments:
            return None
        n = self.active.get(series_uid)
        if n not in lm.segments:
            n = self.active[series_uid] = min(lm.segments)
        return n

    def set_active(self, series_uid: str, number: int) -> None:
        self.active[series_uid] = number
        self._emit("active", series_uid)

    def add_segment(self, series_uid: str, label: str = "") -> Segment:
        lm = self.labels[series_uid]
        seg = lm.add_segment(label=label)
        self.set_active(series_uid, seg.number)
        return seg

    def undo(self, series_uid: str | None = None) -> bool:
        lm = self.labels.get(series_uid or self.current_series)
        return bool(lm is not None and lm.undo())

    def redo(self, series_uid: str | None = None) -> bool:
        lm = self.labels.get(series_uid or self.current_series)
        return bool(lm is not None and lm.redo())

    def volumes_ml(self, series_uid: str, volume: SeriesVolume) -> dict[int, float]:
        lm = self.labels.get(series_uid)
        return lm.volumes_ml(volume_spacing(volume.stack)) if lm is not None else {}

    def set_opacity(self, opacity: float) -> None:
        """The label overlay's opacity (0..1) for every series; repaints."""
        self.opacity = min(1.0, max(0.0, float(opacity)))
        self._luts.clear()
        self._cache.clear()
        for uid in list(self.labels):
            self._repaint(uid)

    def set_visible(self, visible: bool) -> None:
        """Show or hide the label overlay of every series (all segments at once); repaints."""
        self.visible = bool(visible)
        for uid in list(self.labels):
            self._repaint(uid)

    # ------------------------------------------------------------ overlay cache

    def _lut(self, lm: LabelMap) -> np.ndarray:
        lut = self._luts.get(id(lm))
        if lut is None:
            lut = np.zeros(256, dtype=np.uint32)
            a = int(round(255 * self.opacity))
            for n, s in lm.segments.items():
                if s.visible:
                    r, g, b = (int(c * a / 255) for c in s.color)  # premultiplied
                    lut[n] = (a << 24) | (r << 16) | (g << 8) | b
            self._luts[id(lm)] = lut
        return lut

    def _on_segments(self, lm: LabelMap) -> None:
        self._luts.pop(id(lm), None)
        for key in [k for k in self._cache if k[0] == id(lm)]:
            del self._cache[key]
        self._emit("segments", lm.series_uid)
        self._repaint(lm.series_uid)

    def _on_voxels(self, lm: LabelMap, m: int, rect: tuple[int, int, int, int] | None) -> None:
        if m < 0 or rect is None:
            self._luts.pop(id(lm), None)  # colours may have changed too
            for key in [k for k in self._cache if k[0] == id(lm)]:
                del self._cache[key]
        else:
            hit = self._cache.get((id(lm), m))
            if hit is not None:
                y0, y1, x0, x1 = rect
                hit[0][y0:y1, x0:x1] = self._lut(lm)[lm.array[m, y0:y1, x0:x1]]
        self._emit("voxels", lm.series_uid)
        self._repaint(lm.series_uid)

    def _repaint(self, series_uid: str) -> None:
        for st in self._states:
            if st.series_uid == series_uid:
                st.emit("segmentation")

    def overlay_image(self, lm: LabelMap, m: int) -> QImage:
        """The coloured label slice *m* as a premultiplied ARGB image (cached; edits update the
        dirty rectangle in place)."""
        key = (id(lm), m)
        hit = self._cache.get(key)
        if hit is None:
            argb = np.ascontiguousarray(self._lut(lm)[lm.array[m]])
            h, w = argb.shape
            img = QImage(argb.data, w, h, argb.strides[0], QImage.Format.Format_ARGB32_Premultiplied)
            hit = self._cache[key] = (argb, img)
            while len(self._cache) > 16:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return hit[1]


def _slice_of(state: ViewportState) -> int | None:
    """The volume slice of the frame *state* shows (None without a frame)."""
    v = state.volume
    if v is None or state.frame_info is None:
        return None
    return int(v.stack.order.volume_index[state.index])


def paint_labels(canvas: Any, p: QPainter) -> None:
    """Draw the label overlay of the frame *canvas* shows, and the brush outline (the
    viewport's paint hook; does nothing when the viewer has no segmentation)."""
    editor: SegEditor | None = getattr(getattr(canvas, "model", None), "seg_editor", None)
    st: ViewportState = canvas.state
    if editor is None or st.volume is None:
        return
    editor.watch(st)
    m = _slice_of(st)
    f = st.frame_info
    if m is None or f is None:
        return
    lm = editor.labels.get(st.volume.series_uid)
    mat = st.matrix()
    if lm is not None and editor.visible and lm.shape[1:] == (f.rows, f.columns):
        img = editor.overlay_image(lm, m)
        p.save()
        p.setTransform(QTransform(mat[0, 0], mat[1, 0], mat[0, 1], mat[1, 1], mat[0, 2], mat[1, 2]))
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        p.drawImage(QRectF(-0.5, -0.5, f.columns, f.rows), img)
        p.restore()
    cur = editor.cursor
    if editor.tool_active and cur is not None and cur[0] is st:
        sr, sc = st.spacing()
        (x, y) = cur[1]
        p.save()
        p.setTransform(QTransform(mat[0, 0], mat[1, 0], mat[0, 1], mat[1, 1], mat[0, 2], mat[1, 2]))
        pen = QPen(QColor(255, 255, 0), 1)
        pen.setCosmetic(True)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        rx, ry = editor.radius_mm / (sc or 1.0), editor.radius_mm / (sr or 1.0)
        p.drawEllipse(QPointF(x, y), rx, ry)
        p.restore()


# --------------------------------------------------------------------------- tools


class _SegTool(Tool):
    """Base of the segmentation tools: the editor, the label map and slice under the mouse."""

    erase = False
    threshold = False

    def __init__(self, editor: SegEditor) -> None:
        super().__init__()
        self.editor = editor
        self._target: tuple[LabelMap, int, int] | None = None  # label map, slice, segment
        self._prev: Point | None = None

    def _begin(self, state: ViewportState) -> tuple[LabelMap, int, int] | None:
        v = state.volume
        m = _slice_of(state)
        if v is None or m is None:
            return None
        lm = self.editor.labels_for(v)
        assert lm is not None
        self.editor.current_series = v.series_uid
        n = self.editor.active_segment(v.series_uid)
        if n is None:
            n = self.editor.add_segment(v.series_uid).number
        return lm, m, n

    def hover(self, state: ViewportState, x: float, y: float) -> None:
        self.editor.cursor = (state, state.canvas_to_image(x, y))
        state.emit("segmentation")

    def cancel(self, state: ViewportState) -> None:
        if self._target is not None:
            self._target[0].end_stroke()
        self._target = None
        self._prev = None
        super().cancel(state)


class BrushTool(_SegTool):
    name, label = "seg_brush", "Segment brush"

    def _values(self, state: ViewportState) -> np.ndarray | None:
        return state.modality_frame() if self.threshold else None

    def _dab(self, state: ViewportState, p0: Point, p1: Point) -> None:
        if self._target is None:
            return
        lm, m, n = self._target
        kw: dict[str, Any] = {}
        if self.threshold:
            values = self._values(state)
            if values is None or values.ndim != 2:
                return
            kw = {"values": values, "lo": self.editor.lo, "hi": self.editor.hi}
        lm.brush_line(m, p0, p1, self.editor.radius_mm, state.spacing(), n, erase=self.erase, **kw)

    def press(self, state: ViewportState, x: float, y: float) -> None:
        super().press(state, x, y)
        self._target = self._begin(state)
        if self._target is None:
            return
        self._target[0].begin_stroke(self.name)
        p = state.canvas_to_image(x, y)
        self.editor.cursor = (state, p)
        self._prev = p
        self._dab(state, p, p)

    def move(self, state: ViewportState, x: float, y: float) -> None:
        p = state.canvas_to_image(x, y)
        self.editor.cursor = (state, p)
        if self._target is None or self._prev is None:
            state.emit("segmentation")
            return
        self._dab(state, self._prev, p)
        self._prev = p

    def release(self, state: ViewportState, x: float, y: float) -> None:
        if self._target is not None:
            self.move(state, x, y)
            self._target[0].end_stroke()
        self._target = None
        self._prev = None
        self.start = self.last = None


class ThresholdBrushTool(BrushTool):
    name, label = "seg_threshold", "Threshold brush"
    threshold = True


class EraserTool(BrushTool):
    name, label = "seg_eraser", "Segment eraser"
    erase = True


class GrowTool(_SegTool):
    """Click: grow the active segment from the click within [lo, hi] (2D, or 3D when set)."""

    name, label = "seg_grow", "Region growing"

    def press(self, state: ViewportState, x: float, y: float) -> None:
        target = self._begin(state)
        if target is None or state.volume is None:
            return
        lm, m, n = target
        cx, cy = state.canvas_to_image(x, y)
        c, r = int(round(cx)), int(round(cy))
        if not (0 <= r < lm.shape[1] and 0 <= c < lm.shape[2]):
            return
        values: Any
        if self.editor.grow_3d:
            values = _volume_values(state.volume)
            if values is None:
                state.status = "Region growing in 3D waits for the whole series"
                state.emit("segmentation")
                return
        else:
            values = state.modality_frame()
            if values is None or values.ndim != 2:
                return
        res = lm.grow(values, (m, r, c), self.editor.lo, self.editor.hi, n, three_d=self.editor.grow_3d,
                      spacing_mm=volume_spacing(state.volume.stack),
                      max_voxels=self.editor.max_grow_voxels)  # fmt: skip
        self.editor.last_grow = res
        if res.refused or res.reason:
            logger.info("region growing: %s", res.reason)

    def move(self, state: ViewportState, x: float, y: float) -> None:
        pass

    def release(self, state: ViewportState, x: float, y: float) -> None:
        pass


class FillTool(_SegTool):
    """Click inside a closed outline of the active segment: fill it."""

    name, label = "seg_fill", "Fill outline"

    def press(self, state: ViewportState, x: float, y: float) -> None:
        target = self._begin(state)
        if target is None:
            return
        lm, m, n = target
        lm.fill(m, *state.canvas_to_image(x, y), n)

    def move(self, state: ViewportState, x: float, y: float) -> None:
        pass

    def release(self, state: ViewportState, x: float, y: float) -> None:
        pass


class _ModalityVolume:
    """The series' modality values in its volume order, computed only for the box asked for
    (``values[box]``): region growing in 3D reads the box around the seed, never the whole
    volume as floats (300 x 512² would be 300 MB)."""

    def __init__(self, volume: SeriesVolume) -> None:
        self.volume = volume
        order = volume.stack.order
        self.unique = order.unique
        self.shape = (len(order.unique), int(volume.data.shape[1]), int(volume.data.shape[2]))

    def __getitem__(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        ms = range(*box[0].indices(self.shape[0]))
        rows, cols = box[1], box[2]
        out = np.empty((len(ms), *np.empty(self.shape[1:], dtype=bool)[rows, cols].shape), dtype=np.float32)
        for n, m in enumerate(ms):
            k = self.unique[m]
            pipe = self.volume.stack.frames[k].pipeline
            stored = self.volume.data[k][rows, cols]
            out[n] = pipe.modality_values(stored) if pipe is not None else stored
        return out


def _volume_values(volume: SeriesVolume) -> _ModalityVolume | None:
    """Modality values of the series' volume slices (lazily, per box), None until every slice is decoded."""
    if not volume.complete or volume.data.ndim != 3:
        return None
    return _ModalityVolume(volume)


SEG_TOOLS: dict[str, type[_SegTool]] = {
    t.name: t for t in (BrushTool, ThresholdBrushTool, EraserTool, GrowTool, FillTool)
}
