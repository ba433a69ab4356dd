"""Measurement math in true units: length, angle, ROI statistics (pure numpy).

Points are image coordinates ``(x, y) = (column, row)`` of pixel centres as in
:mod:`hilum.dicom.geometry`; a :class:`~hilum.dicom.geometry.Spacing` converts them
to millimetres (Pixel Spacing, or Imager Pixel Spacing "at the detector" as
PS3.3 10.7.1.3 requires the user to be told — see ``Spacing.note``). ROI
statistics are over *modality* values (Hounsfield units for CT: PS3.3
C.11.1), never over display values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hilum.dicom.geometry import Spacing

__all__ = [
    "ROIStats",
    "angle_degrees",
    "cobb_degrees",
    "ellipse_mask",
    "length_mm",
    "polygon_area",
    "polygon_mask",
    "polygon_stats",
    "rect_mask",
    "roi_area",
    "roi_stats",
]

Point = Sequence[float]


def _physical(v: Point, spacing: Spacing) -> npt.NDArray[np.float64]:
    return np.array([float(v[0]) * spacing.column, float(v[1]) * spacing.row])


def length_mm(p0: Point, p1: Point, spacing: Spacing) -> float:
    """Distance between two image points in mm (in pixels when uncalibrated)."""
    return float(np.linalg.norm(_physical(p1, spacing) - _physical(p0, spacing)))


def angle_degrees(a: Point, vertex: Point, b: Point, spacing: Spacing) -> float:
    """The angle a-vertex-b in degrees (0..180), measured in physical space (non-square pixels)."""
    u = _physical(a, spacing) - _physical(vertex, spacing)
    v = _physical(b, spacing) - _physical(vertex, spacing)
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    if nu == 0 or nv == 0:
        return 0.0
    c = float(np.clip(u @ v / (nu * nv), -1.0, 1.0))
    return math.degrees(math.acos(c))


def cobb_degrees(a0: Point, a1: Point, b0: Point, b1: Point, spacing: Spacing) -> float:
    """The Cobb angle: the angle between the line *a0*-*a1* and the line *b0*-*b1*, in degrees.

    Lines have no direction, so this is the smaller of the two angles they
    make (0..90), in physical space (non-square pixels). The lines need not
    cross on the image (the endplates of two vertebrae).
    """
    u = _physical(a1, spacing) - _physical(a0, spacing)
    v = _physical(b1, spacing) - _physical(b0, spacing)
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    if nu == 0 or nv == 0:
        return 0.0
    c = abs(float(u @ v)) / (nu * nv)
    return math.degrees(math.acos(min(c, 1.0)))


def _box(p0: Point, p1: Point) -> tuple[float, float, float, float]:
    x0, x1 = sorted((float(p0[0]), float(p1[0])))
    y0, y1 = sorted((float(p0[1]), float(p1[1])))
    return x0, y0, x1, y1


def rect_mask(shape: tuple[int, int], p0: Point, p1: Point) -> npt.NDArray[np.bool_]:
    """Pixels whose centres lie in the rectangle with corners *p0*, *p1* (inclusive)."""
    x0, y0, x1, y1 = _box(p0, p1)
    rows, cols = shape
    mask = np.zeros(shape, dtype=bool)
    c0, c1 = max(math.ceil(x0), 0), min(math.floor(x1), cols - 1)
    r0, r1 = max(math.ceil(y0), 0), min(math.floor(y1), rows - 1)
    if c1 >= c0 and r1 >= r0:
        mask[r0 : r1 + 1, c0 : c1 + 1] = True
    return mask


def ellipse_mask(shape: tuple[int, int], p0: Point, p1: Point) -> npt.NDArray[np.bool_]:
    """Pixels whose centres lie in the ellipse inscribed in the box *p0*-*p1*."""
    x0, y0, x1, y1 = _box(p0, p1)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    rows, cols = shape
    mask = np.zeros(shape, dtype=bool)
    if rx <= 0 or ry <= 0:
        return mask
    c0, c1 = max(math.ceil(x0), 0), min(math.floor(x1), cols - 1)
    r0, r1 = max(math.ceil(y0), 0), min(math.floor(y1), rows - 1)
    if c1 < c0 or r1 < r0:
        return mask
    xs = (np.arange(c0, c1 + 1) - cx) / rx
    ys = (np.arange(r0, r1 + 1) - cy) / ry
    mask[r0 : r1 + 1, c0 : c1 + 1] = xs[None, :] ** 2 + ys[:, None] ** 2 <= 1.0
    return mask


def roi_area(kind: str, p0: Point, p1: Point, spacing: Spacing) -> float:
    """Area of the drawn shape in mm² (px² uncalibrated): ``w*h`` or ``pi*a*b``."""
    x0, y0, x1, y1 = _box(p0, p1)
    w, h = (x1 - x0) * spacing.column, (y1 - y0) * spacing.row
    if kind == "ellipse":
        return math.pi * w * h / 4.0
    if kind == "rect":
        return w * h
    raise ValueError(f"ROI kind must be 'ellipse' or 'rect', not {kind!r}")


def polygon_mask(shape: tuple[int, int], points: Sequence[Point]) -> npt.NDArray[np.bool_]:
    """Pixels whose centres lie inside the closed polygon *points* (even-odd rule).

    A centre exactly on a left or top edge counts as inside, on a right or
    bottom edge as outside (the usual half-open rule), so two polygons sharing
    an edge share no pixel.
    """
    rows, cols = shape
    mask = np.zeros(shape, dtype=bool)
    if len(points) < 3:
        return mask
    px = np.array([float(p[0]) for p in points])
    py = np.array([float(p[1]) for p in points])
    c0, c1 = max(math.ceil(px.min()), 0), min(math.floor(px.max()), cols - 1)
    r0, r1 = max(math.ceil(py.min()), 0), min(math.floor(py.max()), rows - 1)
    if c1 < c0 or r1 < r0:
        return mask
    xs = np.arange(c0, c1 + 1, dtype=np.float64)
    ys = np.arange(r0, r1 + 1, dtype=np.float64)
    inside = np.zeros((ys.size, xs.size), dtype=bool)
    qx, qy = np.roll(px, -1), np.roll(py, -1)
    for x0, y0, x1, y1 in zip(px, py, qx, qy, strict=True):
        if y0 == y1:
            continue
        # rows whose centre line crosses this edge (half-open in y)
        crosses = (ys >= min(y0, y1)) & (ys < max(y0, y1))
        if not crosses.any():
            continue
        xc = x0 + (ys[crosses] - y0) * (x1 - x0) / (y1 - y0)  # crossing abscissa per row
        inside[crosses] ^= xs[None, :] >= xc[:, None]
    mask[r0 : r1 + 1, c0 : c1 + 1] = inside
    return mask


def polygon_area(points: Sequence[Point], spacing: Spacing) -> float:
    """Area of the closed polygon *points* in mm² (px² uncalibrated), by the shoelace formula."""
    if len(points) < 3:
        return 0.0
    x = np.array([float(p[0]) for p in points]) * spacing.column
    y = np.array([float(p[1]) for p in points]) * spacing.row
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


@dataclass(frozen=True)
class ROIStats:
    """Statistics of modality values inside an ROI.

    ``area`` is the area of the drawn shape (mm², or px² when uncalibrated);
    ``count`` the number of pixels whose centres are inside; ``sd`` is the
    sample standard deviation (n - 1); ``unit`` the modality unit (HU for CT).
    """

    area: float
    count: int
    mean: float
    sd: float
    min: float
    max: float
    unit: str = ""
    area_unit: str = "mm²"

    def lines(self) -> list[str]:
        u = f" {self.unit}" if self.unit else ""
        return [
            f"Area {self.area:.1f} {self.area_unit}",
            f"Mean {self.mean:.1f}{u}  SD {self.sd:.1f}",
            f"Min {self.min:.0f}  Max {self.max:.0f}{u}",
        ]


def roi_stats(values: npt.ArrayLike, kind: str, p0: Point, p1: Point, spacing: Spacing, unit: str = "") -> ROIStats:
    """Statistics of *values* (modality values of one frame, rows x columns) in an ROI.

    *kind* is ``"ellipse"`` or ``"rect"``, the shape given by two opposite
    corners of its bounding box in image coordinates. An ROI containing no
    pixel centre gives NaN statistics and count 0.
    """
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise ValueError(f"ROI statistics need one grayscale frame (2-D), got shape {arr.shape}")
    mask = ellipse_mask(arr.shape, p0, p1) if kind == "ellipse" else rect_mask(arr.shape, p0, p1)
    return _stats(arr[mask], roi_area(kind, p0, p1, spacing), spacing, unit)


def _stats(inside: npt.NDArray[Any], area: float, spacing: Spacing, unit: str) -> ROIStats:
    """The statistics of the values *inside* an ROI of *area* (NaN and count 0 when none)."""
    inside = inside.astype(np.float64)
    area_unit = "mm²" if spacing.calibrated else "px²"
    if inside.size == 0:
        nan = float("nan")
        return ROIStats(area, 0, nan, nan, nan, nan, unit, area_unit)
    sd = float(inside.std(ddof=1)) if inside.size > 1 else 0.0
    return ROIStats(area, int(inside.size), float(inside.mean()), sd, float(inside.min()), float(inside.max()),
                    unit, area_unit)  # fmt: skip


def polygon_stats(values: npt.ArrayLike, points: Sequence[Point], spacing: Spacing, unit: str = "") -> ROIStats:
    """Statistics of *values* inside a freehand polygon (pixel centres inside, :func:`polygon_mask`).

    ``area`` is the polygon's area (:func:`polygon_area`), not the pixel count.
    """
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise ValueError(f"ROI statistics need one grayscale frame (2-D), got shape {arr.shape}")
    return _stats(arr[polygon_mask(arr.shape, points)], polygon_area(points, spacing), spacing, unit)


def modality_unit(modality: str, rescale_type: str = "") -> str:
    """Unit of modality values: Rescale Type (PS3.3 C.11.1.1.2) or HU for CT, else ``""``."""
    rt = (rescale_type or "").strip()
    if rt and rt.upper() != "US":  # US = unspecified
        return rt
    return "HU" if (modality or "").upper() == "CT" else ""
