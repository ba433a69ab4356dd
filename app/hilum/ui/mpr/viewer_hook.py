"""The 2D viewer's "MPR" and "3D" actions, kept here so the viewer needs one call to get them.

:func:`add_mpr_actions` puts the two actions on a
:class:`hilum.ui.viewer.viewer_widget.StudyViewer`'s toolbar.  They open an
:class:`~hilum.ui.mpr.mpr_widget.MPRWidget` on the active viewport's series,
built from the stack the viewer decoded (:func:`hilum.dicom.volume.volume_from_series`:
the viewer's own slice order, no second read or sort, and no copy of the pixels where
the viewer's buffer already holds the modality values), off the GUI thread; a
series still loading is handed over when its load finishes. Each loaded series has the
MPR's render windows made and warmed in the background (:mod:`hilum.ui.mpr.warm`), so the
planes' first frames need no new OpenGL context or shaders. Volume slice ``m``
is therefore viewer slice ``stack.order.unique[m]``. The MPR's 3D cursor then
drives the 2D viewports showing that series (each jumps to the slice nearest
the cursor), and scrolling a 2D viewport moves the cursor to that slice's
plane: the 3D cursor navigates the original stack.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence

from hilum.dicom.annotations import value_lines
from hilum.dicom.stack_measure import modality_unit
from hilum.dicom.volume import volume_from_series
from hilum.ui.mpr.seg_hook import link_segmentation

if TYPE_CHECKING:
    from hilum.ui.mpr.canvas import PlaneShape
    from hilum.ui.mpr.mpr_widget import MPRWidget

__all__ = ["add_mpr_actions", "annotation_shapes", "open_active_series"]

logger = logging.getLogger(__name__)


def add_mpr_actions(viewer: Any) -> dict[str, QAction]:
    """Add "MPR" and "3D" to ``viewer``'s toolbar (and to ``viewer.actions_by_name``)."""
    from hilum.ui.viewer.shortcuts import SHORTCUTS

    keys = {n: k for n, k, _ in SHORTCUTS}
    from hilum.ui.mpr.warm import warm_in_background

    # a loaded series is what comes before MPR: its windows are made and warmed meanwhile (off this thread)
    viewer.loadFinished.connect(lambda *_: warm_in_background())
    out = {}
    for name, text, layout, tip in (
        ("mpr", "MPR", "mpr", "Axial, coronal, sagittal and oblique planes of the active series, with 3D"),
        ("volume_3d", "3D", "3d", "Volume rendering of the active series"),
    ):
        act = QAction(text, viewer)
        act.setObjectName(name)
        act.setToolTip(tip)
        if name in keys:  # the viewer's shortcut table (hilum.ui.viewer.shortcuts), listed in Help
            act.setShortcuts([QKeySequence(k) for k in keys[name].split(";")])
            act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        act.triggered.connect(partial(open_active_series, viewer, layout))
        viewer.addAction(act)
        viewer.toolbar.addAction(act)
        if hasattr(viewer, "actions_by_name"):
            viewer.actions_by_name[name] = act
        out[name] = act
    return out


def open_active_series(viewer: Any, layout: str = "mpr", *_: object) -> MPRWidget | None:
    """Open the MPR (or 3D) window on the active viewport's series."""
    vp = viewer.active_viewport()
    series = getattr(vp, "volume", None)
    uid = getattr(vp, "series_uid", "")
    if series is None or not uid:
        viewer.status.setText("No series in the active viewport")
        return None
    from hilum.ui.mpr.mpr_widget import MPRWidget  # VTK: imported when a reader first asks for MPR or 3D

    widget = MPRWidget(layout=layout, data_dir=getattr(viewer, "data_dir", None), parent=viewer)
    from PySide6.QtCore import Qt

    widget.setWindowFlag(Qt.WindowType.Window, True)
    widget.setWindowTitle(("MPR" if layout == "mpr" else "3D") + f" — {series.header.get('SeriesDescription', '')}")
    widget.resize(1200, 800)
    if viewer.is_loading(uid):
        _build_when_loaded(viewer, widget, uid)
    else:
        loaded = viewer.series_volume(uid)
        widget.build_async(partial(volume_from_series, loaded if loaded is not None else series))
    _link(viewer, widget, uid)
    link_segmentation(viewer, widget, uid)  # the label overlay and brush on the planes (seg_hook)
    widget.show()
    viewer._mpr_windows = [w for w in getattr(viewer, "_mpr_windows", []) if w.isVisible()] + [widget]
    return widget


def _build_when_loaded(viewer: Any, widget: MPRWidget, uid: str) -> None:
    """Build the volume from the viewer's stack of series *uid* once its load finishes."""
    widget.status.setText("Waiting for the series to load…")
    connected = [True]

    def release() -> None:
        if connected[0]:
            connected[0] = False
            try:
                viewer.loadFinished.disconnect(finished)
            except RuntimeError:  # the viewer is gone already
                pass

    def finished(done_uid: str) -> None:
        if done_uid != uid:
            return
        release()
        series = viewer.series_volume(uid)
        widget.build_async(partial(volume_from_series, series) if series is not None else _not_loaded)

    viewer.loadFinished.connect(finished)
    widget.destroyed.connect(lambda *_: release())


def _not_loaded() -> Any:
    raise ValueError("the series could not be loaded")


def _link(viewer: Any, widget: MPRWidget, uid: str) -> None:
    """MPR cursor -> 2D slice, 2D slice -> MPR cursor (for viewports showing series ``uid``)."""
    guard = {"busy": False}

    def viewports() -> list[Any]:
        return [v for v in viewer.model.viewports if v.series_uid == uid and v.volume is not None]

    def from_mpr(point: tuple[float, float, float], _sop: str, _frame: int) -> None:
        if guard["busy"]:
            return
        guard["busy"] = True
        try:
            for v in viewports():
                k = v.volume.stack.nearest_index(point, max_distance=float("inf"))
                if k is not None:
                    v.set_index(k)
        finally:
            guard["busy"] = False

    def from_2d(v: Any, what: str) -> None:
        if what != "index" or guard["busy"] or widget.scene is None or v.series_uid != uid:
            return
        g = v.geometry
        if g is None:
            return
        guard["busy"] = True
        try:
            c = widget.scene.crosshair.centre
            n = np.asarray(g.normal, dtype=np.float64)
            widget.set_cursor(c + float((np.asarray(g.origin) - c) @ n) * n)
        finally:
            guard["busy"] = False

    widget.cursorMoved.connect(from_mpr)
    unsubscribers = [v.subscribe(from_2d) for v in viewer.model.viewports]
    unsubscribers.append(_show_annotations(viewer, widget, uid))
    widget.destroyed.connect(lambda *_: [u() for u in unsubscribers])


def annotation_shapes(annotations: Any, series: Any) -> list[PlaneShape]:
    """The viewer's annotations on frames of *series* (a SeriesVolume) in patient coordinates
    (each frame's Image Position / Orientation and Pixel Spacing), ROIs as their outlines, with
    the values the 2D viewer shows next to them (computed on the annotated frame)."""
    from hilum.ui.mpr.canvas import PlaneShape  # VTK: only once an MPR is open

    if series is None:
        return []
    frames = {f.key: (k, f) for k, f in enumerate(series.stack.frames)}
    out = []
    for a in annotations.all():
        hit = frames.get(a.key)
        if hit is None or hit[1].geometry is None:
            continue
        k, f = hit
        pts = np.asarray(a.points, dtype=np.float64)
        closed = a.kind in ("rect", "ellipse", "freehand")
        if a.kind == "rect":
            (x0, y0), (x1, y1) = a.points
            pts = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
        elif a.kind == "ellipse":
            (x0, y0), (x1, y1) = a.points
            t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
            pts = np.c_[(x0 + x1) / 2 + abs(x1 - x0) / 2 * np.cos(t), (y0 + y1) / 2 + abs(y1 - y0) / 2 * np.sin(t)]
        values = series.modality_values(k) if a.kind in ("rect", "ellipse", "freehand", "point") else None
        unit = modality_unit(series.modality, f.pipeline.modality.rescale_type if f.pipeline is not None else "")
        lines = tuple(value_lines(a.kind, a.values(values, f.spacing, unit)))
        patient = np.asarray(f.geometry.to_patient(pts[:, 0], pts[:, 1]), dtype=np.float64).reshape(-1, 3)
        out.append(PlaneShape(a.uid, a.kind, patient, closed, a.text if a.kind == "text" else "", lines))
    return out


def _show_annotations(viewer: Any, widget: MPRWidget, uid: str) -> Callable[[], None]:
    """The study's annotations of series *uid* on the MPR planes where the geometry allows: a
    plane draws one only when all its points lie within max(0.5 mm, half its slab) of it — the
    plane that coincides with the annotated image's (or, for a line, any plane holding it).
    Kept in step with the set (added, moved, edited, deleted, undone)."""
    aset = getattr(viewer, "annotations", None)
    if aset is None:
        return lambda: None

    def sync(*_: object) -> None:
        canvases = getattr(widget, "slice_canvases", {})
        if not canvases:
            return
        shapes = annotation_shapes(aset, viewer.series_volume(uid))
        for canvas in canvases.values():
            canvas.annotation_shapes = shapes
            canvas.update()

    widget.volumeLoaded.connect(sync)
    return aset.subscribe(sync)  # type: ignore[no-any-return]
