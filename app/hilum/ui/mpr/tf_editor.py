"""A small editor for the 3D view's transfer functions.

The opacity function is drawn as a polyline of handles over the volume's
histogram (log counts), the colour function as a gradient strip under it.
Drag a handle to move it (value sideways, opacity up and down); double-click
empty space to add a handle there; right-click a handle to remove it (two
stay at least).  Every change emits :attr:`TransferFunctionEditor.changed`
with a new :class:`hilum.render.volume3d.VRPreset`, which the 3D view applies.
The logic (:meth:`value_at`, :meth:`move_point` ...) is usable without a mouse.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QLinearGradient, QMouseEvent, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from hilum.render.volume3d import VRPreset

__all__ = ["TransferFunctionEditor"]

logger = logging.getLogger(__name__)

_MARGIN = 8.0
_STRIP = 14.0
_HANDLE = 5.0


class TransferFunctionEditor(QWidget):
    """Edit a preset's opacity points over a histogram of the volume (see the module docstring)."""

    changed = Signal(object)  # VRPreset

    def __init__(
        self, preset: VRPreset, values: np.ndarray | None = None, *, value_range: tuple[float, float] | None = None,
        parent: QWidget | None = None,
    ) -> None:  # fmt: skip
        super().__init__(parent)
        self.setObjectName("tf-editor")
        self.setMinimumSize(240, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._histogram: np.ndarray | None = None
        if value_range is None and values is not None and values.size:
            value_range = (float(values.min()), float(values.max()))
        self.value_range = value_range or (0.0, 1.0)
        if self.value_range[1] <= self.value_range[0]:
            self.value_range = (self.value_range[0], self.value_range[0] + 1.0)
        if values is not None and values.size:
            sample = values.reshape(-1)[:: max(1, values.size // 2_000_000)]
            counts, _ = np.histogram(sample, bins=256, range=self.value_range)
            self._histogram = np.log1p(counts.astype(np.float64))
        self._preset = preset.absolute(self.value_range)
        self._drag: int | None = None

    # --- model
    @property
    def preset(self) -> VRPreset:
        return self._preset

    def set_preset(self, preset: VRPreset) -> None:
        """Show another preset (no signal: the caller applied it already)."""
        self._preset = preset.absolute(self.value_range)
        self.update()

    @property
    def points(self) -> list[tuple[float, float]]:
        return [tuple(p) for p in self._preset.opacity]  # type: ignore[misc]

    def _set_points(self, points: list[tuple[float, float]]) -> None:
        self._preset = replace(self._preset, opacity=tuple(sorted(points)))
        self.update()
        self.changed.emit(self._preset)

    def move_point(self, index: int, value: float, opacity: float) -> int:
        """Move handle ``index``; returns its index after re-sorting by value."""
        pts = self.points
        pts[index] = (float(value), float(np.clip(opacity, 0.0, 1.0)))
        moved = pts[index]
        self._set_points(pts)
        return self.points.index(moved)

    def add_point(self, value: float, opacity: float) -> int:
        pts = self.points
        new = (float(value), float(np.clip(opacity, 0.0, 1.0)))
        pts.append(new)
        self._set_points(pts)
        return self.points.index(new)

    def remove_point(self, index: int) -> bool:
        pts = self.points
        if len(pts) <= 2:
            return False
        del pts[index]
        self._set_points(pts)
        return True

    # --- geometry
    def _plot(self) -> QRectF:
        return QRectF(
            _MARGIN, _MARGIN, max(1.0, self.width() - 2 * _MARGIN), max(1.0, self.height() - 3 * _MARGIN - _STRIP)
        )

    def to_widget(self, value: float, opacity: float) -> QPointF:
        r = self._plot()
        lo, hi = self.value_range
        return QPointF(r.left() + (value - lo) / (hi - lo) * r.width(), r.bottom() - opacity * r.height())

    def value_at(self, pos: QPointF) -> tuple[float, float]:
        """(value, opacity) under a widget position."""
        r = self._plot()
        lo, hi = self.value_range
        value = lo + (pos.x() - r.left()) / r.width() * (hi - lo)
        opacity = (r.bottom() - pos.y()) / r.height()
        return float(value), float(np.clip(opacity, 0.0, 1.0))

    def handle_at(self, pos: QPointF, tolerance: float = 2 * _HANDLE) -> int | None:
        best = None
        for i, (v, a) in enumerate(self.points):
            p = self.to_widget(v, a)
            d = (p.x() - pos.x()) ** 2 + (p.y() - pos.y()) ** 2
            if d <= tolerance**2 and (best is None or d < best[0]):
                best = (d, i)
        return best[1] if best else None

    # --- painting
    def _colour_at(self, value: float) -> QColor:
        pts = self._preset.colour
        vs = [p[0] for p in pts]
        rgb = [float(np.interp(value, vs, [p[c] for p in pts])) for c in (1, 2, 3)]
        return QColor.fromRgbF(*rgb)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor(30, 30, 34))
        r = self._plot()
        if self._histogram is not None and self._histogram.max() > 0:
            h = self._histogram / self._histogram.max()
            bw = r.width() / len(h)
            for i, c in enumerate(h):
                if c > 0:
                    p.fillRect(
                        QRectF(r.left() + i * bw, r.bottom() - c * r.height(), bw + 0.5, c * r.height()),
                        QColor(80, 80, 90),
                    )
        p.setPen(QPen(QColor(90, 90, 100), 1))
        p.drawRect(r)
        strip = QRectF(r.left(), r.bottom() + _MARGIN, r.width(), _STRIP)
        grad = QLinearGradient(strip.left(), 0, strip.right(), 0)
        lo, hi = self.value_range
        for frac in np.linspace(0.0, 1.0, 33):
            grad.setColorAt(float(frac), self._colour_at(lo + frac * (hi - lo)))
        p.fillRect(strip, grad)
        path = QPainterPath()
        pts = [self.to_widget(v, a) for v, a in self.points]
        if pts:
            path.moveTo(QPointF(r.left(), pts[0].y()))
            for q in pts:
                path.lineTo(q)
            path.lineTo(QPointF(r.right(), pts[-1].y()))
        p.setPen(QPen(QColor(240, 240, 240), 1.5))
        p.drawPath(path)
        for (v, _), q in zip(self.points, pts, strict=True):
            p.setBrush(self._colour_at(v))
            p.setPen(QPen(QColor(255, 255, 255), 1))
            p.drawEllipse(q, _HANDLE, _HANDLE)
        p.end()

    # --- mouse
    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        pos = event.position()
        idx = self.handle_at(pos)
        if event.button() == Qt.MouseButton.RightButton and idx is not None:
            self.remove_point(idx)
        elif event.button() == Qt.MouseButton.LeftButton:
            self._drag = idx
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._drag is not None:
            value, opacity = self.value_at(event.position())
            self._drag = self.move_point(self._drag, value, opacity)
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self._drag = None
        event.accept()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self.handle_at(event.position()) is None and self._plot().contains(event.position()):
            self.add_point(*self.value_at(event.position()))
        event.accept()
