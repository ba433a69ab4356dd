"""Image-plane geometry and the one slice order of Hilum (PS3.3 C.7.6.2.1.1, C.7.6.16.2).

Everything the workstation knows about where an image plane lies and in which
order the planes of a series come lives here, once: the 2D viewer's stack
(:mod:`hilum.dicom.stack`), the MPR/3D volume (:mod:`hilum.dicom.volume`), the
thumbnails and the coming prior registration all ask this module, so slice
``k`` of the viewer is slice ``k`` of the volume.

Coordinates follow PS3.3 C.7.6.2.1.1 (Image Plane module): the patient
coordinate system is LPS (+x to the patient's left, +y posterior, +z head);
a pixel is addressed by its column ``i`` and row ``j`` (0-based) and its
*centre* lies at::

    P(i, j) = S + X * dc * i + Y * dr * j

with ``S`` the Image Position (Patient) (centre of the first pixel), ``X`` and
``Y`` the row and column direction cosines of Image Orientation (Patient), and
Pixel Spacing = ``(dr, dc)`` (row spacing first). "Image coordinates" are
``(x, y) = (i, j)`` as floats with that convention, so the image covers
``[-0.5, columns - 0.5] x [-0.5, rows - 0.5]``. The *normal* of a plane is
``X x Y``; a slice's *position* is ``S . normal`` (mm along the normal), the
one sort key (never Instance Number or Slice Location, which the standard
does not tie to space, C.7.3.1 / C.7.6.2.1.1).

Enhanced multi-frame objects carry the same attributes per frame in the Plane
Position, Plane Orientation and Pixel Measures functional groups
(C.7.6.16.2.1-3), the Stack ID in Frame Content (C.7.6.16.2.2); the per-frame
item wins over the shared one (C.7.6.16).

**The slice order** (:func:`order_slices`) groups the frames of a series into
stacks of one size, orientation, pixel spacing and Stack ID, takes the
largest, sorts it by position with the direction policy of :class:`Direction`
and reports what a reader must know (:class:`GeometryIssue`). The workstation
uses :data:`SLICE_DIRECTION` (ascending along the normal) everywhere; see that
constant for the reasons. Frames sharing a position (several phases or echoes
in one series) all stay in the order, next to each other (lowest Instance
Number first); :attr:`SliceOrder.unique` names one per position, the slices a
volume is built from, and :attr:`SliceOrder.volume_index` maps every item to
its volume slice.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

__all__ = [
    "LINE_TOLERANCE_PX",
    "LINKED_SCROLL_TOLERANCE",
    "OBLIQUITY_THRESHOLD",
    "ORIENTATION_TOLERANCE",
    "PARALLEL_TOLERANCE",
    "PIXEL_SPACING_TOLERANCE",
    "POSITION_TOLERANCE",
    "SLICE_DIRECTION",
    "SPACING_TOLERANCE",
    "SPACING_TOLERANCE_MM",
    "TILT_TOLERANCE_DEG",
    "Direction",
    "GeometryIssue",
    "IssueKind",
    "PlaneGeometry",
    "SliceItem",
    "SliceOrder",
    "Spacing",
    "decimals",
    "functional_group_item",
    "image_orientation_of",
    "image_position_of",
    "is_enhanced",
    "normal_of",
    "order_slices",
    "orientation_letters",
    "pixel_spacing_of",
    "reference_line",
    "slice_position",
    "slice_spacing_of",
    "slice_thickness_of",
    "stack_id_of",
]

logger = logging.getLogger(__name__)

Vec = npt.NDArray[np.float64]

# --------------------------------------------------------------------------- tolerances

ORIENTATION_TOLERANCE = 1e-3
"""Two Image Orientation (Patient) values are the same orientation when no direction cosine
differs by more (about 0.06 degrees): one stack, one volume."""

PARALLEL_TOLERANCE = 1e-3
"""Two planes are parallel when ``1 - |n1 . n2|`` is below this (about 2.6 degrees); no
reference line is drawn between parallel planes."""

LINKED_SCROLL_TOLERANCE = 0.05
"""Stacks whose normals differ by less (``1 - |n1 . n2|``, about 18 degrees) scroll together by
position when linked; a plane across the stack (a localizer) gets a reference line instead."""

OBLIQUITY_THRESHOLD = 0.05
"""Direction components below this (about 3 degrees) get no orientation letter."""

POSITION_TOLERANCE = 1e-2
"""Planes closer than this (mm, along the normal) share a position (duplicates: phases,
echoes, repeats)."""

PIXEL_SPACING_TOLERANCE = 1e-4
"""Pixel Spacing values differing by less (mm) are the same; another spacing is another stack."""

SPACING_TOLERANCE = 0.01
"""Slice steps within this fraction of the median step are regular (1 %)..."""

SPACING_TOLERANCE_MM = 1e-3
"""...or within this many mm, for very thin slices."""

TILT_TOLERANCE_DEG = 0.05
"""Slice positions stepping more than this angle off the normal are a gantry tilt (a sheared grid)."""

LINE_TOLERANCE_PX = 0.5
"""Slice positions off the straight line through the first and last by more than this fraction
of the smallest pixel spacing make the stack irregular."""


# --------------------------------------------------------------------------- attribute values


def _floats(value: Any) -> list[float] | None:
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes, int, float)):
            return [float(value)]
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def decimals(ds: Dataset, tag: int) -> list[float] | None:
    """DS/IS values of element *tag* of *ds*, parsed straight from its raw bytes when still unconverted.

    Parsing a header is dominated by pydicom's value conversion; the geometry
    attributes of 600 slices are read much faster this way. Falls back to the
    converted value for anything unusual; None when absent, empty or not numbers.
    """
    elem = ds.get_item(tag)  # None when absent (one lookup, not two)
    if elem is None:
        return None
    raw = getattr(elem, "value", None)
    if isinstance(raw, bytes) and getattr(elem, "VR", None) in (None, "DS", "IS"):
        try:
            return [float(v) for v in raw.split(b"\\")] if raw.strip(b" \x00") else None
        except ValueError:
            pass
    return _floats(ds[tag].value)


def _finite(values: list[float] | None, count: int) -> list[float] | None:
    if values is None or len(values) != count or not math.isfinite(math.fsum(values)):
        return None
    return values


# --------------------------------------------------------------------------- functional groups

_PLANE_POSITION = 0x00200032
_PLANE_ORIENTATION = 0x00200037
_PIXEL_SPACING = 0x00280030
_SLICE_THICKNESS = 0x00180050
_SPACING_BETWEEN_SLICES = 0x00180088


def is_enhanced(ds: Dataset) -> bool:
    """True for a multi-frame object with functional groups (PS3.3 C.7.6.16), whose per-frame
    geometry is in them rather than in the Image Plane module."""
    return 0x52009230 in ds or 0x52009229 in ds  # Per-frame / Shared Functional Groups Sequence


def functional_group_item(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The first item of functional group sequence *keyword* that applies to *frame* (0-based).

    PS3.3 C.7.6.16 (Multi-frame Functional Groups): the macro in the frame's
    Per-frame Functional Groups Sequence item takes precedence over the same
    macro in the Shared Functional Groups Sequence. None when neither has it.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and 0 <= frame < len(per_frame):
        seq = per_frame[frame].get(keyword)
        if seq:
            item: Dataset = seq[0]
            return item
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(keyword)
        if seq:
            shared_item: Dataset = seq[0]
            return shared_item
    return None


def _group_value(ds: Dataset, frame: int, group: str, tag: int) -> list[float] | None:
    item = functional_group_item(ds, frame, group)
    return decimals(item, tag) if item is not None else None


def image_position_of(ds: Dataset, frame: int = 0, *, enhanced: bool | None = None) -> list[float] | None:
    """Image Position (Patient) of *frame*: the Plane Position functional group of an enhanced
    object (C.7.6.16.2.3), else the Image Plane module (C.7.6.2); None when absent or invalid.
    (*enhanced*: :func:`is_enhanced` of *ds*, when the caller knows it.)"""
    if enhanced is None:
        enhanced = is_enhanced(ds)
    value = _group_value(ds, frame, "PlanePositionSequence", _PLANE_POSITION) if enhanced else None
    return _finite(value or decimals(ds, _PLANE_POSITION), 3)


def image_orientation_of(ds: Dataset, frame: int = 0, *, enhanced: bool | None = None) -> list[float] | None:
    """Image Orientation (Patient) of *frame* (six direction cosines, row then column): the Plane
    Orientation functional group (C.7.6.16.2.4), else the Image Plane module."""
    if enhanced is None:
        enhanced = is_enhanced(ds)
    value = _group_value(ds, frame, "PlaneOrientationSequence", _PLANE_ORIENTATION) if enhanced else None
    return _finite(value or decimals(ds, _PLANE_ORIENTATION), 6)


def _measure(ds: Dataset, frame: int, tag: int, enhanced: bool | None) -> float | None:
    if enhanced is None:
        enhanced = is_enhanced(ds)
    value = _group_value(ds, frame, "PixelMeasuresSequence", tag) if enhanced else None
    value = value or decimals(ds, tag)
    if not value or not math.isfinite(value[0]):
        return None
    return abs(value[0]) or None


def slice_thickness_of(ds: Dataset, frame: int = 0, *, enhanced: bool | None = None) -> float | None:
    """Slice Thickness (mm) of *frame*: Pixel Measures functional group, else the top level."""
    return _measure(ds, frame, _SLICE_THICKNESS, enhanced)


def slice_spacing_of(ds: Dataset, frame: int = 0, *, enhanced: bool | None = None) -> float | None:
    """Spacing Between Slices (mm) of *frame*: Pixel Measures functional group, else the top level."""
    return _measure(ds, frame, _SPACING_BETWEEN_SLICES, enhanced)


def stack_id_of(ds: Dataset, frame: int = 0, *, enhanced: bool | None = None) -> str:
    """Stack ID of *frame* from the Frame Content functional group (C.7.6.16.2.2); "" when none."""
    if not (is_enhanced(ds) if enhanced is None else enhanced):
        return ""
    content = functional_group_item(ds, frame, "FrameContentSequence")
    return str(content.get("StackID", "") or "").strip() if content is not None else ""


# --------------------------------------------------------------------------- spacing


@dataclass(frozen=True)
class Spacing:
    """Physical size of a pixel and where it comes from (PS3.3 10.7.1.1-3).

    ``row`` and ``column`` are the spacings between rows and between columns in
    mm (the order of Pixel Spacing). ``source`` is the attribute used:

    * ``PixelSpacing`` — in the patient (cross-sectional modalities, or a
      projection image whose Pixel Spacing was calibrated; ``calibration`` then
      holds Pixel Spacing Calibration Type, e.g. GEOMETRY or FIDUCIAL);
    * ``ImagerPixelSpacing`` — at the detector plane of a projection image:
      sizes in the patient are smaller by the geometric magnification, which is
      what the standard requires the user to be told (PS3.3 10.7.1.3);
    * ``NominalScannedPixelSpacing`` — of a scanned film (Secondary Capture);
    * ``""`` — no calibration: measurements are in pixels.
    """

    row: float = 1.0
    column: float = 1.0
    source: str = ""
    calibration: str = ""
    description: str = ""

    @property
    def calibrated(self) -> bool:
        return bool(self.source)

    @property
    def unit(self) -> str:
        return "mm" if self.calibrated else "px"

    @property
    def note(self) -> str:
        """A short note for the user on what a length means with this spacing."""
        if self.source == "PixelSpacing":
            if self.calibration:
                return f"calibrated ({self.calibration.lower()})"
            return ""
        if self.source == "ImagerPixelSpacing":
            return "at detector (not corrected for magnification)"
        if self.source == "NominalScannedPixelSpacing":
            return "scanned film spacing"
        return "uncalibrated: pixels"


def pixel_spacing_of(ds: Dataset, frame: int = 0, *, enhanced: bool | None = None) -> Spacing:
    """The spacing to measure with, following PS3.3 10.7.1.3.

    Pixel Spacing (in the patient, per frame in the Pixel Measures functional
    group of enhanced objects) is preferred; projection radiographs without it
    fall back to Imager Pixel Spacing with the "at detector" note; Secondary
    Capture to Nominal Scanned Pixel Spacing; else uncalibrated pixels.
    """
    if enhanced is None:
        enhanced = is_enhanced(ds)
    item = functional_group_item(ds, frame, "PixelMeasuresSequence") if enhanced else None
    for source_ds in ((item,) if item is not None else ()) + (ds,):
        ps = decimals(source_ds, _PIXEL_SPACING)
        if ps and len(ps) >= 2 and ps[0] > 0 and ps[1] > 0 and math.isfinite(ps[0] + ps[1]):
            calib_elem = ds.get(0x00280A02)  # Pixel Spacing Calibration Type/Description (by tag: mostly absent)
            descr_elem = ds.get(0x00280A04)
            calib = str(calib_elem.value or "") if calib_elem is not None else ""
            descr = str(descr_elem.value or "") if descr_elem is not None else ""
            return Spacing(ps[0], ps[1], "PixelSpacing", calib, descr)
    for keyword in ("ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        ps = _floats(ds.get(keyword))
        if ps and len(ps) >= 2 and ps[0] > 0 and ps[1] > 0 and math.isfinite(ps[0] + ps[1]):
            return Spacing(ps[0], ps[1], keyword)
    return Spacing()


# --------------------------------------------------------------------------- planes


def _cross(a: Vec, b: Vec) -> Vec:
    """``a x b`` of two 3-vectors (numpy's cross is ten times slower on one pair)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def normal_of(orientation: Sequence[float] | npt.ArrayLike) -> Vec:
    """Unit normal ``row x column`` of an Image Orientation (Patient) value (six cosines)."""
    o = np.asarray(orientation, dtype=np.float64).reshape(6)
    n = _cross(o[:3], o[3:])
    norm = float(np.linalg.norm(n))
    if norm == 0 or not math.isfinite(norm):
        raise ValueError(f"degenerate Image Orientation (Patient) {list(map(float, o))}")
    return n / norm


@dataclass(frozen=True, eq=False)
class PlaneGeometry:
    """The plane of one frame in patient space (PS3.3 C.7.6.2.1.1).

    ``origin`` is Image Position (Patient), ``row_dir``/``col_dir`` the two
    direction cosines of Image Orientation (Patient), ``row_spacing`` and
    ``col_spacing`` the pixel spacing (Pixel Spacing[0], [1]) in mm. Image
    coordinates are ``(x, y) = (column, row)`` of pixel centres (see the module
    docstring).
    """

    origin: Vec
    row_dir: Vec
    col_dir: Vec
    row_spacing: float
    col_spacing: float
    rows: int
    columns: int

    @cached_property
    def normal(self) -> Vec:
        """Unit normal ``row x column`` (computed once)."""
        n = _cross(self.row_dir, self.col_dir)
        norm = float(np.linalg.norm(n))
        return n / norm if norm else n

    @property
    def orientation(self) -> tuple[float, ...]:
        return (*map(float, self.row_dir), *map(float, self.col_dir))

    @property
    def centre(self) -> Vec:
        """Patient coordinates of the centre of the image area."""
        return self.to_patient((self.columns - 1) / 2.0, (self.rows - 1) / 2.0)

    def to_patient(self, x: float | npt.ArrayLike, y: float | npt.ArrayLike) -> Vec:
        """Patient coordinates (mm) of image point(s) ``(x, y)``; shape ``(..., 3)``."""
        x = np.asarray(x, dtype=np.float64)[..., None]
        y = np.asarray(y, dtype=np.float64)[..., None]
        return self.origin + self.row_dir * (self.col_spacing * x) + self.col_dir * (self.row_spacing * y)

    def to_image(self, point: npt.ArrayLike) -> tuple[float, float, float]:
        """``(x, y, d)``: image coordinates of the point's projection and its signed distance (mm) to the plane."""
        v = np.asarray(point, dtype=np.float64) - self.origin
        return (
            float(v @ self.row_dir) / self.col_spacing,
            float(v @ self.col_dir) / self.row_spacing,
            float(v @ self.normal),
        )

    def distance(self, point: npt.ArrayLike) -> float:
        """Signed distance (mm) of a patient point from the plane along its normal."""
        return float((np.asarray(point, dtype=np.float64) - self.origin) @ self.normal)

    def parallel_to(self, other: PlaneGeometry, tolerance: float = PARALLEL_TOLERANCE) -> bool:
        return bool(abs(abs(float(self.normal @ other.normal)) - 1.0) < tolerance)

    def same_orientation(self, other: PlaneGeometry, tolerance: float = ORIENTATION_TOLERANCE) -> bool:
        """Same Image Orientation (Patient) within *tolerance* on every cosine (one stack)."""
        return bool(
            np.max(np.abs(self.row_dir - other.row_dir)) <= tolerance
            and np.max(np.abs(self.col_dir - other.col_dir)) <= tolerance
        )

    def corners(self) -> Vec:
        """Patient coordinates of the four outer corners of the image area, shape (4, 3)."""
        xs = np.array([-0.5, self.columns - 0.5, self.columns - 0.5, -0.5])
        ys = np.array([-0.5, -0.5, self.rows - 0.5, self.rows - 0.5])
        return self.to_patient(xs, ys)

    @classmethod
    def from_values(
        cls, position: Sequence[float], orientation: Sequence[float], spacing: Spacing, rows: int, columns: int
    ) -> PlaneGeometry:
        o = np.asarray(orientation, dtype=np.float64)
        row_dir, col_dir = o[:3], o[3:6]
        rn, cn = math.hypot(*row_dir), math.hypot(*col_dir)
        if rn == 0 or cn == 0 or not np.any(_cross(row_dir, col_dir)):
            raise ValueError(f"degenerate Image Orientation (Patient) {list(orientation)}")
        return cls(
            origin=np.asarray(position, dtype=np.float64),
            row_dir=row_dir / rn,
            col_dir=col_dir / cn,
            row_spacing=float(spacing.row),
            col_spacing=float(spacing.column),
            rows=int(rows),
            columns=int(columns),
        )

    @classmethod
    def of(
        cls,
        ds: Dataset,
        frame: int = 0,
        spacing: Spacing | None = None,
        *,
        enhanced: bool | None = None,
        rows: int | None = None,
        columns: int | None = None,
    ) -> PlaneGeometry | None:
        """The plane of *frame* of *ds*, or None without a valid position, orientation and a
        calibrated pixel spacing (all three are Type 1 in the Image Plane module)."""
        if enhanced is None:
            enhanced = is_enhanced(ds)
        if rows is None or columns is None:
            rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        spacing = spacing if spacing is not None else pixel_spacing_of(ds, frame, enhanced=enhanced)
        if not spacing.calibrated or rows <= 0 or columns <= 0:
            return None
        position = image_position_of(ds, frame, enhanced=enhanced)
        orientation = image_orientation_of(ds, frame, enhanced=enhanced)
        if position is None or orientation is None:
            return None
        try:
            return cls.from_values(position, orientation, spacing, rows, columns)
        except ValueError as exc:
            logger.warning("ignoring the geometry of frame %d of an instance: %s", frame, exc)
            return None


def orientation_letters(direction: npt.ArrayLike, threshold: float = OBLIQUITY_THRESHOLD, max_letters: int = 3) -> str:
    """Patient orientation letters for a direction in LPS (PS3.3 C.7.6.1.1.1).

    ``L``/``R`` for ±x, ``P``/``A`` for ±y, ``H``/``F`` for ±z, strongest
    component first; components below *threshold* (≈3° of obliquity) are
    left out. ``(1, 0.3, 0)`` → ``"LP"``.
    """
    v = np.asarray(direction, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    if norm == 0:
        return ""
    v = v / norm
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    order = np.argsort(-np.abs(v), kind="stable")
    out = []
    for axis in order[:max_letters]:
        if abs(v[axis]) < threshold:
            break
        out.append(letters[axis][0] if v[axis] > 0 else letters[axis][1])
    return "".join(out)


def reference_line(
    target: PlaneGeometry, source: PlaneGeometry, *, tolerance: float = PARALLEL_TOLERANCE
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Where the image of *source* cuts the image of *target*, in target image coordinates.

    The "reference line" of a localizer: the intersection line of the two
    planes, clipped to both finite image areas. None when the planes are
    parallel or the images do not meet.
    """
    n_t, n_s = target.normal, source.normal
    direction = np.cross(n_t, n_s)
    length = float(np.linalg.norm(direction))
    if length < tolerance:
        return None
    direction /= length
    a = np.stack([n_t, n_s, direction])
    b = np.array([n_t @ target.origin, n_s @ source.origin, 0.0])
    point = np.linalg.solve(a, b)
    t_lo, t_hi = -math.inf, math.inf
    for g in (target, source):
        # along the line, image x and y are affine in t: x = x0 + t*dx ...
        rel = point - g.origin
        for axis_dir, spacing, size in ((g.row_dir, g.col_spacing, g.columns), (g.col_dir, g.row_spacing, g.rows)):
            c0 = float(rel @ axis_dir) / spacing
            dc = float(direction @ axis_dir) / spacing
            lo, hi = -0.5, size - 0.5
            if abs(dc) < 1e-12:
                if not lo <= c0 <= hi:
                    return None
                continue
            t1, t2 = (lo - c0) / dc, (hi - c0) / dc
            t_lo, t_hi = max(t_lo, min(t1, t2)), min(t_hi, max(t1, t2))
    if not t_lo < t_hi:
        return None
    p0, p1 = point + t_lo * direction, point + t_hi * direction
    x0, y0, _ = target.to_image(p0)
    x1, y1, _ = target.to_image(p1)
    return (x0, y0), (x1, y1)


def slice_position(plane: PlaneGeometry, normal: npt.ArrayLike | None = None) -> float:
    """Position (mm) of a slice along a normal in patient coordinates: ``origin . normal``.

    The sort key of :func:`order_slices`; with the same *normal* (default: the
    plane's own) the positions of slices of different series in one Frame of
    Reference compare directly (what a prior registration starts from).
    """
    n = plane.normal if normal is None else np.asarray(normal, dtype=np.float64)
    return float(plane.origin @ n)


# --------------------------------------------------------------------------- issues


class IssueKind:
    """The kinds of :class:`GeometryIssue` (plain strings, stable for the UI and logs)."""

    NO_GEOMETRY = "no-geometry"
    MIXED_ORIENTATION = "mixed-orientation"
    MIXED_SIZE = "mixed-size"
    MULTIPLE_STACKS = "multiple-stacks"
    DUPLICATE_POSITION = "duplicate-position"
    IRREGULAR_SPACING = "irregular-spacing"
    MISSING_SLICES = "missing-slices"
    GANTRY_TILT = "gantry-tilt"
    SINGLE_SLICE = "single-slice"
    RESAMPLED = "resampled"
    UNDECODABLE = "undecodable"


@dataclass(frozen=True)
class GeometryIssue:
    """One thing about a stack's geometry that a reader must know.

    ``excluded`` counts the images it keeps out: out of the stack (other
    orientation, size or Stack ID, no geometry) or, for duplicate positions,
    out of the volume (the stack shows them all).
    """

    kind: str
    message: str
    excluded: int = 0

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------- the one order


class Direction(enum.StrEnum):
    """Which way slice index ``k`` runs through a stack.

    * ``ASCENDING`` — along the normal ``row x column`` of Image Orientation
      (Patient): the order of ITK/SimpleITK and GDCM's IPPSorter, Orthanc's
      ``SliceOrdering`` and cornerstone3D's volumes (OHIF's MPR), so a
      volume's k axis is ``+normal`` and its affine right-handed. For the
      usual orientations k runs feet → head (axial), left → right
      (sagittal), anterior → posterior (coronal).
    * ``DESCENDING`` — the reverse: OHIF's 2D display sets and the Orthanc Web
      Viewer page axial images head → feet.
    * ``ACQUISITION`` — the way Instance Numbers increase along the positions
      (the default of Horos and Weasis 2D viewers): a head-first CT starts at
      the head, a feet-first one at the feet.
    """

    ASCENDING = "ascending"
    DESCENDING = "descending"
    ACQUISITION = "acquisition"


SLICE_DIRECTION = Direction.ASCENDING
"""The one direction policy of the workstation: viewer, MPR/3D volume, thumbnails, registration.

Ascending along the normal, because (1) it is the order of the volume
implementations the MPR is held to (SimpleITK/GDCM, Orthanc, cornerstone3D):
the volume's k is the viewer's k with a right-handed affine, and the SimpleITK
differential tests hold unchanged; (2) it does not depend on the acquisition
direction, so a head-first and a feet-first acquisition of the same anatomy (a
study and its prior) page alike; (3) the 2D-vs-MPR mismatch it prevents is a
recurring bug report where viewers use two orders (OHIF #5021, #4795, #5261;
Weasis #569). What radiologists expect of *scrolling* (wheel or arrow down
moves inferior on an axial stack: OHIF always, Horos and Weasis for a
head-first CT, 3D Slicer) is the viewer's input mapping: "down" moves
towards ``-normal`` (:mod:`hilum.ui.viewer.state`).
"""


class SliceItem(Protocol):
    """What :func:`order_slices` needs of one frame (e.g. :class:`hilum.dicom.stack.FrameInfo`).

    Optional attributes read when present: ``stack_id`` (str), ``samples``
    (int), ``photometric`` (str), ``slice_spacing`` and ``slice_thickness``
    (float or None, the depth of a single slice).
    """

    @property
    def geometry(self) -> PlaneGeometry | None: ...

    @property
    def instance_number(self) -> int | None: ...

    @property
    def sop_instance_uid(self) -> str: ...

    @property
    def frame(self) -> int: ...

    @property
    def rows(self) -> int: ...

    @property
    def columns(self) -> int: ...


T = TypeVar("T", bound=SliceItem)


@dataclass(frozen=True, eq=False)
class SliceOrder(Generic[T]):
    """The result of :func:`order_slices`: one stack of a series, in order, and what was found.

    ``items`` are every frame of the stack in index order (duplicate positions
    next to each other, lowest Instance Number first) — the 2D viewer's slices.
    ``unique`` are the indices (into ``items``) of one item per position, in
    the same order — the volume's slices, so volume slice ``m`` is
    ``items[unique[m]]`` and viewer slice ``k`` lies at volume slice
    ``volume_index[k]``. Without duplicates ``unique`` is ``0 .. n-1`` and the
    two indices are one.

    ``method`` is ``"position"`` (sorted along the normal) or ``"instance"``
    (no geometry: Instance Number, then SOP Instance UID and frame).
    ``normal`` is the image normal ``row x column``; ``axis`` the unit vector
    along which the index increases (``±normal``, by ``direction``);
    ``distances`` the position of each item along ``axis`` (non-decreasing).
    ``spacing`` is the median step between unique positions (a single slice:
    Spacing Between Slices, else Slice Thickness, else 1 mm); ``step`` the
    mean vector between consecutive unique positions (``spacing * axis``
    unless the gantry was tilted); ``tilt_degrees`` the angle between the two;
    ``regular`` False when steps differ (gaps, irregular spacing).
    ``excluded`` are the series' frames outside this stack.
    """

    items: tuple[T, ...]
    method: str
    direction: Direction
    normal: Vec | None
    axis: Vec | None
    distances: Vec | None
    unique: tuple[int, ...]
    volume_index: tuple[int, ...]
    spacing: float | None
    step: Vec | None
    tilt_degrees: float
    regular: bool
    excluded: tuple[T, ...]
    issues: tuple[GeometryIssue, ...]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> T:
        return self.items[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    @property
    def slices(self) -> tuple[T, ...]:
        """One item per position, in order: the slices a volume is built from."""
        return tuple(self.items[i] for i in self.unique)

    @property
    def positions(self) -> Vec | None:
        """Position (mm) of each item along the image normal (``origin . normal``)."""
        if self.distances is None or self.axis is None or self.normal is None:
            return None
        return self.distances * float(self.axis @ self.normal)

    def has(self, kind: str) -> bool:
        return any(i.kind == kind for i in self.issues)

    def index_of(self, sop_instance_uid: str, frame: int = 0) -> int | None:
        for i, f in enumerate(self.items):
            if f.sop_instance_uid == sop_instance_uid and f.frame == frame:
                return i
        return None


def _canonical_key(item: SliceItem) -> tuple[int, int, str, int]:
    n = item.instance_number
    return (0 if n is not None else 1, n if n is not None else 0, item.sop_instance_uid, item.frame)


def _exact_key(item: SliceItem) -> tuple[Any, ...]:
    samples = int(getattr(item, "samples", 1) or 1)
    photometric = str(getattr(item, "photometric", "") or "") if samples > 1 else ""
    return (item.geometry is not None, item.rows, item.columns, samples, photometric,
            str(getattr(item, "stack_id", "") or ""))  # fmt: skip


def _same_plane_kind(a: PlaneGeometry | None, b: PlaneGeometry | None) -> bool:
    if a is None or b is None:
        return a is b
    return (
        a.same_orientation(b)
        and abs(a.row_spacing - b.row_spacing) <= PIXEL_SPACING_TOLERANCE
        and abs(a.col_spacing - b.col_spacing) <= PIXEL_SPACING_TOLERANCE
    )


def _groups(items: list[T]) -> list[list[T]]:
    """Items (in canonical order) split into stacks of one size, orientation, pixel spacing and Stack ID."""
    groups: list[tuple[tuple[Any, ...], list[T]]] = []
    for item in items:
        key = _exact_key(item)
        for gkey, members in groups:
            if gkey == key and _same_plane_kind(members[0].geometry, item.geometry):
                members.append(item)
                break
        else:
            groups.append((key, [item]))
    return [members for _, members in groups]


def _why_apart(main: SliceItem, other: SliceItem) -> str:
    if other.geometry is None:
        return IssueKind.NO_GEOMETRY
    if str(getattr(main, "stack_id", "") or "") != str(getattr(other, "stack_id", "") or ""):
        return IssueKind.MULTIPLE_STACKS
    if main.geometry is not None and not main.geometry.same_orientation(other.geometry):
        return IssueKind.MIXED_ORIENTATION
    return IssueKind.MIXED_SIZE


def _apart_issues(main: list[T], rest: list[list[T]]) -> list[GeometryIssue]:
    by_kind: dict[str, list[list[T]]] = {}
    for g in rest:
        by_kind.setdefault(_why_apart(main[0], g[0]), []).append(g)
    issues = []
    for kind, groups in by_kind.items():
        n = sum(len(g) for g in groups)
        if kind == IssueKind.NO_GEOMETRY:
            text = (f"{n} image(s) lack Image Position/Orientation (Patient) or Pixel Spacing; the stack "
                    f"of {len(main)} image(s) leaves them out")  # fmt: skip
        elif kind == IssueKind.MULTIPLE_STACKS:
            ids = sorted({str(getattr(g[0], "stack_id", "") or "") for g in groups} | {str(getattr(main[0], "stack_id", "") or "")})
            text = (f"{len(ids)} stacks (Stack ID {', '.join(ids)}); the stack is Stack ID "
                    f"{getattr(main[0], 'stack_id', '')!r} ({len(main)} frames), {n} frame(s) left out")  # fmt: skip
        elif kind == IssueKind.MIXED_ORIENTATION:
            text = (f"mixed orientations: {len(groups) + 1} different Image Orientation (Patient) values; the stack "
                    f"is the {len(main)} image(s) of the largest group, {n} left out")  # fmt: skip
        else:
            text = (f"mixed image sizes or pixel spacings; the stack is the {len(main)} image(s) of "
                    f"{main[0].rows}x{main[0].columns} px, {n} left out")  # fmt: skip
        issues.append(GeometryIssue(kind, text, n))
    return issues


def _depth(item: SliceItem) -> float:
    """Spacing Between Slices, else Slice Thickness, else 1 mm: the depth of a single slice."""
    for name in ("slice_spacing", "slice_thickness"):
        value = getattr(item, name, None)
        if value is not None and math.isfinite(value) and value > 0:
            return float(value)
    return 1.0


def order_slices(
    items: Iterable[T], *, direction: Direction | str = SLICE_DIRECTION, stack_id: str | None = None
) -> SliceOrder[T]:
    """The one slice order: choose a series' stack, sort it along the normal, report its geometry.

    The frames are split into stacks of one image size, Image Orientation
    (Patient) (within :data:`ORIENTATION_TOLERANCE`), Pixel Spacing, Stack ID
    (enhanced objects, C.7.6.16.2.2) and the presence of geometry; the largest
    is the stack (the first by Instance Number on a tie), or the one of
    *stack_id*. Its frames are sorted by ``Image Position (Patient) . normal``
    (PS3.3 C.7.6.2.1.1) in the *direction* of the policy (:class:`Direction`);
    frames at one position (within :data:`POSITION_TOLERANCE`) keep the
    order of Instance Number, SOP Instance UID and frame number. A stack
    without geometry is ordered by those alone. Every decision and every
    irregularity — frames left out, duplicate positions, missing slices (gaps
    that are a whole number of steps), irregular spacing, gantry tilt, a
    single slice — is a :class:`GeometryIssue`.

    Raises ValueError for no items or an unknown *stack_id*.
    """
    direction = Direction(direction)
    canonical = sorted(items, key=_canonical_key)
    if not canonical:
        raise ValueError("no images to order")
    groups = _groups(canonical)
    if stack_id is not None:
        chosen = [g for g in groups if g[0].geometry is not None and str(getattr(g[0], "stack_id", "") or "") == stack_id]
        if not chosen:
            have = sorted({str(getattr(g[0], "stack_id", "") or "") for g in groups})
            raise ValueError(f"no frames with Stack ID {stack_id!r} (have {have})")
        main = max(chosen, key=len)
    else:
        main = max(groups, key=len)  # max keeps the first of equal lengths
    rest = [g for g in groups if g is not main]
    issues = _apart_issues(main, rest)
    excluded = tuple(item for g in rest for item in g)
    n = len(main)

    if main[0].geometry is None:
        return SliceOrder(tuple(main), "instance", direction, None, None, None, tuple(range(n)), tuple(range(n)),
                          None, None, 0.0, True, excluded, tuple(issues))  # fmt: skip

    geoms = [item.geometry for item in main]
    normal = geoms[0].normal  # type: ignore[union-attr]
    origins = np.asarray([g.origin for g in geoms], dtype=np.float64)  # type: ignore[union-attr]
    d = origins @ normal
    rank = np.arange(n, dtype=np.float64)  # canonical order: Instance Number, SOP Instance UID, frame
    if direction == Direction.ACQUISITION:
        sign = 1.0
        if n > 1 and np.ptp(d) > POSITION_TOLERANCE and np.corrcoef(d, rank)[0, 1] < 0:
            sign = -1.0
        resolved = Direction.ASCENDING if sign > 0 else Direction.DESCENDING
    else:
        sign = 1.0 if direction == Direction.ASCENDING else -1.0
        resolved = direction
    along = sign * d
    order = np.lexsort((rank, along))  # by position along the axis, then canonical rank
    items_sorted = tuple(main[i] for i in order)
    along = along[order]
    origins = origins[order]
    axis = sign * normal

    unique: list[int] = []
    volume_index: list[int] = []
    start = -math.inf
    for i, value in enumerate(along):
        if value - start > POSITION_TOLERANCE:
            unique.append(i)
            start = value
        volume_index.append(len(unique) - 1)
    duplicates = n - len(unique)
    if duplicates:
        issues.append(
            GeometryIssue(
                IssueKind.DUPLICATE_POSITION,
                f"{duplicates} image(s) share a position with another (several acquisitions, phases or echoes?); "
                "the stack shows them all, a volume keeps the first at each position (lowest Instance Number)",
                duplicates,
            )
        )

    u_d = along[unique]
    u_pos = origins[unique]
    regular = True
    tilt = 0.0
    if len(unique) == 1:
        spacing = _depth(items_sorted[0])
        step = spacing * axis
        issues.append(
            GeometryIssue(IssueKind.SINGLE_SLICE, f"a single slice position: depth {spacing:g} mm taken from its header")
        )
    else:
        steps = np.diff(u_d)
        spacing = float(np.median(steps))
        tol = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE * spacing)
        multiple = np.rint(steps / spacing)
        gaps = (multiple >= 2) & (np.abs(steps - multiple * spacing) <= tol)
        irregular = (np.abs(steps - spacing) > tol) & ~gaps
        if gaps.any():
            regular = False
            missing = int((multiple[gaps] - 1).sum())
            where = ", ".join(f"{u_d[i]:.2f}..{u_d[i + 1]:.2f}" for i in np.flatnonzero(gaps)[:5])
            issues.append(
                GeometryIssue(
                    IssueKind.MISSING_SLICES,
                    f"{missing} slice(s) missing (gaps of a whole number of {spacing:g} mm steps at "
                    f"{where} mm along the stack axis)",
                )
            )
        if irregular.any():
            regular = False
            issues.append(
                GeometryIssue(
                    IssueKind.IRREGULAR_SPACING,
                    f"irregular slice spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm "
                    f"(median {spacing:.4g} mm, {int(irregular.sum())} step(s) differ)",
                )
            )
        # Gantry tilt: the line through the positions is not along the normal.
        span = u_pos[-1] - u_pos[0]
        length = float(u_d[-1] - u_d[0])
        lateral = span - length * axis
        tilt = math.degrees(math.atan2(float(np.linalg.norm(lateral)), abs(length)))
        step = span / length * spacing
        if tilt > TILT_TOLERANCE_DEG:
            header = getattr(items_sorted[0], "gantry_tilt", None)
            said = f" (Gantry/Detector Tilt {header:g})" if header else ""
            issues.append(
                GeometryIssue(
                    IssueKind.GANTRY_TILT,
                    f"gantry tilt of {tilt:.2f} degrees{said}: slices step obliquely to the image plane; "
                    "a volume's affine is sheared",
                )
            )
        # Positions off the straight line (beyond half a pixel) are irregular too.
        expected = u_pos[0] + np.outer(u_d - u_d[0], span / length)
        residual = float(np.max(np.linalg.norm(u_pos - expected, axis=1)))
        g0 = items_sorted[0].geometry
        assert g0 is not None
        if residual > LINE_TOLERANCE_PX * min(g0.row_spacing, g0.col_spacing):
            regular = False
            issues.append(
                GeometryIssue(
                    IssueKind.IRREGULAR_SPACING,
                    f"slice positions are not on one line: up to {residual:.3g} mm off (half a pixel allowed)",
                )
            )
    return SliceOrder(
        items=items_sorted,
        method="position",
        direction=resolved,
        normal=normal,
        axis=axis,
        distances=along,
        unique=tuple(unique),
        volume_index=tuple(volume_index),
        spacing=spacing,
        step=np.asarray(step, dtype=np.float64),
        tilt_degrees=tilt,
        regular=regular,
        excluded=excluded,
        issues=tuple(issues),
    )
