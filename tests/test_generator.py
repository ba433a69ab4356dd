"""The study generator (hilum.dicom.generator): files read back, true geometry,
phantom values, transfer syntaxes, character sets, DCMTK acceptance, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, MRImageStorage, SecondaryCaptureImageStorage

from hilum.dicom.generator import (
    DEFAULT_SPHERES,
    IVANOV,
    LOSSLESS,
    MUELLER,
    OBLIQUE,
    PAPADOPOULOU,
    PATIENTS,
    SYNTAXES,
    YAMADA,
    Phantom,
    demo_sizes,
    generate_ct_series,
    generate_enhanced_ct,
    generate_mr_series,
    make_study,
    to_secondary_capture,
    transcode,
    write_ct_set,
    write_dataset,
    write_demo,
)
from hilum.dicom.generator.phantom import FAT, LUNG, SOFT_TISSUE, plane_points

PHANTOM = Phantom()
ROOT = Path(__file__).resolve().parents[1]


def _roundtrip(ds: pydicom.Dataset, tmp_path: Path, name: str = "x.dcm") -> pydicom.Dataset:
    return pydicom.dcmread(write_dataset(ds, tmp_path / name))


def _floats(values: object) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)  # type: ignore[attr-defined]


def _normal(iop: np.ndarray) -> np.ndarray:
    return np.cross(iop[:3], iop[3:])


def _pixel_index(ipp: np.ndarray, iop: np.ndarray, spacing: np.ndarray, point: tuple[float, ...]) -> tuple[int, int]:
    """(row, column) of the pixel nearest to ``point`` in a plane (PS3.3 C.7.6.2.1.1)."""
    d = np.asarray(point, dtype=np.float64) - ipp
    return round(float(d @ iop[3:]) / spacing[0]), round(float(d @ iop[:3]) / spacing[1])


def _hu_patch(ds: pydicom.Dataset, point: tuple[float, float, float], frame: np.ndarray | None = None) -> float:
    """Mean HU of the 3x3 pixels around ``point`` of a single-frame CT image."""
    ipp, iop, sp = _floats(ds.ImagePositionPatient), _floats(ds.ImageOrientationPatient), _floats(ds.PixelSpacing)
    r, c = _pixel_index(ipp, iop, sp, point)
    arr = ds.pixel_array if frame is None else frame
    hu = arr[r - 1 : r + 2, c - 1 : c + 2].astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return float(hu.mean())


def _assert_stack_geometry(positions: list[np.ndarray], iop: np.ndarray, spacing: float) -> None:
    n = _normal(iop)
    assert abs(np.linalg.norm(iop[:3]) - 1) < 1e-6 and abs(np.linalg.norm(iop[3:]) - 1) < 1e-6
    assert abs(float(iop[:3] @ iop[3:])) < 1e-6
    for a, b in zip(positions, positions[1:], strict=False):
        step = b - a
        # The step is along the normal, by Spacing Between Slices, all in the same direction.
        assert np.allclose(step, np.sign(step @ n) * spacing * n, atol=1e-3), (step, n)
    signs = {np.sign((b - a) @ n) for a, b in zip(positions, positions[1:], strict=False)}
    assert len(signs) == 1


@pytest.fixture(scope="module")
def study():
    return make_study(MUELLER, accession="T-1", seed="tests")


@pytest.fixture(scope="module")
def ct_series(study):
    return generate_ct_series(study, rows=96, columns=96, slices=10, slice_thickness=5.0, descending=True)


def test_ct_series_reads_back_with_true_geometry_and_hu(ct_series, tmp_path):
    files = [write_dataset(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate(ct_series)]
    back = [pydicom.dcmread(f) for f in files]
    assert [int(d.InstanceNumber) for d in back] == list(range(1, 11))
    first = back[0]
    assert first.SOPClassUID == CTImageStorage
    assert first.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.Modality == "CT" and first.BodyPartExamined == "CHEST"
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (1.0, -1024.0)
    assert list(first.WindowCenter)[:1] == [40] and list(first.WindowWidth)[:1] == [400]
    assert len(first.WindowCenter) == 2
    assert first.pixel_array.dtype == np.int16 and first.pixel_array.shape == (96, 96)
    assert len({d.SOPInstanceUID for d in back}) == 10
    assert len({d.SeriesInstanceUID for d in back}) == 1
    assert len({d.FrameOfReferenceUID for d in back}) == 1

    iop = _floats(first.ImageOrientationPatient)
    positions = [_floats(d.ImagePositionPatient) for d in back]
    _assert_stack_geometry(positions, iop, float(first.SpacingBetweenSlices))
    assert positions[1][2] < positions[0][2]  # descending = head first
    assert float(first.SliceThickness) == 5.0

    mid = back[5]
    z = float(mid.ImagePositionPatient[2])
    landmarks = PHANTOM.landmarks
    assert -1030 < _hu_patch(mid, (*landmarks["air"], z)) < -970
    assert 20 < _hu_patch(mid, (*landmarks["soft_tissue"], z)) < 60
    assert -880 < _hu_patch(mid, (*landmarks["lung"], z)) < -820
    assert 700 <= _hu_patch(mid, (*landmarks["bone"], z)) <= 1200
    assert -130 < _hu_patch(mid, (*landmarks["fat"], z)) < -70


def test_ct_spheres_are_where_the_phantom_says(study, tmp_path):
    # 1 mm slices through the 20 mm nodule: bright at the centre, gone 11 mm away.
    nodule = DEFAULT_SPHERES[0]
    cx, cy, cz = nodule.centre
    series = generate_ct_series(study, rows=128, columns=128, slices=25, slice_thickness=1.0, centre=(0, 0, cz))
    by_z = {round(float(d.ImagePositionPatient[2]), 3): d for d in series}
    assert 270 < _hu_patch(by_z[cz], (cx, cy, cz)) < 330
    assert _hu_patch(by_z[cz + 12.0], (cx, cy, cz + 12.0)) < -700  # lung above the nodule
    # Its diameter in the central slice, counted along the row through the centre.
    d = by_z[cz]
    ipp, iop, sp = _floats(d.ImagePositionPatient), _floats(d.ImageOrientationPatient), _floats(d.PixelSpacing)
    r, c = _pixel_index(ipp, iop, sp, (cx, cy, cz))
    inside = d.pixel_array[r].astype(float) - 1024 > -275  # halfway between lung and nodule
    left, right = c, c
    while inside[left - 1]:
        left -= 1
    while inside[right + 1]:
        right += 1
    width_mm = (right - left + 1) * sp[1]
    assert abs(width_mm - nodule.diameter) <= 2 * sp[1]


def test_mr_oblique_geometry_matches_pixels(tmp_path):
    study = make_study(PAPADOPOULOU, accession="T-MR", description="MR", seed="tests")
    series = generate_mr_series(study, rows=64, columns=64, slices=6, orientation=OBLIQUE, series_number=2)
    back = [_roundtrip(ds, tmp_path, f"{i}.dcm") for i, ds in enumerate(series)]
    first = back[0]
    assert first.SOPClassUID == MRImageStorage and first.Modality == "MR"
    assert first.BitsStored == 12 and first.pixel_array.max() < 4096
    iop = _floats(first.ImageOrientationPatient)
    n = _normal(iop)
    assert np.max(np.abs(n)) < 0.99  # truly oblique
    positions = [_floats(d.ImagePositionPatient) for d in back]
    spacing = float(first.SpacingBetweenSlices)
    assert spacing == 6.0 and float(first.SliceThickness) == 5.0
    _assert_stack_geometry(positions, iop, spacing)
    # The header geometry says where each pixel is; the phantom there must match the pixel.
    for d in back[::2]:
        pts = plane_points(
            _floats(d.ImagePositionPatient), iop[:3], iop[3:], d.Rows, d.Columns, tuple(_floats(d.PixelSpacing))
        )
        labels = PHANTOM.labels(pts)
        arr = d.pixel_array.astype(float)
        fat, soft, lung = (arr[labels == lab].mean() for lab in (FAT, SOFT_TISSUE, LUNG))
        assert fat > 1100 and 500 < soft < 900 and lung < 250


def test_enhanced_ct_multiframe(tmp_path):
    study = make_study(YAMADA, accession="T-EN", seed="tests")
    ds = _roundtrip(generate_enhanced_ct(study, rows=64, columns=64, frames=8, slice_thickness=3.0), tmp_path)
    assert ds.SOPClassUID == EnhancedCTImageStorage
    assert int(ds.NumberOfFrames) == 8 and ds.pixel_array.shape == (8, 64, 64)
    shared = ds.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence[0]
    iop = _floats(shared.PlaneOrientationSequence[0].ImageOrientationPatient)
    assert float(shared.PixelValueTransformationSequence[0].RescaleIntercept) == -1024
    frames = ds.PerFrameFunctionalGroupsSequence
    assert len(frames) == 8
    positions = [_floats(f.PlanePositionSequence[0].ImagePositionPatient) for f in frames]
    _assert_stack_geometry(positions, iop, float(measures.SpacingBetweenSlices))
    assert [f.FrameContentSequence[0].InStackPositionNumber for f in frames] == list(range(1, 9))
    # Bone in frame 0, found via the functional-group geometry.
    r, c = _pixel_index(positions[0], iop, _floats(measures.PixelSpacing), (*PHANTOM.landmarks["bone"], 0.0))
    assert 700 <= int(ds.pixel_array[0, r, c]) - 1024 <= 1200


@pytest.mark.parametrize("patient", [MUELLER, PAPADOPOULOU, YAMADA, IVANOV], ids=lambda p: p.character_set[-1])
def test_names_round_trip_in_their_character_sets(patient, tmp_path):
    study = make_study(
        patient, accession="T-CS", description="Étude thorax" if patient is MUELLER else "CT", seed="tests"
    )
    ds = generate_ct_series(study, rows=16, columns=16, slices=1)[0]
    path = write_dataset(ds, tmp_path / "cs.dcm")
    raw = path.read_bytes()
    back = pydicom.dcmread(path)
    assert str(back.PatientName) == patient.name
    assert back.StudyDescription == study.description
    charset = back.SpecificCharacterSet
    assert (list(charset) if not isinstance(charset, str) else [charset]) == list(patient.character_set)
    if patient is MUELLER:
        assert b"M\xfcller^J\xfcrgen" in raw
    elif patient is YAMADA:
        assert b"Yamada^Tarou=\x1b$B" in raw  # JIS X 0208 escape sequence (PS3.5 H.3.1)
        assert back.PatientName.ideographic == "山田^太郎"
        assert back.PatientName.phonetic == "やまだ^たろう"
    else:
        assert patient.name.encode("utf-8") in raw


@pytest.mark.parametrize("syntax", [s for s in SYNTAXES if s != "jpeg-baseline"])
def test_transfer_syntaxes_decode(syntax, ct_series, tmp_path):
    src = ct_series[4]
    back = _roundtrip(transcode(src, syntax, sop_instance_uid="2.25.1234"), tmp_path)
    assert back.file_meta.TransferSyntaxUID == SYNTAXES[syntax]
    assert back.SOPInstanceUID == back.file_meta.MediaStorageSOPInstanceUID == "2.25.1234"
    arr, ref = back.pixel_array, src.pixel_array
    assert arr.shape == ref.shape
    if SYNTAXES[syntax] in LOSSLESS:
        assert np.array_equal(arr, ref)
    else:
        assert back.LossyImageCompression == "01" and back.ImageType[0] == "DERIVED"
        assert np.abs(arr.astype(float) - ref).mean() < 25


def test_jpeg_baseline_secondary_capture(ct_series, tmp_path):
    sc = to_secondary_capture(
        ct_series[4], series_uid="2.25.99", instance_number=1, series_number=9, series_description="SC"
    )
    assert sc.BitsAllocated == 8 and sc.PhotometricInterpretation == "MONOCHROME2"
    back = _roundtrip(transcode(sc, "jpeg-baseline"), tmp_path)
    assert back.SOPClassUID == SecondaryCaptureImageStorage
    assert back.file_meta.TransferSyntaxUID == SYNTAXES["jpeg-baseline"]
    assert back.LossyImageCompressionMethod == "ISO_10918_1"
    assert np.abs(back.pixel_array.astype(float) - sc.pixel_array).mean() < 3
    with pytest.raises(ValueError, match="8-bit"):
        transcode(ct_series[0], "jpeg-baseline")


def test_deterministic(study):
    a = generate_ct_series(study, rows=16, columns=16, slices=2, seed=3)
    b = generate_ct_series(study, rows=16, columns=16, slices=2, seed=3)
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert all(x.PixelData == y.PixelData for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, write_demo(out, small=True)


def test_demo_set(demo):
    out, paths = demo
    assert paths and all(p.is_file() and p.is_relative_to(out) for p in paths)
    dss = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert len({d.SOPInstanceUID for d in dss}) == len(dss)
    by_patient: dict[str, set[tuple[str, str]]] = {}
    for d in dss:
        by_patient.setdefault(d.PatientID, set()).add((d.StudyInstanceUID, d.StudyDate))
    assert {str(d.PatientName) for d in dss} == {p.name for p in PATIENTS}
    # Müller has a prior at an earlier date.
    mueller = sorted(by_patient[MUELLER.patient_id], key=lambda s: s[1])
    assert len(mueller) == 2 and mueller[0][1] < mueller[1][1]
    syntaxes = {d.file_meta.TransferSyntaxUID for d in dss}
    assert syntaxes == set(SYNTAXES.values())
    sop_classes = {d.SOPClassUID for d in dss}
    assert {CTImageStorage, MRImageStorage, EnhancedCTImageStorage, SecondaryCaptureImageStorage} <= sop_classes
    # The MR study has an oblique series sharing the axial series' frame of reference.
    mr = [d for d in dss if d.Modality == "MR"]
    assert len({d.SeriesInstanceUID for d in mr}) == 2 and len({d.FrameOfReferenceUID for d in mr}) == 1
    sizes = demo_sizes(small=True)
    ct = [d for d in dss if d.SOPClassUID == CTImageStorage and d.PatientID == YAMADA.patient_id]
    assert len(ct) == sizes.ct[1] and ct[0].Rows == sizes.ct[0]
    # Every compressed file decodes.
    for p, d in zip(paths, dss, strict=True):
        if d.file_meta.TransferSyntaxUID.is_compressed:
            assert pydicom.dcmread(p).pixel_array.shape[-2:] == (d.Rows, d.Columns)


@pytest.mark.skipif(not Path("/usr/bin/dcmftest").exists(), reason="DCMTK not installed")
def test_dcmtk_accepts_files(demo):
    _, paths = demo
    picks = {}
    for p in paths:
        ts = pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
        picks.setdefault(ts, p)
    result = subprocess.run(
        ["/usr/bin/dcmftest", *map(str, picks.values())], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("yes:") == len(picks)
    for p in picks.values():
        dump = subprocess.run(["/usr/bin/dcmdump", "-q", str(p)], capture_output=True, timeout=60)
        assert dump.returncode == 0 and b"E:" not in dump.stderr, dump.stderr


@pytest.mark.skipif(not Path("/usr/bin/dcmdump").exists(), reason="DCMTK not installed")
@pytest.mark.parametrize("patient", [MUELLER, PAPADOPOULOU], ids=lambda p: p.character_set[-1])
def test_dcmtk_decodes_names(patient, demo):
    """DCMTK converts the names to UTF-8 from their Specific Character Set.  (DCMTK
    on glibc iconv does not support ISO 2022 IR 87, so Yamada is not checked here.)"""
    _, paths = demo
    path = next(p for p in paths if p.parts[-4] == patient.patient_id)
    dump = subprocess.run(["/usr/bin/dcmdump", "+U8", "+P", "PatientName", str(path)], capture_output=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert f"[{patient.name}]".encode() in dump.stdout


def test_write_ct_set(tmp_path):
    paths = write_ct_set(tmp_path, 7, rows=32, columns=32, series_size=3, patients=2)
    assert len(paths) == 7
    dss = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert len({d.StudyInstanceUID for d in dss}) == 3 and len({d.PatientID for d in dss}) == 2
    assert len({d.SOPInstanceUID for d in dss}) == 7


def test_cli_demo(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "hilum", "demo", "--out", str(out), "--small", "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["files"] == len(list(out.rglob("*.dcm"))) > 0
    assert summary["patients"] == len(PATIENTS)
    bad = subprocess.run([*cmd[:-1], "--ct-slices", "0"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "ct-slices" in bad.stderr


def test_demo_dcmtk_renders_window(demo, tmp_path):
    """DCMTK renders a generated CT with the header's soft-tissue window (reference renderer)."""
    if shutil.which("/usr/bin/dcmj2pnm") is None:
        pytest.skip("DCMTK not installed")
    _, paths = demo
    ct = next(p for p in paths if pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID == CTImageStorage)
    png = tmp_path / "ct.png"
    result = subprocess.run(
        ["/usr/bin/dcmj2pnm", "+on", "+Wi", "1", str(ct), str(png)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert png.stat().st_size > 0
