"""Hilum's SCU verbs (``hilum echo|find|move|get|send``) against real DCMTK peers on
127.0.0.1: ``storescp`` (storage) and ``dcmqrscp`` (query/retrieve, configured by
the test), run as the command line a user types, checking output and exit codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import free_port, wait_port
from hilum.archive import Archive
from hilum.config import Config, Peer
from hilum.dimse import scu
from hilum.node import Node
from test_dimse_scp import BIN, ENV, ROOT, _tiny, dcmtk

pytestmark = pytest.mark.skipif(not (BIN / "dcmqrscp").exists(), reason="DCMTK (Debian package dcmtk) is needed")


def hilum(*args: str | int, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hilum", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**ENV, "HILUM_DATA": os.environ.get("HILUM_DATA", "")})


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("scuset")
    s1, s2 = generate_uid(ROOT), generate_uid(ROOT)
    datasets = (_tiny("Smith^John", "SCU-1", "20200115", s1, generate_uid(ROOT), "CT", 4, desc="Chest")
                + _tiny("Jones^Ann", "SCU-2", "20230601", s2, generate_uid(ROOT), "MR", 3, desc="Head"))
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"s{i:02d}.dcm", enforce_file_format=True)
    return {"folder": folder, "s1": s1, "s2": s2}


@pytest.fixture(scope="module")
def dest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A Hilum node (AE HILUMDEST) that dcmqrscp knows as a move destination."""
    cfg = Config(data_dir=tmp_path_factory.mktemp("dest"), aet="HILUMDEST", dicom_port=free_port())
    with Node(cfg, only=["dimse"]) as n:
        yield n


@pytest.fixture(scope="module")
def dcmqrscp(tmp_path_factory: pytest.TempPathFactory, studies: dict[str, Any], dest: Node) -> Iterator[int]:
    root = tmp_path_factory.mktemp("dcmqrscp")
    (root / "db").mkdir()
    port = free_port()
    (root / "qr.cfg").write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        f"HostTable BEGIN\ndest = (HILUMDEST, 127.0.0.1, {dest.config.dicom_port})\nHostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nDCMQR {root / 'db'} RW (200, 1024mb) ANY\nAETable END\n")
    proc = subprocess.Popen([str(BIN / "dcmqrscp"), "-c", str(root / "qr.cfg")], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        dcmtk("storescu", "-aec", "DCMQR", "+sd", "127.0.0.1", port, studies["folder"])
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([str(BIN / "storescp"), "-aet", "STORESCP", "-od", str(out), "+xa", str(port)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


# ------------------------------------------------------------------ echo


def test_echo_storescp_and_clear_errors(storescp: tuple[int, Path], dcmqrscp: int) -> None:
    ok = hilum("echo", "127.0.0.1", storescp[0], "-aec", "STORESCP", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True

    refused = hilum("echo", "127.0.0.1", free_port())
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]  # one line
    assert "cannot connect" in refused.stderr and "refused" in refused.stderr

    rejected = hilum("echo", "127.0.0.1", dcmqrscp, "-aec", "WRONG")
    assert rejected.returncode == 1
    assert "association rejected" in rejected.stderr and "Called AE title not recognised" in rejected.stderr

    bad_port = hilum("echo", "127.0.0.1", "70000")
    assert bad_port.returncode == 1 and "PORT" in bad_port.stderr


def test_echo_a_configured_peer_by_name(tmp_path: Path, storescp: tuple[int, Path]) -> None:
    cfg = Config(data_dir=tmp_path / "d", aet="ME",
                 peers={"archive": Peer(aet="STORESCP", host="127.0.0.1", port=storescp[0])})
    cfg.save()
    proc = hilum("echo", "archive", "--data", cfg.data_dir)
    assert proc.returncode == 0, proc.stderr
    assert "STORESCP@127.0.0.1" in proc.stdout
    unknown = hilum("echo", "nowhere", "--data", cfg.data_dir)
    assert unknown.returncode == 1 and "not a configured peer" in unknown.stderr


# ------------------------------------------------------------------ send


def test_send_to_storescp(tmp_path: Path, storescp: tuple[int, Path], studies: dict[str, Any],
                          pydicom_files: Path) -> None:
    folder = tmp_path / "tosend"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "rtplan.dcm"):
        (folder / name).write_bytes((pydicom_files / name).read_bytes())
    proc = hilum("send", "-aec", "STORESCP", "--json", "127.0.0.1", storescp[0], folder, studies["folder"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["sent"] == 4 + 7 and summary["failed"] == 0
    received = list(storescp[1].iterdir())
    assert len(received) == 11
    # Compressed files went as stored (storescp +xa accepts every syntax).
    syntaxes = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in received}
    assert {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.91"} <= syntaxes


def test_send_reports_failures_with_exit_3(tmp_path: Path, storescp: tuple[int, Path], studies: dict[str, Any]) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all")
    good = sorted(studies["folder"].iterdir())[0]
    proc = hilum("send", "127.0.0.1", storescp[0], junk, good)
    assert proc.returncode == 3
    assert "sent 1 of 2" in proc.stdout
    assert "junk.dcm" in proc.stderr and "not a DICOM Part 10 file" in proc.stderr
    missing = hilum("send", "127.0.0.1", storescp[0], tmp_path / "nope")
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr


# ------------------------------------------------------------------ find / move / get against dcmqrscp


def test_find_study_and_patient_levels(dcmqrscp: int, studies: dict[str, Any]) -> None:
    proc = hilum("find", "127.0.0.1", dcmqrscp, "-aec", "DCMQR", "-L", "STUDY", "-k", "PatientName=Sm*", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["StudyInstanceUID"] for r in rows] == [studies["s1"]]
    assert rows[0]["PatientName"] == "Smith^John"

    proc = hilum("find", "127.0.0.1", dcmqrscp, "-aec", "DCMQR", "--root", "patient", "-L", "PATIENT",
                 "-k", "PatientID=SCU-*", "--json")
    assert sorted(r["PatientID"] for r in json.loads(proc.stdout)) == ["SCU-1", "SCU-2"]

    proc = hilum("find", "127.0.0.1", dcmqrscp, "-aec", "DCMQR", "-L", "SERIES", "-k",
                 f"StudyInstanceUID={studies['s2']}")
    assert proc.returncode == 0 and "1 match at SERIES level" in proc.stdout and "Modality=MR" in proc.stdout

    bad = hilum("find", "127.0.0.1", dcmqrscp, "-aec", "DCMQR", "-L", "PATIENT")
    assert bad.returncode == 1 and "--root patient" in bad.stderr
    bad_key = hilum("find", "127.0.0.1", dcmqrscp, "-aec", "DCMQR", "-k", "PatientNam=X")
    assert bad_key.returncode == 1 and "unknown attribute keyword" in bad_key.stderr


def test_move_from_dcmqrscp_into_a_hilum_node(dcmqrscp: int, dest: Node, studies: dict[str, Any]) -> None:
    proc = hilum("move", "127.0.0.1", dcmqrscp, "-aec", "DCMQR", "--dest", "HILUMDEST",
                 "-k", f"StudyInstanceUID={studies['s1']}", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "0x0000" and out["completed"] == 4 and out["level"] == "STUDY"
    assert dest.archive.count("IMAGE", {"StudyInstanceUID": studies["s1"]}) == 4

    unknown = hilum("move", "127.0.0.1", dcmqrscp, "-aec", "DCMQR", "--dest", "NOBODY",
                    "-k", f"StudyInstanceUID={studies['s1']}")
    assert unknown.returncode == 1 and "0xA801" in unknown.stdout


def test_get_from_dcmqrscp_to_folder_and_archive(tmp_path: Path, dcmqrscp: int, studies: dict[str, Any]) -> None:
    out = tmp_path / "got"
    proc = hilum("get", "127.0.0.1", dcmqrscp, "-aec", "DCMQR", "-k", f"StudyInstanceUID={studies['s2']}",
                 "--out", out, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["received"] == 3
    assert sorted(pydicom.dcmread(p).InstanceNumber for p in out.iterdir()) == [1, 2, 3]

    data = tmp_path / "data"
    proc = hilum("get", "127.0.0.1", dcmqrscp, "-aec", "DCMQR", "-k", f"StudyInstanceUID={studies['s1']}",
                 "--data", data)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 received" in proc.stdout
    with Archive(data) as a:
        assert a.count("IMAGE", {"StudyInstanceUID": studies["s1"]}) == 4
        assert {r["PatientName"] for r in a.query("STUDY", {})} == {"Smith^John"}


def test_scu_api_against_dcmqrscp(dcmqrscp: int, studies: dict[str, Any]) -> None:
    target = scu.Target("127.0.0.1", dcmqrscp, "DCMQR", "HILUM", timeout=20)
    assert len(scu.find(target, "STUDY", {"PatientID": "SCU-*", "StudyInstanceUID": ""})) == 2
    with pytest.raises(scu.DimseError, match="0xC000"):  # dcmqrscp is hierarchical: IMAGE needs the series
        scu.find(target, "IMAGE", {"PatientID": "SCU-*", "SOPInstanceUID": ""})
    assert scu.echo(target) > 0
    assert scu.infer_level({"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3"}) == "SERIES"
    assert scu.parse_keys(["0010,0010=A*", "StudyDate"]) == {"PatientName": "A*", "StudyDate": ""}
