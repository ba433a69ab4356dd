"""A series as the 2D viewer's stack: one record per frame, in the one slice order.

Pure (numpy + pydicom). :class:`FrameInfo` is what the workstation knows about
one frame without its pixels (geometry, pixel format, grayscale pipeline);
:func:`frames_from_dataset` reads it from a header, for classic single-frame
instances and enhanced multi-frame objects alike (geometry from
:mod:`hilum.dicom.geometry`). :class:`Stack` is those frames ordered by
:func:`hilum.dicom.geometry.order_slices` — the order the MPR/3D volume
(:mod:`hilum.dicom.volume`) is built in too, so viewer slice ``k`` and volume
slice :meth:`Stack.volume_index` ``(k)`` show the same plane.

Coordinates and image coordinates: see :mod:`hilum.dicom.geometry`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from hilum.dicom.geometry import (
    SLICE_DIRECTION,
    Direction,
    GeometryIssue,
    PlaneGeometry,
    SliceOrder,
    Spacing,
    decimals,
    is_enhanced,
    order_slices,
    pixel_spacing_of,
    slice_spacing_of,
    slice_thickness_of,
    stack_id_of,
)
from hilum.dicom.overlays import OverlayPlane, overlay_planes

__all__ = ["ORDER_KEYWORDS", "FrameInfo", "Stack", "frames_from_dataset", "middle_frame"]

logger = logging.getLogger(__name__)

Vec = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class FrameInfo:
    """What the workstation needs to know about one frame, without its pixels.

    One per frame of each instance of a series (single-frame instances have
    ``frame == 0``). ``geometry`` is None without a valid Image Position,
    Image Orientation and calibrated Pixel Spacing. ``pixel_offset`` is set by
    the loader for native (uncompressed little-endian) data: the file offset of
    the frame's bytes, so it can be read straight into a volume.
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
    slice_spacing: float | None = None
    """Spacing Between Slices (mm), the depth of a lone slice."""
    stack_id: str = ""
    """Stack ID of an enhanced object's frame (PS3.3 C.7.6.16.2.2)."""
    gantry_tilt: float | None = None
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
    overlays: tuple[OverlayPlane, ...] = ()
    """The overlay planes (60xx) drawn on this frame, bits not unpacked (:mod:`hilum.dicom.overlays`)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.sop_instance_uid, self.frame)

    @property
    def position(self) -> tuple[float, float, float] | None:
        """Image Position (Patient) of the frame, or None without geometry."""
        g = self.geometry
        return None if g is None else (float(g.origin[0]), float(g.origin[1]), float(g.origin[2]))

    @property
    def orientation(self) -> tuple[float, ...] | None:
        """Image Orientation (Patient) of the frame (row cosines, column cosines), or None."""
        return None if self.geometry is None else self.geometry.orientation

    @property
    def is_localizer(self) -> bool:
        """Image Type value 3 LOCALIZER (PS3.3 C.8.2.1.1.1), the usual scout/topogram flag."""
        return len(self.image_type) > 2 and self.image_type[2].upper() == "LOCALIZER"


def _value(ds: Dataset, tag: int, default: Any = None) -> Any:
    """The value of element *tag* (by tag: no keyword lookup; one conversion), *default* when absent."""
    elem = ds.get(tag)
    return default if elem is None else elem.value


def frames_from_dataset(
    ds: Dataset, path: str = "", *, pipeline_factory: Any = None, pixel_offset: int | None = None
) -> list[FrameInfo]:
    """One :class:`FrameInfo` per frame of *ds* (pixels are not read).

    Geometry comes from the Image Plane module, or for enhanced multi-frame
    objects from the Plane Position / Plane Orientation / Pixel Measures
    functional groups of each frame (PS3.3 C.7.6.16.2.1-3), through
    :mod:`hilum.dicom.geometry`. *pipeline_factory* ``(ds, frame) -> pipeline``
    attaches the grayscale pipeline; *pixel_offset* is the file offset of
    native pixel data (frame ``f`` then starts at ``pixel_offset + f * frame_bytes``).
    """
    try:
        frames = max(int(_value(ds, 0x00280008, 1) or 1), 1)  # Number of Frames
    except (TypeError, ValueError):
        frames = 1
    rows, columns = int(_value(ds, 0x00280010, 0) or 0), int(_value(ds, 0x00280011, 0) or 0)
    photometric = str(_value(ds, 0x00280004, "") or "MONOCHROME2").strip().upper()
    ba = int(_value(ds, 0x00280100, 16) or 16)  # Bits Allocated
    bs = int(_value(ds, 0x00280101, ba) or ba)  # Bits Stored
    signed = int(_value(ds, 0x00280103, 0) or 0) == 1  # Pixel Representation
    samples = int(_value(ds, 0x00280002, 1) or 1)  # Samples per Pixel
    meta = getattr(ds, "file_meta", None)
    tsyntax = str(_value(meta, 0x00020010, "")) if meta is not None else ""
    it = _value(ds, 0x00080008, ()) or ()  # Image Type
    image_type = (str(it),) if isinstance(it, str) else tuple(str(v) for v in it)
    numbers = decimals(ds, 0x00200013)
    instance_number = int(numbers[0]) if numbers else None
    tilt = decimals(ds, 0x00181120)
    for_uid = str(_value(ds, 0x00200052, "") or "")
    sop_uid = str(_value(ds, 0x00080018, "") or "")
    frame_bytes = rows * columns * samples * max(ba // 8, 1)
    enhanced = is_enhanced(ds)
    planes = overlay_planes(ds, source=path)  # () at the cost of 16 dict look-ups for most images
    out: list[FrameInfo] = []
    shared: tuple[Spacing, PlaneGeometry | None, float | None, float | None] | None = None
    for f in range(frames):
        if enhanced or shared is None:  # a classic object has one plane for all its frames
            spacing = pixel_spacing_of(ds, f, enhanced=enhanced)
            shared = (
                spacing,
                PlaneGeometry.of(ds, f, spacing, enhanced=enhanced, rows=rows, columns=columns),
                slice_thickness_of(ds, f, enhanced=enhanced),
                slice_spacing_of(ds, f, enhanced=enhanced),
            )
        spacing, geometry, thickness, between = shared
        pipeline = pipeline_factory(ds, f) if pipeline_factory is not None else None
        out.append(
            FrameInfo(
                path=path,
                frame=f,
                sop_instance_uid=sop_uid,
                instance_number=instance_number,
                rows=rows,
                columns=columns,
                samples=samples,
                geometry=geometry,
                spacing=spacing,
                slice_thickness=thickness,
                slice_spacing=between,
                stack_id=stack_id_of(ds, f, enhanced=enhanced),
                gantry_tilt=tilt[0] if tilt else None,
                frame_of_reference_uid=for_uid,
                photometric=photometric,
                bits_allocated=ba,
                bits_stored=bs,
                signed=signed,
                transfer_syntax=tsyntax,
                pipeline=pipeline,
                pixel_offset=None if pixel_offset is None else pixel_offset + f * frame_bytes,
                image_type=image_type,
                overlays=tuple(p for p in planes if p.overlay_frame(f) is not None) if planes else (),
            )
        )
    return out


class Stack:
    """Frames of one series in the one slice order, with the geometry of the whole.

    Wraps a :class:`~hilum.dicom.geometry.SliceOrder` of :class:`FrameInfo`:
    ``frames[k]`` is viewer slice ``k`` (every frame of the stack, duplicate
    positions included); :meth:`volume_index` is the slice of the volume built
    from the same order that shows frame ``k``'s plane. ``positions[k]`` is the
    signed distance (mm) of frame ``k`` along the image ``normal``, ``spacing``
    the median step between positions, ``uniform`` whether the steps are regular.
    """

    def __init__(self, order: SliceOrder[FrameInfo]) -> None:
        self.order = order
        self.frames: list[FrameInfo] = list(order.items)

    @classmethod
    def from_frames(cls, frames: Sequence[FrameInfo], *, direction: Direction | str = SLICE_DIRECTION) -> Stack:
        """The stack of a series' frames (:func:`~hilum.dicom.geometry.order_slices` chooses and orders it)."""
        return cls(order_slices(frames, direction=direction))

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> FrameInfo:
        return self.frames[index]

    @property
    def sort_method(self) -> str:
        return self.order.method

    @property
    def normal(self) -> Vec | None:
        return self.order.normal

    @property
    def positions(self) -> Vec | None:
        return self.order.positions

    @property
    def spacing(self) -> float | None:
        return self.order.spacing if len(self.order.unique) > 1 else None

    @property
    def uniform(self) -> bool:
        return self.order.regular

    @property
    def issues(self) -> tuple[GeometryIssue, ...]:
        return self.order.issues

    @property
    def excluded(self) -> tuple[FrameInfo, ...]:
        """The series' frames outside this stack (another size, orientation, Stack ID; no geometry)."""
        return self.order.excluded

    @property
    def rows(self) -> int:
        return self.frames[0].rows

    @property
    def columns(self) -> int:
        return self.frames[0].columns

    @property
    def frame_of_reference_uid(self) -> str:
        return self.frames[0].frame_of_reference_uid if self.frames else ""

    def volume_index(self, k: int) -> int:
        """The slice of the volume built from this order that lies at frame *k*'s position."""
        return self.order.volume_index[k]

    def index_of(self, sop_instance_uid: str, frame: int = 0) -> int | None:
        return self.order.index_of(sop_instance_uid, frame)

    def nearest_index(self, point: npt.ArrayLike, max_distance: float | None = None) -> int | None:
        """Index of the frame whose plane is nearest to a patient *point* (the first of duplicates).

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


ORDER_KEYWORDS = (
    "SOPInstanceUID", "InstanceNumber", "NumberOfFrames", "Rows", "Columns", "SamplesPerPixel",
    "PhotometricInterpretation", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "ImagerPixelSpacing", "NominalScannedPixelSpacing", "SliceThickness", "SpacingBetweenSlices",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
)  # fmt: skip
"""What :func:`frames_from_dataset` needs to place and group frames (a header read with only these
orders a series exactly as the full one)."""


def middle_frame(paths: Sequence[str | os.PathLike[str]]) -> tuple[str, int] | None:
    """``(path, frame)`` of the middle slice of a series' stack in the one slice order.

    What stands for a series (its thumbnail): item ``len // 2`` of
    :func:`~hilum.dicom.geometry.order_slices` over the headers (only
    :data:`ORDER_KEYWORDS` are read, about 0.25 ms a file), so it is the slice
    the viewer and the volume have at that index. Unreadable files are
    skipped; None when nothing is left.
    """
    frames: list[FrameInfo] = []
    for p in paths:
        path = os.fspath(p)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(ORDER_KEYWORDS))
        except Exception as exc:  # noqa: BLE001 - one bad file does not stop the series
            logger.debug("skipping %s: %s", path, exc)
            continue
        frames.extend(f for f in frames_from_dataset(ds, path) if f.rows and f.columns)
    if not frames:
        return None
    order = order_slices(frames)
    middle = order.items[len(order) // 2]
    return middle.path, middle.frame
