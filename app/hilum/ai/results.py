"""A plugin's result as DICOM objects, stored through the one ingest call (``archive.ingest``).

- a segmentation → a BINARY Segmentation (PS3.3 A.51) by :func:`hilum.dicom.segmentation.make_seg`,
  each segment AUTOMATIC with the plugin as Segmentation Algorithm Identification (name, version,
  family "Artificial Intelligence", DCM 123110);
- a heat map → a FRACTIONAL Segmentation (PS3.3 C.8.20.2, Segmentation Fractional Type
  PROBABILITY, 0..255 for 0..1) with the manifest's one heat-map segment;
- findings, the per-series score and the volume of each segment → a Comprehensive 3D SR, TID 1500
  Measurement Report built with highdicom (house conventions of :mod:`hilum.dicom.sr`): a finding
  with a place is a TID 1410 planar ROI group (Image Region POINT / closed POLYLINE on its source
  image), one without a TID 1501 group; each segment's volume is a TID 1411 volumetric group
  referencing the SEG's segment (so the report and the SEG are linked); the score is a TID 1501
  group. Observer: the plugin as a device. Completion COMPLETE, Verification UNVERIFIED (an
  algorithm's output awaits a reader).

Every object: a NEW series per run (SEG, heat map and SR each their own, in the source study),
Series Description ``AI: <title> <version>``, Manufacturer ``Hilum``, Manufacturer's Model Name
the plugin's name, Software Versions ``<plugin> <version>`` and Hilum's version; the source
series and images are referenced (Referenced Series Sequence, Source Image / Derivation Image
Sequences of the SEG, evidence of the SR). Source UIDs are only ever referenced, never changed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from hilum.ai.model import Finding, PluginError, PluginResult

__all__ = ["SERIES_NUMBERS", "make_heatmap_seg", "make_objects", "make_segmentation", "make_sr", "store"]

logger = logging.getLogger(__name__)

SERIES_NUMBERS = {"seg": 9801, "heatmap": 9802, "sr": 9803}
"""Series Numbers of the result series (a human reads them in a study's series list)."""

MANUFACTURER = "Hilum"
LOCAL = "99HILUM"  # a local coding scheme (PS3.3 8.2: "99" prefix) for concepts that have no standard code

_NAMED = {
    "volume": ("118565006", "SCT", "Volume"),
    "length": ("410668003", "SCT", "Length"),
    "diameter": ("81827009", "SCT", "Diameter"),
    "area": ("42798000", "SCT", "Area"),
    "mean": ("373098007", "SCT", "Mean"),
    "maximum": ("56851009", "SCT", "Maximum"),
    "minimum": ("255605001", "SCT", "Minimum"),
}
_UNITS = {
    "ml": "milliliter",
    "mL": "milliliter",
    "mm": "millimeter",
    "mm2": "square millimeter",
    "mm3": "cubic millimeter",
    "cm": "centimeter",
    "cm3": "cubic centimeter",
    "[hnsf'U]": "Hounsfield unit",
    "HU": "Hounsfield unit",
    "1": "no units",
    "%": "percent",
}


def _software(result: PluginResult) -> list[str]:
    import hilum

    return [f"{result.plugin.name} {result.plugin.version}"[:64], f"Hilum {hilum.__version__}"[:64]]


def _stamp(ds: Dataset, result: PluginResult) -> Dataset:
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = result.plugin.name[:64]
    ds.SoftwareVersions = _software(result)
    ds.SeriesDescription = result.plugin.series_description
    return ds


def _images(result: PluginResult) -> list[Dataset]:
    headers = list(getattr(result.series, "headers", []) or [])
    if not headers:
        raise PluginError(result.plugin.name, "the result has no source image headers to reference")
    if len(headers) != (result.labels.shape[0] if result.labels is not None else len(headers)):
        raise PluginError(result.plugin.name, "the source headers do not match the result's slices")
    if len({str(h.SOPInstanceUID) for h in headers}) != len(headers):
        raise PluginError(result.plugin.name, "results on multi-frame images cannot be stored yet (only on series "
                          "of single-frame images)")  # fmt: skip
    return headers


def make_segmentation(result: PluginResult) -> Dataset | None:
    """The BINARY SEG of ``result.labels`` (None when there is no label map or it is empty)."""
    from hilum.dicom.segmentation import make_seg

    labels = result.labels
    if labels is None or not labels.array.any() or not labels.segments:
        return None
    seg = make_seg(_images(result), labels, series_number=SERIES_NUMBERS["seg"],
                   series_description=result.plugin.series_description, content_label="AI",
                   software_version=_software(result)[0])  # fmt: skip
    return _stamp(seg, result)


def make_heatmap_seg(result: PluginResult) -> Dataset | None:
    """The FRACTIONAL SEG (probability 0..1 as 0..255) of ``result.heatmap`` (None when all zero)."""
    import highdicom as hd

    heat = result.heatmap
    prods = result.plugin.produced("heatmap")
    if heat is None or not bool(np.any(heat > 0)):
        return None
    images = _images(result)
    if heat.shape[0] != len(images):
        raise PluginError(result.plugin.name, f"the heat map has {heat.shape[0]} slices for {len(images)} images")
    spec = prods[0].segments[0] if prods and prods[0].segments else None
    name = spec.name if spec else "Heat map"
    cat = spec.category if spec else ("SCT", "91723000", "Anatomical structure")
    typ = spec.type if spec else ("SCT", "91723000", "Anatomical structure")
    colour = spec.colour if spec else (255, 0, 0)
    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=name[:64],
        segmented_property_category=hd.sr.CodedConcept(cat[1], cat[0], cat[2]),
        segmented_property_type=hd.sr.CodedConcept(typ[1], typ[0], typ[2]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm_sequence(result),
        tracking_uid=hd.UID(),
        tracking_id=name[:64],
        display_color=hd.color.CIELabColor.from_rgb(*colour),
    )
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=np.asarray(heat, dtype=np.float32),
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[desc],
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["heatmap"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=result.plugin.name[:64],
        software_versions=_software(result)[0],
        device_serial_number="0",
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        content_label="AI",
        content_description=result.plugin.series_description,
        omit_empty_frames=True,
    )
    return _stamp(seg, result)


def _algorithm_sequence(result: PluginResult) -> Any:
    import highdicom as hd

    return hd.AlgorithmIdentificationSequence(
        name=result.plugin.name[:64],
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"),
        version=result.plugin.version[:64],
    )


def _concept(code: tuple[str, str, str] | None, label: str) -> Any:
    """A coded concept from a ``(scheme, value, meaning)`` triple, else the label in the local scheme."""
    import highdicom as hd

    if code is not None:
        return hd.sr.CodedConcept(code[1], code[0], code[2][:64])
    text = (label or "Finding")[:64]
    return hd.sr.CodedConcept(text.upper().replace(" ", "-")[:16], LOCAL, text)


def _unit(text: str) -> Any:
    import highdicom as hd

    t = text or "1"
    return hd.sr.CodedConcept(t, "UCUM", _UNITS.get(t, t))


def _measurement_name(name: str) -> Any:
    import highdicom as hd

    hit = _NAMED.get(name.strip().lower())
    if hit:
        return hd.sr.CodedConcept(*hit)
    return _concept(None, name)


def _measurements(f: Finding, algo: Any, refs: Sequence[Any] = ()) -> list[Any]:
    import highdicom as hd

    out = []
    for name, (value, unit) in f.measurements.items():
        out.append(hd.sr.Measurement(name=_measurement_name(name), value=float(value), unit=_unit(unit),
                                     algorithm_id=algo))  # fmt: skip
    if f.score is not None:
        out.append(hd.sr.Measurement(name=hd.sr.CodedConcept("SCORE", LOCAL, "AI score"), value=float(f.score),
                                     unit=_unit("1"), algorithm_id=algo))  # fmt: skip
    return out


def _pixel_points(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """(row, column) pixel indices (centres at integers) → SCOORD (column, row) with the top-left
    corner of the first pixel at 0\\0 (PS3.3 C.18.6.1.2): centre of pixel (0, 0) is 0.5\\0.5."""
    return np.array([(c + 0.5, r + 0.5) for r, c in points], dtype=float).reshape(-1, 2)


def _region(f: Finding, image: Dataset) -> Any:
    import highdicom as hd

    src = hd.sr.SourceImageForRegion(referenced_sop_class_uid=image.SOPClassUID,
                                     referenced_sop_instance_uid=image.SOPInstanceUID)  # fmt: skip
    if len(f.outline) >= 3:
        pts = [*f.outline, f.outline[0]]
        return hd.sr.ImageRegion(graphic_type="POLYLINE", graphic_data=_pixel_points(pts), source_image=src)
    if f.box is not None:
        r0, c0, r1, c1 = f.box
        pts = [(r0, c0), (r0, c1), (r1, c1), (r1, c0), (r0, c0)]
        return hd.sr.ImageRegion(graphic_type="POLYLINE", graphic_data=_pixel_points(pts), source_image=src)
    if f.centre is not None:
        return hd.sr.ImageRegion(graphic_type="POINT", graphic_data=_pixel_points([f.centre]), source_image=src)
    return None


def make_sr(result: PluginResult, seg: Dataset | None = None) -> Dataset | None:
    """The TID 1500 report of the findings, score and segment volumes (None when nothing to say)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not result.findings and result.score is None and seg is None:
        return None
    images = _images(result)
    algo = hd.sr.AlgorithmIdentification(name=result.plugin.name[:64], version=result.plugin.version[:64])
    groups: list[Any] = []
    used: dict[str, Dataset] = {}
    for i, f in enumerate(result.findings):
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{f.label or 'Finding'} {i + 1}"[:64])
        ms = _measurements(f, algo) or None
        finding_type = _concept(f.code, f.label)
        region = None
        if f.slice_index is not None:
            image = images[f.slice_index]
            region = _region(f, image)
        if region is not None:
            image = images[int(f.slice_index or 0)]
            used[str(image.SOPInstanceUID)] = image
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, referenced_region=region, finding_type=finding_type,
                algorithm_id=algo, measurements=ms))  # fmt: skip
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=finding_type, algorithm_id=algo, measurements=ms))  # fmt: skip
    if result.score is not None:
        s = result.score
        m = hd.sr.Measurement(name=_concept(s.code, s.label), value=float(s.value), unit=_unit(s.unit),
                              algorithm_id=algo)  # fmt: skip
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=s.label[:64] or "Score"),
            algorithm_id=algo, measurements=[m]))  # fmt: skip
    evidence: list[Dataset] = []
    if seg is not None and result.labels is not None:
        spacing = tuple(float(x) for x in result.series.spacing_mm)
        for desc in seg.SegmentSequence:
            number = int(desc.SegmentNumber)
            label = str(desc.SegmentLabel)
            source_number = sorted(result.labels.segments)[number - 1]
            volume = result.labels.volume_ml(source_number, spacing)  # type: ignore[arg-type]
            try:
                ref = hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
                    source_series=hd.sr.SourceSeriesForSegmentation(result.series_uid))  # fmt: skip
            except (ValueError, AttributeError, TypeError) as exc:
                logger.info("SR: segment %d not referenced (%s)", number, exc)
                continue
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=str(desc.TrackingUID), identifier=label[:64]),
                referenced_segment=ref, finding_type=_concept(_triple(desc), label), algorithm_id=algo,
                measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=volume, unit=_unit("ml"),
                                                algorithm_id=algo)]))  # fmt: skip
        evidence.append(seg)
        for image in images:
            used[str(image.SOPInstanceUID)] = image
    if not groups:
        return None
    refs = list(used.values()) or images
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(),
            name=result.plugin.name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=result.plugin.title[:64],
        ),  # fmt: skip
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
        referenced_images=refs,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*refs, *evidence],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=result.plugin.series_description,
        software_versions=_software(result),
        manufacturer_model_name=result.plugin.name[:64],
    )
    local = Dataset()
    local.CodingSchemeDesignator = LOCAL
    local.CodingSchemeName = "Hilum local codes (AI plugin findings and scores without a standard code)"
    local.CodingSchemeResponsibleOrganization = "Hilum"
    sr.CodingSchemeIdentificationSequence = [*sr.get("CodingSchemeIdentificationSequence", []), local]
    return _stamp(sr, result)


def _triple(desc: Dataset) -> tuple[str, str, str] | None:
    seq = desc.get("SegmentedPropertyTypeCodeSequence")
    if not seq:
        return None
    item = seq[0]
    return (str(item.CodingSchemeDesignator), str(item.CodeValue), str(item.CodeMeaning))


def make_objects(result: PluginResult) -> list[Dataset]:
    """The DICOM objects of *result*: SEG, heat-map SEG, SR (those that have content)."""
    name = result.plugin.name
    try:
        seg = make_segmentation(result)
        heat = make_heatmap_seg(result)
        sr = make_sr(result, seg)
    except PluginError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:
        raise PluginError(name, f"its result cannot be made into DICOM: {exc}") from exc
    return [ds for ds in (seg, heat, sr) if ds is not None]


def store(archive: Any, result: PluginResult, *, origin: str = "ai") -> list[Any]:
    """Make the result's DICOM objects and put each into *archive* through ``archive.ingest``;
    returns the :class:`~hilum.archive.IngestResult` s. A rejected object raises
    :class:`PluginError` with the archive's reason (what was stored before it stays stored)."""
    results = []
    for ds in make_objects(result):
        r = archive.ingest(ds, origin=origin)
        results.append(r)
        if not r.ok:
            raise PluginError(result.plugin.name, f"the archive refused its {ds.Modality} result: {r.reason}")
    return results
