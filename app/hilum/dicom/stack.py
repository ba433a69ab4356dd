"""Slices of a series as a stack in patient space: geometry, ordering, spacing.

Pure (numpy + pydicom). Used by the viewer (scrolling, synchronisation,
reference lines, orientation letters, scale bar, measurements), and by
anything that needs a series as an ordered volume (MPR, AI preprocessing).

Coordinates follow PS3.3 C.7.6.2.1.1 (Image Plane module): the patient
coordinate system is LPS (+x to the patient's left, +y posterior, +z head);
a pixel is addressed by its column ``i`` and row ``j`` (0-based) and its
*centre* lies at::

    P(i, j) = S + X * dc * i + Y * dr * j

with ``S`` the Image Position (Patient) (centre of the first pixel), ``X`` and
``Y`` the row and column direction cosines of Image Orientation (Patient), and
Pixel Spacing = ``(dr, dc)`` (row spacing first). "Image coordinates" in this
package are ``(x, y) = (i, j)`` as floats with that convention, so the image
covers ``[-0.5, columns - 0.5] x [-0.5, rows - 0.5]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

__all__ = [
    "FrameInfo",
    "PlaneGeometry",
    "Stack",
    "Spacing",
    "frames_from_dataset",
    "functional_item",
    "orientation_letters",
    "pixel_spacing_of",
    "reference_line",
    "sort_frames",
    "split_stacks",
]

logger = logging.getLogger(__name__)

Vec = npt.NDArray[np.float64]

ORIENTATION_TOLERANCE = 1e-3
"""Two Image Orientation (Patient) values are "the same" when no cosine differs by more."""


def _floats(value: Any) -> list[float] | None:
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes, int, float)):
            return [float(value)]
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def _raw_numbers(ds: Dataset, keyword_tag: int) -> list[float] | None:
    """DS/IS values of an element, parsed straight from its raw bytes when still unconverted.

    Parsing a header is dominated by pydicom's value conversion; the geometry
    attributes of 600 slices are read much faster this way. Falls back to the
    converted value for anything unusual.
    """
    if keyword_tag not in ds:
        return None
    elem = ds.get_item(keyword_tag)
    raw = getattr(elem, "value", None)
    if isinstance(raw, bytes) and getattr(elem, "VR", None) in (None, "DS", "IS"):
        try:
            return [float(v) for v in raw.split(b"\\")] if raw.strip(b" \x00") else None
        except ValueError:
            pass
    return _floats(ds[keyword_tag].value)


def functional_item(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """First item of functional group sequence *keyword* for *frame* (PS3.3 C.7.6.16).

    The per-frame item wins over the shared one; None when neither has it.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and 0 <= frame < len(per_frame):
        seq = per_frame[frame].get(keyword)
        if seq:
            return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(keyword)
        if seq:
            return seq[0]
    return None


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


def pixel_spacing_of(ds: Dataset, frame: int = 0) -> Spacing:
    """The spacing to measure with, following PS3.3 10.7.1.3.

    Pixel Spacing (in the patient, per frame in the Pixel Measures functional
    group of enhanced objects) is preferred; projection radiographs without it
    fall back to Imager Pixel Spacing with the "at detector" note; Secondary
    Capture to Nominal Scanned Pixel Spacing; else uncalibrated pixels.
    """
    item = functional_item(ds, frame, "PixelMeasuresSequence")
    for source_ds in ((item,) if item is not None else ()) + (ds,):
        ps = _raw_numbers(source_ds, 0x00280030)
        if ps and len(ps) >= 2 and ps[0] > 0 and ps[1] > 0:
            calib = str(ds.get("PixelSpacingCalibrationType", "") or "")
            descr = str(ds.get("PixelSpacingCalibrationDescription", "") or "")
            return Spacing(ps[0], ps[1], "PixelSpacing", calib, descr)
    for keyword in ("ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        ps = _floats(ds.get(keyword))
        if ps and len(ps) >= 2 and ps[0] > 0 and ps[1] > 0:
            return Spacing(ps[0], ps[1], keyword)
    return Spacing()


# --------------------------------------------------------------------------- planes


@dataclass(frozen=True, eq=False)
class PlaneGeometry:
    """The plane of one frame in patient space (PS3.3 C.7.6.2.1.1).

    ``origin`` is Image Position (Patient), ``row_dir``/``col_dir`` the two
    direction cosines of Image Orientation (Patient), ``spacing`` the pixel
    spacing (row, column) in mm. Image coordinates are ``(x, y) = (column,
    row)`` of pixel centres (see the module docstring).
    """

    origin: Vec
    row_dir: Vec
    col_dir: Vec
    row_spacing: float
    col_spacing: float
    rows: int
    columns: int

    @property
    def normal(self) -> Vec:
        n = np.cross(self.row_dir, self.col_dir)
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

    def parallel_to(self, other: PlaneGeometry, tolerance: float = 1e-3) -> bool:
        return bool(abs(abs(float(self.normal @ other.normal)) - 1.0) < tolerance)

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
        rn, cn = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
        if rn == 0 or cn == 0:
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


def orientation_letters(direction: npt.ArrayLike, threshold: float = 0.05, max_letters: int = 3) -> str:
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
    target: PlaneGeometry, source: PlaneGeometry, *, tolerance: float = 1e-3
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


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True, eq=False)
class FrameInfo:
    """What the viewer needs to know about one frame, without its pixels.

    One per frame of each instance of a series (single-frame instances have
    ``frame == 0``). ``pixel_offset`` is set by the loader for native
    (uncompressed little-endian) data: the file offset of the frame's bytes, so
    it can be read straight into a volume.
    """

    path: str
    frame: int
    sop_instance_uid: str
    instance_number: int | None
    rows: int
    columns: int
    samples: int = 1
    geometry: PlaneGeometry | None = None
    spacing: Spacing = field(default_factory=Spacing)
    slice_thickness: float | None = None
    frame_of_reference_uid: str = ""
    photometric: str = "MONOCHROME2"
    bits_allocated: int = 16
    bits_stored: int = 16
    signed: bool = False
    transfer_syntax: str = ""
    pipeline: Any = None
    """The frame's :class:`hilum.dicom.pixels.GrayscalePipeline` (None for colour)."""
    pixel_offset: int | None = None
    image_type: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.sop_instance_uid, self.frame)

    @property
    def is_localizer(self) -> bool:
        """Image Type value 3 LOCALIZER (PS3.3 C.8.2.1.1.1), the usual scout/topogram flag."""
        return len(self.image_type) > 2 and self.image_type[2].upper() == "LOCALIZER"


def frames_from_dataset(
    ds: Dataset, path: str = "", *, pipeline_factory: Any = None, pixel_offset: int | None = None
) -> list[FrameInfo]:
    """One :class:`FrameInfo` per frame of *ds* (pixels are not read).

    Geometry comes from the Image Plane module, or for enhanced multi-frame
    objects from the Plane Position / Plane Orientation / Pixel Measures
    functional groups of each frame (PS3.3 C.7.6.16.2.1-3). *pipeline_factory*
    ``(ds, frame) -> pipeline`` attaches the grayscale pipeline; *pixel_offset*
    is the file offset of native pixel data (frame ``f`` then starts at
    ``pixel_offset + f * frame_bytes``).
    """
    try:
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        frames = 1
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    ba = int(ds.get("BitsAllocated", 16) or 16)
    bs = int(ds.get("BitsStored", ba) or ba)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    meta = getattr(ds, "file_meta", None)
    tsyntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    it = ds.get("ImageType") or ()
    image_type = (str(it),) if isinstance(it, str) else tuple(str(v) for v in it)
    numbers = _raw_numbers(ds, 0x00200013)
    instance_number = int(numbers[0]) if numbers else None
    for_uid = str(ds.get("FrameOfReferenceUID", "") or "")
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    frame_bytes = rows * columns * samples * max(ba // 8, 1)
    out: list[FrameInfo] = []
    for f in range(frames):
        spacing = pixel_spacing_of(ds, f)
        position = orientation = None
        thickness = _raw_numbers(ds, 0x00180050)
        if enhanced:
            pos_item = functional_item(ds, f, "PlanePositionSequence")
            ori_item = functional_item(ds, f, "PlaneOrientationSequence")
            meas = functional_item(ds, f, "PixelMeasuresSequence")
            position = _floats(pos_item.get("ImagePositionPatient")) if pos_item is not None else None
            orientation = _floats(ori_item.get("ImageOrientationPatient")) if ori_item is not None else None
            if meas is not None and meas.get("SliceThickness") is not None:
                thickness = _floats(meas.get("SliceThickness"))
        if position is None:
            position = _raw_numbers(ds, 0x00200032)
        if orientation is None:
            orientation = _raw_numbers(ds, 0x00200037)
        geometry = None
        if position and len(position) == 3 and orientation and len(orientation) == 6 and rows and columns:
            try:
                geometry = PlaneGeometry.from_values(position, orientation, spacing, rows, columns)
            except ValueError as exc:
                logger.warning("ignoring geometry of %s frame %d: %s", path or ds.get("SOPInstanceUID"), f, exc)
        pipeline = pipeline_factory(ds, f) if pipeline_factory is not None else None
        out.append(
            FrameInfo(
                path=path,
                frame=f,
                sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
                instance_number=instance_number,
                rows=rows,
                columns=columns,
                samples=samples,
                geometry=geometry,
                spacing=spacing,
                slice_thickness=thickness[0] if thickness else None,
                frame_of_reference_uid=for_uid,
                photometric=photometric,
                bits_allocated=ba,
                bits_stored=bs,
                signed=signed,
                transfer_syntax=tsyntax,
                pipeline=pipeline,
                pixel_offset=None if pixel_offset is None else pixel_offset + f * frame_bytes,
                image_type=image_type,
            )
        )
    return out


def _same_orientation(frames: Sequence[FrameInfo]) -> bool:
    ref = frames[0].geometry
    if ref is None:
        return False
    for f in frames[1:]:
        g = f.geometry
        if g is None:
            return False
        if np.max(np.abs(g.row_dir - ref.row_dir)) > ORIENTATION_TOLERANCE:
            return False
        if np.max(np.abs(g.col_dir - ref.col_dir)) > ORIENTATION_TOLERANCE:
            return False
    return True


def sort_frames(frames: Sequence[FrameInfo]) -> tuple[list[FrameInfo], str]:
    """Frames in display order and the method used (``"position"`` or ``"instance"``).

    When every frame has a plane and all share one Image Orientation
    (Patient), frames are sorted by the distance of Image Position (Patient)
    along the normal (PS3.3 C.7.6.2.1.1; Instance Number alone does not give
    the spatial order), in the direction in which Instance Numbers increase
    (so a head-first acquisition still starts at the head). Otherwise by
    Instance Number, then frame number.
    """
    items = list(frames)
    if not items:
        return [], "instance"

    def inst_key(f: FrameInfo) -> tuple[int, int, str]:
        return (f.instance_number if f.instance_number is not None else 1 << 30, f.frame, f.sop_instance_uid)

    by_instance = sorted(items, key=inst_key)
    if len(items) == 1 or not _same_orientation(items):
        return by_instance, "instance"
    normal = items[0].geometry.normal  # type: ignore[union-attr]
    d = {id(f): float(f.geometry.origin @ normal) for f in items}  # type: ignore[union-attr]
    rank = {id(f): i for i, f in enumerate(by_instance)}
    by_pos = sorted(items, key=lambda f: (d[id(f)], rank[id(f)]))
    # follow the acquisition direction: compare the instance ranks at the two ends
    ranks = np.array([rank[id(f)] for f in by_pos], dtype=np.float64)
    if len(ranks) > 1 and np.corrcoef(np.arange(len(ranks)), ranks)[0, 1] < 0:
        by_pos.reverse()
    return by_pos, "position"


def split_stacks(frames: Iterable[FrameInfo]) -> list[list[FrameInfo]]:
    """Group a series' frames into displayable stacks of one image size and orientation.

    A series may mix sizes or planes (a scout in the CT series, several
    orientations of a survey): each group becomes its own stack, largest first.
    """
    groups: dict[tuple[Any, ...], list[FrameInfo]] = {}
    for f in frames:
        g = f.geometry
        ori = tuple(np.round(np.asarray(g.orientation), 2)) if g is not None else None
        key = (f.rows, f.columns, f.samples, f.photometric if f.samples > 1 else "", ori)
        groups.setdefault(key, []).append(f)
    return sorted(groups.values(), key=len, reverse=True)


@dataclass
class Stack:
    """Frames of one series in display order, with the geometry of the whole.

    ``positions[k]`` is the signed distance (mm) of frame ``k`` along the
    stack normal; ``spacing`` the typical (median) distance between adjacent
    frames; ``uniform`` whether all gaps equal it within 1 % (a stack with
    gaps or duplicates is still shown, but volumes built from it need care).
    """

    frames: list[FrameInfo]
    sort_method: str = "instance"
    normal: Vec | None = None
    positions: Vec | None = None
    spacing: float | None = None
    uniform: bool = True

    @classmethod
    def from_frames(cls, frames: Sequence[FrameInfo]) -> Stack:
        ordered, method = sort_frames(frames)
        stack = cls(ordered, method)
        if method == "position":
            normal = ordered[0].geometry.normal  # type: ignore[union-attr]
            pos = np.array([f.geometry.origin @ normal for f in ordered])  # type: ignore[union-attr]
            stack.normal, stack.positions = normal, pos
            if len(pos) > 1:
                gaps = np.abs(np.diff(pos))
                spacing = float(np.median(gaps))
                stack.spacing = spacing
                stack.uniform = bool(spacing > 0 and np.all(np.abs(gaps - spacing) <= max(0.01 * spacing, 1e-3)))
        return stack

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> FrameInfo:
        return self.frames[index]

    @property
    def rows(self) -> int:
        return self.frames[0].rows

    @property
    def columns(self) -> int:
        return self.frames[0].columns

    @property
    def frame_of_reference_uid(self) -> str:
        return self.frames[0].frame_of_reference_uid if self.frames else ""

    def index_of(self, sop_instance_uid: str, frame: int = 0) -> int | None:
        for i, f in enumerate(self.frames):
            if f.sop_instance_uid == sop_instance_uid and f.frame == frame:
                return i
        return None

    def nearest_index(self, point: npt.ArrayLike, max_distance: float | None = None) -> int | None:
        """Index of the frame whose plane is nearest to a patient *point*.

        Used to link scrolling by patient position (not by index). Only for
        stacks with geometry; None when the nearest frame is farther than
        *max_distance* (default: one spacing, or the slice thickness).
        """
        p = np.asarray(point, dtype=np.float64)
        dists = []
        for f in self.frames:
            if f.geometry is None:
                return None
            dists.append(abs(f.geometry.distance(p)))
        k = int(np.argmin(dists))
        if max_distance is None:
            max_distance = max(self.spacing or 0.0, self.frames[k].slice_thickness or 0.0, 1.0)
        return k if dists[k] <= max_distance else None
