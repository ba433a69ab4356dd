"""The heat-map layer of the viewer: a float map in 0..1 shown as a colour-mapped translucent overlay.

:class:`HeatmapLayer` holds, per series, an AI plugin's heat map (``float [m, row, column]`` on
the series' volume order, as :func:`hilum.dicom.heatmap.read_heatmap` and the plugin host give
it), quantised once to ``uint8``. :meth:`HeatmapLayer.paint` is a viewport paint hook
(``ViewerModel.paint_hooks``, called by the canvas after the label overlay): it draws the slice
the viewport shows through a 256-entry ARGB colour table — blue (low) through green and yellow to
red (high), alpha growing with the value and scaled by :attr:`opacity`; values under
:data:`FLOOR` are fully transparent, so a map that is zero where nothing was found leaves the
image untouched there. Slices are cached (16 at a time) like the label overlay's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import QRectF
from PySide6.QtGui import QImage, QPainter, QTransform

__all__ = ["FLOOR", "HeatmapLayer", "heat_lut"]

FLOOR = 0.05
"""Heat below this (0..1) is not drawn at all."""


def heat_lut(opacity: float) -> np.ndarray:
    """256 premultiplied ARGB32 colours for heat 0..255 at *opacity* (0..1)."""
    v = np.linspace(0.0, 1.0, 256)
    # a "jet"-like ramp: blue -> cyan -> green -> yellow -> red
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    a = np.where(v < FLOOR, 0.0, np.clip(0.35 + 0.65 * v, 0, 1) * float(np.clip(opacity, 0.0, 1.0)))
    a8 = np.round(a * 255).astype(np.uint32)
    rgb = [np.round(c * a * 255).astype(np.uint32) for c in (r, g, b)]  # premultiplied
    return (a8 << 24) | (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


class HeatmapLayer:
    """Heat maps by series, their visibility and opacity, painted into the viewports."""

    def __init__(self) -> None:
        self.maps: dict[str, np.ndarray] = {}
        self.titles: dict[str, str] = {}
        self.visible = True
        self.opacity = 0.5
        self._lut = heat_lut(self.opacity)
        self._cache: OrderedDict[tuple[str, int], tuple[np.ndarray, QImage]] = OrderedDict()
        self._listeners: list[Callable[[str], None]] = []

    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """``callback(series_uid)`` after a map, the visibility or the opacity changed ("" for all)."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _changed(self, series_uid: str) -> None:
        for cb in list(self._listeners):
            cb(series_uid)

    def set_map(self, series_uid: str, heat: np.ndarray, title: str = "") -> None:
        """Show *heat* (``[m, row, column]``, 0..1) on *series_uid* (replacing its previous map)."""
        arr = np.asarray(heat, dtype=np.float32)
        if arr.ndim != 3:
            raise ValueError(f"a heat map is [slice, row, column]; got shape {arr.shape}")
        self.maps[series_uid] = np.round(np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255).astype(np.uint8)
        self.titles[series_uid] = title
        self._drop(series_uid)
        self._changed(series_uid)

    def clear(self, series_uid: str) -> None:
        if self.maps.pop(series_uid, None) is not None:
            self.titles.pop(series_uid, None)
            self._drop(series_uid)
            self._changed(series_uid)

    def set_visible(self, visible: bool) -> None:
        if visible != self.visible:
            self.visible = bool(visible)
            self._changed("")

    def set_opacity(self, opacity: float) -> None:
        opacity = float(np.clip(opacity, 0.0, 1.0))
        if opacity != self.opacity:
            self.opacity = opacity
            self._lut = heat_lut(opacity)
            self._cache.clear()
            self._changed("")

    def _drop(self, series_uid: str) -> None:
        for key in [k for k in self._cache if k[0] == series_uid]:
            del self._cache[key]

    def image(self, series_uid: str, m: int) -> QImage | None:
        """Slice *m* of the series' map as a premultiplied ARGB image (None without a map)."""
        heat = self.maps.get(series_uid)
        if heat is None or not 0 <= m < heat.shape[0]:
            return None
        key = (series_uid, m)
        hit = self._cache.get(key)
        if hit is None:
            argb = np.ascontiguousarray(self._lut[heat[m]])
            h, w = argb.shape
            img = QImage(argb.data, w, h, argb.strides[0], QImage.Format.Format_ARGB32_Premultiplied)
            hit = self._cache[key] = (argb, img)
            while len(self._cache) > 16:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return hit[1]

    def paint(self, canvas: Any, p: QPainter) -> None:
        """The viewport paint hook: the heat of the slice *canvas* shows, under the text overlay."""
        st = canvas.state
        v, f = st.volume, st.frame_info
        if not self.visible or v is None or f is None:
            return
        heat = self.maps.get(v.series_uid)
        if heat is None or heat.shape[1:] != (f.rows, f.columns):
            return
        img = self.image(v.series_uid, int(v.stack.order.volume_index[st.index]))
        if img is None:
            return
        mat = st.matrix()
        p.save()
        p.setTransform(QTransform(mat[0, 0], mat[1, 0], mat[0, 1], mat[1, 1], mat[0, 2], mat[1, 2]))
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        p.drawImage(QRectF(-0.5, -0.5, f.columns, f.rows), img)
        p.restore()
