"""The node's DIMSE SCP against real peers on 127.0.0.1: DCMTK's echoscu, storescu,
findscu, movescu (to a DCMTK storescp), getscu, and pynetdicom for what DCMTK
cannot do on purpose (SOP class mismatch, abort mid-C-STORE, storage
commitment, C-CANCEL, TLS).

DCMTK is called by full path (pynetdicom installs scripts of the same names).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

from conftest import free_port, wait_port
from hilum.archive import Archive
from hilum.config import Config, Peer
from hilum.dimse import scu
from hilum.node import Node

BIN = Path("/usr/bin")
pytestmark = pytest.mark.skipif(not (BIN / "storescu").exists(), reason="DCMTK (Debian package dcmtk) is needed")

ROOT = "1.2.826.0.1.3680043.10.999."
ENV = {**os.environ, "TCP_NODELAY": "1"}

# pydicom's own sample files, one per transfer syntax (and a few SOP classes).
PYDICOM_SAMPLES = [
    "CT_small.dcm",  # Explicit VR Little Endian, CT
    "MR_small.dcm",  # Explicit VR Little Endian, MR
    "rtplan.dcm",  # Implicit VR Little Endian, RT Plan
    "MR_small_implicit.dcm",  # Implicit VR Little Endian
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "MR_small_RLE.dcm",  # RLE Lossless
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS Lossless
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_dcmtk_+eb+cr.dcm",  # JPEG Baseline
    "JPGExtended.dcm",  # JPEG Extended
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless SV1
    "MR_small_jp2klossless.dcm",  # JPEG 2000 Lossless
]


def dcmtk(tool: str, *args: str | int, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc



@pytest.fixture(scope="module")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A DCMTK storescp (AE STORESCP) the node may move to."""
    out = tmp_path_factory.mktemp("storescp")
    port = free_port()
    proc = subprocess.Popen([str(BIN / "storescp"), "-aet", "STORESCP", "-od", str(out), "+xa", str(port)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def _tiny(patient: str, pid: str, date: str, study: str, series: str, modality: str, n: int,
          sop_class: str = SecondaryCaptureImageStorage, desc: str = "") -> list[Dataset]:
    out = []
    for i in range(n):
        ds = Dataset()
        sop = generate_uid(ROOT)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient, pid, "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyDescription, ds.AccessionNumber = date, "101500", desc, f"A{pid}"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, i + 1
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(range(64))
        out.append(ds)
    return out


@pytest.fixture(scope="module")
def query_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Small known studies for query tests: three patients, dates 2020-2022, CT and MR, a UTF-8 name."""
    folder = tmp_path_factory.mktemp("queryset")
    s1, s2, s3 = (generate_uid(ROOT) for _ in range(3))
    datasets = (
        _tiny("Smith^John", "QS-1", "20200115", s1, generate_uid(ROOT), "CT", 3, desc="Chest")
        + _tiny("Smith^John", "QS-1", "20200115", s1, generate_uid(ROOT), "MR", 2, desc="Chest")
        + _tiny("Smythe^Anna", "QS-2", "20210615", s2, generate_uid(ROOT), "MR", 40, desc="Head")
        + _tiny("Müller^Jürgen", "QS-3", "20220301", s3, generate_uid(ROOT), "CT", 1, desc="Knie")
    )
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"q{i:03d}.dcm", enforce_file_format=True)
    return {"folder": folder, "studies": [s1, s2, s3], "count": len(datasets)}


# storescu proposes the uncompressed syntaxes plus the one a -x option names; files of each
# compressed syntax are sent in a run with that option, so they travel as stored.
_PROPOSE = {
    "1.2.840.10008.1.2.1.99": "-xd",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5": "-xr",  # RLE Lossless
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG Extended
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG Lossless SV1
}


@pytest.fixture(scope="module")
def codec_set(tmp_path_factory: pytest.TempPathFactory, pydicom_files: Path) -> dict[str, Any]:
    """Files in many transfer syntaxes: pydicom's samples and the project's generated codec study,
    in one folder per storescu -x option."""
    from hilum.dicom.generator import write_codec_study

    folder = tmp_path_factory.mktemp("codecset")
    sources = [pydicom_files / name for name in PYDICOM_SAMPLES]
    generated = write_codec_study(tmp_path_factory.mktemp("generated"), rows=64, slices=2)
    syntaxes: dict[Path, str] = {}
    seen: set[str] = set()
    for i, src in enumerate(sources + generated):
        ds = pydicom.dcmread(src)
        ts = str(ds.file_meta.TransferSyntaxUID)
        option = _PROPOSE.get(ts, "-x=")
        dst = folder / option / f"{i:03d}.dcm"
        dst.parent.mkdir(exist_ok=True)
        if ds.SOPInstanceUID in seen:  # pydicom ships the same MR image in several syntaxes
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(ROOT)
            ds.save_as(dst)
        else:
            shutil.copy(src, dst)
        seen.add(ds.SOPInstanceUID)
        syntaxes[dst] = ts
    return {"folder": folder, "files": sorted(syntaxes), "syntaxes": syntaxes, "generated": generated}


def storescu_codec_set(codec_set: dict[str, Any], port: int, only: set[Path] | None = None) -> None:
    for sub in sorted(codec_set["folder"].iterdir()):
        files = [p for p in sorted(sub.iterdir()) if only is None or codec_set["syntaxes"].get(p) and p in only]
        if files:
            dcmtk("storescu", sub.name, "-aet", "MODALITY", "-aec", "HILUM", "127.0.0.1", port, *files)


def make_config(data: Path, storescp_port: int, **kw: Any) -> Config:
    peers = {
        "scp": Peer(aet="STORESCP", host="127.0.0.1", port=storescp_port),
        "modality": Peer(aet="MODALITY", host="127.0.0.1", port=free_port()),
        "viewer": Peer(aet="VIEWER", host="127.0.0.1", port=free_port(), may_query=False, may_retrieve=False),
    }
    return Config(data_dir=data, aet="HILUM", dicom_port=free_port(), peers=peers, **kw)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, storescp: tuple[int, Path],
         query_set: dict[str, Any]) -> Iterator[Node]:
    """A running node holding the query set (sent with DCMTK storescu)."""
    cfg = make_config(tmp_path_factory.mktemp("node"), storescp[0])
    n = Node(cfg, only=["dimse"])
    n.start()
    try:
        dcmtk("storescu", "-aet", "MODALITY", "-aec", "HILUM", "+sd", "+r", "127.0.0.1", cfg.dicom_port,
              query_set["folder"])
        yield n
    finally:
        n.stop()


def port_of(n: Node) -> int:
    return n.service("dimse").port  # type: ignore[attr-defined, no-any-return]


def findscu(n: Node, tmp: Path, *args: str, model: str = "-S") -> list[Dataset]:
    """Run findscu, extract the responses (-X) and read them back."""
    out = tmp / f"find{time.monotonic_ns()}"
    out.mkdir()
    dcmtk("findscu", model, "-aet", "MODALITY", "-aec", "HILUM", "-X", "-od", out, *args, "127.0.0.1", port_of(n))
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


# ------------------------------------------------------------------ verification, storage


def test_echoscu(node: Node) -> None:
    proc = dcmtk("echoscu", "-v", "-aet", "MODALITY", "-aec", "HILUM", "127.0.0.1", port_of(node))
    assert "Received Echo Response (Success)" in proc.stdout + proc.stderr


def test_storescu_every_transfer_syntax_is_stored_as_received(tmp_path: Path, codec_set: dict[str, Any],
                                                              storescp: tuple[int, Path],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config(tmp_path / "data", storescp[0])
    with caplog.at_level(logging.INFO, logger="hilum.dimse.scp"), Node(cfg, only=["dimse"]) as n:
        storescu_codec_set(codec_set, port_of(n))
        rows = n.archive.query("IMAGE", {})
        stored = {r["SOPInstanceUID"]: r for r in rows}
    assert len(stored) == len(codec_set["files"])
    compressed = 0
    for path, ts in codec_set["syntaxes"].items():
        src = pydicom.dcmread(path)
        row = stored[str(src.SOPInstanceUID)]
        if pydicom.uid.UID(ts).is_compressed:
            compressed += 1
            assert row["TransferSyntaxUID"] == ts, f"{path.name} was not stored as received"
            with Archive(cfg.data_dir) as a:
                assert pydicom.dcmread(a.path(row["SOPInstanceUID"])).PixelData == src.PixelData
    assert compressed >= 10
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("association")]
    assert len(lines) == len(list(codec_set["folder"].iterdir()))
    assert all("MODALITY -> HILUM" in line and "C-STORE" in line and "released" in line for line in lines), lines


def test_many_concurrent_associations(tmp_path: Path, query_set: dict[str, Any], storescp: tuple[int, Path]) -> None:
    cfg = make_config(tmp_path / "data", storescp[0])
    files = sorted(query_set["folder"].glob("*.dcm"))
    with Node(cfg, only=["dimse"]) as n:
        procs = [subprocess.Popen([str(BIN / "storescu"), "-aet", "MODALITY", "-aec", "HILUM", "127.0.0.1",
                                   str(port_of(n)), *map(str, files[i::6])], env=ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for i in range(6)]
        assert [p.wait(60) for p in procs] == [0] * 6
        assert n.archive.stats()["instances"] == len(files)


# ------------------------------------------------------------------ C-FIND


def test_findscu_patient_root_patient_level_wildcard(node: Node, tmp_path: Path) -> None:
    rsp = findscu(node, tmp_path, "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientName=Sm*", "-k", "PatientID",
                  "-k", "NumberOfPatientRelatedStudies", model="-P")
    got = sorted((str(r.PatientName), r.PatientID) for r in rsp)
    assert got == [("Smith^John", "QS-1"), ("Smythe^Anna", "QS-2")]
    assert all(r.QueryRetrieveLevel == "PATIENT" and "StudyDate" not in r for r in rsp)
    assert sorted(int(r.NumberOfPatientRelatedStudies) for r in rsp) == [1, 1]


def test_findscu_study_level_date_range_and_returned_keys_only(node: Node, tmp_path: Path,
                                                               query_set: dict[str, Any]) -> None:
    rsp = findscu(node, tmp_path, "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyDate=20200601-20211231",
                  "-k", "StudyInstanceUID", "-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedInstances",
                  "-k", "PatientName")
    assert len(rsp) == 1
    r = rsp[0]
    assert r.StudyInstanceUID == query_set["studies"][1]
    assert int(r.NumberOfStudyRelatedInstances) == 40 and r.ModalitiesInStudy == "MR"
    assert {e.keyword for e in r if e.tag.group != 2} == {
        "QueryRetrieveLevel", "StudyDate", "StudyInstanceUID", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
        "PatientName"}
    # Open-ended range, and a lower-level key (Modality) matching at STUDY level.
    assert len(findscu(node, tmp_path, "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyDate=-20201231",
                       "-k", "StudyInstanceUID")) == 1
    both = findscu(node, tmp_path, "-k", "QueryRetrieveLevel=STUDY", "-k", "ModalitiesInStudy=CT",
                   "-k", "StudyInstanceUID")
    assert sorted(r.StudyInstanceUID for r in both) == sorted([query_set["studies"][0], query_set["studies"][2]])


def test_findscu_series_and_image_levels(node: Node, tmp_path: Path, query_set: dict[str, Any]) -> None:
    s1 = query_set["studies"][0]
    series = findscu(node, tmp_path, "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={s1}",
                     "-k", "SeriesInstanceUID", "-k", "Modality", "-k", "NumberOfSeriesRelatedInstances")
    assert sorted((r.Modality, int(r.NumberOfSeriesRelatedInstances)) for r in series) == [("CT", 3), ("MR", 2)]
    ct = next(r for r in series if r.Modality == "CT")
    images = findscu(node, tmp_path, "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={s1}",
                     "-k", f"SeriesInstanceUID={ct.SeriesInstanceUID}", "-k", "SOPInstanceUID",
                     "-k", "InstanceNumber", "-k", "SOPClassUID")
    assert sorted(int(r.InstanceNumber) for r in images) == [1, 2, 3]
    assert {r.SOPClassUID for r in images} == {SecondaryCaptureImageStorage}
    # A UID list matches several instances (PS3.4 C.2.2.2.2).
    two = "\\".join(str(r.SOPInstanceUID) for r in images[:2])
    assert len(findscu(node, tmp_path, "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={s1}",
                       "-k", f"SOPInstanceUID={two}")) == 2


def test_findscu_non_ascii_answer_is_utf8(node: Node, tmp_path: Path) -> None:
    rsp = findscu(node, tmp_path, "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=QS-3", "-k", "PatientName",
                  "-k", "StudyDescription")
    assert len(rsp) == 1
    assert rsp[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(rsp[0].PatientName) == "Müller^Jürgen"


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_find_malformed_value_is_a900(node: Node) -> None:
    target = scu.Target("127.0.0.1", port_of(node), "HILUM", "MODALITY", timeout=10)
    with pytest.raises(scu.DimseError, match="0xA900"):
        scu.find(target, "IMAGE", {"StudyDate": "2020-01-01-garbage"})


def test_find_cancel_stops_the_answers(tmp_path: Path, storescp: tuple[int, Path]) -> None:
    # DCMTK findscu sends its C-CANCEL as soon as the first match arrives: the server, which sends
    # 400 matches in a few milliseconds (the fast engine 32 per write), must still stop short.
    # (pynetdicom's SCU takes a millisecond or more to answer; by then every match has gone.)
    study = generate_uid(ROOT)
    with Node(make_config(tmp_path / "data", storescp[0]), only=["dimse"]) as n:
        n.archive.ingest_many(_tiny("Many^Matches", "MANY", "20210615", study, generate_uid(ROOT), "MR", 400))
        proc = dcmtk("findscu", "-v", "-S", "--cancel", "1", "-aet", "MODALITY", "-aec", "HILUM",
                     "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}", "-k", "SOPInstanceUID",
                     "127.0.0.1", port_of(n))
    out = proc.stdout + proc.stderr
    assert "Sending Cancel Request" in out
    assert "Final Find Response (Cancel" in out
    assert 1 <= out.count("(Pending)") < 400


def test_peer_without_query_right_gets_no_find_context(node: Node) -> None:
    target = scu.Target("127.0.0.1", port_of(node), "HILUM", "VIEWER", timeout=10)
    with pytest.raises(scu.DimseError, match="accepted none of the proposed presentation contexts"):
        scu.find(target, "STUDY", {"PatientName": "*"})


# ------------------------------------------------------------------ C-MOVE, C-GET


def test_movescu_to_dcmtk_storescp(node: Node, tmp_path: Path, storescp: tuple[int, Path],
                                   query_set: dict[str, Any]) -> None:
    study = query_set["studies"][1]
    before = set(storescp[1].iterdir())
    proc = dcmtk("movescu", "-v", "-S", "-aet", "MODALITY", "-aec", "HILUM", "-aem", "STORESCP",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", port_of(node))
    received = set(storescp[1].iterdir()) - before
    assert len(received) == 40
    assert all(pydicom.dcmread(p).StudyInstanceUID == study for p in received)
    text = proc.stdout + proc.stderr
    assert "Received Move Response 40 (Pending)" in text and "Received Final Move Response (Success)" in text


def test_movescu_unknown_destination_is_a801(node: Node, query_set: dict[str, Any]) -> None:
    proc = dcmtk("movescu", "-v", "-S", "-aet", "MODALITY", "-aec", "HILUM", "-aem", "NOBODY",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={query_set['studies'][0]}",
                 "127.0.0.1", port_of(node), check=False)
    assert "Received Final Move Response (Refused: MoveDestinationUnknown)" in proc.stdout + proc.stderr
    target = scu.Target("127.0.0.1", port_of(node), "HILUM", "MODALITY", timeout=10)
    assert scu.move(target, "NOBODY", "STUDY", {"StudyInstanceUID": query_set["studies"][0]}).status == 0xA801


def test_move_partial_failure_is_b000(tmp_path: Path, query_set: dict[str, Any], storescp: tuple[int, Path]) -> None:
    cfg = make_config(tmp_path / "data", storescp[0])
    with Node(cfg, only=["dimse"]) as n:
        dcmtk("storescu", "-aet", "MODALITY", "-aec", "HILUM", "+sd", "127.0.0.1", port_of(n), query_set["folder"])
        study = query_set["studies"][0]
        rows = n.archive.query("IMAGE", {"StudyInstanceUID": study})
        n.archive.path(rows[0]["SOPInstanceUID"]).unlink()  # one blob lost: its sub-operation fails
        target = scu.Target("127.0.0.1", port_of(n), "HILUM", "MODALITY", timeout=20)
        result = scu.move(target, "STORESCP", "STUDY", {"StudyInstanceUID": study})
    assert result.status == 0xB000
    assert (result.completed, result.failed) == (len(rows) - 1, 1)
    assert result.failed_uids == [rows[0]["SOPInstanceUID"]]


def test_getscu_receives_a_study_decompressed_when_asked(tmp_path: Path, codec_set: dict[str, Any],
                                                          storescp: tuple[int, Path]) -> None:
    cfg = make_config(tmp_path / "data", storescp[0])
    with Node(cfg, only=["dimse"]) as n:
        storescu_codec_set(codec_set, port_of(n), only={p for p, ts in codec_set["syntaxes"].items()
                                                         if p.name >= f"{len(PYDICOM_SAMPLES):03d}.dcm"})
        study = str(pydicom.dcmread(codec_set["generated"][0]).StudyInstanceUID)
        out = tmp_path / "get"
        out.mkdir()
        proc = dcmtk("getscu", "-v", "-S", "-aet", "MODALITY", "-aec", "HILUM", "-od", out,
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", port_of(n),
                     timeout=90)
    files = list(out.iterdir())
    assert len(files) == len(codec_set["generated"]), proc.stdout + proc.stderr
    # getscu proposes uncompressed syntaxes only: the node decompressed what it holds compressed.
    for f in files:
        assert not pydicom.dcmread(f).file_meta.TransferSyntaxUID.is_compressed


# ------------------------------------------------------------------ bad input, access control


def test_unknown_calling_ae_rejected_when_peers_required(tmp_path: Path, storescp: tuple[int, Path]) -> None:
    cfg = make_config(tmp_path / "data", storescp[0], require_known_peers=True)
    with Node(cfg, only=["dimse"]) as n:
        bad = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "HILUM", "127.0.0.1", port_of(n), check=False)
        assert bad.returncode != 0
        assert "Calling AE Title Not Recognized" in bad.stdout + bad.stderr
        dcmtk("echoscu", "-aet", "MODALITY", "-aec", "HILUM", "127.0.0.1", port_of(n))
        wrong_called = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "OTHER", "127.0.0.1", port_of(n), check=False)
        assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr


def test_require_known_peers_without_peers_rejects_everyone(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path / "data", aet="HILUM", dicom_port=free_port(), require_known_peers=True)
    with Node(cfg, only=["dimse"]) as n:
        target = scu.Target("127.0.0.1", port_of(n), "HILUM", "ANYONE", timeout=10)
        with pytest.raises(scu.AssociationRejected, match="Calling AE title not recognised"):
            scu.echo(target)


def test_max_associations(tmp_path: Path, storescp: tuple[int, Path]) -> None:
    cfg = make_config(tmp_path / "data", storescp[0], max_associations=1)
    with Node(cfg, only=["dimse"]) as n:
        ae = AE("HOLDER")
        ae.add_requested_context(Verification)
        held = ae.associate("127.0.0.1", port_of(n), ae_title="HILUM")
        try:
            assert held.is_established
            with pytest.raises(scu.AssociationRejected, match="[Ll]ocal limit exceeded"):
                scu.echo(scu.Target("127.0.0.1", port_of(n), "HILUM", "MODALITY", timeout=10))
        finally:
            held.release()
            ae.shutdown()
        deadline = time.monotonic() + 10  # the released association's thread ends shortly after
        while n.service("dimse").ae.active_associations and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        scu.echo(scu.Target("127.0.0.1", port_of(n), "HILUM", "MODALITY", timeout=10))


def test_sop_class_mismatch_is_a900_and_nothing_stored(tmp_path: Path, storescp: tuple[int, Path]) -> None:
    ds = _tiny("Odd^One", "ODD", "20230101", generate_uid(ROOT), generate_uid(ROOT), "MR", 1,
               sop_class=MRImageStorage)[0]
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage  # the request will say CT, the data set says MR
    path = tmp_path / "odd.dcm"
    ds.preamble = b"\0" * 128
    ds.save_as(path, enforce_file_format=False)  # keeps the (wrong) meta as written
    cfg = make_config(tmp_path / "data", storescp[0])
    with Node(cfg, only=["dimse"]) as n:
        # hilum send checks a file before sending it: this one contradicts itself, so it stays here
        result = scu.send(scu.Target("127.0.0.1", port_of(n), "HILUM", "MODALITY", timeout=10), [path])
        assert result.items[0].status is None and "sop-class-mismatch" in result.items[0].error
        # sent anyway (pynetdicom streams the file, naming it after its meta), the node refuses it
        from pynetdicom import _config

        chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
        ae = AE("MODALITY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        try:
            assoc = ae.associate("127.0.0.1", port_of(n), ae_title="HILUM")
            status = assoc.send_c_store(path)
            assoc.release()
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = chunked
            ae.shutdown()
        assert status.Status == 0xA900, status
        assert n.archive.stats()["instances"] == 0


def test_not_dicom_is_c000(tmp_path: Path, storescp: tuple[int, Path]) -> None:
    cfg = make_config(tmp_path / "data", storescp[0])
    with Node(cfg, only=["dimse"]) as n:
        ae = AE("MODALITY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port_of(n), ae_title="HILUM")
        ds = _tiny("No^Uid", "NOUID", "20230101", generate_uid(ROOT), generate_uid(ROOT), "CT", 1,
                   sop_class=CTImageStorage)[0]
        del ds.StudyInstanceUID
        status = assoc.send_c_store(ds)
        assoc.release()
        ae.shutdown()
        assert status.Status == 0xC000
        assert "StudyInstanceUID" in status.ErrorComment
        assert n.archive.stats()["instances"] == 0


def _encoded_store_pdus(ds: Dataset, context_id: int) -> list[bytes]:
    """The P-DATA-TF PDUs of one C-STORE request, as bytes (pynetdicom's own encoders)."""
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode
    from pynetdicom.pdu import P_DATA_TF

    encoded = encode(ds, False, True)  # Explicit VR Little Endian, as negotiated
    assert encoded is not None
    prim = C_STORE()
    prim.MessageID = 7
    prim.AffectedSOPClassUID = ds.SOPClassUID
    prim.AffectedSOPInstanceUID = ds.SOPInstanceUID
    prim.Priority = 0
    prim.DataSet = BytesIO(encoded)
    msg = C_STORE_RQ()
    msg.primitive_to_message(prim)
    out = []
    for pdata in msg.encode_msg(context_id, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(pdata)
        out.append(pdu.encode())
    return out


@pytest.mark.parametrize("how", ["a-abort", "connection-closed"])
def test_abort_mid_store_leaves_nothing_and_server_keeps_serving(tmp_path: Path, storescp: tuple[int, Path],
                                                                 how: str) -> None:
    cfg = make_config(tmp_path / "data", storescp[0])
    big = _tiny("Abort^Me", "ABORT", "20230101", generate_uid(ROOT), generate_uid(ROOT), "CT", 1,
                sop_class=CTImageStorage)[0]
    big.Rows = big.Columns = 512
    big.PixelData = os.urandom(512 * 512)
    with Node(cfg, only=["dimse"]) as n:
        ae = AE("MODALITY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port_of(n), ae_title="HILUM", max_pdu=16384)
        assert assoc.is_established
        cx_id = assoc.accepted_contexts[0].context_id
        pdus = _encoded_store_pdus(big, cx_id)
        raw = assoc.dul.socket.socket
        for pdu in pdus[: len(pdus) // 2]:
            raw.sendall(pdu)
        time.sleep(0.2)
        if how == "a-abort":
            assoc.abort()
        else:
            raw.shutdown(socket.SHUT_RDWR)
            raw.close()
            assoc.kill()
        ae.shutdown()
        # The node has ended that association (and discarded what had arrived) before we look.
        service = n.service("dimse")
        deadline = time.monotonic() + 30
        while any(a.is_alive() for a in service.ae.active_associations):  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the node kept the aborted association"
            time.sleep(0.01)
        assert n.archive.stats()["instances"] == 0
        assert n.archive.check(verify_checksums=False).clean
        # And the node keeps serving.
        dcmtk("echoscu", "-aet", "MODALITY", "-aec", "HILUM", "127.0.0.1", port_of(n))


# ------------------------------------------------------------------ storage commitment


def _commit_request(uids: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = generate_uid(ROOT)
    items = []
    for cls, inst in uids:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = cls, inst
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def test_storage_commitment_same_association(node: Node, query_set: dict[str, Any]) -> None:
    rows = node.archive.query("IMAGE", {"StudyInstanceUID": query_set["studies"][0]})
    wanted = [(r["SOPClassUID"], r["SOPInstanceUID"]) for r in rows[:2]] + [(CTImageStorage, generate_uid(ROOT))]
    reports: list[tuple[int, Dataset]] = []
    got = threading.Event()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information))
        got.set()
        return 0x0000, None

    ae = AE("MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", port_of(node), ae_title="HILUM",
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        req = _commit_request(wanted)
        status, _ = assoc.send_n_action(req, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        assert status.Status == 0x0000
        assert got.wait(10), "no N-EVENT-REPORT"
    finally:
        assoc.release()
        ae.shutdown()
    event_type, info = reports[0]
    assert event_type == 2  # some failed
    assert info.TransactionUID == req.TransactionUID
    assert sorted(i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence) == sorted(u for _, u in wanted[:2])
    assert [i.ReferencedSOPInstanceUID for i in info.FailedSOPSequence] == [wanted[2][1]]
    assert info.FailedSOPSequence[0].FailureReason == 0x0112


def test_storage_commitment_new_association(node: Node, query_set: dict[str, Any]) -> None:
    """The requester leaves at once: the report comes on a new association to its configured address."""
    peer = node.config.peers["modality"]
    rows = node.archive.query("IMAGE", {"StudyInstanceUID": query_set["studies"][2]})
    reports: list[tuple[int, Dataset]] = []
    got = threading.Event()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information))
        got.set()
        return 0x0000, None

    tried_here = threading.Event()

    def refuse_here(event: evt.Event) -> tuple[int, None]:
        tried_here.set()
        return 0x0110, None  # "not on this association": the node must try a new one

    listener = AE("MODALITY")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    server = listener.start_server(("127.0.0.1", peer.port), block=False,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        ae = AE("MODALITY")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", port_of(node), ae_title="HILUM",
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, refuse_here)])
        req = _commit_request([(r["SOPClassUID"], r["SOPInstanceUID"]) for r in rows])
        status, _ = assoc.send_n_action(req, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        assert tried_here.wait(15), "the node did not first report on the requesting association"
        assoc.release()
        ae.shutdown()
        assert status.Status == 0x0000
        assert got.wait(15), "no N-EVENT-REPORT on a new association"
    finally:
        server.shutdown()
    event_type, info = reports[0]
    assert event_type == 1
    assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [rows[0]["SOPInstanceUID"]]


# ------------------------------------------------------------------ TLS


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "node.key", folder / "node.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_echo_and_store(tmp_path: Path, storescp: tuple[int, Path], query_set: dict[str, Any]) -> None:
    from hilum.dimse.net import client_ssl_context

    cert, key = _self_signed(tmp_path)
    cfg = make_config(tmp_path / "data", storescp[0], tls_cert=str(cert), tls_key=str(key))
    with Node(cfg, only=["dimse"]) as n:
        tls = client_ssl_context(ca=str(cert))
        target = scu.Target("127.0.0.1", port_of(n), "HILUM", "MODALITY", tls=tls, timeout=10)
        scu.echo(target)
        files = sorted(query_set["folder"].glob("*.dcm"))[:3]
        assert scu.send(target, files).sent == 3
        # Plain DICOM on a TLS port does not associate; a client that does not trust the cert neither.
        with pytest.raises(scu.DimseError):
            scu.echo(scu.Target("127.0.0.1", port_of(n), "HILUM", "MODALITY", timeout=5))
        with pytest.raises(scu.DimseError):
            scu.echo(scu.Target("127.0.0.1", port_of(n), "HILUM", "MODALITY", tls=client_ssl_context(), timeout=5))
        assert n.archive.stats()["instances"] == 3


def test_plain_and_tls_ports_side_by_side(tmp_path: Path, storescp: tuple[int, Path]) -> None:
    """``[dimse] tls_port`` in hilum.toml: the LAN keeps plain DICOM, remote links use TLS."""
    from hilum.config import load_config
    from hilum.dimse.net import client_ssl_context

    cert, key = _self_signed(tmp_path)
    cfg = make_config(tmp_path / "data", storescp[0], tls_cert=str(cert), tls_key=str(key))
    tls_port = free_port()
    cfg.extra = {"dimse": {"tls_port": tls_port}}
    cfg.save()
    cfg = load_config(cfg.data_dir)
    with Node(cfg, only=["dimse"]) as n:
        assert n.service("dimse").ports == [cfg.dicom_port, tls_port]  # type: ignore[attr-defined]
        dcmtk("echoscu", "-aet", "MODALITY", "-aec", "HILUM", "127.0.0.1", cfg.dicom_port)
        scu.echo(scu.Target("127.0.0.1", tls_port, "HILUM", "MODALITY", tls=client_ssl_context(ca=str(cert)),
                            timeout=10))
