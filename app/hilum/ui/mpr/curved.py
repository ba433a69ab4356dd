"""A window showing the straightened curved MPR along the path drawn in an MPR plane."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from hilum.render.mpr import MPRViewport

__all__ = ["CurvedMPRView", "window_to_uint8"]


def window_to_uint8(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A linear window (PS3.3 C.11.2.1.2) to 8-bit grey, NaN as black."""
    lo = centre - width / 2.0
    y = (np.nan_to_num(values, nan=lo) - lo) / max(width, 1.0)
    return np.ascontiguousarray(np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8))


class CurvedMPRView(QWidget):
    """The curved MPR of a viewport's crosshair path: rows along the path (true arc length),
    columns across it.  Updates whenever the path changes."""

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
        self._unsubscribe = viewport.crosshair.subscribe(self._on_model)
        self.refresh()

    def _on_model(self, kind: str) -> None:
        if kind == "path":
            self.refresh()

    def refresh(self) -> None:
        result = self.viewport.curved_image(width=self.width_mm)
        if result is None:
            self.image = None
            self.label.setText("Alt + click in a plane to draw a path (two points or more)")
            self.info.setText("")
            return
        values, points = result
        c, w = self.viewport.window
        grey = window_to_uint8(values, c, w)
        self.image = grey
        h, wd = grey.shape
        q = QImage(grey.data, wd, h, grey.strides[0], QImage.Format.Format_Grayscale8).copy()
        self.label.setPixmap(QPixmap.fromImage(q).scaled(self.label.size(), Qt.AspectRatioMode.KeepAspectRatio))
        length = float(np.linalg.norm(np.diff(points[:, points.shape[1] // 2], axis=0), axis=1).sum())
        self.info.setText(f"Path {length:.1f} mm, {self.width_mm:g} mm across")

    def closeEvent(self, event) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        self._unsubscribe()
        super().closeEvent(event)
