"""Measurement SR (TID 1500) and Key Object Selection (hilum.dicom.sr): round trips, highdicom's own reading,
other systems' SR (pydicom's real sample files), validity with dciodvfy / DCMTK's dsrdump where installed."""

from __future__ import annotations

import math
import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from hilum.dicom.annotations import Annotation, KeyImage
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study
from hilum.dicom.geometry import Spacing
from hilum.dicom.sr import make_kos, make_measurement_sr, read_kos, read_measurement_sr, read_sr_measurements

STUDY = make_study(MUELLER, accession="ACC-SR", seed="sr-tests")
SPACING = Spacing(0.7, 0.7, "PixelSpacing")


@pytest.fixture(scope="module")
def series() -> tuple[list[Dataset], list[np.ndarray]]:
    images, values = [], []
    for ds in generate_ct_series(STUDY, rows=64, columns=64, slices=4, noise_sigma=0.0):
        values.append(ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
        del ds.PixelData
        images.append(ds)
    return images, values


def _roundtrip(ds: Dataset, path: Path | None = None) -> Dataset:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    if path is not None:
        path.write_bytes(buf.getvalue())
    return pydicom.dcmread(BytesIO(buf.getvalue()))


def _measurements(images: list[Dataset]) -> list[Annotation]:
    u = [str(d.SOPInstanceUID) for d in images]
    return [
        Annotation("length", u[0], 0, [(10.25, 20.5), (30.125, 40.75)], text="AP diameter"),
        Annotation("angle", u[1], 0, [(1.0, 1.0), (10.0, 2.0), (3.0, 30.0)]),
        Annotation("cobb", u[1], 0, [(1.0, 1.0), (10.0, 2.0), (3.0, 30.0), (20.0, 25.0)]),
        Annotation("ellipse", u[2], 0, [(5.5, 5.0), (20.0, 30.5)], text="liver"),
        Annotation("rect", u[2], 0, [(5.0, 5.0), (20.0, 30.0)]),
        Annotation("freehand", u[3], 0, [(5.0, 5.0), (20.0, 30.0), (7.0, 33.0), (3.3, 12.7)]),
        Annotation("point", u[3], 0, [(32.0, 32.0)]),
        Annotation("arrow", u[0], 0, [(1.0, 1.0), (9.0, 9.0)]),  # a GSPS matter: not in the SR
    ]


def _values(anns: list[Annotation], images: list[Dataset], frames: list[np.ndarray]) -> dict[str, dict]:
    idx = {str(d.SOPInstanceUID): i for i, d in enumerate(images)}
    return {a.uid: a.values(frames[idx[a.sop_instance_uid]], SPACING, "HU") for a in anns}


@pytest.fixture(scope="module")
def report(series, tmp_path_factory):  # type: ignore[no-untyped-def]
    images, frames = series
    anns = _measurements(images)
    values = _values(anns, images, frames)
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    sr = _roundtrip(make_measurement_sr(images, anns, values), path)
    return anns, values, sr, path


_NAMES = {
    "length": [("Length", "length")],
    "angle": [("Angle", "angle")],
    "cobb": [("Cobb angle", "angle")],
    "point": [("Mean", "value")],
    "ellipse": [
        ("Area", "area"),
        ("Mean", "mean"),
        ("Standard Deviation", "sd"),
        ("Minimum", "min"),
        ("Maximum", "max"),
    ],
}
_NAMES["rect"] = _NAMES["freehand"] = _NAMES["ellipse"]


def test_round_trip_gives_the_annotations_and_their_values(report) -> None:  # type: ignore[no-untyped-def]
    anns, values, sr, _ = report
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    back = {a.uid: a for a in read_measurement_sr(sr)}
    measuring = [a for a in anns if a.kind != "arrow"]
    assert set(back) == {a.uid for a in measuring}
    for a in measuring:
        b = back[a.uid]
        assert b.kind == a.kind
        assert np.allclose(b.points, a.points, atol=1e-6), a.kind
        assert (b.sop_instance_uid, b.frame, b.text) == (a.sop_instance_uid, a.frame, a.text)
        assert b.origin == f"sr:{sr.SOPInstanceUID}"
        assert b.series_uid and b.study_uid == str(sr.StudyInstanceUID)
    got: dict[str, list[tuple[str, float, str]]] = {}
    for m in read_sr_measurements(sr):
        assert m.annotation is not None
        got.setdefault(m.annotation.uid, []).append((m.name, m.value, m.unit))
    for a in measuring:
        v = values[a.uid]
        want = [(name, float(v[key])) for name, key in _NAMES[a.kind]]
        assert [(n, val) for n, val, _ in got[a.uid]] == want, a.kind
    length = next(a for a in anns if a.kind == "length")
    assert got[length.uid][0][2] == "mm"
    ellipse = next(a for a in anns if a.kind == "ellipse")
    assert [u for _, _, u in got[ellipse.uid]] == ["mm²", "HU", "HU", "HU", "HU"]


def test_highdicom_reads_our_report(report) -> None:  # type: ignore[no-untyped-def]
    anns, values, _, path = report
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    content = hd.sr.MeasurementReport.from_sequence(sr.content)
    by_tracking = {}
    for g in content.get_image_measurement_groups():
        by_tracking[str(g.tracking_identifier)] = g
    length = next(a for a in anns if a.kind == "length")
    (m,) = by_tracking["AP diameter"].get_measurements(name=codes.SCT.Length)
    assert m.value == values[length.uid]["length"]
    assert m.unit == codes.UCUM.Millimeter
    (coords,) = m.referenced_coordinates
    assert coords.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    # SCOORD: the top-left corner of the first pixel is 0\0 (PS3.3 C.18.6.1.2), so centres are at +0.5
    assert np.allclose(coords.value, np.array(length.points) + 0.5)
    rois = content.get_planar_roi_measurement_groups()
    assert len(rois) == 4  # ellipse, rect, freehand, point
    liver = next(g for g in rois if str(g.tracking_identifier) == "liver")
    ellipse = next(a for a in anns if a.text == "liver")
    assert liver.roi.graphic_type == hd.sr.GraphicTypeValues.ELLIPSE
    (mean,) = liver.get_measurements(name=codes.SCT.Mean)
    assert mean.value == values[ellipse.uid]["mean"]
    assert mean.unit == codes.UCUM.HounsfieldUnit
    (area,) = liver.get_measurements(name=codes.SCT.Area)
    assert area.value == values[ellipse.uid]["area"]
    assert area.unit == codes.UCUM.SquareMillimeter


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_dciodvfy_finds_no_error_in_sr_or_kos(report, series, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    *_, path = report
    images, _ = series
    kos = tmp_path / "kos.dcm"
    _roundtrip(make_kos(images, [KeyImage(str(images[1].SOPInstanceUID), 0, "", "")]), kos)
    for p, iod in ((path, "Comprehensive3DSR"), (kos, "KeyObjectSelectionDocument")):
        out = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
        assert iod in text and "Error" not in text, text


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="DCMTK's dsrdump is not installed")
def test_dcmtk_parses_the_report(report) -> None:  # type: ignore[no-untyped-def]
    *_, path = report
    out = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Imaging Measurement Report" in out.stdout and "Length" in out.stdout


def test_uncalibrated_and_unitless_values(series) -> None:  # type: ignore[no-untyped-def]
    images, frames = series
    a = Annotation("length", str(images[0].SOPInstanceUID), 0, [(0.0, 0.0), (3.0, 4.0)])
    r = Annotation("rect", str(images[0].SOPInstanceUID), 0, [(1.0, 1.0), (4.0, 4.0)])
    values = {a.uid: a.values(None, Spacing(), ""), r.uid: r.values(frames[0], Spacing(), "")}
    ms = read_sr_measurements(_roundtrip(make_measurement_sr(images, [a, r], values)))
    got = [(m.name, m.value, m.unit) for m in ms]
    assert ("Length", 5.0, "px") in got
    assert ("Area", r.values(None, Spacing(), "")["area"], "px²") in got
    assert all(m.unit == "" for m in ms if m.name == "Mean")


def test_nothing_to_report_and_unknown_images_are_refused(series) -> None:  # type: ignore[no-untyped-def]
    images, _ = series
    arrow = Annotation("arrow", str(images[0].SOPInstanceUID), 0, [(1, 1), (2, 2)])
    with pytest.raises(ValueError, match="no measurements"):
        make_measurement_sr(images, [arrow], {})
    stray = Annotation("length", "1.2.3.4", 0, [(1, 1), (2, 2)])
    with pytest.raises(ValueError, match="not among the images"):
        make_measurement_sr(images, [stray], {stray.uid: {"length": 1.0, "unit": "mm"}})


# --------------------------------------------------------------------------- other systems' SR


def test_reads_dcmtks_comprehensive_sr() -> None:
    # OFFIS DCMTK's test document (pydicom's sample files): NUM "Diameter" 3 cm without image coordinates,
    # a SCOORD that is not selected from an image: the numbers are readable, no annotation is
    ds = pydicom.dcmread(get_testdata_file("test-SR.dcm", download=False))
    ms = read_sr_measurements(ds)
    assert [(m.name, m.value, m.unit, m.annotation) for m in ms] == [("Diameter", 3.0, "cm", None)] * 2
    assert read_measurement_sr(ds) == []


def test_reads_a_basic_text_sr_without_failing() -> None:
    ds = pydicom.dcmread(get_testdata_file("reportsi.dcm", download=False))
    assert read_measurement_sr(ds) == []


def _item(vt: str, rel: str | None, code: tuple[str, str, str] | None) -> Dataset:
    it = Dataset()
    it.ValueType = vt
    if rel:
        it.RelationshipType = rel
    if code:
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = code
        it.ConceptNameCodeSequence = DicomSequence([c])
    return it


def test_reads_another_systems_tree_with_references_by_value_and_by_reference(series) -> None:  # type: ignore[no-untyped-def]
    """An Enhanced SR (not TID 1500): a NUM INFERRED FROM a SCOORD SELECTED FROM an IMAGE item given by
    reference, and a free SCOORD selected from an image by value."""
    images, _ = series
    im = images[2]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.StudyInstanceUID = im.StudyInstanceUID
    ds.ValueType = "CONTAINER"
    image = _item("IMAGE", "CONTAINS", None)
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = im.SOPClassUID, im.SOPInstanceUID
    image.ReferencedSOPSequence = DicomSequence([ref])
    num = _item("NUM", "CONTAINS", ("81827009", "SCT", "Diameter"))
    mv = Dataset()
    mv.NumericValue = "12.5"
    unit = Dataset()
    unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "mm", "UCUM", "mm"
    mv.MeasurementUnitsCodeSequence = DicomSequence([unit])
    num.MeasuredValueSequence = DicomSequence([mv])
    scoord = _item("SCOORD", "INFERRED FROM", None)
    scoord.GraphicType = "POLYLINE"
    scoord.GraphicData = [10.5, 10.5, 20.5, 10.5]
    by_ref = Dataset()
    by_ref.RelationshipType = "SELECTED FROM"
    by_ref.ReferencedContentItemIdentifier = [1, 1]  # the IMAGE item, first child of the root
    scoord.ContentSequence = DicomSequence([by_ref])
    num.ContentSequence = DicomSequence([scoord])
    free = _item("SCOORD", "CONTAINS", ("111030", "DCM", "Image Region"))
    free.GraphicType = "CIRCLE"
    free.GraphicData = [32.5, 32.5, 37.5, 32.5]
    image2 = _item("IMAGE", "SELECTED FROM", None)
    image2.ReferencedSOPSequence = DicomSequence([ref])
    free.ContentSequence = DicomSequence([image2])
    ds.ContentSequence = DicomSequence([image, num, free])
    ms = read_sr_measurements(_roundtrip(ds))
    diameter = next(m for m in ms if m.name == "Diameter")
    assert (diameter.value, diameter.unit) == (12.5, "mm")
    assert diameter.annotation is not None and diameter.annotation.kind == "length"
    assert diameter.annotation.points == [(10.0, 10.0), (20.0, 10.0)]
    anns = read_measurement_sr(_roundtrip(ds))
    circle = next(a for a in anns if a.kind == "ellipse")
    assert circle.points == [(27.0, 27.0), (37.0, 37.0)] and circle.text == "Image Region"
    assert all(a.sop_instance_uid == str(im.SOPInstanceUID) for a in anns)


# --------------------------------------------------------------------------- key images


def test_kos_round_trip(series) -> None:  # type: ignore[no-untyped-def]
    images, _ = series
    keys = [
        KeyImage(str(images[i].SOPInstanceUID), 0, str(images[i].SeriesInstanceUID), str(images[i].SOPClassUID))
        for i in (3, 0)
    ]
    kos = _roundtrip(make_kos(images, keys, description="for the tumour board"))
    assert kos.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113000"  # (113000, DCM, "Of Interest")
    assert read_kos(kos) == keys
    doc = hd.ko.KeyObjectSelectionDocument.from_dataset(kos)
    assert [str(r.referenced_sop_instance_uid) for r in doc.content.get_references()] == [
        k.sop_instance_uid for k in keys
    ]


def test_kos_title_and_frames() -> None:
    (mf,) = [d for d in generate_ct_series(STUDY, rows=32, columns=32, slices=1, noise_sigma=0.0)]
    del mf.PixelData
    mf.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    mf.NumberOfFrames = 6
    uid, series_uid = str(mf.SOPInstanceUID), str(mf.SeriesInstanceUID)
    keys = [KeyImage(uid, 4, series_uid, str(mf.SOPClassUID)), KeyImage(uid, 1, series_uid, str(mf.SOPClassUID))]
    kos = _roundtrip(make_kos([mf], keys, title_code="For Teaching"))
    assert kos.ConceptNameCodeSequence[0].CodeMeaning == "For Teaching"
    assert read_kos(kos) == keys
    with pytest.raises(ValueError, match="CID 7010"):
        make_kos([mf], keys, title_code="Nice pictures")
    with pytest.raises(ValueError, match="at least one"):
        make_kos([mf], [])


def test_values_are_finite_numbers(report) -> None:  # type: ignore[no-untyped-def]
    _, _, sr, _ = report
    assert all(math.isfinite(m.value) for m in read_sr_measurements(sr))


def test_kos_made_by_hand_as_others_do_is_read(series) -> None:  # type: ignore[no-untyped-def]
    """A KOS without the template identifier highdicom checks: read from its content items."""
    images, _ = series
    kos = _roundtrip(make_kos(images, [KeyImage(str(images[2].SOPInstanceUID), 0, "", "")]))
    del kos.ContentTemplateSequence
    (key,) = read_kos(kos)
    assert key.sop_instance_uid == str(images[2].SOPInstanceUID)
    assert key.series_uid == str(images[2].SeriesInstanceUID)
