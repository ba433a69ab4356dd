"""De-identification (PS3.15 Annex E): real sample files, options, UID consistency, the node's mapping table."""

from __future__ import annotations

import copy
import datetime as dt
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID_dictionary

from hilum.dicom.deid import Deidentifier, DeidError, Options, load_pixel_rules, profile_action
from hilum.dicom.deid_profile import ROWS

SECRET = b"0123456789abcdef0123456789abcdef"


def _pydicom_data_files() -> Path | None:
    try:
        import data_store  # pydicom-data's package

        return Path(data_store.__file__).parent / "data"
    except ImportError:
        return None


def _sample_files(pydicom_files: Path) -> list[Path]:
    roots = [pydicom_files] + ([p] if (p := _pydicom_data_files()) else [])
    out = []
    for root in roots:
        for f in sorted(root.rglob("*")):
            if f.is_file() and f.suffix.lower() in (".dcm", "") and f.stat().st_size > 132:
                out.append(f)
    return out


def _read(data: bytes | Path) -> Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            src = io.BytesIO(data) if isinstance(data, bytes) else data
            return pydicom.dcmread(src, force=True)
        except Exception:  # noqa: BLE001 - not every sample is readable
            return None


def _walk(ds: Dataset) -> Iterator[pydicom.DataElement]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value or ():
                yield from _walk(item)


def _text(elem: pydicom.DataElement) -> str:
    v = elem.value
    if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(x) for x in v)
    return "" if v is None else str(v)


def test_the_table_is_the_standards_with_its_option_columns() -> None:
    assert len(ROWS) > 400
    by_tag = {r[0]: r for r in ROWS}
    assert by_tag["00100010"][2] == "Z"  # Patient's Name
    assert by_tag["00080020"][3] == {"rtnLongFullDatesOpt": "K", "rtnLongModifDatesOpt": "C"}  # Study Date
    assert by_tag["00181000"][3] == {"rtnDevIdOpt": "K"}  # Device Serial Number
    assert profile_action(0x00100010) == "Z"
    assert profile_action(0x00080018) == "U"
    assert profile_action(0x00080020) == "Z"
    assert profile_action(0x00080020, Options(retain_dates=True)) == "S"
    assert profile_action(0x00181000) == "Z"
    assert profile_action(0x00181000, Options(retain_device=True)) == "K"
    assert profile_action(0x00081030) == "X"
    assert profile_action(0x00081030, Options(clean_descriptors=True)) == "C"
    assert profile_action(0x60023000) == "X"  # overlay data, repeating group
    assert profile_action(0x00280010) is None  # Rows: not in the table, kept


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the deliberately malformed samples
def test_real_sample_files_keep_nothing_the_profile_removes(pydicom_files: Path) -> None:
    deid = Deidentifier(SECRET, Options(allow_burned_in=True))
    files = _sample_files(pydicom_files)
    assert len(files) > 150
    checked = decoded = 0
    for f in files:
        original = _read(f)
        if original is None or "SOPInstanceUID" not in original:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out_bytes, result = deid.deidentify_bytes(f.read_bytes())
            except DeidError:
                continue
        out = _read(out_bytes)
        assert out is not None, f
        checked += 1
        # every X/Z/D attribute's original value is gone, wherever it was
        forbidden: dict[int, set[str]] = {}
        originals_uids: set[str] = set()
        for elem in _walk(original):
            if elem.tag.is_private or elem.VR == "SQ":
                continue
            if elem.VR == "UI":
                originals_uids.update(s for s in _text(elem).split("\\") if s and s not in UID_dictionary)
            action = profile_action(int(elem.tag))
            value = _text(elem).strip()
            if action in ("X", "Z", "D") and len(value) > 1:
                forbidden.setdefault(int(elem.tag), set()).add(value)
        for elem in _walk(out):
            assert not elem.tag.is_private, f"{f.name}: private {elem.tag} left"
            if elem.tag in (0x00100010, 0x00100020, 0x00120040):
                continue  # the pseudonym
            assert _text(elem).strip() not in forbidden.get(int(elem.tag), ()), f"{f.name}: {elem.tag} kept"
            if elem.VR == "UI":
                for uid in _text(elem).split("\\"):
                    assert uid not in originals_uids, f"{f.name}: UID {uid} of {elem.tag} kept"
        assert out.PatientIdentityRemoved == "YES"
        assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == result.sop_uid
        # images still decode, to the same pixels (no Clean Pixel Data asked)
        if "PixelData" in original:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    before = original.pixel_array
                except Exception:  # noqa: BLE001 - a sample pydicom itself cannot decode
                    continue
            assert np.array_equal(out.pixel_array, before), f.name
            decoded += 1
    assert checked > 140 and decoded > 100, (checked, decoded)


def _study_files(tmp_path: Path) -> list[Path]:
    from hilum.dicom.generator import write_demo

    return write_demo(tmp_path / "src", small=True)


def test_uids_consistent_across_a_study_and_a_second_study_of_the_patient(tmp_path: Path) -> None:
    files = _study_files(tmp_path)
    deid = Deidentifier(SECRET, Options(retain_dates=True))
    by_patient: dict[str, list[tuple[Dataset, Dataset]]] = {}
    for f in files:
        original = pydicom.dcmread(f)
        out = _read(deid.deidentify_bytes(f.read_bytes())[0])
        assert out is not None
        by_patient.setdefault(str(original.PatientID), []).append((original, out))
    mueller = by_patient["HIL-0001"]  # two studies a year apart (demo: current and prior CT)
    assert len({str(o.StudyInstanceUID) for o, _ in mueller}) == 2
    study_map: dict[str, set[str]] = {}
    series_map: dict[str, set[str]] = {}
    for o, d in mueller:
        study_map.setdefault(str(o.StudyInstanceUID), set()).add(str(d.StudyInstanceUID))
        series_map.setdefault(str(o.SeriesInstanceUID), set()).add(str(d.SeriesInstanceUID))
        assert str(d.StudyInstanceUID).startswith("2.25.") and len(str(d.StudyInstanceUID)) <= 64
    assert all(len(v) == 1 for v in study_map.values()) and all(len(v) == 1 for v in series_map.values())
    assert len({d.PatientID for _, d in mueller}) == 1 and mueller[0][1].PatientID != "HIL-0001"
    # the Frame of Reference shared by the instances of a series stays shared
    assert (
        len({str(d.FrameOfReferenceUID) for o, d in mueller if o.StudyInstanceUID == mueller[0][0].StudyInstanceUID})
        == 1
    )
    # dates moved by the same whole number of weeks for every study of the patient, times kept
    offsets = set()
    for o, d in mueller:
        for kw in ("StudyDate", "SeriesDate", "ContentDate"):
            if o.get(kw):
                a = dt.datetime.strptime(o.get(kw), "%Y%m%d")
                b = dt.datetime.strptime(d.get(kw), "%Y%m%d")
                offsets.add((b - a).days)
        assert d.StudyTime == o.StudyTime
        assert d.LongitudinalTemporalInformationModified == "MODIFIED"
    assert len(offsets) == 1 and next(iter(offsets)) < 0 and next(iter(offsets)) % 7 == 0
    # another patient gets another pseudonym; the same run again gives the same UIDs
    assert by_patient["HIL-0002"][0][1].PatientID != mueller[0][1].PatientID
    again = Deidentifier(SECRET, Options(retain_dates=True))
    assert again.uid(str(mueller[0][0].SOPInstanceUID)) == str(mueller[0][1].SOPInstanceUID)
    # another project (or another node secret) cannot be linked
    other = Deidentifier(SECRET, Options(), project="other")
    assert other.uid(str(mueller[0][0].SOPInstanceUID)) != str(mueller[0][1].SOPInstanceUID)
    assert Deidentifier(b"x" * 32).pseudonym("HIL-0001") != deid.pseudonym("HIL-0001")


def test_without_the_dates_option_dates_are_emptied(tmp_path: Path) -> None:
    f = _study_files(tmp_path)[0]
    out = _read(Deidentifier(SECRET).deidentify_bytes(f.read_bytes())[0])
    assert out is not None
    assert out.StudyDate == "" and out.get("SeriesDate", "") in ("", "19000101")  # Z, and X/D: a dummy
    assert "InstanceCreationDate" not in out or out.InstanceCreationDate == ""
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def test_options_device_identity_and_clean_descriptors(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_study_files(tmp_path)[0])
    ds.DeviceSerialNumber = "SN-12345"
    ds.StationName = "CT-ROOM-2"
    ds.StudyDescription = f"CT chest for {ds.PatientName.family_name} ID {ds.PatientID} on 2026-11-02 ref 12345678"
    plain = Deidentifier(SECRET).deidentify(ds2 := copy.deepcopy(ds))
    assert "StudyDescription" not in ds2 and ds2.DeviceSerialNumber == ""
    assert plain.patient_id == ds2.PatientID
    ds3 = copy.deepcopy(ds)
    Deidentifier(SECRET, Options(retain_device=True, clean_descriptors=True)).deidentify(ds3)
    assert ds3.DeviceSerialNumber == "SN-12345" and ds3.StationName == "CT-ROOM-2"
    text = ds3.StudyDescription
    assert text.startswith("CT chest for ")
    for leak in (ds.PatientName.family_name, str(ds.PatientID), "2026-11-02", "12345678"):
        assert leak not in text, text
    codes = [i.CodeValue for i in ds3.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113109"]


def _burned_in_image() -> Dataset:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.Manufacturer, ds.PatientName, ds.PatientID = "OT", "HILUM-TEST", "Doe^Jane", "P1"
    ds.BurnedInAnnotation = "YES"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 96, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    arr = np.full((64, 96), 100, np.uint8)
    arr[2:12, 2:60] = 255  # "burnt-in text" in the rule's region (x 0-63, y 0-15)
    ds.PixelData = arr.tobytes()
    return ds


def test_clean_pixel_data_blacks_out_the_rules_region() -> None:
    assert any(r.name.startswith("GE LightSpeed") for r in load_pixel_rules())
    ds = _burned_in_image()
    with pytest.raises(DeidError, match="Burned In Annotation"):
        Deidentifier(SECRET).deidentify(copy.deepcopy(ds))
    result = Deidentifier(SECRET, Options(clean_pixels=True)).deidentify(ds)
    arr = ds.pixel_array
    assert result.pixel_rules and ds.BurnedInAnnotation == "NO"
    assert arr[:16, :64].max() == 0  # blacked out
    assert (arr[16:, :] == 100).all() and (arr[:16, 64:] == 100).all()  # the rest untouched
    assert "113101" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]


def test_clean_pixel_data_of_a_compressed_image(pydicom_files: Path) -> None:
    ds = pydicom.dcmread(pydicom_files / "SC_rgb_rle.dcm")
    ds.Modality, ds.Manufacturer = "OT", "HILUM-TEST"
    before = ds.pixel_array.copy()
    Deidentifier(SECRET, Options(clean_pixels=True)).deidentify(ds)
    out = _read(_to_bytes(ds))
    assert out is not None
    arr = out.pixel_array
    assert (arr[:16, :64] == 0).all()
    assert np.array_equal(arr[16:], before[16:])


def _to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_dciodvfy_finds_no_new_error(tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dicom3tools' dciodvfy is not installed")
    f = _study_files(tmp_path)[0]
    out = tmp_path / "out.dcm"
    out.write_bytes(
        Deidentifier(SECRET, Options(retain_dates=True), project="TRIAL").deidentify_bytes(f.read_bytes())[0]
    )

    def errors(p: Path) -> set[str]:
        done = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True, timeout=60)
        return {line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")}

    assert errors(out) <= errors(f), errors(out) - errors(f)


def test_mapping_table_keeps_the_pairs(archive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hilum.archive.deid_store import DeidStore, deidentified
    from hilum.archive.importer import import_paths

    import_paths(archive, [tmp_path / "src"] if _study_files(tmp_path) else [])
    store = DeidStore(archive)
    secret = store.secret()
    assert len(secret) == 32 and store.secret() == secret
    assert oct((archive.data_dir / "deid.secret").stat().st_mode & 0o777) == "0o600"
    studies = [r["StudyInstanceUID"] for r in archive.query("STUDY", {"PatientID": "HIL-0001"})]
    deid = store.deidentifier(Options(), project="lung-trial")
    out = list(deidentified(archive, studies, deid, store=store))
    assert len(out) == 20
    rows = store.mapping(project="lung-trial")
    pairs = {(r["kind"], r["original"]): r["replacement"] for r in rows}
    assert pairs[("patient", "HIL-0001")] == out[0][1].patient_id
    for _data, result in out:
        assert pairs[("uid", result.original_sop_uid)] == result.sop_uid
        assert pairs[("uid", result.original_study_uid)] == result.study_uid
    # again: nothing new, same pairs; another project: its own
    assert store.record("lung-trial", [r for _, r in out]) == 0
    list(deidentified(archive, studies[:1], store.deidentifier(project="other"), store=store))
    assert store.mapping(project="other", kind="patient")[0]["replacement"] != pairs[("patient", "HIL-0001")]
    # the archive's originals are untouched
    assert archive.query("STUDY", {"StudyInstanceUID": studies[0]})
    assert not archive.query("PATIENT", {"PatientID": out[0][1].patient_id})


def test_secret_file_from_config(archive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from hilum.archive.deid_store import DeidStore

    shared = tmp_path / "shared.secret"
    shared.write_bytes(os.urandom(32))
    store = DeidStore.from_config(archive, SimpleNamespace(extra={"deid": {"secret_file": str(shared)}}))
    assert store.secret() == shared.read_bytes()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_rle_2frame.dcm",
                                  "SC_rgb_dcmtk_+eb+cy+n1.dcm"])  # fmt: skip
def test_clean_pixel_data_of_colour_images(pydicom_files: Path, name: str) -> None:
    """YBR (JPEG, native 4:2:2) and multi-frame RGB: the region is black, the rest unchanged, stored as RGB."""
    ds = pydicom.dcmread(pydicom_files / name)
    ds.Modality, ds.Manufacturer = "OT", "HILUM-TEST"
    before = ds.pixel_array.copy()
    Deidentifier(SECRET, Options(clean_pixels=True)).deidentify(ds)
    out = _read(_to_bytes(ds))
    assert out is not None and out.PhotometricInterpretation == "RGB"
    arr = out.pixel_array
    assert arr.shape == before.shape
    assert (arr[..., :16, :64, :] == 0).all()
    assert np.array_equal(arr[..., 16:, :, :], before[..., 16:, :, :])
