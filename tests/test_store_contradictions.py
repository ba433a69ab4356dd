"""What contradicts itself does not come in (issue 13 items 6 and 9): C-STOREs built on purpose
(pynetdicom sending hand-made Part 10 files: the command is taken from the file meta, the data set
bytes go as written) on both C-STORE paths of the node, the direct one (hilum.dimse.storefast) and
pynetdicom's; STOW-RS parts over real HTTP; the status each gets, and that nothing was stored.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config, evt

from conftest import free_port
from hilum.archive import Archive, IngestResult
from hilum.config import Config
from hilum.dimse.scp import DUPLICATE_DIFFERS, store_status
from hilum.node import Node

ROOT = "1.2.826.0.1.3680043.10.999."
MR_SPECTROSCOPY = "1.2.840.10008.5.1.4.1.1.4.2"

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")


def _dataset(sop_class: str = CTImageStorage, *, rows: int = 8, columns: int = 8, pixels: bytes | None = None,
             **uids: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uids.get("sop", generate_uid(ROOT))
    ds.StudyInstanceUID = uids.get("study", generate_uid(ROOT))
    ds.SeriesInstanceUID = uids.get("series", generate_uid(ROOT))
    ds.PatientName, ds.PatientID, ds.Modality = "Contra^Diction", "CONTRA", "CT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(256))[: rows * columns] * 1 if pixels is None else pixels
    return ds


def _part10(path: Path, ds: Dataset, *, meta_class: str | None = None, meta_instance: str | None = None,
            ts: str = ExplicitVRLittleEndian) -> Path:
    """A Part 10 file whose meta says what the caller wants and whose data set is ``ds`` as written
    (Explicit VR Little Endian), whatever the two claim."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = meta_class or ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = meta_instance or ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\0" * 128 + b"DICM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid UIDs on purpose
        write_file_meta_info(head, meta, enforce_standard=True)
        body = DicomBytesIO()
        body.is_little_endian, body.is_implicit_VR = True, False
        write_dataset(body, ds)
    path.write_bytes(head.getvalue() + body.getvalue())
    return path


@pytest.fixture(params=["direct", "pynetdicom"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    """A node whose C-STOREs take the direct path, or pynetdicom's (a PDU-level subscriber on the
    association makes the direct path step aside, hilum.dimse.scp.DimseService.take)."""
    cfg = Config(data_dir=tmp_path / "data", aet="HILUM", dicom_port=free_port())
    with Node(cfg, only=["dimse"]) as n:
        if request.param == "direct" and not n.service("dimse").fast:  # type: ignore[attr-defined]
            pytest.skip("[dimse] engine = pynetdicom has no direct C-STORE path: the other case covers it")
        if request.param == "pynetdicom":
            for server in n.service("dimse")._servers:  # type: ignore[attr-defined]
                server.bind(evt.EVT_PDU_RECV, lambda event: None)
        n.path = request.param  # type: ignore[attr-defined]
        yield n


def _send_file(n: Node, path: Path, sop_class: str, ts: str = ExplicitVRLittleEndian) -> Dataset:
    """C-STORE the file as it is: pynetdicom takes the command's UIDs from the file meta and
    streams the data set bytes after it unchanged."""
    service = n.service("dimse")
    direct_before = service.direct_stores  # type: ignore[attr-defined]
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE("MODALITY")
    ae.add_requested_context(sop_class, [ts])
    try:
        assoc = ae.associate("127.0.0.1", service.port, ae_title="HILUM")  # type: ignore[attr-defined]
        assert assoc.is_established
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            status = assoc.send_c_store(path)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        ae.shutdown()
    took_direct = service.direct_stores > direct_before  # type: ignore[attr-defined]
    assert took_direct == (n.path == "direct")  # type: ignore[attr-defined]
    return status


def _nothing_stored(n: Node) -> None:
    assert n.archive.stats()["instances"] == 0
    assert n.archive.check(verify_checksums=False).clean


# ------------------------------------------------------------------ C-STORE contradictions


def test_native_pixel_data_on_a_jpeg_context_is_refused(node: Node, tmp_path: Path) -> None:
    ds = _dataset()
    path = _part10(tmp_path / "native-as-jpeg.dcm", ds, ts=JPEGBaseline8Bit)
    status = _send_file(node, path, CTImageStorage, JPEGBaseline8Bit)
    assert status.Status == 0xC000 and "native Pixel Data" in status.ErrorComment
    _nothing_stored(node)


def test_encapsulated_pixel_data_on_a_native_context_is_refused(node: Node, tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate

    ds = _dataset()
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(30) + b"\xff\xd9"])
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    path = _part10(tmp_path / "jpeg-as-native.dcm", ds)
    status = _send_file(node, path, CTImageStorage)
    assert status.Status == 0xC000 and "encapsulated" in status.ErrorComment
    _nothing_stored(node)


@pytest.mark.parametrize("what", ["instance", "class"])
def test_a_command_naming_another_instance_or_class_is_refused(node: Node, tmp_path: Path, what: str) -> None:
    ds = _dataset(MRImageStorage)
    if what == "instance":
        path = _part10(tmp_path / "other.dcm", ds, meta_instance=generate_uid(ROOT))
        status = _send_file(node, path, MRImageStorage)
    else:
        path = _part10(tmp_path / "other.dcm", ds, meta_class=CTImageStorage)
        status = _send_file(node, path, CTImageStorage)
    assert status.Status == 0xA900, status
    assert "differs" in status.ErrorComment
    _nothing_stored(node)


@pytest.mark.parametrize("pixels, rows", [(bytes(10), 8), (b"", 8), (bytes(66), 8), (bytes(12), 3)],
                         ids=["short", "empty", "long", "padded-too-much"])
def test_pixel_data_that_does_not_match_the_image_is_refused(node: Node, tmp_path: Path, pixels: bytes,
                                                             rows: int) -> None:
    ds = _dataset(rows=rows, columns=rows, pixels=pixels)
    status = _send_file(node, _part10(tmp_path / "px.dcm", ds), CTImageStorage)
    assert status.Status == 0xA900, status
    assert "Pixel Data" in status.ErrorComment
    _nothing_stored(node)
    # the same image with the length it declares (an odd length padded to even, PS3.5 7.1.1) is stored
    right = bytes(range(rows * rows)) + (b"\0" if rows * rows % 2 else b"")
    ds = _dataset(rows=rows, columns=rows, pixels=right)
    assert _send_file(node, _part10(tmp_path / "right.dcm", ds), CTImageStorage).Status == 0x0000
    assert node.archive.stats()["instances"] == 1


@pytest.mark.parametrize("keyword, value, expected", [
    ("sop", "../../x", 0x0117),
    ("sop", "1.2.3\0.4", 0x0117),
    ("sop", "1.2.840.010.1", 0x0117),  # a leading zero in a component
    ("study", "1.2..3", 0xA900),  # an empty component
    ("study", "1.2.3.", 0xA900),
    ("series", "1.2.3.abc", 0xA900),
    ("series", "1." + "2" * 64, 0xA900),  # over 64 characters
])
def test_uids_that_are_not_uids_are_refused(node: Node, tmp_path: Path, keyword: str, value: str,
                                            expected: int) -> None:
    ds = _dataset(**{keyword: value})
    status = _send_file(node, _part10(tmp_path / "uid.dcm", ds), CTImageStorage)
    assert status.Status == expected, status
    assert "not a valid UID" in status.ErrorComment
    _nothing_stored(node)


def test_a_complete_object_without_pixel_data_is_stored_as_a_non_image(node: Node, tmp_path: Path) -> None:
    """An MR spectroscopy header (Rows, Columns, Bits Allocated, a private CSA block, no Pixel Data)
    is a whole instance, not a truncated image."""
    ds = _dataset(MR_SPECTROSCOPY)
    del ds.PixelData
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00291010, "OB", b"SV10\x04\x03\x02\x01" + bytes(56))
    status = _send_file(node, _part10(tmp_path / "csa.dcm", ds), MR_SPECTROSCOPY)
    assert status.Status == 0x0000, status
    [row] = node.archive.query("IMAGE", {})
    assert row["SOPInstanceUID"] == ds.SOPInstanceUID and row["SOPClassUID"] == MR_SPECTROSCOPY


def test_a_private_csa_non_image_file_is_imported(archive: Archive, tmp_path: Path) -> None:
    ds = _dataset("1.3.12.2.1107.5.9.1")  # Siemens CSA Non-Image Storage (private)
    del ds.PixelData
    ds.add_new(0x00290010, "LO", "SIEMENS CSA NON-IMAGE")
    ds.add_new(0x00291010, "OB", b"SV10" + bytes(60))
    result = archive.ingest(_part10(tmp_path / "csa.dcm", ds).read_bytes())
    assert result.status == "stored", result.reason


# ------------------------------------------------------------------ duplicates with other content


def test_a_duplicate_with_other_content_is_a_failure_not_success() -> None:
    """The archive reports ``duplicate-differs`` (issue 13, its part); the answer must not be the
    plain Success that would let the sender delete the only copy of what it sent."""
    differs = IngestResult("duplicate", sop_instance_uid="1.2.3", code="duplicate-differs",
                           reason="SOP Instance UID 1.2.3 is already stored with other content")
    status, comment = store_status(differs)
    assert status == DUPLICATE_DIFFERS and 0xC000 <= status <= 0xCFFF  # a failure, not retried as 0xA7xx is
    assert "other content" in comment
    assert store_status(IngestResult("duplicate", sop_instance_uid="1.2.3")) == (0x0000, "")
    assert store_status(IngestResult("rejected", code="storage-full", reason="disk full"))[0] == 0xA700


def test_a_changed_duplicate_sent_by_c_store_is_answered_with_a_failure(node: Node, tmp_path: Path) -> None:
    """End to end once the archive reports ``duplicate-differs`` (its part of issue 13): a modality
    resending an instance with other content under the same UID is told it was not stored."""
    ds = _dataset()
    assert _send_file(node, _part10(tmp_path / "first.dcm", ds), CTImageStorage).Status == 0x0000
    ds.PatientName = "Changed^Later"
    changed = _part10(tmp_path / "changed.dcm", ds).read_bytes()
    if node.archive.ingest(changed).code != "duplicate-differs":
        pytest.skip("the archive does not report duplicate-differs yet (the 'archive' engineer's part)")
    status = _send_file(node, tmp_path / "changed.dcm", CTImageStorage)
    assert status.Status == DUPLICATE_DIFFERS, status
    assert "Changed" not in str(pydicom.dcmread(node.archive.path(ds.SOPInstanceUID)).PatientName)


# ------------------------------------------------------------------ STOW-RS


@pytest.fixture
def web(tmp_path: Path) -> Iterator[dict[str, Any]]:
    from hilum.archive.users import UserStore
    from hilum.dicomweb.service import DicomWebService

    archive = Archive(tmp_path / "web")
    UserStore.of(archive).add("rita", "radiologist", "correct horse")
    service = DicomWebService(Config(data_dir=tmp_path / "web", web_port=0), archive)
    service.start()
    yield {"url": service.url, "archive": archive}
    service.stop()
    archive.close()


def _stow(web: dict[str, Any], *files: bytes) -> requests.Response:
    boundary = "hilum-test-boundary"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n"
                    for f in files) + f"--{boundary}--\r\n".encode()
    return requests.post(f"{web['url']}/studies", data=body, auth=("rita", "correct horse"), timeout=30,
                         headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})


def test_stow_part_whose_meta_names_another_sop_class_is_refused(web: dict[str, Any], tmp_path: Path) -> None:
    ds = _dataset(MRImageStorage)
    bad = _part10(tmp_path / "mr-says-ct.dcm", ds, meta_class=CTImageStorage).read_bytes()
    r = _stow(web, bad)
    assert r.status_code == 409, r.text
    failed = r.json()["00081198"]["Value"]
    assert [f["00081197"]["Value"][0] for f in failed] == [0xA900]
    assert web["archive"].stats()["instances"] == 0
    good = _part10(tmp_path / "good.dcm", _dataset(MRImageStorage)).read_bytes()
    bad_uid = _part10(tmp_path / "bad-uid.dcm", _dataset(sop="../../x")).read_bytes()
    short = _part10(tmp_path / "short.dcm", _dataset(pixels=bytes(7) + b"\0")).read_bytes()
    r = _stow(web, good, bad_uid, short)
    assert r.status_code == 202, r.text
    assert [f["00081197"]["Value"][0] for f in r.json()["00081198"]["Value"]] == [0xA900, 0xA900]
    assert web["archive"].stats()["instances"] == 1


def test_stow_statuses_for_a_full_disk_and_a_different_duplicate() -> None:
    from hilum.dicomweb.stow import FAILURE_CODES, response_status

    assert response_status(0, ["storage-full"]) == 503  # retry later: Out of Resources
    assert response_status(0, ["storage-full", "pixel-length"]) == 409
    assert response_status(2, ["duplicate-differs"]) == 202
    assert response_status(0, ["duplicate-differs"]) == 409
    assert FAILURE_CODES["duplicate-differs"] == DUPLICATE_DIFFERS and FAILURE_CODES["storage-full"] == 0xA700
    assert response_status(3, []) == 200
