"""The 2D viewer's "MPR" and "3D" actions, kept here so the viewer needs one call to get them.

:func:`add_mpr_actions` puts the two actions on a
:class:`hilum.ui.viewer.viewer_widget.StudyViewer`'s toolbar.  They open an
:class:`~hilum.ui.mpr.mpr_widget.MPRWidget` on the active viewport's series:
from the stack the viewer already decoded when it is complete (no second
read), else from the series' files in the archive, built off the GUI thread.
The MPR's 3D cursor then drives the 2D viewports showing that series (each
jumps to the slice nearest the cursor), and scrolling a 2D viewport moves the
cursor to that slice's plane: the 3D cursor navigates the original stack.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import numpy as np
from PySide6.QtGui import QAction

from hilum.dicom.volume import Volume, volume_from_planes
from hilum.ui.mpr.mpr_widget import MPRWidget

__all__ = ["add_mpr_actions", "open_active_series", "volume_from_series_volume"]

logger = logging.getLogger(__name__)


def volume_from_series_volume(series: Any) -> Volume:
    """A :class:`Volume` from the viewer's loaded :class:`hilum.dicom.stack_load.SeriesVolume`
    (stored values through each frame's Modality LUT; geometry from its frames)."""
    frames = series.stack.frames
    if not series.complete:
        raise ValueError("the series is still loading")
    if any(f.geometry is None for f in frames):
        raise ValueError("the series has frames without Image Position/Orientation (Patient)")
    planes = [series.modality_values(k) for k in range(len(frames))]
    header = series.header
    window = None
    try:
        from hilum.dicom.pixels_lut import windows_from_dataset

        ws = windows_from_dataset(header, frames[0].frame)
        window = ws[0] if ws else None
    except Exception:  # a window is a nicety
        logger.debug("no header window", exc_info=True)
    return volume_from_planes(
        planes,
        [f.geometry.origin for f in frames],
        [f.geometry.orientation for f in frames],
        [(f.geometry.row_spacing, f.geometry.col_spacing) for f in frames],
        sop_instance_uids=[f.sop_instance_uid for f in frames],
        frames=[f.frame for f in frames],
        paths=[f.path or None for f in frames],
        modality=series.modality,
        window=window,
        frame_of_reference_uid=frames[0].frame_of_reference_uid or str(header.get("FrameOfReferenceUID", "") or ""),
        series_instance_uid=series.series_uid,
        study_instance_uid=str(header.get("StudyInstanceUID", "") or ""),
    )


def add_mpr_actions(viewer: Any) -> dict[str, QAction]:
    """Add "MPR" and "3D" to ``viewer``'s toolbar (and to ``viewer.actions_by_name``)."""
    out = {}
    for name, text, layout, tip in (
        ("mpr", "MPR", "mpr", "Axial, coronal, sagittal and oblique planes of the active series, with 3D"),
        ("volume_3d", "3D", "3d", "Volume rendering of the active series"),
    ):
        act = QAction(text, viewer)
        act.setObjectName(name)
        act.setToolTip(tip)
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
    widget = MPRWidget(layout=layout, data_dir=getattr(viewer, "data_dir", None), parent=viewer)
    from PySide6.QtCore import Qt

    widget.setWindowFlag(Qt.WindowType.Window, True)
    widget.setWindowTitle(("MPR" if layout == "mpr" else "3D") + f" — {series.header.get('SeriesDescription', '')}")
    widget.resize(1200, 800)
    if series.complete:
        widget.build_async(partial(volume_from_series_volume, series))
    else:
        archive = viewer.archive
        paths = [row["path"] for row in archive.instances(series_uid=uid)]
        widget.load(paths)
    _link(viewer, widget, uid)
    widget.show()
    viewer._mpr_windows = [w for w in getattr(viewer, "_mpr_windows", []) if w.isVisible()] + [widget]
    return widget


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
    widget.destroyed.connect(lambda *_: [u() for u in unsubscribers])
