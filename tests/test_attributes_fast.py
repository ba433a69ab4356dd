"""``index_record`` decodes common values straight from raw bytes; pydicom's
conversion must give the same record for every file (real third-party files
from pydicom's test data, and generated studies with non-ASCII names)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from hilum.dicom import attributes
from hilum.dicom.attributes import IndexRecord, InvalidInstance, index_record, read_instance
from hilum.dicom.generator import write_demo


def _records(data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[IndexRecord, IndexRecord]:
    fast = index_record(read_instance(data))
    with monkeypatch.context() as m:
        m.setattr(attributes, "_FAST", False)
        slow = index_record(read_instance(data))
    return fast, slow


def _files(pydicom_files: Path, tmp_path: Path) -> list[Path]:
    real = sorted(p for p in pydicom_files.rglob("*") if p.is_file())
    generated = write_demo(tmp_path / "demo", small=True)
    return real + [Path(p) for p in generated]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's test files are odd on purpose
def test_raw_values_match_pydicom(pydicom_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compared = non_ascii = 0
    for path in _files(pydicom_files, tmp_path):
        data = path.read_bytes()
        try:
            fast, slow = _records(data, monkeypatch)
        except InvalidInstance:
            continue
        assert fast == slow, path.name
        compared += 1
        non_ascii += any(not str(v).isascii() for v in fast.patient.values())
    assert compared >= 100
    assert non_ascii >= 3  # Japanese, German... names took pydicom's path and still agree


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
