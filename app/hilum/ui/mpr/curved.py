"""A window showing the straightened curved MPR along the path drawn in an MPR plane.

Its grey levels come from the viewport's :class:`hilum.dicom.pixels_lut.DisplayTransform`
(:meth:`hilum.render.mpr.MPRViewport.curved_pixels`): the same VOI LUT Function, VOI LUT
table and MONOCHROME1 inversion as the MPR planes and the 2D viewer.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from hilum.render.mpr import MPRViewport

__all__ = ["CurvedMPRView"]


class CurvedMPRView(QWidget):
    """The curved MPR of a viewport's crosshair path: rows along the path (true arc length),
    columns across it.  Updates whenever the path or the viewport's display changes."""

    def __init__(self, viewport: MPRViewport, parent: QWidget | None = None, *, width_mm: float = 80.0) -> None:
        super().__init__(parent)
        self.setObjectName("curved-mpr")
        self.setWindowTitle("Curved MPR")
        self.setWindowFlag(Qt.WindowType.Window, True)
        self.viewport = viewport
        self.width_mm = width_mm
        self.label = QLabel(self)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setMinimumSize(200, 200)
        self.info = QLabel(self)
        lay = QVBoxLayout(self)
        lay.addWidget(self.label, 1)
        lay.addWidget(self.info)
        self.image: np.ndarray | None = None
        unsubscribe_path = viewport.crosshair.subscribe(self._on_model)
        unsubscribe_display = viewport.subscribe_display(self.refresh)
        self._unsubscribe = lambda: (unsubscribe_path(), unsubscribe_display())
        self.refresh()

    def _on_model(self, kind: str) -> None:
        if kind == "path":
            self.refresh()

    def refresh(self) -> None:
        result = self.viewport.curved_pixels(width=self.width_mm)
        if result is None:
            self.image = None
            self.label.setText("Alt + click in a plane to draw a path (two points or more)")
            self.info.setText("")
            return
        grey, points = result
        self.image = grey
        h, wd = grey.shape
        q = QImage(grey.data, wd, h, grey.strides[0], QImage.Format.Format_Grayscale8).copy()
        self.label.setPixmap(QPixmap.fromImage(q).scaled(self.label.size(), Qt.AspectRatioMode.KeepAspectRatio))
        length = float(np.linalg.norm(np.diff(points[:, points.shape[1] // 2], axis=0), axis=1).sum())
        self.info.setText(f"Path {length:.1f} mm, {self.width_mm:g} mm across")

    def closeEvent(self, event) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        self._unsubscribe()
        super().closeEvent(event)
