"""Volumes from image series: one geometry for the viewer, MPR, 3D and AI.

A :class:`Volume` is a numpy array of modality values (e.g. HU) indexed
``[k, j, i]`` (slice, row, column) plus the 4x4 affine that maps a voxel index
``(i, j, k)`` to patient coordinates in mm (the LPS patient coordinate system
of PS3.3 C.7.6.2.1.1: +x to the patient's left, +y posterior, +z head).
Column 0 of the affine is Pixel Spacing[1] times the row direction cosine of
Image Orientation (Patient), column 1 is Pixel Spacing[0] times the column
direction cosine, column 2 the step between consecutive slice positions, and
column 3 the Image Position (Patient) of the first slice. That is the
convention of ITK/SimpleITK (size ``(columns, rows, slices)``, spacing
``(dc, dr, dk)``, direction with the axes as columns), so results compare
one to one.

Slices are ordered along the normal of Image Orientation (Patient) (the cross
product of its row and column cosines), never by Instance Number or Slice
Location, which the standard does not constrain (PS3.3 C.7.6.2.1.1 / C.7.3.1).
:func:`sort_slices` also reports what makes a stack unlike a regular grid:
irregular spacing, missing slices, gantry tilt (slice positions stepping
obliquely to the image plane, so the affine is sheared), mixed orientations
or image sizes, duplicate positions, several stacks in one enhanced object.

Sources are classic single-frame instances (CT, MR, PET, ...) or enhanced
multi-frame objects, whose per-frame geometry lives in the Plane Position,
Plane Orientation and Pixel Measures functional groups (PS3.3 C.7.6.16.2);
both become per-frame :class:`SliceRef` records and go through one sort.
Pixels are decoded by :func:`hilum.dicom.pixels.frame_array` and rescaled by
the Modality LUT stage of :mod:`hilum.dicom.pixels_lut`, per frame.

Also here, pure numpy: world <-> voxel conversions, oblique :class:`Plane`
definitions and a trilinear :meth:`Volume.reslice` with MIP/MinIP/mean slabs
(the VTK path for interactive display lives in :mod:`hilum.render.mpr`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from hilum.dicom.pixels import frame_array, number_of_frames
from hilum.dicom.pixels_lut import ModalityTransform, Window, functional_group_item, windows_from_dataset
from hilum.dicom.stack import orientation_letters
from hilum.errors import HilumError

__all__ = [
    "GeometryIssue",
    "IssueKind",
    "Plane",
    "SliceRef",
    "SliceStack",
    "SlabMode",
    "Volume",
    "VolumeError",
    "build_volume",
    "load_volume",
    "slice_refs",
    "sort_slices",
    "volume_from_planes",
]

logger = logging.getLogger(__name__)

Source = Dataset | str | os.PathLike[str]
FloatArray = npt.NDArray[np.float64]
SlabMode = Literal["mip", "minip", "mean"]

ORIENTATION_TOLERANCE = 1e-3
"""Two Image Orientation (Patient) values are the same plane orientation when every
direction cosine differs by less than this (about 0.06 degrees)."""
POSITION_TOLERANCE = 1e-2
"""Slices closer than this (mm, along the normal) share a position."""
TILT_TOLERANCE_DEG = 0.05
"""Slice positions stepping more than this off the normal count as gantry tilt."""


class VolumeError(HilumError):
    """A set of images from which no volume can be built (no geometry, no pixels)."""


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


@dataclass(frozen=True)
class GeometryIssue:
    """One thing about a stack's geometry that a reader must know.

    ``excluded`` counts the slices that were left out of the volume because of
    it (other orientation, other size, duplicate position, no geometry).
    """

    kind: str
    message: str
    excluded: int = 0

    def __str__(self) -> str:
        return self.message


# ----------------------------------------------------------------------------- slices


@dataclass(frozen=True, eq=False)
class SliceRef:
    """One image plane of a series: a single-frame instance or one frame of a multi-frame one.

    ``position`` is Image Position (Patient) (the centre of the first pixel),
    ``orientation`` Image Orientation (Patient) (row cosines then column
    cosines), ``pixel_spacing`` (row spacing, column spacing) as in Pixel
    Spacing (0028,0030).  ``header`` is the dataset (for an enhanced object the
    whole object) from which pixels and the modality transform are read;
    ``path`` the file it came from, when it came from one.
    """

    header: Dataset
    frame: int
    path: str | None
    sop_instance_uid: str
    instance_number: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    stack_id: str = ""

    @property
    def has_geometry(self) -> bool:
        return self.position is not None and self.orientation is not None and self.pixel_spacing is not None

    @property
    def row_direction(self) -> FloatArray:
        assert self.orientation is not None
        return np.asarray(self.orientation[:3], dtype=np.float64)

    @property
    def column_direction(self) -> FloatArray:
        assert self.orientation is not None
        return np.asarray(self.orientation[3:], dtype=np.float64)

    @property
    def normal(self) -> FloatArray:
        n = np.cross(self.row_direction, self.column_direction)
        return n / (np.linalg.norm(n) or 1.0)

    def source(self) -> Source:
        """What :func:`frame_array` decodes: the dataset, or the file when the header has no pixels."""
        if self.path is not None and "PixelData" not in self.header:
            return self.path
        return self.header


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        seq = list(value) if not isinstance(value, (str, bytes)) else [value]  # type: ignore[call-overload]
        out = tuple(float(v) for v in seq)
    except (TypeError, ValueError):
        return None
    if len(out) != count or not all(math.isfinite(v) for v in out):
        return None
    return out


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return None


def _frame_value(ds: Dataset, frame: int, group: str, keyword: str) -> object:
    """An attribute of a functional group macro that applies to ``frame`` (PS3.3 C.7.6.16)."""
    item = functional_group_item(ds, frame, group)
    if item is not None and keyword in item:
        return item.get(keyword)
    return None


def slice_refs(ds: Dataset, path: str | None = None) -> list[SliceRef]:
    """The image planes of one instance: one for a single-frame image, one per frame of an
    enhanced multi-frame image (geometry from its functional groups, PS3.3 C.7.6.16.2.1-3,
    Stack ID from the Frame Content macro, C.7.6.16.2.2).

    A multi-frame object without per-frame geometry (e.g. a legacy NM or US
    cine) yields refs with ``position=None``, which :func:`sort_slices` reports.
    """
    frames = number_of_frames(ds)
    sop = str(ds.get("SOPInstanceUID", "") or "")
    inst = _int_or_none(ds.get("InstanceNumber"))
    rows = int(ds.get("Rows", 0) or 0)
    columns = int(ds.get("Columns", 0) or 0)
    functional = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    out: list[SliceRef] = []
    for f in range(frames):
        if functional:
            ipp = _frame_value(ds, f, "PlanePositionSequence", "ImagePositionPatient")
            iop = _frame_value(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient")
            ps = _frame_value(ds, f, "PixelMeasuresSequence", "PixelSpacing")
            content = functional_group_item(ds, f, "FrameContentSequence")
            stack = str(content.get("StackID", "") or "") if content is not None else ""
        elif frames == 1:
            ipp, iop, ps, stack = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"), None, ""
            ps = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
        else:
            ipp = iop = ps = None
            stack = ""
        out.append(
            SliceRef(
                header=ds,
                frame=f,
                path=path,
                sop_instance_uid=sop,
                instance_number=inst,
                position=_floats(ipp, 3),  # type: ignore[arg-type]
                orientation=_floats(iop, 6),  # type: ignore[arg-type]
                rows=rows,
                columns=columns,
                pixel_spacing=_floats(ps, 2),  # type: ignore[arg-type]
                stack_id=stack,
            )
        )
    return out


# ----------------------------------------------------------------------------- sorting


@dataclass(frozen=True)
class SliceStack:
    """The result of :func:`sort_slices`: the slices that make one volume, in order.

    ``slices`` ascend along ``normal``; ``distances`` are their positions along
    it (mm).  ``spacing`` is the nominal slice spacing (the median step),
    ``step`` the mean vector between consecutive Image Positions (equal to
    ``spacing * normal`` unless the gantry was tilted), ``tilt_degrees`` the
    angle between the two.  ``regular`` is False when the steps differ
    (irregular spacing or missing slices), in which case :func:`build_volume`
    resamples onto a regular grid.
    """

    slices: tuple[SliceRef, ...]
    excluded: tuple[SliceRef, ...]
    normal: FloatArray
    distances: FloatArray
    spacing: float
    step: FloatArray
    tilt_degrees: float
    regular: bool
    issues: tuple[GeometryIssue, ...]

    def has(self, kind: str) -> bool:
        return any(i.kind == kind for i in self.issues)


def _largest_group(items: list[SliceRef], same: object) -> tuple[list[SliceRef], list[list[SliceRef]]]:
    """Split ``items`` into groups by the predicate ``same(a, b)``; return the largest (first on ties)."""
    groups: list[list[SliceRef]] = []
    for ref in items:
        for g in groups:
            if same(g[0], ref):  # type: ignore[operator]
                g.append(ref)
                break
        else:
            groups.append([ref])
    best = max(groups, key=len)  # max keeps the first of equal lengths
    return best, [g for g in groups if g is not best]


def _same_orientation(a: SliceRef, b: SliceRef) -> bool:
    assert a.orientation is not None and b.orientation is not None
    return bool(np.max(np.abs(np.subtract(a.orientation, b.orientation))) < ORIENTATION_TOLERANCE)


def _same_size(a: SliceRef, b: SliceRef) -> bool:
    assert a.pixel_spacing is not None and b.pixel_spacing is not None
    return (
        a.rows == b.rows
        and a.columns == b.columns
        and bool(np.max(np.abs(np.subtract(a.pixel_spacing, b.pixel_spacing))) < 1e-4)
    )


def _nominal_spacing(ref: SliceRef) -> float:
    """Spacing Between Slices, else Slice Thickness, else 1 mm: the depth of a single slice."""
    for ds, keyword in (
        (ref.header, "SpacingBetweenSlices"),
        (functional_group_item(ref.header, ref.frame, "PixelMeasuresSequence"), "SpacingBetweenSlices"),
        (ref.header, "SliceThickness"),
        (functional_group_item(ref.header, ref.frame, "PixelMeasuresSequence"), "SliceThickness"),
    ):
        if ds is not None:
            try:
                value = abs(float(ds.get(keyword)))
            except (TypeError, ValueError):
                continue
            if value > 0 and math.isfinite(value):
                return value
    return 1.0


def sort_slices(refs: Iterable[SliceRef], *, stack_id: str | None = None) -> SliceStack:
    """Order image planes along the normal of Image Orientation (Patient) and check the stack.

    PS3.3 C.7.6.2.1.1 defines where each plane lies; the sort key is the
    projection of Image Position (Patient) on the normal ``row x column``.
    Planes without geometry, of another orientation or size than the largest
    group, of another Stack ID (enhanced objects) or sharing a position with
    an earlier plane are left out, and every such decision is reported as a
    :class:`GeometryIssue`, as are irregular spacing, missing slices (gaps
    that are a whole multiple of the usual step) and gantry tilt.

    Raises :class:`VolumeError` when no plane has geometry.
    """
    refs = list(refs)
    issues: list[GeometryIssue] = []
    excluded: list[SliceRef] = []
    if not refs:
        raise VolumeError("no images to build a volume from")

    usable = [r for r in refs if r.has_geometry and r.rows > 0 and r.columns > 0]
    if len(usable) < len(refs):
        n = len(refs) - len(usable)
        excluded += [r for r in refs if r not in usable]
        issues.append(
            GeometryIssue(
                IssueKind.NO_GEOMETRY,
                f"{n} image(s) lack Image Position/Orientation (Patient) or Pixel Spacing and were left out",
                n,
            )
        )
    if not usable:
        raise VolumeError(
            "no image has Image Position (Patient), Image Orientation (Patient) and Pixel Spacing (PS3.3 C.7.6.2)"
        )

    stacks = {r.stack_id for r in usable}
    if stack_id is not None:
        chosen = [r for r in usable if r.stack_id == stack_id]
        if not chosen:
            raise VolumeError(f"no frames with Stack ID {stack_id!r} (have {sorted(stacks)})")
        others = [r for r in usable if r.stack_id != stack_id]
        usable = chosen
    elif len(stacks) > 1:
        usable, rest = _largest_group(usable, lambda a, b: a.stack_id == b.stack_id)
        others = [r for g in rest for r in g]
    else:
        others = []
    if others:
        excluded += others
        issues.append(
            GeometryIssue(
                IssueKind.MULTIPLE_STACKS,
                f"{len(stacks)} stacks (Stack ID {', '.join(sorted(stacks))}); used stack "
                f"{usable[0].stack_id!r}, left out {len(others)} frame(s)",
                len(others),
            )
        )

    usable, rest = _largest_group(usable, _same_orientation)
    if rest:
        n = sum(len(g) for g in rest)
        excluded += [r for g in rest for r in g]
        issues.append(
            GeometryIssue(
                IssueKind.MIXED_ORIENTATION,
                f"mixed orientations: {len(rest) + 1} different Image Orientation (Patient) values; used the "
                f"{len(usable)} image(s) of the largest group, left out {n}",
                n,
            )
        )
    usable, rest = _largest_group(usable, _same_size)
    if rest:
        n = sum(len(g) for g in rest)
        excluded += [r for g in rest for r in g]
        issues.append(
            GeometryIssue(
                IssueKind.MIXED_SIZE,
                f"mixed image sizes or pixel spacings; used the {len(usable)} image(s) of "
                f"{usable[0].rows}x{usable[0].columns} px, left out {n}",
                n,
            )
        )

    first = usable[0]
    normal = first.normal
    positions = np.asarray([r.position for r in usable], dtype=np.float64)
    d = positions @ normal
    order = np.argsort(d, kind="stable")
    ordered = [usable[i] for i in order]
    positions = positions[order]
    d = d[order]

    keep = np.ones(len(ordered), dtype=bool)
    keep[1:] = np.diff(d) > POSITION_TOLERANCE
    if not keep.all():
        n = int((~keep).sum())
        excluded += [r for r, k in zip(ordered, keep, strict=True) if not k]
        issues.append(
            GeometryIssue(
                IssueKind.DUPLICATE_POSITION,
                f"{n} image(s) share a position with another (several acquisitions, phases or echoes?); "
                "kept the first at each position",
                n,
            )
        )
        ordered = [r for r, k in zip(ordered, keep, strict=True) if k]
        positions = positions[keep]
        d = d[keep]

    count = len(ordered)
    regular = True
    tilt = 0.0
    if count == 1:
        spacing = _nominal_spacing(first)
        step = spacing * normal
        issues.append(
            GeometryIssue(IssueKind.SINGLE_SLICE, f"a single slice: depth {spacing:g} mm taken from its header")
        )
    else:
        steps = np.diff(d)
        spacing = float(np.median(steps))
        tol = max(1e-3, 0.01 * spacing)
        ratio = steps / spacing
        multiple = np.rint(ratio)
        gaps = (multiple >= 2) & (np.abs(steps - multiple * spacing) <= tol)
        off = np.abs(steps - spacing) > tol
        irregular = off & ~gaps
        if gaps.any():
            regular = False
            missing = int((multiple[gaps] - 1).sum())
            where = ", ".join(f"{d[i]:.2f}..{d[i + 1]:.2f}" for i in np.flatnonzero(gaps)[:5])
            issues.append(
                GeometryIssue(
                    IssueKind.MISSING_SLICES,
                    f"{missing} slice(s) missing (gaps of a whole number of {spacing:g} mm steps at "
                    f"{where} mm along the normal)",
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
        span = positions[-1] - positions[0]
        along = float(span @ normal)
        lateral = span - along * normal
        tilt = math.degrees(math.atan2(float(np.linalg.norm(lateral)), abs(along)))
        step = span / (d[-1] - d[0]) * spacing
        if tilt > TILT_TOLERANCE_DEG:
            header_tilt = _int_or_none(first.header.get("GantryDetectorTilt"))
            said = f" (Gantry/Detector Tilt {first.header.get('GantryDetectorTilt')})" if header_tilt else ""
            issues.append(
                GeometryIssue(
                    IssueKind.GANTRY_TILT,
                    f"gantry tilt of {tilt:.2f} degrees{said}: slices step obliquely to the image plane; "
                    "the volume's affine is sheared",
                )
            )
        # Positions off the straight line (beyond half a pixel) are irregular too.
        expected = positions[0] + np.outer(d - d[0], span / (d[-1] - d[0]))
        residual = float(np.max(np.linalg.norm(positions - expected, axis=1)))
        assert first.pixel_spacing is not None
        if residual > 0.5 * min(first.pixel_spacing):
            regular = False
            issues.append(
                GeometryIssue(
                    IssueKind.IRREGULAR_SPACING,
                    f"slice positions are not on one line: up to {residual:.3g} mm off (half a pixel allowed)",
                )
            )
    return SliceStack(
        slices=tuple(ordered),
        excluded=tuple(excluded),
        normal=normal,
        distances=d,
        spacing=spacing,
        step=np.asarray(step, dtype=np.float64),
        tilt_degrees=tilt,
        regular=regular,
        issues=tuple(issues),
    )


# ----------------------------------------------------------------------------- planes


def _unit(v: npt.ArrayLike) -> FloatArray:
    a = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(a))
    if n == 0:
        raise ValueError("a direction must not be the zero vector")
    return a / n


def rotation_matrix(axis: npt.ArrayLike, degrees: float) -> FloatArray:
    """Right-handed rotation by ``degrees`` about ``axis`` (Rodrigues' formula)."""
    k = _unit(axis)
    t = math.radians(degrees)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(t) * kx + (1 - math.cos(t)) * (kx @ kx)


@dataclass(frozen=True, eq=False)
class Plane:
    """An image plane in patient space: ``centre`` and the unit row direction ``u`` (image x,
    left to right on screen) and column direction ``v`` (image y, top to bottom), as
    Image Orientation (Patient) has them (PS3.3 C.7.6.2.1.1).  ``normal = u x v``.

    Plane coordinates ``(s, t, w)`` are mm along ``u``, ``v`` and the normal from
    ``centre``; :meth:`matrix` maps them to patient coordinates.
    """

    centre: FloatArray
    u: FloatArray
    v: FloatArray

    def __post_init__(self) -> None:
        c = np.asarray(self.centre, dtype=np.float64).reshape(3)
        u = _unit(self.u)
        v = np.asarray(self.v, dtype=np.float64)
        v = _unit(v - (v @ u) * u)  # make exactly orthonormal
        object.__setattr__(self, "centre", c)
        object.__setattr__(self, "u", u)
        object.__setattr__(self, "v", v)

    @property
    def normal(self) -> FloatArray:
        return np.cross(self.u, self.v)

    @classmethod
    def axial(cls, centre: npt.ArrayLike = (0, 0, 0)) -> Plane:
        """Viewed from the feet: patient's left on the screen's right, anterior up."""
        return cls(np.asarray(centre, dtype=np.float64), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))

    @classmethod
    def coronal(cls, centre: npt.ArrayLike = (0, 0, 0)) -> Plane:
        """Viewed from the front: patient's left on the screen's right, head up."""
        return cls(np.asarray(centre, dtype=np.float64), np.array([1.0, 0, 0]), np.array([0, 0, -1.0]))

    @classmethod
    def sagittal(cls, centre: npt.ArrayLike = (0, 0, 0)) -> Plane:
        """Viewed from the patient's left: anterior on the screen's left, head up."""
        return cls(np.asarray(centre, dtype=np.float64), np.array([0, 1.0, 0]), np.array([0, 0, -1.0]))

    @classmethod
    def from_orientation(cls, orientation: Sequence[float], centre: npt.ArrayLike = (0, 0, 0)) -> Plane:
        """The plane of an Image Orientation (Patient) value (six direction cosines)."""
        return cls(np.asarray(centre, dtype=np.float64), np.asarray(orientation[:3]), np.asarray(orientation[3:]))

    def with_centre(self, centre: npt.ArrayLike) -> Plane:
        return Plane(np.asarray(centre, dtype=np.float64), self.u, self.v)

    def shifted(self, distance: float) -> Plane:
        """The parallel plane ``distance`` mm along the normal."""
        return self.with_centre(self.centre + distance * self.normal)

    def rotated(self, axis: npt.ArrayLike, degrees: float) -> Plane:
        """The plane rotated by ``degrees`` about ``axis`` (a patient-space direction) through its centre."""
        r = rotation_matrix(axis, degrees)
        return Plane(self.centre, r @ self.u, r @ self.v)

    def matrix(self) -> FloatArray:
        """4x4 matrix taking plane coordinates ``(s, t, w, 1)`` to patient coordinates."""
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = self.u, self.v, self.normal, self.centre
        return m

    def to_patient(self, s: npt.ArrayLike, t: npt.ArrayLike, w: npt.ArrayLike = 0.0) -> FloatArray:
        """Patient coordinates (..., 3) of plane coordinates (mm)."""
        s_, t_, w_ = np.broadcast_arrays(np.asarray(s, float), np.asarray(t, float), np.asarray(w, float))
        return self.centre + s_[..., None] * self.u + t_[..., None] * self.v + w_[..., None] * self.normal

    def to_plane(self, points: npt.ArrayLike) -> FloatArray:
        """Plane coordinates ``(s, t, w)`` (..., 3) of patient points; ``w`` is the distance off the plane."""
        p = np.asarray(points, dtype=np.float64) - self.centre
        return np.stack([p @ self.u, p @ self.v, p @ self.normal], axis=-1)

    def orientation(self) -> tuple[float, float, float, float, float, float]:
        """The plane as Image Orientation (Patient)."""
        return (*map(float, self.u), *map(float, self.v))  # type: ignore[return-value]

    def edge_letters(self) -> dict[str, str]:
        """Orientation letters at the ``left``, ``right``, ``top`` and ``bottom`` edges of the image
        (the 2D viewer's rule, :func:`hilum.dicom.stack.orientation_letters`)."""
        return {
            "left": orientation_letters(-self.u),
            "right": orientation_letters(self.u),
            "top": orientation_letters(-self.v),
            "bottom": orientation_letters(self.v),
        }


# ----------------------------------------------------------------------------- the volume


@dataclass(eq=False)
class Volume:
    """A regular 3D grid of modality values in patient space.

    ``array`` is indexed ``[k, j, i]`` (slice, row, column), C-contiguous,
    int16 when the modality values are integers that fit (CT in HU), float32
    otherwise.  ``affine`` maps ``(i, j, k, 1)`` to patient mm (LPS); its
    first three columns need not be orthogonal (gantry tilt shears the third).
    ``slices`` are the source planes in the order of the volume's k axis (for a
    resampled volume they sit at ``source_distances`` along ``normal`` rather
    than at whole k).  ``issues`` carries what :func:`sort_slices` found.
    """

    array: np.ndarray
    affine: FloatArray
    modality: str = ""
    issues: tuple[GeometryIssue, ...] = ()
    slices: tuple[SliceRef, ...] = ()
    source_distances: FloatArray | None = None
    window: Window | None = None
    rescale_type: str = ""
    frame_of_reference_uid: str = ""
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    _inverse: FloatArray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a volume array has 3 dimensions [k, j, i], not {self.array.ndim}")
        a = np.asarray(self.affine, dtype=np.float64)
        if a.shape != (4, 4):
            raise ValueError("the affine must be 4x4")
        if abs(np.linalg.det(a[:3, :3])) < 1e-12:
            raise ValueError("the affine is singular")
        self.affine = a
        self.array = np.ascontiguousarray(self.array)
        self._inverse = np.asarray(np.linalg.inv(a), dtype=np.float64)

    # --- geometry
    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        *,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        direction: npt.ArrayLike | None = None,
        **kwargs: object,
    ) -> Volume:
        """A volume from a ``[k, j, i]`` array and ITK-style spacing, origin and direction (axes as columns)."""
        d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = d * np.asarray(spacing, dtype=np.float64)[None, :]
        affine[:3, 3] = origin
        return cls(np.asarray(array), affine, **kwargs)  # type: ignore[arg-type]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(slices, rows, columns)``."""
        return self.array.shape  # type: ignore[return-value]

    @property
    def size(self) -> tuple[int, int, int]:
        """Voxel counts along i, j, k: ``(columns, rows, slices)``, SimpleITK's ``GetSize()``."""
        k, j, i = self.array.shape
        return (i, j, k)

    @property
    def spacing(self) -> FloatArray:
        """Voxel size along i, j, k in mm (the lengths of the affine's columns)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def direction(self) -> FloatArray:
        """3x3 matrix whose columns are the unit i, j, k axes in patient space."""
        return self.affine[:3, :3] / self.spacing[None, :]

    @property
    def origin(self) -> FloatArray:
        """Patient position of voxel (0, 0, 0): the first slice's Image Position (Patient)."""
        return self.affine[:3, 3].copy()

    @property
    def normal(self) -> FloatArray:
        """Unit normal of the slice planes (row x column direction)."""
        n = np.cross(self.direction[:, 0], self.direction[:, 1])
        return n / np.linalg.norm(n)

    @property
    def is_orthogonal(self) -> bool:
        """False for a sheared (gantry-tilted) grid."""
        d = self.direction
        return bool(np.allclose(d.T @ d, np.eye(3), atol=1e-6))

    @property
    def center(self) -> FloatArray:
        """Patient position of the centre of the grid."""
        return self.voxel_to_world((np.asarray(self.size, dtype=np.float64) - 1) / 2)

    def corners(self) -> FloatArray:
        """Patient positions (8, 3) of the centres of the eight corner voxels."""
        n = np.asarray(self.size, dtype=np.float64) - 1
        idx = np.array([[a, b, c] for c in (0, n[2]) for b in (0, n[1]) for a in (0, n[0])])
        return self.voxel_to_world(idx)

    def voxel_to_world(self, ijk: npt.ArrayLike) -> FloatArray:
        """Patient coordinates (..., 3) of continuous voxel indices (i, j, k)."""
        p = np.asarray(ijk, dtype=np.float64)
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: npt.ArrayLike) -> FloatArray:
        """Continuous voxel indices (i, j, k) (..., 3) of patient coordinates."""
        assert self._inverse is not None
        p = np.asarray(xyz, dtype=np.float64)
        return p @ self._inverse[:3, :3].T + self._inverse[:3, 3]

    def contains(self, xyz: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """True where a patient point lies inside the grid (between the outer voxel centres)."""
        ijk = self.world_to_voxel(xyz)
        hi = np.asarray(self.size, dtype=np.float64) - 1
        return np.all((ijk >= -1e-6) & (ijk <= hi + 1e-6), axis=-1)

    def value_range(self) -> tuple[float, float]:
        return float(self.array.min()), float(self.array.max())

    def nearest_source_slice(self, xyz: npt.ArrayLike) -> tuple[int, SliceRef] | None:
        """The original image plane nearest to a patient point, and its index in :attr:`slices`
        (so a 3D cursor can navigate the 2D stack the volume came from)."""
        if not self.slices:
            return None
        if self.source_distances is not None:
            d = float(np.asarray(xyz, dtype=np.float64) @ self.normal)
            idx = int(np.argmin(np.abs(self.source_distances - d)))
        else:
            k = float(self.world_to_voxel(xyz)[2])
            idx = int(np.clip(round(k), 0, len(self.slices) - 1))
        return idx, self.slices[idx]

    # --- sampling (pure numpy: for AI, tests and as the reference of the VTK path)
    def sample(self, xyz: npt.ArrayLike, *, fill: float = np.nan) -> npt.NDArray[np.float32]:
        """Trilinear interpolation of the volume at patient points (..., 3); ``fill`` outside."""
        ijk = self.world_to_voxel(xyz).astype(np.float32)
        return _trilinear(self.array, ijk, fill)

    def plane_points(self, plane: Plane, shape: tuple[int, int], spacing: tuple[float, float]) -> FloatArray:
        """Patient positions (rows, columns, 3) of the pixel centres of an image of ``shape``
        (rows, columns) and ``spacing`` (row, column mm) centred on ``plane.centre``."""
        rows, cols = shape
        dr, dc = spacing
        s = (np.arange(cols, dtype=np.float64) - (cols - 1) / 2) * dc
        t = (np.arange(rows, dtype=np.float64) - (rows - 1) / 2) * dr
        return plane.to_patient(s[None, :], t[:, None])

    def reslice(
        self,
        plane: Plane,
        shape: tuple[int, int],
        spacing: tuple[float, float] | float,
        *,
        slab: float = 0.0,
        mode: SlabMode = "mip",
        slab_step: float | None = None,
        fill: float = np.nan,
    ) -> npt.NDArray[np.float32]:
        """The image of ``plane`` (rows, columns) by trilinear interpolation, float32 modality values.

        ``slab`` (mm) > 0 combines parallel planes ``slab_step`` apart (default the
        smallest voxel size) across that thickness: ``mip`` (maximum), ``minip``
        (minimum) or ``mean``.  Pixels outside the volume get ``fill``.
        """
        if isinstance(spacing, (int, float)):
            spacing = (float(spacing), float(spacing))
        rows, cols = shape
        dr, dc = spacing
        assert self._inverse is not None
        # voxel index of the image's first pixel and its steps along columns / rows / the normal
        corner = plane.to_patient(-(cols - 1) / 2 * dc, -(rows - 1) / 2 * dr)
        o = self.world_to_voxel(corner)
        m = self._inverse[:3, :3]
        du, dv = m @ (plane.u * dc), m @ (plane.v * dr)
        n_planes = 1
        step = 0.0
        if slab > 0:
            step = float(slab_step or float(np.min(self.spacing)))
            n_planes = max(1, int(round(slab / step)))
        dw = m @ (plane.normal * step)
        ii = np.arange(cols, dtype=np.float32)
        jj = np.arange(rows, dtype=np.float32)
        out: npt.NDArray[np.float32] | None = None
        for p in range(n_planes):
            off = (p - (n_planes - 1) / 2) * dw
            ijk = (
                (o + off).astype(np.float32)
                + ii[None, :, None] * du.astype(np.float32)
                + jj[:, None, None] * dv.astype(np.float32)
            )
            img = _trilinear(self.array, ijk, fill)
            if out is None:
                out = img
            elif mode == "mip":
                np.fmax(out, img, out=out)
            elif mode == "minip":
                np.fmin(out, img, out=out)
            elif mode == "mean":
                out += img
            else:
                raise ValueError(f"slab mode must be 'mip', 'minip' or 'mean', not {mode!r}")
        assert out is not None
        if mode == "mean" and n_planes > 1:
            out /= n_planes
        return out

    def downsampled(self, factors: Sequence[int]) -> Volume:
        """A coarser copy: the mean of each block of ``factors`` = (fi, fj, fk) voxels, placed at the
        block's centre (the affine gains ``(f - 1) / 2`` voxel of shift); edge voxels that do not
        fill a block are dropped.  For 3D rendering of big volumes in software."""
        fi, fj, fk = (max(1, int(f)) for f in factors)
        if (fi, fj, fk) == (1, 1, 1):
            return self
        nk, nj, ni = self.array.shape
        mk, mj, mi = max(1, nk // fk), max(1, nj // fj), max(1, ni // fi)
        fk, fj, fi = min(fk, nk), min(fj, nj), min(fi, ni)
        block = self.array[: mk * fk, : mj * fj, : mi * fi].reshape(mk, fk, mj, fj, mi, fi)
        mean = block.mean(axis=(1, 3, 5), dtype=np.float32)
        arr = np.rint(mean).astype(np.int16) if self.array.dtype == np.int16 else mean
        scale = np.eye(4)
        scale[:3, :3] = np.diag([fi, fj, fk])
        scale[:3, 3] = [(fi - 1) / 2, (fj - 1) / 2, (fk - 1) / 2]
        return Volume(
            arr,
            self.affine @ scale,
            modality=self.modality,
            issues=self.issues,
            window=self.window,
            rescale_type=self.rescale_type,
            frame_of_reference_uid=self.frame_of_reference_uid,
            series_instance_uid=self.series_instance_uid,
            study_instance_uid=self.study_instance_uid,
        )

    def factors_for(self, max_voxels: int) -> tuple[int, int, int]:
        """Whole-number block sizes (fi, fj, fk) that bring the voxel count to at most
        ``max_voxels`` while making voxels as close to cubes as they can be."""
        n = np.asarray(self.size, dtype=np.float64)
        if float(np.prod(n)) <= max_voxels:
            return (1, 1, 1)
        sp = self.spacing
        target = float(np.cbrt(np.prod(n * sp) / max_voxels))  # edge of a cube voxel that fits
        f = np.maximum(1, np.round(target / sp)).astype(int)
        while float(np.prod(n // f)) > max_voxels:
            f[int(np.argmin(f * sp))] += 1  # grow the finest axis
        return (int(f[0]), int(f[1]), int(f[2]))

    def curved_reslice(
        self,
        path: npt.ArrayLike,
        up: npt.ArrayLike,
        *,
        width: float = 80.0,
        spacing: float | None = None,
        fill: float = np.nan,
    ) -> tuple[npt.NDArray[np.float32], FloatArray]:
        """A straightened curved MPR along a polyline ``path`` (N >= 2 patient points).

        The path is resampled every ``spacing`` mm of arc length (default: the
        smallest voxel size); row ``r`` of the image samples the line through
        path point ``r`` across the path, along ``up x tangent`` (``up`` is the
        normal of the plane the path was drawn on), ``width`` mm wide.  Lengths
        along the path are therefore true arc lengths.  Returns the image
        (rows along the path, columns across) and the patient position of every
        pixel, (rows, columns, 3), to map picks back to the volume.
        """
        pts = np.asarray(path, dtype=np.float64).reshape(-1, 3)
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        keep = np.concatenate([[True], seg > 1e-9])
        pts = pts[keep]
        if len(pts) < 2:
            raise ValueError("a curved MPR needs a path of at least two distinct points")
        step = float(spacing or float(np.min(self.spacing)))
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        s = np.arange(0.0, arc[-1] + 1e-9, step)
        centre = np.stack([np.interp(s, arc, pts[:, a]) for a in range(3)], axis=1)
        tangent = np.gradient(centre, axis=0) if len(centre) > 1 else np.diff(pts[:2], axis=0)
        tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
        across = np.cross(_unit(up), tangent)
        norms = np.linalg.norm(across, axis=1, keepdims=True)
        if np.any(norms < 1e-6):
            raise ValueError("the path must not run along the 'up' direction")
        across /= norms
        cols = max(1, int(round(width / step)) + 1)
        offsets = (np.arange(cols) - (cols - 1) / 2) * step
        points = centre[:, None, :] + offsets[None, :, None] * across[:, None, :]
        return self.sample(points, fill=fill), points

    def deskewed(self) -> Volume:
        """An orthogonal copy of a sheared (gantry-tilted) volume, resampled trilinearly on a grid
        with the same row/column axes, the slice axis along the normal, covering the same region."""
        if self.is_orthogonal:
            return self
        d = self.direction
        u, v = d[:, 0], d[:, 1]
        n = self.normal
        sp = self.spacing
        dk = float(abs(self.affine[:3, 2] @ n))
        basis = np.stack([u, v, n], axis=1)
        local = (self.corners() - self.origin) @ basis
        lo, hi = local.min(axis=0), local.max(axis=0)
        steps = np.array([sp[0], sp[1], dk])
        size = np.floor((hi - lo) / steps + 1e-6).astype(int) + 1
        affine = np.eye(4)
        affine[:3, :3] = basis * steps[None, :]
        affine[:3, 3] = self.origin + basis @ lo
        out = np.empty((size[2], size[1], size[0]), dtype=np.float32)
        inv = np.linalg.inv(self.affine) @ affine
        ii = np.arange(size[0], dtype=np.float64)
        jj = np.arange(size[1], dtype=np.float64)
        for k in range(size[2]):
            ijk = (
                inv[:3, 3] + k * inv[:3, 2] + ii[None, :, None] * inv[:3, 0] + jj[:, None, None] * inv[:3, 1]
            ).astype(np.float32)
            out[k] = _trilinear(self.array, ijk, float(self.array.min()))
        arr: np.ndarray = out
        if self.array.dtype == np.int16:
            arr = np.rint(out).astype(np.int16)
        return Volume(
            arr,
            affine,
            modality=self.modality,
            issues=self.issues,
            slices=self.slices,
            source_distances=np.asarray([r.position for r in self.slices], dtype=np.float64) @ n
            if self.slices and all(r.position is not None for r in self.slices)
            else None,
            window=self.window,
            rescale_type=self.rescale_type,
            frame_of_reference_uid=self.frame_of_reference_uid,
            series_instance_uid=self.series_instance_uid,
            study_instance_uid=self.study_instance_uid,
        )


def _trilinear(array: np.ndarray, ijk: npt.NDArray[np.float32], fill: float) -> npt.NDArray[np.float32]:
    """Trilinear interpolation of ``array[k, j, i]`` at continuous indices ``ijk`` (..., 3)."""
    nk, nj, ni = array.shape
    flat = array.reshape(-1)
    out_shape = ijk.shape[:-1]
    coords = ijk.reshape(-1, 3)
    i, j, k = coords[:, 0], coords[:, 1], coords[:, 2]
    eps = np.float32(1e-4)
    valid = (i >= -eps) & (i <= ni - 1 + eps) & (j >= -eps) & (j <= nj - 1 + eps) & (k >= -eps) & (k <= nk - 1 + eps)
    result = np.full(coords.shape[0], fill, dtype=np.float32)
    if not valid.any():
        return result.reshape(out_shape)
    idx = np.flatnonzero(valid) if not valid.all() else None
    if idx is not None:
        i, j, k = i[idx], j[idx], k[idx]

    def split(x: npt.NDArray[np.float32], n: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32], int]:
        if n == 1:
            return np.zeros(x.shape, dtype=np.intp), np.zeros(x.shape, dtype=np.float32), 0
        x = np.clip(x, 0, n - 1)
        x0 = np.minimum(x.astype(np.intp), n - 2)
        return x0, (x - x0).astype(np.float32), 1

    i0, fi, si = split(i, ni)
    j0, fj, sj = split(j, nj)
    k0, fk, sk = split(k, nk)
    sj *= ni
    sk *= ni * nj
    base = (k0 * nj + j0) * ni + i0
    c = [flat.take(base + o).astype(np.float32) for o in (0, si, sj, sj + si, sk, sk + si, sk + sj, sk + sj + si)]
    c00 = c[0] + (c[1] - c[0]) * fi
    c01 = c[2] + (c[3] - c[2]) * fi
    c10 = c[4] + (c[5] - c[4]) * fi
    c11 = c[6] + (c[7] - c[6]) * fi
    c0 = c00 + (c01 - c00) * fj
    c1 = c10 + (c11 - c10) * fj
    vals = c0 + (c1 - c0) * fk
    if idx is None:
        return vals.reshape(out_shape)
    result[idx] = vals
    return result.reshape(out_shape)


# ----------------------------------------------------------------------------- building


def _read(source: Source) -> tuple[Dataset, str | None, bool]:
    """``(dataset, path, owned)``; ``owned`` is True for datasets read here from a file,
    whose pixel data is dropped once decoded."""
    if isinstance(source, Dataset):
        filename = getattr(source, "filename", None)
        return source, (filename if isinstance(filename, str) else None), False
    path = os.fspath(source)
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, EOFError) as exc:
        raise VolumeError(f"cannot read {path}: {exc}") from exc
    return ds, path, True


@dataclass
class _Loaded:
    """One source read and decoded by a worker: its planes and their modality transforms."""

    refs: list[SliceRef]
    planes: dict[int, np.ndarray]
    transforms: dict[int, ModalityTransform]


def _read_and_decode(source: Source) -> _Loaded:
    """Parse a file once and decode all its frames to modality values (int16 where they fit).

    Reading whole files (rather than headers first, pixels later) costs one open and
    one parse per file; the price is holding each decoded plane until the stack is sorted.
    """
    ds, path, owned = _read(source)
    refs = slice_refs(ds, path)
    planes: dict[int, np.ndarray] = {}
    transforms: dict[int, ModalityTransform] = {}
    for ref in refs:
        if not ref.has_geometry:
            continue
        t = _modality_of(ref)
        try:
            plane = _decode(ref, t)
        except HilumError as exc:
            raise VolumeError(f"{path or ref.sop_instance_uid}: {exc}") from exc
        if plane.dtype == np.int32:
            if plane.size == 0 or (plane.min() >= -32768 and plane.max() <= 32767):
                plane = plane.astype(np.int16)
            else:
                plane = plane.astype(np.float32)
        planes[ref.frame] = plane
        transforms[ref.frame] = t
    if owned and "PixelData" in ds:
        del ds.PixelData  # keep the header only
    return _Loaded(refs, planes, transforms)


def _modality_of(ref: SliceRef) -> ModalityTransform:
    return ModalityTransform.from_dataset(ref.header, ref.frame)


def _decode(ref: SliceRef, transform: ModalityTransform) -> np.ndarray:
    """Modality values of one plane: int16 or int32 when the transform keeps integers, else float32."""
    stored = frame_array(ref.header, ref.frame)
    if stored.ndim != 2:
        raise VolumeError(f"{ref.sop_instance_uid}: only single-sample (grayscale) images make a volume")
    if (
        transform.lut is None
        and stored.dtype.kind in "iu"
        and float(transform.slope).is_integer()
        and float(transform.intercept).is_integer()
    ):
        if transform.slope == 1 and stored.size and stored.dtype.itemsize <= 2:
            lo, hi = int(stored.min()) + int(transform.intercept), int(stored.max()) + int(transform.intercept)
            if -32768 <= lo and hi <= 32767:  # the common CT case: one pass, no int32 copy
                return np.add(stored, int(transform.intercept), dtype=np.int16, casting="unsafe")
        out = stored.astype(np.int32)
        if transform.slope != 1:
            out *= int(transform.slope)
        if transform.intercept:
            out += int(transform.intercept)
        return out
    return transform.apply(stored).astype(np.float32)


def _resample_regular(array: np.ndarray, distances: FloatArray, spacing: float) -> tuple[np.ndarray, FloatArray]:
    """Linear interpolation of slices at ``distances`` onto a regular grid of ``spacing``."""
    count = int(math.floor((distances[-1] - distances[0]) / spacing + 1e-6)) + 1
    targets = distances[0] + np.arange(count) * spacing
    out = np.empty((count, *array.shape[1:]), dtype=np.float32)
    for n, t in enumerate(targets):
        hi = int(np.searchsorted(distances, t, side="left"))
        if hi < len(distances) and abs(distances[hi] - t) < 1e-6:
            out[n] = array[hi]
            continue
        hi = min(max(hi, 1), len(distances) - 1)
        lo = hi - 1
        w = (t - distances[lo]) / (distances[hi] - distances[lo])
        out[n] = array[lo] * np.float32(1 - w) + array[hi] * np.float32(w)
    if array.dtype == np.int16:
        return np.rint(out).astype(np.int16), targets
    return out, targets


def build_volume(
    sources: Iterable[Source] | Source,
    *,
    regularize: bool = True,
    stack_id: str | None = None,
    workers: int | None = None,
) -> Volume:
    """Build one :class:`Volume` from a series: classic single-frame instances, an enhanced
    multi-frame object, or both (Datasets or file paths).

    Slices are sorted by :func:`sort_slices`.  Values are the output of the
    Modality LUT stage (PS3.3 C.11.1) of each frame, so mixed Rescale
    Slope/Intercept across slices (common in PET and MR) give one consistent
    volume.  With ``regularize`` (the default) a stack with irregular spacing
    or missing slices is resampled linearly along the normal onto its median
    spacing, and a :attr:`IssueKind.RESAMPLED` issue says so; without it the
    slices are stacked as if regular (what many viewers silently do).  A
    tilted gantry keeps its exact, sheared affine (see :meth:`Volume.deskewed`).

    Each file is parsed once and decoded at once (pixel data through
    :func:`hilum.dicom.pixels.frame_array`), on ``workers`` threads (default:
    the CPU count, at most 8).
    """
    if isinstance(sources, (Dataset, str, os.PathLike)):
        sources = [sources]
    src_list = list(sources)
    if not src_list:
        raise VolumeError("no images to build a volume from")
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        loaded = list(pool.map(_read_and_decode, src_list))
    owner: dict[int, _Loaded] = {}
    refs: list[SliceRef] = []
    for item in loaded:
        for r in item.refs:
            owner[id(r)] = item
            refs.append(r)
    stack = sort_slices(refs, stack_id=stack_id)
    planes = [owner[id(r)].planes[r.frame] for r in stack.slices]
    transforms = [owner[id(r)].transforms[r.frame] for r in stack.slices]
    dtype = np.int16 if all(p.dtype == np.int16 for p in planes) else np.float32
    array = np.empty((len(planes), *planes[0].shape), dtype=dtype)
    for k, p in enumerate(planes):
        array[k] = p
    del loaded, owner, planes
    first = stack.slices[0]
    windows = windows_from_dataset(first.header, first.frame)
    return _finish(
        stack,
        array,
        regularize=regularize,
        modality=str(first.header.get("Modality", "") or ""),
        window=windows[0] if windows else None,
        rescale_type=transforms[0].rescale_type,
        frame_of_reference_uid=str(first.header.get("FrameOfReferenceUID", "") or ""),
        series_instance_uid=str(first.header.get("SeriesInstanceUID", "") or ""),
        study_instance_uid=str(first.header.get("StudyInstanceUID", "") or ""),
    )


def _finish(stack: SliceStack, array: np.ndarray, *, regularize: bool, **meta: object) -> Volume:
    """The volume of a sorted stack whose planes are ``array`` (in ``stack.slices`` order)."""
    issues = list(stack.issues)
    distances = stack.distances
    source_distances: FloatArray | None = None
    spacing = stack.spacing
    if not stack.regular and len(stack.slices) > 1 and regularize:
        array, targets = _resample_regular(array, distances, spacing)
        source_distances = distances
        issues.append(
            GeometryIssue(
                IssueKind.RESAMPLED,
                f"resampled {len(distances)} slices onto {len(targets)} slices {spacing:g} mm apart "
                "(linear interpolation along the normal)",
            )
        )
    first = stack.slices[0]
    assert first.orientation is not None and first.pixel_spacing is not None and first.position is not None
    dr, dc = first.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = first.row_direction * dc
    affine[:3, 1] = first.column_direction * dr
    affine[:3, 2] = stack.step
    affine[:3, 3] = first.position
    for issue in issues:
        logger.info("volume %s: %s", meta.get("series_instance_uid", ""), issue.message)
    return Volume(array, affine, issues=tuple(issues), slices=stack.slices, source_distances=source_distances, **meta)  # type: ignore[arg-type]


def volume_from_planes(
    planes: Sequence[npt.ArrayLike] | np.ndarray,
    positions: Sequence[Sequence[float]],
    orientation: Sequence[float] | Sequence[Sequence[float]],
    pixel_spacing: Sequence[float] | Sequence[Sequence[float]],
    *,
    regularize: bool = True,
    sop_instance_uids: Sequence[str] | None = None,
    frames: Sequence[int] | None = None,
    paths: Sequence[str | None] | None = None,
    modality: str = "",
    window: Window | None = None,
    rescale_type: str = "",
    frame_of_reference_uid: str = "",
    series_instance_uid: str = "",
    study_instance_uid: str = "",
) -> Volume:
    """A volume from planes that are already decoded to modality values (e.g. the 2D viewer's
    loaded stack, or AI output), with their Image Position (Patient), Image Orientation
    (Patient) (one for all or one per plane) and Pixel Spacing (row, column).

    The same :func:`sort_slices` checks and regularisation as :func:`build_volume` apply; the
    planes may come in any order.  Integer values that fit make an int16 volume, else float32.
    """
    n = len(planes)
    if n == 0:
        raise VolumeError("no planes to build a volume from")
    if len(positions) != n:
        raise ValueError(f"{n} planes but {len(positions)} positions")
    orients = [orientation] * n if np.ndim(orientation) == 1 else list(orientation)  # type: ignore[list-item]
    spacings = [pixel_spacing] * n if np.ndim(pixel_spacing) == 1 else list(pixel_spacing)  # type: ignore[list-item]
    refs = []
    for k in range(n):
        shape = np.shape(planes[k])
        header = Dataset()
        header.Modality = modality
        refs.append(
            SliceRef(
                header=header,
                frame=int(frames[k]) if frames is not None else 0,
                path=paths[k] if paths is not None else None,
                sop_instance_uid=sop_instance_uids[k] if sop_instance_uids is not None else "",
                instance_number=k + 1,
                position=_floats(positions[k], 3),  # type: ignore[arg-type]
                orientation=_floats(orients[k], 6),  # type: ignore[arg-type]
                rows=int(shape[0]),
                columns=int(shape[1]),
                pixel_spacing=_floats(spacings[k], 2),  # type: ignore[arg-type]
            )
        )
    index = {id(r): k for k, r in enumerate(refs)}
    stack = sort_slices(refs)
    chosen = [np.asarray(planes[index[id(r)]]) for r in stack.slices]
    integer = all(a.dtype.kind in "iub" or (a.size and np.all(np.mod(a, 1) == 0)) for a in chosen)
    fits = all(a.size == 0 or (a.min() >= -32768 and a.max() <= 32767) for a in chosen)
    array = np.empty((len(chosen), *chosen[0].shape), dtype=np.int16 if integer and fits else np.float32)
    for k, a in enumerate(chosen):
        array[k] = a
    return _finish(
        stack,
        array,
        regularize=regularize,
        modality=modality,
        window=window,
        rescale_type=rescale_type,
        frame_of_reference_uid=frame_of_reference_uid,
        series_instance_uid=series_instance_uid,
        study_instance_uid=study_instance_uid,
    )


def load_volume(paths: Iterable[str | os.PathLike[str]], **kwargs: object) -> Volume:
    """:func:`build_volume` over files on disk (e.g. ``archive.instances(series_uid=...)`` paths)."""
    return build_volume([os.fspath(p) for p in paths], **kwargs)  # type: ignore[arg-type]
