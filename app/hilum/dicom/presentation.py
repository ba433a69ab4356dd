"""Grayscale Softcopy Presentation State (GSPS): what a reader drew and saw, as DICOM.

:func:`make_gsps` turns :class:`~hilum.dicom.annotations.Annotation` objects and
per-image :class:`DisplayState` into a GSPS instance built by highdicom
(``highdicom.pr.GrayscaleSoftcopyPresentationState``, PS3.3 A.33.1);
:func:`read_gsps` turns a GSPS — ours or another system's — back into
annotations and display states.

Coordinates. Our image coordinates put pixel centres at integers (the centre
of the top-left pixel is ``(0, 0)``). GSPS graphic data in PIXEL units (PS3.3
C.10.5.1.1, Graphic Annotation Units) put the top-left *corner* of the top-left
pixel at ``0.0\\0.0`` and its bottom-right corner at ``1.0\\1.0``, so a pixel
centre ``(c, r)`` is ``c + 0.5\\r + 0.5`` there (:func:`to_pixel_units`,
:func:`from_pixel_units`). PS3.3 also confines PIXEL values to
``0\\0 .. Columns\\Rows``: a point a reader dragged off the image is written at
the image border (the only lossy case). DISPLAY units (fractions of the
displayed area after the spatial transformation, C.10.4/C.10.5), used by some
other systems, are converted back to image coordinates when read.

Display state. W/L goes into the Softcopy VOI LUT Module (C.11.8, one item
per window, referencing its images); the zoomed area into the Displayed Area
Module (C.10.4: Displayed Area TLHC/BRHC are 1-based pixel numbers — the
pixels shown top-left and bottom-right *after* the spatial transformation —
so a sub-pixel zoom box is rounded to whole pixels); rotation and horizontal
flip into the Spatial Transformation Module (C.10.6) and inversion into the
Softcopy Presentation LUT Module (C.11.6: a GSPS ignores MONOCHROME1, so a
MONOCHROME1 image that should look as its modality meant is written INVERSE).
Rotation, flip and the presentation LUT are one per GSPS instance:
:func:`make_gsps` refuses states that disagree on them, and
:func:`make_gsps_objects` makes one GSPS per such group.

Annotations are written as plain graphic objects every viewer draws (POINT,
POLYLINE, ELLIPSE, text anchored at a point), each carrying Tracking ID
``<kind>:<uid>`` and a Tracking UID so that our own reader restores the exact
kind (an arrow from a length, a rectangle from a freehand polygon) and
identity; the graphic objects of one annotation share them.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

import hilum
from hilum.dicom.annotations import KINDS, Annotation, value_lines

__all__ = [
    "DisplayState",
    "from_pixel_units",
    "make_gsps",
    "make_gsps_objects",
    "read_gsps",
    "to_pixel_units",
    "tracking_uid",
]

log = logging.getLogger(__name__)

GSPS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
MANUFACTURER = "Hilum"
LAYER_MEASUREMENTS = "MEASUREMENTS"
LAYER_ANNOTATIONS = "ANNOTATIONS"
_TRACKING = re.compile(r"^([a-z]+):([0-9A-Za-z_.-]+)$")
_ARROW_HEAD = 0.25  # arrow wings: this fraction of the shaft, at most 12 px
Point = tuple[float, float]
Key = tuple[str, int]


@dataclass
class DisplayState:
    """What the reader saw on one image, to reproduce exactly.

    ``displayed_area`` is the image region shown, as its top-left and
    bottom-right *edges* in image coordinates of the unrotated image (the whole
    image of C columns and R rows is ``((-0.5, -0.5), (C - 0.5, R - 0.5))``);
    ``None`` means the whole image. It is written in whole pixels and kept to
    the image (a viewport showing margins around the image reads back as the
    part of the image it shows). ``rotation`` is clockwise in degrees (0, 90,
    180, 270), applied before ``flip_horizontal`` (PS3.3 C.10.6). ``invert``
    is the reader's inversion relative to the normal look of the image.
    ``size_mode`` is Presentation Size Mode (C.10.4): SCALE TO FIT (the area
    fills the viewport), TRUE SIZE, or MAGNIFY with ``magnification``.
    """

    window_center: float | None = None
    window_width: float | None = None
    displayed_area: tuple[tuple[float, float], tuple[float, float]] | None = None
    rotation: int = 0
    flip_horizontal: bool = False
    invert: bool = False
    size_mode: str = "SCALE TO FIT"
    magnification: float | None = None


# --------------------------------------------------------------------------- coordinates


def to_pixel_units(x: float, y: float) -> Point:
    """Image coordinates (pixel centres at integers) → GSPS/SR PIXEL units (corner of the first pixel at 0)."""
    return (float(x) + 0.5, float(y) + 0.5)


def from_pixel_units(c: float, r: float) -> Point:
    """GSPS/SR PIXEL units (PS3.3 C.10.5.1.1, C.18.6.1.2) → image coordinates."""
    return (float(c) - 0.5, float(r) - 0.5)


def tracking_uid(uid: str) -> str:
    """A DICOM UID for an annotation uid: ``2.25.<int>`` of its uuid4 hex (PS3.5 B.2), else a uuid5 of it."""
    try:
        value = uuid.UUID(hex=uid).int
    except ValueError:
        value = uuid.uuid5(uuid.NAMESPACE_OID, uid).int
    return f"2.25.{value}"


def annotation_uid(tracking: str | None) -> str | None:
    """The annotation uid a :func:`tracking_uid` came from (``None`` if it is not a ``2.25`` UID)."""
    if not tracking or not str(tracking).startswith("2.25."):
        return None
    try:
        return uuid.UUID(int=int(str(tracking)[5:])).hex
    except ValueError:
        return None


def _view_matrix(rotation: int, flip: bool) -> np.ndarray:
    """The 2x2 map from image directions to screen directions: rotate clockwise, then flip (C.10.6)."""
    turns = (int(rotation) // 90) % 4
    m = np.eye(2)
    cw = np.array([[0.0, -1.0], [1.0, 0.0]])  # (u, v) -> (-v, u): y down, so this is clockwise
    for _ in range(turns):
        m = cw @ m
    if flip:
        m = np.array([[-1.0, 0.0], [0.0, 1.0]]) @ m
    return m


def _area_pixels(
    area: tuple[tuple[float, float], tuple[float, float]], rotation: int, flip: bool, cols: int, rows: int
) -> tuple[list[int], list[int]]:
    """Displayed Area TLHC, BRHC (1-based column\\row of the pixels shown top-left / bottom-right) of an edge box.

    The box is kept to the image: a viewport wider than the image's aspect (or zoomed out past it)
    shows more than the image, and SCALE TO FIT already says the rendered area may exceed the
    specified one when the aspects differ (C.10.4). Negative corners are legal DICOM (SL) but
    dciodvfy (dicom3tools 2022) reads them unsigned and reports an inconsistency error.
    """
    (ax, ay), (bx, by) = area
    x0, x1 = sorted((float(ax), float(bx)))
    y0, y1 = sorted((float(ay), float(by)))
    i0, i1 = round(x0 + 1.5), round(x1 + 0.5)  # first / last 1-based column inside the box
    j0, j1 = round(y0 + 1.5), round(y1 + 0.5)
    i0, i1 = min(max(i0, 1), cols), min(max(i1, 1), cols)
    j0, j1 = min(max(j0, 1), rows), min(max(j1, 1), rows)
    i1, j1 = max(i1, i0), max(j1, j0)
    m = _view_matrix(rotation, flip)
    corners = [(i0, j0), (i1, j0), (i1, j1), (i0, j1)]
    cx, cy = (i0 + i1) / 2, (j0 + j1) / 2
    screen = [m @ np.array([c - cx, r - cy]) for c, r in corners]
    tl = min(range(4), key=lambda k: screen[k][0] + screen[k][1])
    br = max(range(4), key=lambda k: screen[k][0] + screen[k][1])
    return [int(corners[tl][0]), int(corners[tl][1])], [int(corners[br][0]), int(corners[br][1])]


def _area_edges(tlhc: Sequence[Any], brhc: Sequence[Any]) -> tuple[tuple[float, float], tuple[float, float]]:
    """The edge box (image coordinates) of Displayed Area TLHC/BRHC pixels, whichever corners they name."""
    c0, c1 = sorted((int(tlhc[0]), int(brhc[0])))
    r0, r1 = sorted((int(tlhc[1]), int(brhc[1])))
    return ((c0 - 1.5, r0 - 1.5), (c1 - 0.5, r1 - 0.5))


def _display_to_image(
    points: np.ndarray, area: tuple[tuple[float, float], tuple[float, float]], rotation: int, flip: bool
) -> list[Point]:
    """DISPLAY units (0..1 over the displayed area after rotation/flip, C.10.5.1.1) → image coordinates."""
    (x0, y0), (x1, y1) = area
    m = _view_matrix(rotation, flip)
    inv = np.linalg.inv(m)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    size = np.abs(m @ np.array([x1 - x0, y1 - y0]))  # width, height on screen
    out = []
    for s, t in points:
        screen = np.array([(float(s) - 0.5) * size[0], (float(t) - 0.5) * size[1]])
        p = centre + inv @ screen
        out.append((float(p[0]), float(p[1])))
    return out


# --------------------------------------------------------------------------- writing


def _frame_count(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
            return float(value)
        return float(value[0]) if len(value) else None
    except (TypeError, ValueError):
        return None


def _state_for(states: Mapping[Any, DisplayState], sop: str, frame: int) -> DisplayState | None:
    return states.get((sop, frame)) or states.get(sop)


def _clamp(points: Iterable[Point], cols: int, rows: int) -> np.ndarray:
    arr = np.array([to_pixel_units(x, y) for x, y in points], dtype=float).reshape(-1, 2)
    clipped = np.clip(arr, [0.0, 0.0], [float(cols), float(rows)])
    if not np.array_equal(arr, clipped):
        log.warning("annotation points outside the image written at its border (PS3.3 C.10.5.1.1)")
    return clipped


def _arrow_wings(tail: Point, head: Point) -> list[Point]:
    dx, dy = head[0] - tail[0], head[1] - tail[1]
    n = math.hypot(dx, dy)
    if n == 0:
        return []
    size = min(_ARROW_HEAD * n, 12.0)
    ux, uy = dx / n, dy / n
    out = []
    for sign in (1, -1):
        ang = math.radians(25) * sign
        rx = ux * math.cos(ang) - uy * math.sin(ang)
        ry = ux * math.sin(ang) + uy * math.cos(ang)
        out.append((head[0] - rx * size, head[1] - ry * size))
    return [out[0], head, out[1]]


def _ellipse_axes(p0: Point, p1: Point) -> list[Point]:
    """ELLIPSE graphic data (major axis end points, then minor axis end points) of an axis-aligned box."""
    x0, x1 = sorted((p0[0], p1[0]))
    y0, y1 = sorted((p0[1], p1[1]))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    horizontal = [(x0, cy), (x1, cy)]
    vertical = [(cx, y0), (cx, y1)]
    return horizontal + vertical if (x1 - x0) >= (y1 - y0) else vertical + horizontal


def _objects(
    ann: Annotation, cols: int, rows: int, values: Mapping[str, Any] | None = None
) -> tuple[list[hd.pr.GraphicObject], list[hd.pr.TextObject]]:
    """The GSPS graphic and text objects of one annotation (PIXEL units).

    With *values* (:meth:`Annotation.values`), the numbers as the viewer shows them are added as a
    text next to the graphic, so that other viewers show them too; its Tracking ID ``values:<uid>``
    tells our reader to leave it out (the numbers are recomputed from the graphic).
    """
    tid, tuid = f"{ann.kind}:{ann.uid}"[:64], tracking_uid(ann.uid)
    pts = ann.points
    graphics: list[tuple[str, list[Point]]] = []
    k = ann.kind
    if k == "point":
        graphics.append(("POINT", pts))
    elif k in ("length", "angle"):
        graphics.append(("POLYLINE", pts))
    elif k == "arrow":
        graphics.append(("POLYLINE", pts))
        wings = _arrow_wings(pts[0], pts[1])
        if wings:
            graphics.append(("POLYLINE", wings))
    elif k == "cobb":
        graphics += [("POLYLINE", pts[0:2]), ("POLYLINE", pts[2:4])]
    elif k == "rect":
        (ax, ay), (bx, by) = pts
        graphics.append(("POLYLINE", [(ax, ay), (bx, ay), (bx, by), (ax, by), (ax, ay)]))
    elif k == "ellipse":
        graphics.append(("ELLIPSE", _ellipse_axes(pts[0], pts[1])))
    elif k == "freehand":
        graphics.append(("POLYLINE", [*pts, pts[0]]))
    gobjs = [
        hd.pr.GraphicObject(
            graphic_type=t, graphic_data=_clamp(p, cols, rows), units="PIXEL", tracking_id=tid, tracking_uid=tuid
        )
        for t, p in graphics
    ]
    tobjs = []
    if ann.text or k == "text":
        anchor = _clamp(pts[:1], cols, rows)[0]
        tobjs.append(
            hd.pr.TextObject(
                text_value=(ann.text or " ")[:1024],
                units="PIXEL",
                anchor_point=(float(anchor[0]), float(anchor[1])),
                anchor_point_visible=k != "text",
                tracking_id=tid,
                tracking_uid=tuid,
            )
        )
    lines = value_lines(k, dict(values)) if values else []
    if lines:
        anchor = _clamp(pts[-1:], cols, rows)[0]
        tobjs.append(
            hd.pr.TextObject(
                text_value="\n".join(lines)[:1024],
                units="PIXEL",
                anchor_point=(float(anchor[0]), float(anchor[1])),
                anchor_point_visible=False,
                tracking_id=f"values:{ann.uid}"[:64],
                tracking_uid=tracking_uid(uuid.uuid5(uuid.NAMESPACE_OID, f"values:{ann.uid}").hex),
            )
        )
    return gobjs, tobjs


def _global_state(states: Iterable[DisplayState]) -> tuple[int, bool, bool]:
    found = {((int(s.rotation) // 90 % 4) * 90, bool(s.flip_horizontal), bool(s.invert)) for s in states}
    if len(found) > 1:
        raise ValueError(
            "one GSPS has one rotation, flip and inversion for all its images (PS3.3 C.10.6, C.11.6); "
            f"these states differ ({sorted(found)}): use make_gsps_objects"
        )
    return next(iter(found)) if found else (0, False, False)


def make_gsps(
    images: Sequence[Dataset],
    annotations: Iterable[Annotation],
    states: Mapping[str, DisplayState] | Mapping[tuple[str, int], DisplayState],
    *,
    series_uid: str | None = None,
    description: str = "Hilum annotations",
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    series_number: int = 9901,
    values: Mapping[str, Mapping[str, Any]] | None = None,
) -> Dataset:
    """A GSPS holding *annotations* and the display *states* of the images they are on.

    *images* are the headers of the study's images (pixel data not needed);
    the GSPS references those that carry an annotation or have a state
    (*states* keyed by SOP Instance UID, or by ``(SOP Instance UID, frame)``).
    Raises ``ValueError`` when the states disagree on rotation, flip or
    inversion (one per GSPS, see :func:`make_gsps_objects`) or an annotation
    names an image not in *images*. *values* (annotation uid →
    :meth:`Annotation.values`, optional) adds each measurement's numbers as a
    text for other viewers.
    """
    anns = list(annotations)
    st: Mapping[Any, DisplayState] = states
    by_uid = {str(ds.SOPInstanceUID): ds for ds in images}
    keys: dict[Key, None] = {}
    for a in anns:
        if a.sop_instance_uid not in by_uid:
            raise ValueError(f"annotation {a.uid} is on image {a.sop_instance_uid}, which is not among the images")
        keys[(a.sop_instance_uid, a.frame)] = None
    for key in st:
        sop, frame = (key, None) if isinstance(key, str) else key
        if sop not in by_uid:
            continue
        if frame is None:
            n = _frame_count(by_uid[sop])
            if n == 1:
                keys[(sop, 0)] = None
            else:
                for f in range(n):
                    keys[(sop, f)] = None
        else:
            keys[(sop, int(frame))] = None
    if not keys:
        raise ValueError("a GSPS needs at least one annotated image or display state")
    rotation, flip, invert = _global_state([s for s in st.values()])
    ref_uids = list(dict.fromkeys(k[0] for k in keys))
    refs = [by_uid[u] for u in ref_uids]

    layers = [
        hd.pr.GraphicLayer(layer_name=LAYER_MEASUREMENTS, order=1, description="Measurements and ROIs"),
        hd.pr.GraphicLayer(layer_name=LAYER_ANNOTATIONS, order=2, description="Arrows and text"),
    ]
    layer_of = {k: LAYER_ANNOTATIONS if k in ("arrow", "text") else LAYER_MEASUREMENTS for k in KINDS}
    grouped: dict[tuple[str, int, str], list[Annotation]] = defaultdict(list)
    for a in anns:
        grouped[(a.sop_instance_uid, a.frame, layer_of[a.kind])].append(a)
    graphic_annotations: dict[tuple[int, int], list[hd.pr.GraphicAnnotation]] = defaultdict(list)
    for (sop, frame, layer_name), group in grouped.items():
        ds = by_uid[sop]
        cols, rows = int(ds.Columns), int(ds.Rows)
        gobjs: list[hd.pr.GraphicObject] = []
        tobjs: list[hd.pr.TextObject] = []
        for a in group:
            g, t = _objects(a, cols, rows, (values or {}).get(a.uid))
            gobjs += g
            tobjs += t
        layer = layers[0] if layer_name == LAYER_MEASUREMENTS else layers[1]
        frames = frame + 1 if _frame_count(ds) > 1 else None
        graphic_annotations[(rows, cols)].append(
            hd.pr.GraphicAnnotation(
                referenced_images=[ds],
                graphic_layer=layer,
                referenced_frame_number=frames,
                graphic_objects=gobjs or None,
                text_objects=tobjs or None,
            )
        )

    # highdicom requires one image size per GSPS; the others' references are added below
    sizes = list(dict.fromkeys((int(ds.Rows), int(ds.Columns)) for ds in refs))
    first = [ds for ds in refs if (int(ds.Rows), int(ds.Columns)) == sizes[0]]
    voi = _voi_items(keys, by_uid, st)
    first_uids = {str(ds.SOPInstanceUID) for ds in first}
    voi_first = _voi_items({k: None for k in keys if k[0] in first_uids}, by_uid, st)
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=first,
        series_instance_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="Hilum",
        software_versions=hilum.__version__,
        device_serial_number="0",
        content_label="HILUM",
        content_description=description[:64],
        graphic_annotations=graphic_annotations.get(sizes[0]) or None,
        graphic_layers=layers if anns else None,
        modality_lut_transformation=_modality_lut(refs),
        voi_lut_transformations=voi_first or None,
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape="INVERSE" if _inverse(invert, first[0]) else "IDENTITY"
        ),
    )
    if len(sizes) > 1:
        _add_references(gsps, refs)
        for size in sizes[1:]:
            for item in graphic_annotations.get(size, []):
                gsps.GraphicAnnotationSequence.append(item)
    if voi:
        # highdicom copies the images' VOI when given none; ours reference each image explicitly
        gsps.SoftcopyVOILUTSequence = DicomSequence(voi)
    gsps.DisplayedAreaSelectionSequence = DicomSequence(_displayed_areas(keys, by_uid, st, rotation, flip))
    gsps.ImageRotation = rotation
    _series_body_part(gsps, refs)
    gsps.ImageHorizontalFlip = "Y" if flip else "N"
    return gsps


def _modality_lut(refs: Sequence[Dataset]) -> hd.ModalityLUTTransformation | None:
    """The Modality LUT Module (C.11.1) for all *refs*: one rescale per GSPS (PS3.3 A.33.1).

    Enhanced multi-frame images are left to highdicom (it reads their functional groups); a legacy
    multi-frame or single-frame image gives its Rescale Slope / Intercept, or the identity.
    """
    if any("SharedFunctionalGroupsSequence" in ds for ds in refs):
        return None
    found = set()
    for ds in refs:
        slope, intercept = _first(ds.get("RescaleSlope")), _first(ds.get("RescaleIntercept"))
        kind = str(ds.get("RescaleType", "") or ("HU" if str(ds.get("Modality", "")) == "CT" else "US"))
        found.add((1.0 if slope is None else slope, 0.0 if intercept is None else intercept, kind))
    if len(found) > 1:
        raise ValueError(
            "the images have different Rescale Slope / Intercept / Type and one GSPS has one Modality LUT "
            "(PS3.3 C.11.1): make one GSPS per series"
        )
    slope, intercept, kind = found.pop()
    valid = {v.value for v in hd.RescaleTypeValues}
    return hd.ModalityLUTTransformation(
        rescale_intercept=intercept, rescale_slope=slope, rescale_type=kind if kind in valid else "US"
    )


def _series_body_part(obj: Dataset, refs: Sequence[Dataset]) -> None:
    """General Series Body Part Examined and Laterality (Type 2C: needed for paired parts) from the images."""
    parts = {str(ds.get("BodyPartExamined", "")) for ds in refs}
    lat = {str(ds.get("Laterality", "")) for ds in refs}
    if len(parts) == 1 and (part := parts.pop()):
        obj.BodyPartExamined = part
    if len(lat) == 1 and (side := lat.pop()):
        obj.Laterality = side
    elif "BodyPartExamined" not in obj:
        obj.Laterality = ""  # unknown


def _inverse(invert: bool, image: Dataset) -> bool:
    return bool(invert) != (str(image.get("PhotometricInterpretation", "")) == "MONOCHROME1")


def _add_references(gsps: Dataset, refs: Sequence[Dataset]) -> None:
    """Referenced Series Sequence (C.11.11) for images of several sizes (highdicom allows one size)."""
    series: dict[str, list[Dataset]] = defaultdict(list)
    for ds in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        series[str(ds.SeriesInstanceUID)].append(item)
    seq = []
    for uid, items in series.items():
        s = Dataset()
        s.SeriesInstanceUID = uid
        s.ReferencedImageSequence = DicomSequence(items)
        seq.append(s)
    gsps.ReferencedSeriesSequence = DicomSequence(seq)


def _ref_item(ds: Dataset, frames: list[int] | None) -> Dataset:
    """An Image SOP Instance Reference Macro item (PS3.3 Table 10-3).

    Written here rather than by ``highdicom.ReferencedImageSequence``: that one looks each image's SOP
    class up in the standard's tables (~3 ms an image), 2.6 s of a 300-image GSPS's 3 s.
    """
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if _frame_count(ds) > 1 and frames:
        item.ReferencedFrameNumber = [f + 1 for f in frames] if len(frames) > 1 else frames[0] + 1
    return item


def _group_refs(keys: Iterable[Key], by_uid: Mapping[str, Dataset]) -> list[Dataset]:
    """One Referenced Image Sequence item per image (frames of a multi-frame image listed)."""
    frames: dict[str, list[int]] = defaultdict(list)
    for sop, f in keys:
        frames[sop].append(f)
    items: list[Dataset] = []
    for sop, fs in frames.items():
        ds = by_uid[sop]
        every = _frame_count(ds) == 1 or len(set(fs)) == _frame_count(ds)
        items.append(_ref_item(ds, None if every else sorted(set(fs))))
    return items


def _voi_items(keys: Mapping[Key, None], by_uid: Mapping[str, Dataset], states: Mapping[Any, DisplayState]) -> list:
    windows: dict[tuple[float, float], list[Key]] = defaultdict(list)
    for sop, frame in keys:
        s = _state_for(states, sop, frame)
        c = s.window_center if s is not None else None
        w = s.window_width if s is not None else None
        if c is None or w is None:
            ds = by_uid[sop]
            c, w = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if c is not None and w is not None and w > 0:
            windows[(float(c), float(w))].append((sop, frame))
    items = []
    for (c, w), ks in windows.items():
        item = hd.pr.SoftcopyVOILUTTransformation(window_center=c, window_width=w)
        item.ReferencedImageSequence = DicomSequence(_group_refs(ks, by_uid))  # type: ignore[assignment]
        items.append(item)
    return items


def _displayed_areas(
    keys: Mapping[Key, None],
    by_uid: Mapping[str, Dataset],
    states: Mapping[Any, DisplayState],
    rotation: int,
    flip: bool,
) -> list[Dataset]:
    groups: dict[tuple[Any, ...], list[Key]] = defaultdict(list)
    for sop, frame in keys:
        ds = by_uid[sop]
        cols, rows = int(ds.Columns), int(ds.Rows)
        s = _state_for(states, sop, frame)
        area = s.displayed_area if s is not None and s.displayed_area is not None else None
        if area is None:
            area = ((-0.5, -0.5), (cols - 0.5, rows - 0.5))
        tl, br = _area_pixels(area, rotation, flip, cols, rows)
        spacing = ds.get("PixelSpacing")
        mode = (s.size_mode if s is not None else "SCALE TO FIT").upper()
        mag = s.magnification if s is not None else None
        if mode == "TRUE SIZE" and not spacing:
            mode = "SCALE TO FIT"
        if mode == "MAGNIFY" and not mag:
            mode = "SCALE TO FIT"
        sp = tuple(float(v) for v in spacing) if spacing else None
        aspect = ds.get("PixelAspectRatio")
        ar = tuple(int(v) for v in aspect) if aspect and len(aspect) == 2 else (1, 1)
        groups[(tuple(tl), tuple(br), mode, mag, sp, ar)].append((sop, frame))
    items = []
    for (tl, br, mode, mag, sp, ar), ks in groups.items():
        item = Dataset()
        item.ReferencedImageSequence = DicomSequence(_group_refs(ks, by_uid))
        item.PixelOriginInterpretation = "VOLUME"
        item.DisplayedAreaTopLeftHandCorner = list(tl)
        item.DisplayedAreaBottomRightHandCorner = list(br)
        item.PresentationSizeMode = mode
        if sp is not None:
            item.PresentationPixelSpacing = list(sp)
        else:
            item.PresentationPixelAspectRatio = list(ar)
        if mode == "MAGNIFY":
            item.PresentationPixelMagnificationRatio = float(mag or 1.0)
        items.append(item)
    return items


def make_gsps_objects(
    images: Sequence[Dataset],
    annotations: Iterable[Annotation],
    states: Mapping[str, DisplayState] | Mapping[tuple[str, int], DisplayState],
    *,
    series_uid: str | None = None,
    description: str = "Hilum annotations",
    values: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Dataset]:
    """As :func:`make_gsps`, one GSPS per (rotation, flip, inversion) among the states, all in one series.

    Annotated images without a state go with the unrotated, unflipped,
    uninverted group.
    """
    series_uid = series_uid or generate_uid()
    anns = list(annotations)
    st: Mapping[Any, DisplayState] = states

    def group_of(s: DisplayState | None) -> tuple[int, bool, bool]:
        if s is None:
            return (0, False, False)
        return ((int(s.rotation) // 90 % 4) * 90, bool(s.flip_horizontal), bool(s.invert))

    sop_group: dict[str, tuple[int, bool, bool]] = {}
    state_groups: dict[tuple[int, bool, bool], dict[Any, DisplayState]] = defaultdict(dict)
    for key, s in st.items():
        state_groups[group_of(s)][key] = s
        sop_group.setdefault(key if isinstance(key, str) else key[0], group_of(s))
    ann_groups: dict[tuple[int, bool, bool], list[Annotation]] = defaultdict(list)
    for a in anns:
        ann_groups[sop_group.get(a.sop_instance_uid, (0, False, False))].append(a)
    out = []
    for n, g in enumerate(sorted(set(state_groups) | set(ann_groups)), start=1):
        out.append(
            make_gsps(
                images,
                ann_groups.get(g, []),
                state_groups.get(g, {}),
                series_uid=series_uid,
                description=description,
                instance_number=n,
                values=values,
            )
        )
    return out


# --------------------------------------------------------------------------- reading


def _refs_of(item: Dataset) -> list[tuple[str, list[int] | None]]:
    out = []
    for r in item.get("ReferencedImageSequence", []) or []:
        sop = str(r.get("ReferencedSOPInstanceUID", "") or "")
        if not sop:
            log.warning("GSPS: a Referenced Image Sequence item without a SOP Instance UID was skipped")
            continue
        frames = r.get("ReferencedFrameNumber")
        fl: list[int] | None = None
        if frames is not None and frames != "":
            many = frames if hasattr(frames, "__len__") and not isinstance(frames, str) else [frames]
            try:
                fl = [int(f) - 1 for f in many if int(f) >= 1] or None
            except (TypeError, ValueError):
                fl = None
        out.append((sop, fl))
    return out


def _all_refs(ds: Dataset) -> list[tuple[str, str, list[int] | None]]:
    out = []
    for s in ds.get("ReferencedSeriesSequence", []) or []:
        for sop, fl in _refs_of(s):
            out.append((str(s.get("SeriesInstanceUID", "")), sop, fl))
    return out


def _keys(refs: list[tuple[str, list[int] | None]]) -> list[Key]:
    out: list[Key] = []
    for sop, fl in refs:
        out.extend((sop, f) for f in (fl if fl else [0]))
    return out


def _applies(item: Dataset, everything: list[tuple[str, list[int] | None]]) -> list[Key]:
    """The (SOP UID, frame) keys an item applies to: its own references, else all the GSPS's images."""
    refs = _refs_of(item)
    return _keys(refs if refs else everything)


def _number(value: Any, default: float | None = None) -> float | None:
    try:
        return float(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def read_gsps(
    ds: Dataset, images: Sequence[Dataset] | None = None
) -> tuple[list[Annotation], dict[tuple[str, int], DisplayState]]:
    """The annotations and per-image display states of a GSPS (ours or another system's).

    States are keyed by ``(SOP Instance UID, frame)``; for an image without
    frames, and for a multi-frame one whose GSPS items name no frames, the key
    is frame 0 (``DisplayState`` then applies to all its frames). Graphic
    objects become annotations of the nearest kind (POINT → point, 2-point
    POLYLINE → length, 3-point → angle, closed polygon → freehand or rect,
    CIRCLE / axis-aligned ELLIPSE → ellipse, rotated ELLIPSE → freehand, text →
    text); DISPLAY units are converted through the displayed area. *images*
    (optional) tell which images are MONOCHROME1, whose GSPS shape is
    inverted (C.11.6).
    """
    sop = str(ds.get("SOPInstanceUID", ""))
    origin = f"gsps:{sop}"
    study = str(ds.get("StudyInstanceUID", ""))
    refs3 = _all_refs(ds)
    everything = [(s, fl) for _, s, fl in refs3]
    series_of = {s: ser for ser, s, _ in refs3}
    mono1 = {
        str(i.SOPInstanceUID) for i in images or () if str(i.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    }

    rotation = int(_number(ds.get("ImageRotation"), 0) or 0) % 360
    flip = str(ds.get("ImageHorizontalFlip", "N")).upper() == "Y"
    inverse = str(ds.get("PresentationLUTShape", "IDENTITY")).upper() == "INVERSE"

    areas: dict[Key, tuple[tuple[tuple[float, float], tuple[float, float]], str, float | None]] = {}
    for item in ds.get("DisplayedAreaSelectionSequence", []) or []:
        tl, br = item.get("DisplayedAreaTopLeftHandCorner"), item.get("DisplayedAreaBottomRightHandCorner")
        try:
            area = _area_edges(tl, br)
        except (TypeError, ValueError, IndexError):
            log.warning("GSPS %s: a displayed area without two corners was skipped", sop)
            continue
        mode = str(item.get("PresentationSizeMode", "SCALE TO FIT")).upper()
        mag = _number(item.get("PresentationPixelMagnificationRatio"))
        for key in _applies(item, everything):
            areas[key] = (area, mode, mag)

    windows: dict[Key, tuple[float, float]] = {}
    for item in ds.get("SoftcopyVOILUTSequence", []) or []:
        c, w = _first(item.get("WindowCenter")), _first(item.get("WindowWidth"))
        if c is None or w is None:
            continue  # a VOI LUT table: not a window the viewer can show as W/L
        for key in _applies(item, everything):
            windows[key] = (c, w)

    states: dict[Key, DisplayState] = {}
    for key in dict.fromkeys(_keys(everything)):
        shown = areas.get(key) or areas.get((key[0], 0))
        win = windows.get(key) or windows.get((key[0], 0))
        states[key] = DisplayState(
            window_center=win[0] if win else None,
            window_width=win[1] if win else None,
            displayed_area=shown[0] if shown else None,
            rotation=rotation,
            flip_horizontal=flip,
            invert=inverse != (key[0] in mono1),
            size_mode=shown[1] if shown else "SCALE TO FIT",
            magnification=shown[2] if shown else None,
        )

    def to_image(data: np.ndarray, units: str, key: Key, size: tuple[int, int] | None) -> list[Point]:
        if units.upper() == "DISPLAY":
            area = (areas.get(key) or areas.get((key[0], 0)) or (None, "", None))[0]
            if area is None:
                if size is None:
                    raise ValueError("DISPLAY units without a displayed area")
                area = ((-0.5, -0.5), (size[0] - 0.5, size[1] - 0.5))
            return _display_to_image(data, area, rotation, flip)
        return [from_pixel_units(c, r) for c, r in data]

    sizes = {str(i.SOPInstanceUID): (int(i.Columns), int(i.Rows)) for i in images or () if "Columns" in i}
    annotations: list[Annotation] = []
    for item in ds.get("GraphicAnnotationSequence", []) or []:
        targets = _applies(item, everything)
        # objects of one annotation share a Tracking UID: collect them per annotation
        tracked: dict[str, list[Dataset]] = defaultdict(list)
        loose: list[Dataset] = []
        for obj in list(item.get("GraphicObjectSequence", []) or []) + list(item.get("TextObjectSequence", []) or []):
            if str(obj.get("TrackingID", "") or "").startswith("values:"):
                continue  # our measurement numbers: recomputed from the graphic
            t = str(obj.get("TrackingUID", "") or "")
            (tracked[t] if t else loose).append(obj)
        bundles = list(tracked.values()) + [[o] for o in loose]
        for key in targets:
            for bundle in bundles:
                try:
                    a = _annotation(bundle, key, to_image, sizes.get(key[0]))
                except (ValueError, TypeError, KeyError, IndexError) as exc:
                    log.warning("GSPS %s: a graphic that is not readable was skipped (%s)", sop, exc)
                    continue
                if a is None:
                    continue
                a.series_uid = series_of.get(key[0], "")
                a.study_uid = study
                a.origin = origin
                if len(targets) > 1:
                    a.uid = uuid.uuid4().hex  # one graphic shown on several images: one annotation each
                annotations.append(a)
    return annotations, states


def _graphic_points(obj: Dataset) -> tuple[str, np.ndarray, str]:
    data = np.asarray([float(v) for v in obj.GraphicData], dtype=float)
    dims = int(obj.get("GraphicDimensions", 2) or 2)
    if dims != 2:
        raise ValueError(f"Graphic Dimensions {dims}")
    units = str(obj.get("GraphicAnnotationUnits", "PIXEL"))
    return str(obj.get("GraphicType", "POLYLINE")).upper(), data.reshape(-1, 2), units


def _closed(points: list[Point]) -> bool:
    return len(points) >= 4 and math.dist(points[0], points[-1]) < 1e-6


def _rect_box(points: list[Point]) -> list[Point] | None:
    """The two corners of a closed 5-point polyline that is an axis-aligned rectangle, else ``None``."""
    if len(points) != 5 or not _closed(points):
        return None
    p = points[:4]
    for i in range(4):
        a, b = p[i], p[(i + 1) % 4]
        if abs(a[0] - b[0]) > 1e-6 and abs(a[1] - b[1]) > 1e-6:
            return None
    return [p[0], p[2]]


def _ellipse(points: list[Point]) -> tuple[str, list[Point]]:
    (a0, a1, b0, b1) = points
    c = ((a0[0] + a1[0]) / 2, (a0[1] + a1[1]) / 2)
    ra, rb = math.dist(a0, a1) / 2, math.dist(b0, b1) / 2
    ux, uy = (a1[0] - a0[0]) / (2 * ra or 1), (a1[1] - a0[1]) / (2 * ra or 1)
    if abs(ux) < 1e-9 or abs(uy) < 1e-9:  # axis-aligned: the box
        rx, ry = (ra, rb) if abs(ux) >= abs(uy) else (rb, ra)
        return "ellipse", [(c[0] - rx, c[1] - ry), (c[0] + rx, c[1] + ry)]
    vx, vy = -uy, ux
    poly = []
    for k in range(64):
        t = 2 * math.pi * k / 64
        poly.append(
            (c[0] + ra * math.cos(t) * ux + rb * math.sin(t) * vx, c[1] + ra * math.cos(t) * uy + rb * math.sin(t) * vy)
        )
    return "freehand", poly


def _annotation(bundle: list[Dataset], key: Key, to_image: Any, size: tuple[int, int] | None) -> Annotation | None:
    """One annotation from the graphic / text objects of one bundle (one Tracking UID, or one loose object)."""
    hint_kind, hint_uid = None, None
    for obj in bundle:
        m = _TRACKING.match(str(obj.get("TrackingID", "") or ""))
        if m:
            hint_kind, hint_uid = m.group(1), m.group(2)
            break
    graphics = [o for o in bundle if "GraphicData" in o]
    texts = [o for o in bundle if "UnformattedTextValue" in o]
    text = "\n".join(str(t.UnformattedTextValue) for t in texts).strip()
    shapes = []
    for g in graphics:
        t, data, units = _graphic_points(g)
        shapes.append((t, to_image(data, units, key, size)))
    kind: str | None = None
    pts: list[Point] = []
    if shapes:
        t, p = shapes[0]
        if t == "POINT":
            kind, pts = "point", p[:1]
        elif t == "CIRCLE":
            r = math.dist(p[0], p[1])
            kind, pts = "ellipse", [(p[0][0] - r, p[0][1] - r), (p[0][0] + r, p[0][1] + r)]
        elif t == "ELLIPSE":
            kind, pts = _ellipse(p[:4])
        elif t in ("POLYLINE", "INTERPOLATED", "MULTIPOINT"):
            if hint_kind == "cobb" and len(shapes) >= 2:
                kind, pts = "cobb", p[:2] + shapes[1][1][:2]
            elif _closed(p):
                box = _rect_box(p)
                kind, pts = ("rect", box) if box is not None and hint_kind in (None, "rect") else ("freehand", p[:-1])
            elif len(p) == 2:
                kind, pts = ("arrow" if hint_kind == "arrow" else "length"), p
            elif len(p) == 3:
                kind, pts = "angle", p
            elif len(p) >= 3:
                kind, pts = "freehand", p
        else:
            raise ValueError(f"Graphic Type {t}")
    elif texts:
        t0 = texts[0]
        if "AnchorPoint" in t0:
            data = np.asarray([float(v) for v in t0.AnchorPoint]).reshape(1, 2)
            units = str(t0.get("AnchorPointAnnotationUnits", "PIXEL"))
        else:  # a bounding box without an anchor: the text sits at its top-left corner
            data = np.asarray([float(v) for v in t0.BoundingBoxTopLeftHandCorner]).reshape(1, 2)
            units = str(t0.get("BoundingBoxAnnotationUnits", "PIXEL"))
        kind, pts = "text", to_image(data, units, key, size)
    if kind is None:
        return None
    if (
        hint_kind in ("length", "angle", "point", "ellipse", "freehand", "text", "arrow", "cobb", "rect")
        and hint_kind != kind
    ):
        log.debug("GSPS tracking id says %s, the graphic reads as %s", hint_kind, kind)
    a = Annotation(kind=kind, sop_instance_uid=key[0], frame=key[1], points=pts, text=text)
    if hint_uid:
        a.uid = hint_uid
    return a
