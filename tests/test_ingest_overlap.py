"""C-STORE ingest with the index written while the blob syncs (``Archive._ingest_alone``) and without.

What travels is what is stored (byte for byte, every UID, every instance
indexed) on one association and on several at once, with the overlap on and
off; a failure of the index or of the blob store is answered with a failure
status and leaves nothing behind.  Real DCMTK ``storescu`` processes and a
real node on loopback; the index failure is SQLite's own (a trigger that
refuses the insert), the blob failure the file system's.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import encode

from conftest import free_port
from hilum.archive import Archive
from hilum.config import Config
from hilum.dimse.storefast import part10_header
from hilum.node import Node

BIN = Path("/usr/bin")
ROOT = "1.2.826.0.1.3680043.10.998."
ENV = {**os.environ, "TCP_NODELAY": "1"}
needs_dcmtk = pytest.mark.skipif(not (BIN / "storescu").exists(), reason="DCMTK (Debian package dcmtk) is needed")


def _ct(n: int, size: int = 128, series: int = 2) -> list[Dataset]:
    studies = [(generate_uid(ROOT), generate_uid(ROOT)) for _ in range(series)]
    out = []
    for i in range(n):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid(ROOT)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = studies[i % series]
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.Modality = (
            f"Overlap^{i % series}",
            f"OV{i % series}",
            "20240102",
            "CT",
        )
        ds.InstanceNumber = i + 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = os.urandom(size * size * 2)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.append(ds)
    return out


def _node(tmp: Path) -> Node:
    return Node(Config(data_dir=tmp / "data", aet="HILUM", dicom_port=free_port()), only=["dimse"])


def _port(n: Node) -> int:
    return n.service("dimse").port  # type: ignore[attr-defined, no-any-return]


def _files(tmp: Path, n: int) -> list[Path]:
    out = []
    for i, ds in enumerate(_ct(n)):
        path = tmp / f"ct{i:03d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        out.append(path)
    return out


def _temporaries(tmp: Path) -> list[Path]:
    return list((tmp / "data" / "blobs" / "tmp").iterdir())


@needs_dcmtk
@pytest.mark.parametrize("overlap", [True, False], ids=["index-while-syncing", "sync-then-index"])
@pytest.mark.parametrize("senders", [1, 4])
def test_what_is_sent_is_what_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overlap: bool, senders: int
) -> None:
    monkeypatch.setattr(Archive, "index_while_syncing", overlap)
    files = _files(tmp_path, 24)
    with _node(tmp_path) as n:
        procs = [
            subprocess.Popen(
                [
                    str(BIN / "storescu"),
                    "-aet",
                    f"MOD{i}",
                    "-aec",
                    "HILUM",
                    "127.0.0.1",
                    str(_port(n)),
                    *map(str, files[i::senders]),
                ],
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i in range(senders)
        ]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode(errors="replace")
        assert n.service("dimse").direct_stores == len(files)  # type: ignore[attr-defined]
        rows = n.archive.instances()
        assert sorted(r["SOPInstanceUID"] for r in rows) == sorted(
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files
        )
        for path in files:
            sent = pydicom.dcmread(path)
            dataset = encode(sent, False, True)  # the data set as it travelled
            assert dataset is not None
            header = part10_header(CTImageStorage, str(sent.SOPInstanceUID), ExplicitVRLittleEndian)
            assert n.archive.read(str(sent.SOPInstanceUID)) == header + dataset
        assert n.archive.check().clean
        assert _temporaries(tmp_path) == []
    with Archive(tmp_path / "data") as a:  # and it is all there after the node is gone
        assert a.stats()["instances"] == len(files)
        assert a.check().clean


def _associate(n: Node) -> tuple[AE, Any]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", _port(n), ae_title="HILUM")
    assert assoc.is_established
    return ae, assoc


@pytest.mark.parametrize("overlap", [True, False], ids=["index-while-syncing", "sync-then-index"])
def test_an_index_that_refuses_the_row_is_a_failure_status_and_nothing_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overlap: bool
) -> None:
    monkeypatch.setattr(Archive, "index_while_syncing", overlap)
    first, refused, later = _ct(3, series=1)
    with _node(tmp_path) as n:
        ae, assoc = _associate(n)
        try:
            assert assoc.send_c_store(first).Status == 0x0000  # the series is known: the fast index path
            db = sqlite3.connect(tmp_path / "data" / "index.sqlite", timeout=30)
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON instances BEGIN SELECT RAISE(ABORT, 'refused'); END")
            db.commit()
            status = assoc.send_c_store(refused)
            assert status.Status not in (0x0000, 0xB000, 0xB007, 0xB006), status
            assert status.Status >= 0xA000
            db.execute("DROP TRIGGER refuse")
            db.commit()
            db.close()
            assert assoc.send_c_store(later).Status == 0x0000
        finally:
            assoc.release()
            ae.shutdown()
        uids = {r["SOPInstanceUID"] for r in n.archive.instances()}
        assert uids == {first.SOPInstanceUID, later.SOPInstanceUID}
        assert not n.archive.blobs.path(n.archive.blobs.key_for(str(refused.SOPInstanceUID))).exists()
        assert n.archive.check().clean
        assert _temporaries(tmp_path) == []


@pytest.mark.parametrize("overlap", [True, False], ids=["index-while-syncing", "sync-then-index"])
def test_a_blob_store_that_cannot_be_written_is_a700(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overlap: bool
) -> None:
    monkeypatch.setattr(Archive, "index_while_syncing", overlap)
    refused, later = _ct(2, series=1)
    with _node(tmp_path) as n:
        tmp = tmp_path / "data" / "blobs" / "tmp"
        shutil.rmtree(tmp)
        tmp.write_bytes(b"not a folder")  # every temporary blob fails, even for root
        ae, assoc = _associate(n)
        try:
            status = assoc.send_c_store(refused)
            assert status.Status == 0xA700, status
            tmp.unlink()
            assert assoc.send_c_store(later).Status == 0x0000
        finally:
            assoc.release()
            ae.shutdown()
        assert n.archive.stats()["instances"] == 1
        assert n.archive.check().clean
