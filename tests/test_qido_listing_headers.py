"""An instance listing's included attributes, read from each file's first kilobytes (qido._InstanceHeaders),
answer exactly what pydicom's reader of the whole file answers (qido._from_file) — for every kind of file
the archive holds — and a header cut short is read further, never guessed."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.data import get_testdata_files

from hilum.archive import Archive
from hilum.dicom.attributes import HeaderCut, read_header
from hilum.dicom.generator import make_study
from hilum.dicom.generator.people import DOE
from hilum.dicom.generator.series import iter_ct_series
from hilum.dicomweb import qido
from hilum.dicomweb.progressive import PER_INSTANCE

KEYWORDS = [*PER_INSTANCE, "PatientName", "StudyDescription", "SeriesDescription", "ReferencedImageSequence",
            "AcquisitionDateTime", "ContentTime", "OtherPatientIDsSequence"]  # fmt: skip


def _ingest_samples(archive: Archive) -> int:
    n = 0
    for path in get_testdata_files("*.dcm"):
        try:
            if archive.ingest(path).ok:
                n += 1
        except Exception:  # noqa: BLE001 - pydicom's deliberately broken samples are refused
            continue
    return n


def _same(archive: Archive) -> tuple[int, int]:
    ctx = SimpleNamespace(archive=archive)
    fast = qido._InstanceHeaders(ctx, list(KEYWORDS))  # type: ignore[arg-type]
    rows = archive.query("IMAGE", {}, limit=10000)
    fast_read = 0
    for row in rows:
        want = qido._from_file(ctx, "IMAGE", row, list(KEYWORDS))  # type: ignore[arg-type]
        got = fast(row)
        assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), row["SOPInstanceUID"]
        with open(archive.blobs.path(row["_blob_key"]), "rb") as f:
            data = f.read()
        if read_header(data, whole=True) is not None:
            fast_read += 1
    return len(rows), fast_read


def test_the_listing_of_pydicoms_samples_is_what_pydicom_reads(tmp_path: Path) -> None:
    with Archive(tmp_path / "data") as archive:
        stored = _ingest_samples(archive)
        rows, fast_read = _same(archive)
        assert stored >= rows > 40  # (some samples share a SOP Instance UID)
        assert fast_read > rows // 2  # most took the fast read; the others (big endian, deflated...) pydicom's


def test_a_ct_series_and_a_header_longer_than_the_first_read(tmp_path: Path) -> None:
    study = make_study(DOE, accession="HDR1", date="20260601", seed="headers")
    with Archive(tmp_path / "data") as archive:
        for k, ds in enumerate(iter_ct_series(study, rows=64, columns=64, slices=6, slice_thickness=2.0, seed=1)):
            if k == 3:  # a header of ~50 KB: read in several steps
                ds.ImageComments = "x" * 50_000
                ds.PatientName = "Müller^Jürgen"
                ds.SpecificCharacterSet = "ISO_IR 100"
            assert archive.ingest(ds).ok
        rows, fast_read = _same(archive)
        assert rows == fast_read == 6


def test_read_header_asks_for_more_until_the_pixel_data(tmp_path: Path) -> None:
    path = get_testdata_files("CT_small.dcm")[0]
    data = Path(path).read_bytes()
    full = pydicom.dcmread(path, stop_before_pixels=True)
    pixels = data.find(b"\xe0\x7f\x10\x00OW")
    assert pixels > 1000
    for cut in (200, 600, 1000, pixels - 3, pixels + 2):
        with pytest.raises(HeaderCut):
            read_header(data[:cut], whole=False)
    ds = read_header(data[: pixels + 12], whole=False)  # every header byte, no pixel: enough
    assert ds is not None and ds.SOPInstanceUID == full.SOPInstanceUID
    assert ds.ImagePositionPatient == full.ImagePositionPatient
    assert read_header(b"not dicom" * 40, whole=True) is None
