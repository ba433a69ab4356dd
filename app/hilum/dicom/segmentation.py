"""Segmentations: a label volume on a series' slice order, its editing, and DICOM SEG.

A :class:`LabelMap` is a ``uint8`` array ``[m, row, column]`` on the VOLUME order
of a series' :class:`~hilum.dicom.stack.Stack`: volume slice ``m`` is the frame
``stack.order.items[stack.order.unique[m]]`` (the one slice order of
:func:`hilum.dicom.geometry.order_slices`, the volume's and the MPR's; a viewer
slice ``k`` lies at volume slice ``stack.order.volume_index[k]``). Value 0 is
background, value ``n`` is :class:`Segment` ``n`` — segments do not overlap,
as in a label map of 3D Slicer or ITK-SNAP.

Editing (all pure numpy, SimpleITK for the connected-component work):

- :meth:`LabelMap.brush` — a disc of radius r mm on one slice, elliptical in
  pixels when the pixel spacing differs between rows and columns; with
  ``values``/``lo``/``hi`` only the pixels whose modality value is within
  [lo, hi] are painted (threshold-in-brush); ``erase`` clears the segment.
  :meth:`LabelMap.brush_line` stamps discs along a mouse segment so a fast
  drag leaves no gaps;
- :meth:`LabelMap.grow` — region growing from a seed within a value range,
  2D on one slice or 3D in the volume (``sitk.ConnectedThreshold``), bounded
  by a box around the seed and a voxel cap: a region larger than the cap is
  refused, not painted (it leaked into the whole body);
- :meth:`LabelMap.fill` — fill the hole of a closed outline on one slice
  (the background component under the click, if it does not reach the edge).

Every edit happens inside a stroke (:meth:`begin_stroke` / :meth:`end_stroke`;
an edit outside one is a stroke of its own): undo/redo restore the touched
slices as they were, stroke by stroke. Listeners (:meth:`subscribe`) hear
``(m, (y0, y1, x0, x1))`` per change — the dirty rectangle of slice ``m`` (or
``m = -1`` for everything), so a view repaints only what changed.

DICOM SEG (PS3.3 A.51, C.8.20): :func:`make_seg` builds a BINARY
Segmentation with highdicom (one segment description per segment, with its
colour as Recommended Display CIELab Value, algorithm type MANUAL unless the
segment came from an algorithm); :func:`read_seg` reads a SEG (ours or an AI
plugin's) back onto a series' stack: frames are mapped by the Referenced SOP
Instance UID of their source image, else by their Image Position (Patient)
along the stack's normal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from hilum.dicom.stack import Stack

__all__ = [
    "DEFAULT_COLOURS",
    "GrowResult",
    "LabelMap",
    "Segment",
    "disc_offsets",
    "make_seg",
    "read_seg",
    "seg_references",
]

logger = logging.getLogger(__name__)

DEFAULT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (241, 214, 145),
    (216, 101, 79),
    (128, 174, 128),
    (111, 184, 210),
    (221, 130, 101),
    (144, 238, 144),
    (192, 104, 88),
    (220, 245, 20),
    (78, 63, 0),
    (255, 250, 220),
)
"""Colours for new segments (3D Slicer's generic anatomy colours, in turn)."""

UNDO_DEPTH = 64
"""Strokes kept for undo (each keeps the touched slices before and after)."""

MAX_GROW_VOXELS = 5_000_000
"""Region growing refuses a region larger than this (it leaked); also the default cap."""

GROW_BOX_MM = 80.0
"""3D region growing looks only this far (mm) from the seed along each axis."""

_CODES: dict[str, tuple[str, str, str]] = {
    "Tissue": ("85756007", "SCT", "Tissue"),
    "Organ": ("113343008", "SCT", "Organ"),
    "Morphologically Altered Structure": ("49755003", "SCT", "Morphologically Altered Structure"),
    "Mass": ("4147007", "SCT", "Mass"),
    "Nodule": ("27925004", "SCT", "Nodule"),
    "Lesion": ("52988006", "SCT", "Lesion"),
    "Anatomical Structure": ("91723000", "SCT", "Anatomical Structure"),
    "Tumor": ("108369006", "SCT", "Tumor"),
}
"""Names of segment categories/types we offer, and their SNOMED CT codes (PS3.16 CID 7150/7151)."""


@dataclass
class Segment:
    """One labelled segment: its number (the label value), name, display colour (sRGB) and what
    it is (category and type, by meaning; ``category_code``/``type_code`` keep a SEG's exact
    codes ``(value, scheme, meaning)`` so a re-saved SEG keeps the same descriptions)."""

    number: int
    label: str
    color: tuple[int, int, int]
    category: str = "Tissue"
    type: str = "Organ"
    visible: bool = True
    category_code: tuple[str, str, str] | None = None
    type_code: tuple[str, str, str] | None = None
    algorithm: str = "MANUAL"
    """``MANUAL``, ``SEMIAUTOMATIC`` or ``AUTOMATIC`` (PS3.3 C.8.20.2: Segment Algorithm Type)."""
    algorithm_name: str = ""
    algorithm_version: str = ""
    algorithm_family: tuple[str, str, str] | None = None
    """Algorithm Family Code of the algorithm that made it (an AI plugin's), kept on re-save."""
    edited: bool = False
    """Edited by hand since it was read: an AUTOMATIC segment is saved as SEMIAUTOMATIC."""
    tracking_uid: str = ""


@dataclass(frozen=True)
class GrowResult:
    """What region growing did: voxels added, whether it was refused for being over the cap."""

    voxels: int
    refused: bool = False
    reason: str = ""


Rect = tuple[int, int, int, int]  # y0, y1, x0, x1 (half open)
Listener = Callable[[int, Rect | None], None]


def disc_offsets(radius_mm: float, spacing_rc: tuple[float, float]) -> tuple[npt.NDArray[np.bool_], int, int]:
    """The brush footprint: a boolean mask of the pixels within ``radius_mm`` of the centre pixel
    (``spacing_rc`` = (row spacing, column spacing) mm), and its half sizes (rows, columns)."""
    sr, sc = (float(s) if s and s > 0 else 1.0 for s in spacing_rc)
    hr = max(int(radius_mm / sr), 0)
    hc = max(int(radius_mm / sc), 0)
    yy, xx = np.mgrid[-hr : hr + 1, -hc : hc + 1]
    return (yy * sr) ** 2 + (xx * sc) ** 2 <= radius_mm**2 + 1e-9, hr, hc


class _Stroke:
    __slots__ = ("after", "before", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.before: dict[int, np.ndarray] = {}
        self.after: dict[int, np.ndarray] = {}


class LabelMap:
    """A uint8 label volume ``[m, row, column]`` on a series' volume order; 0 = no segment."""

    def __init__(self, shape: Sequence[int], segments: Iterable[Segment] = ()) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"a label map is (slices, rows, columns), got {shape}")
        self.array: np.ndarray = np.zeros(shape, dtype=np.uint8)
        self.segments: dict[int, Segment] = {}
        self._listeners: list[Listener] = []
        self._seg_listeners: list[Callable[[], None]] = []
        for s in segments:
            self.add_segment(s)
        self.series_uid = ""
        """The series it labels (set by the viewer / :func:`read_seg`)."""
        self.source_sop_instance_uid = ""
        """The SEG it was read from ('' for a new one)."""
        self.dirty = False
        self._counts: np.ndarray | None = None
        self._undo: list[_Stroke] = []
        self._redo: list[_Stroke] = []
        self._stroke: _Stroke | None = None
        self._depth = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.array.shape
        return int(s[0]), int(s[1]), int(s[2])

    # ------------------------------------------------------------ segments

    def add_segment(self, segment: Segment | None = None, *, label: str = "") -> Segment:
        """Add *segment* (or a new one numbered after the last, with the next colour)."""
        if segment is None:
            n = max(self.segments, default=0) + 1
            segment = Segment(n, label or f"Segment {n}", DEFAULT_COLOURS[(n - 1) % len(DEFAULT_COLOURS)])
        if not 1 <= segment.number <= 255:
            raise ValueError(f"segment numbers are 1..255 in a uint8 label map, got {segment.number}")
        if segment.number in self.segments:
            raise ValueError(f"segment {segment.number} exists")
        self.segments[segment.number] = segment
        self._segments_changed()
        return segment

    def update_segment(self, number: int, **changes: Any) -> None:
        seg = self.segments[number]
        for k, v in changes.items():
            if k == "number" or not hasattr(seg, k):
                raise ValueError(f"cannot change {k!r} of a segment")
            setattr(seg, k, v)
        self.dirty = True
        self._segments_changed()
        if "visible" in changes or "color" in changes:
            self._emit(-1, None)

    def remove_segment(self, number: int) -> None:
        """Remove segment *number* and its voxels (one undoable stroke)."""
        self.segments.pop(number)
        with_label = np.flatnonzero((self.array == number).any(axis=(1, 2)))
        self.begin_stroke("remove segment")
        for m in with_label:
            self._touch(int(m))
            self.array[m][self.array[m] == number] = 0
        self.end_stroke()
        self.recount()
        self._segments_changed()
        self._emit(-1, None)

    def subscribe_segments(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._seg_listeners.append(callback)
        return lambda: self._seg_listeners.remove(callback) if callback in self._seg_listeners else None

    def _segments_changed(self) -> None:
        for cb in list(self._seg_listeners):
            cb()

    # ------------------------------------------------------------ measures

    def voxel_count(self, number: int) -> int:
        return int(np.count_nonzero(self.array == number))

    def volume_ml(self, number: int, spacing_mm: tuple[float, float, float]) -> float:
        """Volume of segment *number* in mL: its voxels times the voxel volume (``spacing_mm`` =
        (slice step, row spacing, column spacing) in mm, as the array's axes)."""
        return self.voxel_count(number) * float(np.prod(spacing_mm)) / 1000.0

    def counts(self) -> np.ndarray:
        """Voxels per label value (256), counted once and then kept up to date by every edit
        (so the panel's mL follow a brush without a pass over the volume). Writing
        :attr:`array` directly needs :meth:`recount` afterwards."""
        if self._counts is None:  # over the labelled voxels only: a bincount of every voxel as intp
            labelled = self.array[self.array != 0]  # costs ~1 s and 8 bytes a voxel on 512x512x300
            counts = np.bincount(labelled, minlength=256).astype(np.int64)
            counts[0] = self.array.size - labelled.size
            self._counts = counts
        return self._counts

    def recount(self) -> None:
        self._counts = None

    def _count(self, old: np.ndarray, new: int, k: int) -> None:
        """*k* voxels whose old values are *old* became *new*."""
        if self._counts is not None:
            self._counts -= np.bincount(old.ravel(), minlength=256)
            self._counts[new] += k

    def volumes_ml(self, spacing_mm: tuple[float, float, float]) -> dict[int, float]:
        """Volumes of every segment in mL (from :meth:`counts`)."""
        counts = self.counts()
        voxel = float(np.prod(spacing_mm)) / 1000.0
        return {n: float(counts[n]) * voxel for n in self.segments}

    # ------------------------------------------------------------ listeners

    def subscribe(self, callback: Listener) -> Callable[[], None]:
        """``callback(m, rect)`` after each change: slice ``m``'s dirty ``(y0, y1, x0, x1)``;
        ``m == -1`` (rect None) when anything may have changed."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _emit(self, m: int, rect: Rect | None) -> None:
        for cb in list(self._listeners):
            cb(m, rect)

    # ------------------------------------------------------------ strokes, undo

    def begin_stroke(self, name: str = "stroke") -> None:
        """Start a stroke: the edits until :meth:`end_stroke` undo as one (nesting counts)."""
        if self._stroke is None:
            self._stroke = _Stroke(name)
        self._depth += 1

    def end_stroke(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth or self._stroke is None:
            return
        stroke, self._stroke = self._stroke, None
        if not stroke.before:
            return
        for m in stroke.before:
            stroke.after[m] = self.array[m].copy()
        # keep only slices that changed
        same = [m for m in stroke.before if np.array_equal(stroke.before[m], stroke.after[m])]
        for m in same:
            del stroke.before[m], stroke.after[m]
        if not stroke.before:
            return
        self._undo.append(stroke)
        del self._undo[:-UNDO_DEPTH]
        self._redo.clear()
        self.dirty = True

    def _touch(self, m: int) -> None:
        """Keep slice *m* as it was before the current stroke touched it."""
        st = self._stroke
        if st is not None and m not in st.before:
            st.before[m] = self.array[m].copy()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> bool:
        """Undo the last stroke (False when there is none)."""
        if self._stroke is not None or not self._undo:
            return False
        stroke = self._undo.pop()
        for m, a in stroke.before.items():
            self._count(self.array[m], 0, 0)
            if self._counts is not None:
                self._counts += np.bincount(a.ravel(), minlength=256)
            self.array[m] = a
        self._redo.append(stroke)
        self.dirty = True
        self._emit_slices(stroke.before)
        return True

    def redo(self) -> bool:
        if self._stroke is not None or not self._redo:
            return False
        stroke = self._redo.pop()
        for m, a in stroke.after.items():
            self._count(self.array[m], 0, 0)
            if self._counts is not None:
                self._counts += np.bincount(a.ravel(), minlength=256)
            self.array[m] = a
        self._undo.append(stroke)
        self.dirty = True
        self._emit_slices(stroke.after)
        return True

    def _emit_slices(self, slices: Iterable[int]) -> None:
        ms = list(slices)
        if len(ms) == 1:
            self._emit(ms[0], (0, self.shape[1], 0, self.shape[2]))
        else:
            self._emit(-1, None)

    def mark_saved(self) -> None:
        self.dirty = False

    # ------------------------------------------------------------ editing

    def _check(self, m: int, number: int) -> None:
        if not 0 <= m < self.shape[0]:
            raise ValueError(f"slice {m} outside 0..{self.shape[0] - 1}")
        if number not in self.segments:
            raise ValueError(f"no segment {number}")

    def brush(self, m: int, x: float, y: float, radius_mm: float, spacing_rc: tuple[float, float], number: int, *,
              erase: bool = False, values: np.ndarray | None = None, lo: float | None = None,
              hi: float | None = None) -> Rect | None:  # fmt: skip
        """Paint (or with ``erase`` clear) segment *number* in a disc of ``radius_mm`` centred on
        image point (x=column, y=row) of slice *m*; with ``values`` (the slice's modality values)
        only where ``lo <= value <= hi``. Returns the dirty rectangle (None: nothing under it)."""
        return self.brush_line(m, (x, y), (x, y), radius_mm, spacing_rc, number, erase=erase, values=values,
                               lo=lo, hi=hi)  # fmt: skip

    def brush_line(self, m: int, p0: tuple[float, float], p1: tuple[float, float], radius_mm: float,
                   spacing_rc: tuple[float, float], number: int, *, erase: bool = False,
                   values: np.ndarray | None = None, lo: float | None = None,
                   hi: float | None = None) -> Rect | None:  # fmt: skip
        """The brush swept from *p0* to *p1* (image coordinates) on slice *m*: discs every
        half radius, so a fast drag leaves no gaps; one dirty rectangle for the lot."""
        self._check(m, number)
        _, rows, cols = self.shape
        disc, hr, hc = disc_offsets(radius_mm, spacing_rc)
        sr, sc = (float(s) if s and s > 0 else 1.0 for s in spacing_rc)
        dist_mm = float(np.hypot((p1[0] - p0[0]) * sc, (p1[1] - p0[1]) * sr))
        n = max(1, int(np.ceil(dist_mm / max(radius_mm * 0.5, min(sr, sc) * 0.5))))
        centres = {(int(round(p0[0] + (p1[0] - p0[0]) * t)), int(round(p0[1] + (p1[1] - p0[1]) * t)))
                   for t in np.linspace(0.0, 1.0, n + 1)}  # fmt: skip
        xs = [c[0] for c in centres]
        ys = [c[1] for c in centres]
        y0, y1 = max(min(ys) - hr, 0), min(max(ys) + hr + 1, rows)
        x0, x1 = max(min(xs) - hc, 0), min(max(xs) + hc + 1, cols)
        if y0 >= y1 or x0 >= x1:
            return None
        foot = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        for cx, cy in centres:
            # the disc's part inside the rectangle
            dy0, dx0 = cy - hr - y0, cx - hc - x0
            sy0, sx0 = max(-dy0, 0), max(-dx0, 0)
            ty0, tx0 = max(dy0, 0), max(dx0, 0)
            h = min(disc.shape[0] - sy0, foot.shape[0] - ty0)
            w = min(disc.shape[1] - sx0, foot.shape[1] - tx0)
            if h > 0 and w > 0:
                foot[ty0 : ty0 + h, tx0 : tx0 + w] |= disc[sy0 : sy0 + h, sx0 : sx0 + w]
        if values is not None and (lo is not None or hi is not None):
            v = values[y0:y1, x0:x1]
            if lo is not None:
                foot &= v >= lo
            if hi is not None:
                foot &= v <= hi
        region = self.array[m, y0:y1, x0:x1]
        if erase:
            foot &= region == number
            new = 0
        else:
            foot &= region != number
            new = number
        if not foot.any():
            return None
        self.begin_stroke("erase" if erase else "brush")
        self._touch(m)
        self._count(region[foot], new, int(np.count_nonzero(foot)))
        self.segments[number].edited = True
        region[foot] = new
        self.end_stroke()
        rect = (y0, y1, x0, x1)
        self._emit(m, rect)
        return rect

    def grow(self, values: Any, seed: tuple[int, int, int], lo: float, hi: float, number: int, *,
             three_d: bool = False, spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
             max_voxels: int = MAX_GROW_VOXELS, box_mm: float = GROW_BOX_MM,
             time_limit_s: float = 10.0) -> GrowResult:  # fmt: skip
        """Region growing: the voxels connected to ``seed`` = (m, row, column) whose value in
        ``values`` (the slice ``[rows, cols]`` for 2D, or the volume ``[m, rows, cols]`` for 3D,
        modality values; for 3D anything with ``shape`` and ``values[box]``, so a caller can compute
        only the box) is within [lo, hi], painted as segment *number* (over background and the
        segment itself only: other segments are kept). 3D looks only within ``box_mm`` of the
        seed; a region over ``max_voxels`` is refused (nothing painted)."""
        import SimpleITK as sitk  # noqa: N813  (imported on use: ~0.2 s)

        m, r, c = (int(v) for v in seed)
        self._check(m, number)
        t0 = time.perf_counter()
        if three_d:
            if values.shape != self.shape:
                raise ValueError(f"3D growing needs the volume's values {self.shape}, got {values.shape}")
            half = [max(1, int(box_mm / max(s, 1e-3))) for s in spacing_mm]
            lo_i = [max(0, v - h) for v, h in zip((m, r, c), half, strict=True)]
            hi_i = [min(n, v + h + 1) for v, n, h in zip((m, r, c), self.shape, half, strict=True)]
            box = tuple(slice(a, b) for a, b in zip(lo_i, hi_i, strict=True))
            sub = np.ascontiguousarray(values[box], dtype=np.float32)
            local_seed = (c - lo_i[2], r - lo_i[1], m - lo_i[0])
        else:
            if values.shape != self.shape[1:]:
                raise ValueError(f"2D growing needs the slice's values {self.shape[1:]}, got {values.shape}")
            lo_i = [m, 0, 0]
            box = (slice(m, m + 1), slice(0, self.shape[1]), slice(0, self.shape[2]))
            sub = np.ascontiguousarray(values, dtype=np.float32)[None]
            local_seed = (c, r, 0)
        labels = self.array[box]
        free = (labels == 0) | (labels == number)
        sub = np.where(free, sub, np.float32(np.inf))  # other segments are walls
        img = sitk.GetImageFromArray(sub if three_d else sub[0])
        seed_pt = list(local_seed if three_d else local_seed[:2])
        grown = sitk.GetArrayFromImage(
            sitk.ConnectedThreshold(img, seedList=[seed_pt], lower=float(lo), upper=float(hi), replaceValue=1)
        ).astype(bool)
        if not three_d:
            grown = grown[None]
        count = int(grown.sum())
        elapsed = time.perf_counter() - t0
        if count == 0:
            return GrowResult(0, False, "the seed's value is outside the range")
        if count > max_voxels:
            return GrowResult(count, True, f"region of {count} voxels is over the cap of {max_voxels}: it leaked")
        if elapsed > time_limit_s:
            return GrowResult(count, True, f"took {elapsed:.1f} s (limit {time_limit_s:.0f} s)")
        add = grown & (labels != number)
        if not add.any():
            return GrowResult(0)
        self.begin_stroke("grow")
        for k in np.flatnonzero(add.any(axis=(1, 2))):
            self._touch(int(lo_i[0] + k))
        self._count(labels[add], number, int(np.count_nonzero(add)))
        self.segments[number].edited = True
        labels[add] = number
        self.end_stroke()
        touched = np.flatnonzero(add.any(axis=(1, 2)))
        if len(touched) == 1:
            ys = np.flatnonzero(add[touched[0]].any(axis=1))
            xs = np.flatnonzero(add[touched[0]].any(axis=0))
            self._emit(int(lo_i[0] + touched[0]),
                       (int(lo_i[1] + ys[0]), int(lo_i[1] + ys[-1] + 1), int(lo_i[2] + xs[0]),
                        int(lo_i[2] + xs[-1] + 1)))  # fmt: skip
        else:
            self._emit(-1, None)
        return GrowResult(int(add.sum()))

    def fill(self, m: int, x: float, y: float, number: int) -> Rect | None:
        """Fill the closed outline of segment *number* around image point (x, y) on slice *m*:
        the component of pixels not in the segment under the point, if it does not reach the
        slice's edge (then the outline is open and nothing is filled)."""
        import SimpleITK as sitk  # noqa: N813

        self._check(m, number)
        _, rows, cols = self.shape
        c, r = int(round(x)), int(round(y))
        if not (0 <= r < rows and 0 <= c < cols):
            return None
        sl = self.array[m]
        if sl[r, c] == number:
            return None
        outside = (sl != number).astype(np.uint8)
        comp = sitk.GetArrayFromImage(
            sitk.ConnectedThreshold(sitk.GetImageFromArray(outside), seedList=[[c, r]], lower=1, upper=1)
        ).astype(bool)
        if comp[0].any() or comp[-1].any() or comp[:, 0].any() or comp[:, -1].any():
            return None  # open outline: the click's region reaches the edge
        ys = np.flatnonzero(comp.any(axis=1))
        xs = np.flatnonzero(comp.any(axis=0))
        self.begin_stroke("fill")
        self._touch(m)
        self._count(sl[comp], number, int(np.count_nonzero(comp)))
        self.segments[number].edited = True
        sl[comp] = number
        self.end_stroke()
        rect = (int(ys[0]), int(ys[-1] + 1), int(xs[0]), int(xs[-1] + 1))
        self._emit(m, rect)
        return rect

    def clear(self) -> None:
        """Remove every voxel (one undoable stroke); the segments stay."""
        self.begin_stroke("clear")
        for m in np.flatnonzero(self.array.any(axis=(1, 2))):
            self._touch(int(m))
            self.array[m] = 0
        self.end_stroke()
        self.recount()
        self._emit(-1, None)

    def write_slice(self, m: int, mask: np.ndarray, rect: Rect, number: int, *, erase: bool = False) -> bool:
        """Set (or clear) segment *number* where *mask* is true within *rect* of slice *m*
        (for tools that work out their own footprint, e.g. a brush on an MPR plane)."""
        self._check(m, number)
        y0, y1, x0, x1 = rect
        region = self.array[m, y0:y1, x0:x1]
        foot = mask & ((region == number) if erase else (region != number))
        if not foot.any():
            return False
        self.begin_stroke("erase" if erase else "brush")
        self._touch(m)
        self._count(region[foot], 0 if erase else number, int(np.count_nonzero(foot)))
        self.segments[number].edited = True
        region[foot] = 0 if erase else number
        self.end_stroke()
        self._emit(m, rect)
        return True


# --------------------------------------------------------------------------- DICOM SEG


def _code(name: str, given: tuple[str, str, str] | None) -> Any:
    from highdicom.sr import CodedConcept

    value, scheme, meaning = given or _CODES.get(name) or _CODES["Tissue"]
    return CodedConcept(value, scheme, meaning)


def make_seg(images: Sequence[Dataset], labels: LabelMap, *, series_number: int = 9901,
             series_description: str = "Hilum segmentation", instance_number: int = 1,
             content_label: str = "SEGMENTATION", content_creator: str = "",
             software_version: str = "") -> Dataset:  # fmt: skip
    """A DICOM Segmentation (BINARY, highdicom) of *labels* on the series whose headers are
    *images*, one per volume slice in the label map's order (``images[m]`` is volume slice ``m``;
    pixel data not needed). Every segment of ``labels.segments`` is described (label, category,
    type, colour as Recommended Display CIELab Value, algorithm type); empty frames are left out.
    A new SOP Instance UID and Series Instance UID each time: a SEG is never overwritten."""
    import highdicom as hd

    if len(images) != labels.shape[0]:
        raise ValueError(f"{len(images)} images for a label map of {labels.shape[0]} slices")
    rows, cols = int(images[0].Rows), int(images[0].Columns)
    if (rows, cols) != labels.shape[1:]:
        raise ValueError(f"images are {rows}x{cols}, the label map {labels.shape[1]}x{labels.shape[2]}")
    if not labels.segments:
        raise ValueError("a segmentation needs at least one segment")
    if not software_version:
        from hilum import __version__ as software_version  # type: ignore[attr-defined,no-redef]
    numbers = sorted(labels.segments)
    descriptions = []
    for new_number, n in enumerate(numbers, start=1):
        s = labels.segments[n]
        kind = s.algorithm if s.algorithm in ("MANUAL", "SEMIAUTOMATIC", "AUTOMATIC") else "MANUAL"
        if kind == "AUTOMATIC" and s.edited:
            kind = "SEMIAUTOMATIC"  # an algorithm's result corrected by hand (PS3.3 C.8.20.2)
        algo = hd.seg.SegmentAlgorithmTypeValues(kind)
        ident = None
        if algo != hd.seg.SegmentAlgorithmTypeValues.MANUAL:
            ident = hd.AlgorithmIdentificationSequence(
                name=s.algorithm_name or "unknown",
                family=_code("", s.algorithm_family or ("123110", "DCM", "Artificial Intelligence")),
                version=s.algorithm_version or "unknown",
            )
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=new_number,
                segment_label=s.label[:64] or f"Segment {n}",
                segmented_property_category=_code(s.category, s.category_code),
                segmented_property_type=_code(s.type, s.type_code),
                algorithm_type=algo,
                algorithm_identification=ident,
                tracking_uid=s.tracking_uid or hd.UID(),
                tracking_id=s.label[:64] or f"Segment {n}",
                display_color=hd.color.CIELabColor.from_rgb(*s.color),
            )
        )
    # segment numbers of a SEG are 1..N in order: relabel when ours have gaps
    lut = np.zeros(256, dtype=np.uint8)
    for new_number, n in enumerate(numbers, start=1):
        lut[n] = new_number
    arr = labels.array if numbers == list(range(1, len(numbers) + 1)) else lut[labels.array]
    if not arr.any():
        raise ValueError("the segmentation is empty: paint something first")
    seg = hd.seg.Segmentation(
        source_images=list(images),
        pixel_array=arr,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer="Hilum",
        manufacturer_model_name="Hilum workstation",
        software_versions=str(software_version),
        device_serial_number="0",
        content_label=content_label,
        content_description=series_description[:64],
        content_creator_name=content_creator or None,
        omit_empty_frames=True,
    )
    seg.SeriesDescription = series_description[:64]
    return seg


def seg_references(ds: Dataset) -> tuple[str, set[str]]:
    """The series a SEG references (Referenced Series Sequence) and the SOP Instance UIDs of its
    source images: what the viewer uses to find the SEGs of a series."""
    series = ""
    uids: set[str] = set()
    for item in ds.get("ReferencedSeriesSequence", []) or []:
        series = series or str(item.get("SeriesInstanceUID", ""))
        for ref in item.get("ReferencedInstanceSequence", []) or []:
            uids.add(str(ref.ReferencedSOPInstanceUID))
    return series, uids


def _rgb_of(desc: Any) -> tuple[int, int, int] | None:
    import highdicom as hd

    value = desc.get("RecommendedDisplayCIELabValue")
    if value is None:
        return None
    try:
        rgb = hd.color.CIELabColor.from_dicom_value(list(value)).to_rgb()
        return (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    except Exception:  # noqa: BLE001 - a bad colour is not a reason to refuse the SEG
        return None


def _triple(seq: Any) -> tuple[str, str, str] | None:
    if not seq:
        return None
    item = seq[0]
    return (str(item.get("CodeValue", "")), str(item.get("CodingSchemeDesignator", "")),
            str(item.get("CodeMeaning", "")))  # fmt: skip


def read_seg(ds: Dataset, stack: Stack) -> LabelMap:
    """The SEG *ds* as a label map on *stack*'s volume order (``stack.order.unique``).

    Frames are placed by the SOP Instance UID of their source image (highdicom's
    ``get_pixels_by_source_instance``), or, for a SEG without per-frame source references,
    by their Image Position (Patient) along the stack's normal (within half a slice step).
    Segments become label values in their SEG order; where segments overlap (BINARY allows
    it, a label map does not) the higher-numbered one wins. FRACTIONAL SEGs are thresholded
    at one half."""
    import highdicom as hd

    seg = ds if isinstance(ds, hd.seg.Segmentation) else hd.seg.Segmentation.from_dataset(ds, copy=False)
    order = stack.order
    frames = [order.items[u] for u in order.unique]
    rows, cols = int(seg.Rows), int(seg.Columns)
    if (rows, cols) != (frames[0].rows, frames[0].columns):
        raise ValueError(f"SEG is {rows}x{cols}, the series {frames[0].rows}x{frames[0].columns}")
    segments: list[Segment] = []
    numbers: list[int] = []
    for desc in seg.SegmentSequence:
        n = int(desc.SegmentNumber)
        numbers.append(n)
        if n > 255:
            raise ValueError(f"segment number {n}: a label map holds 1..255")
        cat, typ = (
            _triple(desc.get("SegmentedPropertyCategoryCodeSequence")),
            _triple(desc.get("SegmentedPropertyTypeCodeSequence")),
        )
        algo_name = algo_version = ""
        family = None
        ident = desc.get("SegmentationAlgorithmIdentificationSequence")
        if ident:
            algo_name = str(ident[0].get("AlgorithmName", ""))
            algo_version = str(ident[0].get("AlgorithmVersion", ""))
            family = _triple(ident[0].get("AlgorithmFamilyCodeSequence"))
        segments.append(
            Segment(
                number=n,
                label=str(desc.get("SegmentLabel", "") or f"Segment {n}"),
                color=_rgb_of(desc) or DEFAULT_COLOURS[(n - 1) % len(DEFAULT_COLOURS)],
                category=cat[2] if cat else "Tissue",
                type=typ[2] if typ else "Organ",
                category_code=cat,
                type_code=typ,
                algorithm=str(desc.get("SegmentAlgorithmType", "MANUAL") or "MANUAL"),
                algorithm_name=algo_name,
                algorithm_version=algo_version,
                algorithm_family=family,
                tracking_uid=str(desc.get("TrackingUID", "") or ""),
            )
        )
    labels = LabelMap((len(frames), rows, cols), segments)
    labels.source_sop_instance_uid = str(ds.SOPInstanceUID)
    labels.series_uid = seg_references(ds)[0]
    by_uid = {f.sop_instance_uid: m for m, f in enumerate(frames) if f.frame == 0}
    referenced = seg_references(ds)[1]
    wanted = [u for u in by_uid if u in referenced]
    done = False
    if wanted:
        try:
            arr = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=wanted, segment_numbers=numbers, combine_segments=True, relabel=False,
                skip_overlap_checks=True, dtype=np.uint8,
            )  # fmt: skip
            for u, sl in zip(wanted, arr, strict=True):
                labels.array[by_uid[u]] = sl
            done = True
        except (ValueError, RuntimeError, KeyError, AttributeError) as exc:
            logger.info("SEG %s: frames not by source instance (%s); by position", ds.SOPInstanceUID, exc)
    if not done:
        _place_by_position(seg, stack, labels)
    labels.dirty = False
    return labels


def _place_by_position(seg: Any, stack: Stack, labels: LabelMap) -> None:
    """Frames of a SEG placed by Image Position (Patient) along the stack's normal."""
    order = stack.order
    if order.normal is None or order.distances is None:
        raise ValueError("the series has no geometry: a SEG cannot be placed on it by position")
    normal = np.asarray(order.normal, dtype=float)
    dist = np.asarray([order.distances[u] for u in order.unique], dtype=float)
    step = abs(float(order.spacing or 1.0))
    pixels = np.asarray(seg.pixel_array)
    if pixels.ndim == 2:
        pixels = pixels[None]
    fractional = str(seg.get("SegmentationType", "BINARY")) == "FRACTIONAL"
    half = int(seg.get("MaximumFractionalValue", 255) or 255) / 2
    shared = (seg.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]

    def group(item: Dataset, keyword: str) -> Any:
        return (item.get(keyword) or shared.get(keyword))[0]

    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        pos = group(item, "PlanePositionSequence").ImagePositionPatient
        d = float(np.dot(normal, np.asarray(pos, dtype=float)))
        m = int(np.argmin(np.abs(dist - d)))
        if abs(dist[m] - d) > step / 2 + 1e-3:
            continue
        n = int(group(item, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        frame = pixels[i] > half if fractional else pixels[i] > 0
        labels.array[m][frame] = n


def volume_spacing(stack: Stack) -> tuple[float, float, float]:
    """(slice step, row spacing, column spacing) in mm of *stack*'s volume (for :meth:`LabelMap.volume_ml`)."""
    f = stack.order.items[stack.order.unique[0]]
    sp = f.spacing
    row = float(getattr(sp, "row", 0.0) or 0.0)
    col = float(getattr(sp, "column", 0.0) or 0.0)
    step = float(stack.order.spacing or f.slice_thickness or 1.0)
    return (abs(step), row or 1.0, col or 1.0)
