"""Measurements as DICOM SR (TID 1500) and key images as Key Object Selection, built and read with highdicom.

:func:`make_measurement_sr` writes a Comprehensive 3D SR Measurement Report
(PS3.16 TID 1500) with highdicom's templates: lengths, angles and Cobb angles
as TID 1501 measurement groups whose NUM (TID 300) is INFERRED FROM its SCOORD
(POLYLINE) on the source image — how OHIF/dcmjs write them — and ellipse /
rectangle / freehand ROIs and points as TID 1410 planar ROI groups (Image
Region SCOORD ELLIPSE / closed POLYLINE / POINT — 2D SCOORD has no POLYGON, C.18.6.1.2) with Area, Mean, Standard Deviation,
Minimum, Maximum. Codes: SCT for the quantities (Length 410668003, Angle
1483009, Cobb angle 285285000, Area 42798000, Mean 373098007, SD 386136009,
Minimum 255605001, Maximum 56851009), UCUM for units (mm, mm2, deg,
[hnsf'U]; ``1`` "no units" for unitless modality values; ``{px}`` / ``{px2}``
annotations for uncalibrated images), DCM for the document structure.
Tracking Identifier: the annotation's label (or kind); Tracking UID:
``2.25.<annotation uid>`` so a round trip keeps identity.

SCOORD graphic data uses the same pixel convention as GSPS PIXEL units (PS3.3
C.18.6.1.2: the top-left corner of the first pixel is ``0\\0``, its centre
``0.5\\0.5``); see :func:`hilum.dicom.presentation.to_pixel_units`.

:func:`read_measurement_sr` reads a TID 1500 report with highdicom's
``MeasurementReport`` parser, and any other SR (another system's Comprehensive
or Enhanced SR) by walking its content tree for SCOORDs that are SELECTED FROM
an image (by value or by reference): what is readable becomes annotations.
:func:`read_sr_measurements` also returns the numbers.

:func:`make_kos` / :func:`read_kos`: Key Object Selection (PS3.3 A.35.4,
TID 2010) with highdicom's ``KeyObjectSelectionDocument``; frames of a
multi-frame image are referenced by Referenced Frame Number.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

import hilum
from hilum.dicom.annotations import Annotation, KeyImage
from hilum.dicom.presentation import (
    _ellipse,
    _ellipse_axes,
    _rect_box,
    annotation_uid,
    from_pixel_units,
    to_pixel_units,
    tracking_uid,
)

__all__ = [
    "SRMeasurement",
    "make_kos",
    "make_measurement_sr",
    "read_kos",
    "read_measurement_sr",
    "read_sr_measurements",
]

log = logging.getLogger(__name__)

MANUFACTURER = "Hilum"
NO_UNITS = Code("1", "UCUM", "no units")
PIXELS = Code("{px}", "UCUM", "pixels")
SQUARE_PIXELS = Code("{px2}", "UCUM", "square pixels")
_LENGTH, _ANGLE, _COBB = codes.SCT.Length, codes.SCT.Angle, codes.SCT.CobbAngle
_AREA, _MEAN, _SD = codes.SCT.Area, codes.SCT.Mean, codes.SCT.StandardDeviation
_MIN, _MAX = codes.SCT.Minimum, codes.SCT.Maximum
_STATS = (("mean", _MEAN), ("sd", _SD), ("min", _MIN), ("max", _MAX))
_NAME_KEY = {
    ("SCT", "410668003"): "length",
    ("SCT", "1483009"): "angle",
    ("DCM", "110859"): "angle",
    ("SCT", "285285000"): "angle",
    ("SCT", "42798000"): "area",
    ("SCT", "373098007"): "mean",
    ("SCT", "386136009"): "sd",
    ("DCM", "113061"): "sd",
    ("SCT", "255605001"): "min",
    ("SCT", "56851009"): "max",
}


@dataclass
class SRMeasurement:
    """One number of an SR: its coded name, value, unit, and the annotation it was measured on (if readable)."""

    name: str
    value: float
    unit: str
    key: str = ""  # length / angle / area / mean / sd / min / max, or "" when the name is not one of ours
    annotation: Annotation | None = None
    tracking_uid: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- units


def _unit(text: str) -> Code:
    t = (text or "").strip()
    table = {
        "mm": codes.UCUM.Millimeter,
        "mm²": codes.UCUM.SquareMillimeter,
        "mm2": codes.UCUM.SquareMillimeter,
        "deg": codes.UCUM.Degree,
        "°": codes.UCUM.Degree,
        "HU": codes.UCUM.HounsfieldUnit,
        "px": PIXELS,
        "px²": SQUARE_PIXELS,
        "px2": SQUARE_PIXELS,
        "": NO_UNITS,
    }
    return table.get(t, Code(t, "UCUM", t))


def _unit_text(code: Any) -> str:
    v = str(getattr(code, "value", "") or "")
    return {"[hnsf'U]": "HU", "mm2": "mm²", "{px}": "px", "{px2}": "px²", "1": ""}.get(v, v)


# --------------------------------------------------------------------------- writing


def _source(ds: Dataset, frame: int) -> hd.sr.SourceImageForRegion:
    multi = int(ds.get("NumberOfFrames", 1) or 1) > 1
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID,
        referenced_frame_numbers=[frame + 1] if multi else None,
    )


def _pix(points: Iterable[tuple[float, float]]) -> np.ndarray:
    return np.array([to_pixel_units(x, y) for x, y in points], dtype=float).reshape(-1, 2)


def _tracking(a: Annotation) -> hd.sr.TrackingIdentifier:
    label = (a.text or a.kind).replace("\n", " ")[:64]
    return hd.sr.TrackingIdentifier(uid=tracking_uid(a.uid), identifier=label)


def _measurement_group(a: Annotation, ds: Dataset, v: Mapping[str, Any]) -> Any:
    k = a.kind
    if k in ("length", "angle", "cobb"):
        src = _source(ds, a.frame)
        if k == "length":
            name, value, unit = _LENGTH, v["length"], _unit(str(v.get("unit", "mm")))
            coords = [hd.sr.CoordinatesForMeasurement("POLYLINE", _pix(a.points), src)]
        else:
            name, value, unit = (_ANGLE if k == "angle" else _COBB), v["angle"], codes.UCUM.Degree
            parts = [a.points] if k == "angle" else [a.points[0:2], a.points[2:4]]
            coords = [hd.sr.CoordinatesForMeasurement("POLYLINE", _pix(p), _source(ds, a.frame)) for p in parts]
        m = hd.sr.Measurement(name=name, value=float(value), unit=unit, referenced_coordinates=coords)
        return hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=_tracking(a), measurements=[m])
    if k in ("ellipse", "rect", "freehand", "point"):
        if k == "ellipse":
            gtype, pts = "ELLIPSE", _ellipse_axes(a.points[0], a.points[1])
        elif k == "rect":
            (ax, ay), (bx, by) = a.points
            gtype, pts = "POLYLINE", [(ax, ay), (bx, ay), (bx, by), (ax, by), (ax, ay)]
        elif k == "freehand":
            gtype, pts = "POLYLINE", [*a.points, a.points[0]]
        else:
            gtype, pts = "POINT", a.points[:1]
        region = hd.sr.ImageRegion(graphic_type=gtype, graphic_data=_pix(pts), source_image=_source(ds, a.frame))
        ms = []
        if k == "point":
            value = v.get("value")
            if value is not None and not math.isnan(float(value)):
                ms.append(hd.sr.Measurement(name=_MEAN, value=float(value), unit=_unit(str(v.get("unit", "")))))
        else:
            if v.get("area") is not None:
                ms.append(
                    hd.sr.Measurement(name=_AREA, value=float(v["area"]), unit=_unit(str(v.get("area_unit", "mm²"))))
                )
            if v.get("count"):
                for key, code in _STATS:
                    if v.get(key) is not None and not math.isnan(float(v[key])):
                        ms.append(hd.sr.Measurement(name=code, value=float(v[key]), unit=_unit(str(v.get("unit", "")))))
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(a), referenced_region=region, measurements=ms or None
        )
    return None  # arrows and text live in the GSPS


def make_measurement_sr(
    images: Sequence[Dataset],
    annotations: Iterable[Annotation],
    values: Mapping[str, dict[str, Any]],
    *,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    series_number: int = 9902,
    observer_name: str | None = None,
) -> Dataset:
    """A Comprehensive 3D SR TID 1500 Measurement Report of the measuring *annotations*.

    *values* maps an annotation's uid to :meth:`Annotation.values`; lengths,
    angles, Cobb angles, ROIs and points are reported (arrows and text are
    GSPS matters and are left out). Raises ``ValueError`` when there is
    nothing to report or an annotation names an image not in *images*.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in images}
    groups: list[Any] = []
    used: dict[str, Dataset] = {}
    for a in annotations:
        ds = by_uid.get(a.sop_instance_uid)
        if ds is None:
            raise ValueError(f"annotation {a.uid} is on image {a.sop_instance_uid}, which is not among the images")
        v = values.get(a.uid, {})
        if a.kind in ("length", "angle", "cobb") and not v:
            raise ValueError(f"no values for the {a.kind} annotation {a.uid}")
        g = _measurement_group(a, ds, v)
        if g is not None:
            groups.append(g)
            used[a.sop_instance_uid] = ds
    if not groups:
        raise ValueError("no measurements to report")
    refs = list(used.values())
    if observer_name:
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=observer_name),
        )
        context = hd.sr.ObservationContext(observer_person_context=observer)
    else:
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(), name="Hilum", manufacturer_name=MANUFACTURER
            ),
        )
        context = hd.sr.ObservationContext(observer_device_context=observer)
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
        referenced_images=refs,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=refs,
        content=report,
        series_instance_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        series_description="Hilum measurements",
        software_versions=hilum.__version__,
    )
    return sr


# --------------------------------------------------------------------------- reading


def _series_map(ds: Dataset) -> dict[str, str]:
    out: dict[str, str] = {}
    for seq in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(seq, []) or []:
            for series in study.get("ReferencedSeriesSequence", []) or []:
                for inst in series.get("ReferencedSOPSequence", []) or []:
                    out[str(inst.ReferencedSOPInstanceUID)] = str(series.SeriesInstanceUID)
    return out


def _frames(ref: Dataset) -> list[int]:
    f = ref.get("ReferencedFrameNumber")
    if f is None or f == "":
        return [0]
    vals = f if hasattr(f, "__len__") and not isinstance(f, str) else [f]
    return [int(x) - 1 for x in vals] or [0]


def _shape(
    gtype: str, pts: list[tuple[float, float]], name_key: str, n_coords: int
) -> tuple[str, list[tuple[float, float]]] | None:
    """The annotation kind and points of one SCOORD (image coordinates)."""
    g = gtype.upper()
    if g == "POINT":
        return "point", pts[:1]
    if g == "CIRCLE":
        r = math.dist(pts[0], pts[1])
        return "ellipse", [(pts[0][0] - r, pts[0][1] - r), (pts[0][0] + r, pts[0][1] + r)]
    if g == "ELLIPSE" and len(pts) >= 4:
        return _ellipse(pts[:4])
    if g == "POLYGON" or (g in ("POLYLINE", "INTERPOLATED") and len(pts) >= 4 and math.dist(pts[0], pts[-1]) < 1e-6):
        box = _rect_box(pts)
        if box is not None:
            return "rect", box
        ring = pts[:-1] if math.dist(pts[0], pts[-1]) < 1e-6 else pts
        return ("freehand", ring) if len(ring) >= 3 else None
    if g in ("POLYLINE", "INTERPOLATED", "MULTIPOINT"):
        if len(pts) == 2:
            return "length", pts
        if len(pts) == 3:
            return "angle", pts
        if len(pts) >= 4:
            return "freehand", pts
    return None


def _annotation(
    gtype: str,
    data: Any,
    sop: str,
    frame: int,
    label: str,
    tuid: str,
    sr_uid: str,
    series: str,
    study: str,
    name_key: str = "",
) -> Annotation | None:
    try:
        pts = [from_pixel_units(float(c), float(r)) for c, r in np.asarray(data, dtype=float).reshape(-1, 2)]
        shape = _shape(gtype, pts, name_key, 1)
    except (TypeError, ValueError, IndexError) as exc:
        log.warning("SR %s: a SCOORD that is not readable was skipped (%s)", sr_uid, exc)
        return None
    if shape is None:
        return None
    kind, points = shape
    text = "" if label in (kind, "", "length", "angle", "cobb", "ellipse", "rect", "freehand", "point") else label
    a = Annotation(kind=kind, sop_instance_uid=sop, frame=frame, points=points, text=text)
    a.uid = annotation_uid(tuid) or a.uid
    a.series_uid, a.study_uid, a.origin = series, study, f"sr:{sr_uid}"
    return a


def _concept_key(code: Any) -> str:
    if code is None:
        return ""
    return _NAME_KEY.get((str(code.scheme_designator), str(code.value)), "")


def _is_tid1500(ds: Dataset) -> bool:
    for t in ds.get("ContentTemplateSequence", []) or []:
        if str(t.get("TemplateIdentifier", "")) == "1500":
            return True
    for c in ds.get("ConceptNameCodeSequence", []) or []:
        if str(c.CodeValue) == "126000" and str(c.CodingSchemeDesignator) == "DCM":
            return True
    return False


def read_sr_measurements(ds: Dataset) -> list[SRMeasurement]:
    """Every number of an SR with the annotation it was measured on (``None`` if the SR has no readable geometry)."""
    if _is_tid1500(ds):
        try:
            return _read_tid1500(ds)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
            log.warning("SR %s: not readable as TID 1500 (%s); reading its content tree", ds.get("SOPInstanceUID"), exc)
    return _read_tree(ds)


def read_measurement_sr(ds: Dataset) -> list[Annotation]:
    """The annotations of an SR: ours (TID 1500) or another system's (what has coordinates on an image)."""
    out: dict[int, Annotation] = {}
    for m in read_sr_measurements(ds):
        if m.annotation is not None:
            out.setdefault(id(m.annotation), m.annotation)
    return list(out.values())


def _code_of(item: Dataset) -> tuple[str, str]:
    seq = item.get("ConceptNameCodeSequence")
    return (str(seq[0].CodingSchemeDesignator), str(seq[0].CodeValue)) if seq else ("", "")


def _measurement_groups(
    ds: Dataset,
) -> tuple[
    list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations], list[hd.sr.MeasurementsAndQualitativeEvaluations]
]:
    """The TID 1410 / TID 1501 groups of a TID 1500 report, each parsed by highdicom.

    Only the Imaging Measurements container (126010, DCM) is handed to highdicom group by group:
    ``MeasurementReport.from_sequence`` of the whole document also parses the Image Library (some 20
    content items an image), 2/3 of the time of reading a 50-measurement report on 50 images.
    Volumetric groups (TID 1411) are not 2D annotations and are skipped.
    """
    planar, image = [], []
    for item in ds.get("ContentSequence", []) or []:
        if _code_of(item) != ("DCM", "126010") or str(item.get("ValueType", "")) != "CONTAINER":
            continue
        for group in item.get("ContentSequence", []) or []:
            if str(group.get("ValueType", "")) != "CONTAINER":
                continue
            children = group.get("ContentSequence", []) or []
            if any(_code_of(c) == ("DCM", "111030") and str(c.get("ValueType")) == "SCOORD" for c in children):
                planar.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations.from_sequence([group]))
            elif any(str(c.get("ValueType", "")) == "SCOORD3D" or _code_of(c) == ("DCM", "121191") for c in children):
                continue  # 3D coordinates or a Referenced Segment (TID 1411, 1501 in 3D): not a 2D annotation
            else:
                image.append(hd.sr.MeasurementsAndQualitativeEvaluations.from_sequence([group]))
    return planar, image


def _read_tid1500(ds: Dataset) -> list[SRMeasurement]:
    sr_uid, study = str(ds.SOPInstanceUID), str(ds.get("StudyInstanceUID", ""))
    series = _series_map(ds)
    planar, image_groups = _measurement_groups(ds)
    out: list[SRMeasurement] = []
    for g in planar:
        roi = g.roi
        label, tuid = str(g.tracking_identifier or ""), str(g.tracking_uid or "")
        ann = None
        if roi is not None and isinstance(roi, hd.sr.ImageRegion):
            ref = roi.ContentSequence[0].ReferencedSOPSequence[0]
            sop = str(ref.ReferencedSOPInstanceUID)
            ann = _annotation(
                roi.graphic_type.value, roi.value, sop, _frames(ref)[0], label, tuid, sr_uid, series.get(sop, ""), study
            )
        ms = g.get_measurements()
        if not ms and ann is not None:
            out.append(SRMeasurement(name="", value=float("nan"), unit="", annotation=ann, tracking_uid=tuid))
        for m in ms:
            out.append(_measurement(m, ann, tuid))
    for group in image_groups:
        label, tuid = str(group.tracking_identifier or ""), str(group.tracking_uid or "")
        for m in group.get_measurements():
            ann = None
            coords = m.referenced_coordinates
            if coords:
                ref = coords[0].ContentSequence[0].ReferencedSOPSequence[0]
                sop = str(ref.ReferencedSOPInstanceUID)
                key = _concept_key(m.name)
                if len(coords) == 2 and key == "angle":  # two lines: a Cobb angle
                    data = np.vstack([np.asarray(c.value).reshape(-1, 2)[:2] for c in coords])
                    pts = [from_pixel_units(float(c), float(r)) for c, r in data]
                    ann = Annotation(kind="cobb", sop_instance_uid=sop, frame=_frames(ref)[0], points=pts)
                    ann.text = "" if label in ("cobb", "") else label
                    ann.uid = annotation_uid(tuid) or ann.uid
                    ann.series_uid, ann.study_uid, ann.origin = series.get(sop, ""), study, f"sr:{sr_uid}"
                else:
                    c0 = coords[0]
                    ann = _annotation(
                        c0.graphic_type.value,
                        c0.value,
                        sop,
                        _frames(ref)[0],
                        label,
                        tuid,
                        sr_uid,
                        series.get(sop, ""),
                        study,
                    )
            out.append(_measurement(m, ann, tuid))
    return out


def _measurement(m: Any, ann: Annotation | None, tuid: str) -> SRMeasurement:
    return SRMeasurement(
        name=str(m.name.meaning),
        value=float(m.value),
        unit=_unit_text(m.unit),
        key=_concept_key(m.name),
        annotation=ann,
        tracking_uid=tuid,
    )


def _read_tree(ds: Dataset) -> list[SRMeasurement]:
    """Another system's SR: SCOORDs SELECTED FROM an image (by value or by reference) and the NUMs around them."""
    sr_uid, study = str(ds.get("SOPInstanceUID", "")), str(ds.get("StudyInstanceUID", ""))
    series = _series_map(ds)
    index: dict[tuple[int, ...], Dataset] = {}

    def walk(item: Dataset, path: tuple[int, ...]) -> None:
        index[path] = item
        for n, child in enumerate(item.get("ContentSequence", []) or [], start=1):
            walk(child, (*path, n))

    walk(ds, (1,))

    def image_of(item: Dataset) -> tuple[str, int] | None:
        for child in item.get("ContentSequence", []) or []:
            target = child
            if "ReferencedContentItemIdentifier" in child:
                target = index.get(tuple(int(x) for x in child.ReferencedContentItemIdentifier), Dataset())
            if str(target.get("ValueType", "")) == "IMAGE" and target.get("ReferencedSOPSequence"):
                ref = target.ReferencedSOPSequence[0]
                return str(ref.ReferencedSOPInstanceUID), _frames(ref)[0]
        return None

    def name_of(item: Dataset) -> Any:
        seq = item.get("ConceptNameCodeSequence")
        if not seq:
            return None
        c = seq[0]
        return Code(
            str(c.get("CodeValue", "")), str(c.get("CodingSchemeDesignator", "")), str(c.get("CodeMeaning", ""))
        )

    out: list[SRMeasurement] = []
    seen_scoord: set[int] = set()
    for _path, item in sorted(index.items()):
        vt = str(item.get("ValueType", ""))
        if vt == "NUM":
            scoord_ann = None
            for child in item.get("ContentSequence", []) or []:
                target = child
                if "ReferencedContentItemIdentifier" in child:
                    target = index.get(tuple(int(x) for x in child.ReferencedContentItemIdentifier), Dataset())
                if str(target.get("ValueType", "")) == "SCOORD":
                    img = image_of(target)
                    if img is not None:
                        seen_scoord.add(id(target))
                        scoord_ann = _annotation(
                            str(target.GraphicType),
                            target.GraphicData,
                            img[0],
                            img[1],
                            "",
                            "",
                            sr_uid,
                            series.get(img[0], ""),
                            study,
                        )
                        break
            for mv in item.get("MeasuredValueSequence", []) or []:
                try:
                    value = float(mv.NumericValue)
                except (TypeError, ValueError, AttributeError):
                    continue
                units = mv.get("MeasurementUnitsCodeSequence")
                unit = _unit_text(Code(str(units[0].CodeValue), "UCUM", "")) if units else ""
                code = name_of(item)
                out.append(
                    SRMeasurement(
                        name=str(code.meaning) if code else "",
                        value=value,
                        unit=unit,
                        key=_concept_key(code),
                        annotation=scoord_ann,
                    )
                )
    for _path, item in sorted(index.items()):
        if str(item.get("ValueType", "")) == "SCOORD" and id(item) not in seen_scoord and "GraphicData" in item:
            img = image_of(item)
            if img is None:
                continue
            code = name_of(item)
            a = _annotation(
                str(item.GraphicType),
                item.GraphicData,
                img[0],
                img[1],
                str(code.meaning) if code else "",
                "",
                sr_uid,
                series.get(img[0], ""),
                study,
            )
            if a is not None:
                out.append(SRMeasurement(name="", value=float("nan"), unit="", annotation=a))
    return out


# --------------------------------------------------------------------------- key images


def _title(title_code: str | Code) -> Code:
    if isinstance(title_code, Code):
        return title_code
    want = title_code.replace(" ", "").replace("-", "").lower()
    for attr in dir(codes.cid7010):
        if attr.lower() == want:
            code = getattr(codes.cid7010, attr)
            assert isinstance(code, Code)
            return code
    raise ValueError(f"{title_code!r} is not a Key Object Selection Document Title (PS3.16 CID 7010)")


def make_kos(
    images: Sequence[Dataset],
    keys: Sequence[KeyImage],
    *,
    title_code: str | Code = "Of Interest",
    description: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    series_number: int = 9903,
) -> Dataset:
    """A Key Object Selection Document flagging *keys* (frames of multi-frame images by Referenced Frame Number)."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in images}
    if not keys:
        raise ValueError("a Key Object Selection needs at least one key image")
    objs = []
    for k in keys:
        ds = by_uid.get(k.sop_instance_uid)
        if ds is None:
            raise ValueError(f"key image {k.sop_instance_uid} is not among the images")
        objs.append(ds)
    content = hd.ko.KeyObjectSelection(
        document_title=_title(title_code), referenced_objects=objs, description=description
    )
    # highdicom references whole instances: name the frame of a multi-frame image (PS3.3 C.18.3 Image Reference Macro)
    items = [c for c in content[0].ContentSequence if str(c.ValueType) in ("IMAGE", "COMPOSITE")]
    for item, k, ds in zip(items, keys, objs, strict=True):
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            item.ReferencedSOPSequence[0].ReferencedFrameNumber = k.frame + 1
    evidence = list({str(ds.SOPInstanceUID): ds for ds in objs}.values())
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
    )
    return kos


def read_kos(ds: Dataset) -> list[KeyImage]:
    """The key images of a Key Object Selection Document (ours or another system's), in document order."""
    series = _series_map(ds)
    out: list[KeyImage] = []
    try:
        doc = hd.ko.KeyObjectSelectionDocument.from_dataset(ds)
        items = [it for it in doc.content.get_references() if str(it.ValueType) == "IMAGE"]
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        log.warning(
            "KOS %s: highdicom could not parse it (%s); reading its content items", ds.get("SOPInstanceUID"), exc
        )
        items = [it for it in ds.get("ContentSequence", []) or [] if str(it.get("ValueType", "")) == "IMAGE"]
    for it in items:
        for ref in it.get("ReferencedSOPSequence", []) or []:
            sop = str(ref.ReferencedSOPInstanceUID)
            for f in _frames(ref):
                out.append(KeyImage(sop, f, series.get(sop, ""), str(ref.ReferencedSOPClassUID)))
    return out
