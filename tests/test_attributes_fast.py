"""``index_record`` decodes common values straight from raw bytes; pydicom's
conversion must give the same record for every file (real third-party files
from pydicom's test data, and generated studies with non-ASCII names)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from hilum.dicom import attributes
from hilum.dicom.attributes import IndexRecord, InvalidInstance, index_record, read_instance
from hilum.dicom.generator import write_demo


def _record(data: bytes) -> IndexRecord | str:
    try:
        return index_record(read_instance(data))
    except InvalidInstance as exc:
        return f"rejected: {exc.code}"


def _records(data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[IndexRecord | str, IndexRecord | str]:
    fast = _record(data)
    with monkeypatch.context() as m:
        m.setattr(attributes, "_FAST", False)
        slow = _record(data)
    return fast, slow


def _files(pydicom_files: Path, tmp_path: Path) -> list[Path]:
    real = sorted(p for p in pydicom_files.rglob("*") if p.is_file())
    generated = write_demo(tmp_path / "demo", small=True)
    return real + [Path(p) for p in generated]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's test files are odd on purpose
def test_raw_values_match_pydicom(pydicom_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compared = non_ascii = own_reader = 0
    for path in _files(pydicom_files, tmp_path):
        data = path.read_bytes()
        fast, slow = _records(data, monkeypatch)
        assert fast == slow, path.name  # the same record, or the same refusal
        if isinstance(fast, str):
            continue
        compared += 1
        own_reader += attributes._read_part10(data) is not None
        non_ascii += any(not str(v).isascii() for v in fast.patient.values())
    assert compared >= 100
    assert own_reader >= 80  # most files were read without pydicom's reader, and still agree
    assert non_ascii >= 3  # Japanese, German... names took pydicom's path and still agree


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cut_files_are_refused_alike(pydicom_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file cut at many places: what pydicom's reader refuses, the own one refuses too
    (reasons may differ), and what both accept they index the same.  The own reader refuses
    more: a file cut inside an element header, which pydicom's reads as a file ending there."""
    names = ["CT_small.dcm", "rtplan.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "emri_small_jpeg_2k_lossless.dcm",
             "SC_rgb_rle.dcm", "rtstruct.dcm"]
    checked = stricter = 0
    for name in names:
        found = list(pydicom_files.rglob(name))
        if not found:
            continue
        data = found[0].read_bytes()
        for cut in range(140, len(data), max(1, len(data) // 97)):
            fast, slow = _records(data[:cut], monkeypatch)
            if isinstance(slow, str):
                assert isinstance(fast, str), (name, cut, fast, slow)
            elif not isinstance(fast, str):
                assert fast == slow, (name, cut)
            else:
                stricter += 1
            checked += 1
    assert checked >= 400
    assert stricter < checked // 10


def test_undefined_length_sequences(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequences and items of undefined length (as DCMTK writes them), nested, both VR encodings."""
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from hilum.dicom.attributes import to_part10

    for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.5"
        inner = Dataset()
        inner.CodeValue, inner.CodeMeaning = "T-1", "Chest"
        outer = Dataset()
        outer.ReferencedSOPInstanceUID = "1.2.3.9"
        outer.AnatomicRegionSequence = Sequence([inner])
        ds.ReferencedImageSequence = Sequence([outer, Dataset()])
        ds.PatientName, ds.PatientID, ds.Modality = "Seq^Uence", "SEQ", "CT"
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
        for parent, keyword in ((ds, "ReferencedImageSequence"), (outer, "AnatomicRegionSequence")):
            parent[keyword].is_undefined_length = True
            for item in parent[keyword].value:
                item.is_undefined_length_sequence_item = True
        data = to_part10(ds)
        assert data.count(b"\xfe\xff\xdd\xe0") == 2  # two sequence delimiters were written
        fast, slow = _records(data, monkeypatch)
        assert fast == slow and not isinstance(fast, str)
        assert fast.patient["patient_id"] == "SEQ"
        parsed = attributes._read_part10(data)
        assert parsed is not None
        ds2 = parsed[0]
        assert ds2.ReferencedImageSequence[0].AnatomicRegionSequence[0].CodeMeaning == "Chest"
        assert len(ds2.ReferencedImageSequence) == 2


def test_odd_values_fall_back_to_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    from hilum.dicom.attributes import to_part10

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.5"
    ds.PatientName = "Doe^John"
    ds.PatientID = " ID 7 "
    ds.StudyDescription = "two\\values"       # several values: pydicom joins them
    ds.SeriesNumber = "+12"
    ds.InstanceNumber = "3"
    ds.Rows, ds.Columns = 512, 256
    ds.StudyDate = "20240229"
    ds.SpecificCharacterSet = "ISO_IR 192"
    data = to_part10(ds)
    fast, slow = _records(data, monkeypatch)
    assert fast == slow
    assert fast.study["study_description"] == "two\\values"
    assert fast.instance["rows"] == 512 and fast.series["series_number"] == 12
