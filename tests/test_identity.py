"""What leaves is what came in (issue 13 items 1-4): every way an instance leaves Hilum keeps its
identity, against real peers on 127.0.0.1.

* DCMTK ``storescp`` accepting only uncompressed syntaxes (its default), or only Implicit VR Little
  Endian (``+xi``, which also refuses big endian), as ``hilum send`` target, C-MOVE destination, and
  ``getscu`` as C-GET requester: every SOP Instance UID that arrives is one that was stored, the
  pixels are the stored ones, decoded.
* Orthanc as C-MOVE destination: it takes every stored syntax, so it receives the stored bytes
  unchanged; and a round trip Hilum -> Orthanc -> Hilum keeps the instance count.
* ``hilum send`` of a folder with truncated files: each reported, the rest sent, exit 3, JSON.
* Every outgoing path reads through ``Archive.read_outgoing``.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import free_port, orthanc_process, wait_port
from hilum.archive import Archive
from hilum.config import Config, Peer
from hilum.dimse import scu
from hilum.node import Node

BIN = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}
ROOT = "1.2.826.0.1.3680043.10.999."
ORTHANC_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

pytestmark = pytest.mark.skipif(not (BIN / "storescp").exists(), reason="DCMTK (Debian package dcmtk) is needed")

# pydicom's samples in the stored syntaxes that went wrong: each one's own instance here.
SAMPLES = {
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",  # RLE Lossless
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "SC_rgb_dcmtk_+eb+cr.dcm": "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "JPGExtended.dcm": "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "SC_rgb_jpeg_gdcm.dcm": "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "MR_small_bigendian.dcm": "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "rtdose_expb.dcm": "1.2.840.10008.1.2.2",  # big endian, 32-bit multi-frame
    "CT_small.dcm": "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "image_dfl.dcm": "1.2.840.10008.1.2.1.99",  # Deflated
}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory, pydicom_files: Path) -> dict[str, Any]:
    """The samples as files, each under a SOP Instance UID of its own (pydicom ships one MR image in
    several syntaxes under one UID), encodings untouched."""
    folder = tmp_path_factory.mktemp("identity-samples")
    uids: dict[str, str] = {}
    for name, ts in SAMPLES.items():
        ds = pydicom.dcmread(pydicom_files / name)
        assert str(ds.file_meta.TransferSyntaxUID) == ts, name
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(ROOT)
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.999.77.1"  # one study, so one retrieve finds them all
        ds.save_as(folder / name)  # written back in the syntax it was read in
        uids[str(ds.SOPInstanceUID)] = ts
    return {"folder": folder, "uids": uids, "study": "1.2.826.0.1.3680043.10.999.77.1"}


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array


def _check_received(files: list[Path], samples: dict[str, Any], expect: set[str] | None = None) -> None:
    """Every received file is a stored instance under its own UID, with the stored pixels."""
    stored = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in samples["folder"].iterdir()}
    got = {}
    for f in files:
        ds = pydicom.dcmread(f)
        got[str(ds.SOPInstanceUID)] = ds
        assert str(ds.file_meta.MediaStorageSOPInstanceUID) == str(ds.SOPInstanceUID)
    assert set(got) == (expect if expect is not None else set(stored)), "SOP Instance UIDs changed on the way"
    for uid, ds in got.items():
        original = pydicom.dcmread(stored[uid])
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
            assert ds.get(kw) == original.get(kw), (uid, kw)
        if "PixelData" in original:
            assert np.array_equal(_pixels(ds), _pixels(original)), uid


# ------------------------------------------------------------------ DCMTK peers



@pytest.fixture(params=["", "+xi"], ids=["uncompressed", "implicit-only"])
def storescp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Path, str]]:
    """DCMTK storescp that refuses every compressed syntax (its default accepts Explicit/Implicit VR
    Little Endian and Explicit VR Big Endian; ``+xi`` only Implicit VR Little Endian)."""
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    option = [request.param] if request.param else []
    proc = subprocess.Popen([str(BIN / "storescp"), *option, "-aet", "STORESCP", "-od", str(out), str(port)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port, out, request.param
    finally:
        proc.terminate()
        proc.wait(10)


def _allowed(option: str) -> set[str]:
    if option == "+xi":
        return {"1.2.840.10008.1.2"}
    return {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def hilum(*args: str | int, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hilum", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def test_send_to_an_uncompressed_only_peer_keeps_every_uid(samples: dict[str, Any],
                                                            storescp: tuple[int, Path, str]) -> None:
    port, out, option = storescp
    proc = hilum("send", "-aec", "STORESCP", "--json", "127.0.0.1", port, samples["folder"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["sent"] == len(SAMPLES) and summary["failed"] == 0
    files = sorted(out.iterdir())
    _check_received(files, samples)
    assert {str(pydicom.dcmread(f).file_meta.TransferSyntaxUID) for f in files} <= _allowed(option)


@pytest.fixture
def node(tmp_path: Path, samples: dict[str, Any], storescp: tuple[int, Path, str]) -> Iterator[Node]:
    """A node holding the samples (imported as they are), with the storescp as a peer."""
    cfg = Config(data_dir=tmp_path / "data", aet="HILUM", dicom_port=free_port(),
                 peers={"scp": Peer(aet="STORESCP", host="127.0.0.1", port=storescp[0]),
                        "modality": Peer(aet="MODALITY", host="127.0.0.1", port=free_port())})
    with Node(cfg, only=["dimse"]) as n:
        results = [n.archive.ingest(p) for p in sorted(samples["folder"].iterdir())]
        assert [r.status for r in results] == ["stored"] * len(SAMPLES), [r.reason for r in results]
        yield n


def _port(n: Node) -> int:
    return n.service("dimse").port  # type: ignore[attr-defined, no-any-return]


def test_move_to_an_uncompressed_only_peer_keeps_every_uid(node: Node, samples: dict[str, Any],
                                                           storescp: tuple[int, Path, str]) -> None:
    port, out, option = storescp
    target = scu.Target("127.0.0.1", _port(node), "HILUM", "MODALITY", timeout=60)
    result = scu.move(target, "STORESCP", "STUDY", {"StudyInstanceUID": samples["study"]})
    assert (result.status, result.completed, result.failed) == (0x0000, len(SAMPLES), 0), result
    files = sorted(out.iterdir())
    _check_received(files, samples)
    assert {str(pydicom.dcmread(f).file_meta.TransferSyntaxUID) for f in files} <= _allowed(option)


def test_getscu_proposing_uncompressed_only_receives_every_uid(node: Node, samples: dict[str, Any],
                                                               tmp_path: Path,
                                                               storescp: tuple[int, Path, str]) -> None:
    out = tmp_path / "get"
    out.mkdir()
    option = ["-xi"] if storescp[2] == "+xi" else []  # getscu proposes what storescp would accept
    proc = subprocess.run([str(BIN / "getscu"), *option, "-S", "-aet", "MODALITY", "-aec", "HILUM", "-od", str(out),
                           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={samples['study']}",
                           "127.0.0.1", str(_port(node))], capture_output=True, text=True, timeout=120, env=ENV)
    files = sorted(out.iterdir())
    assert len(files) == len(SAMPLES), proc.stdout + proc.stderr
    _check_received(files, samples)


# ------------------------------------------------------------------ Orthanc


@pytest.fixture(scope="module")
def orthanc_pair(tmp_path_factory: pytest.TempPathFactory, samples: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A Hilum node holding the samples and an Orthanc, each the other's configured peer."""
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc is not installed")
    root = tmp_path_factory.mktemp("orthanc-identity")
    hilum_port, orthanc_port, http_port = free_port(), free_port(), free_port()
    cfg = Config(data_dir=root / "hilum", aet="HILUM", dicom_port=hilum_port,
                 peers={"orthanc": Peer(aet="ORTHANC", host="127.0.0.1", port=orthanc_port)})
    ocfg = {
        "Name": "HilumIdentity", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
        "HttpPort": http_port, "DicomPort": orthanc_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowMove": True, "DicomModalities": {"hilum": ["HILUM", "127.0.0.1", hilum_port]},
        "DefaultEncoding": "Utf8",
    }
    node = Node(cfg, only=["dimse"])
    with orthanc_process(root, ocfg, lambda: _rest(http_port, "GET", "/system").get("DicomAet") == "ORTHANC"):
        try:
            node.start()
            results = [node.archive.ingest(p) for p in sorted(samples["folder"].iterdir())]
            assert [r.status for r in results] == ["stored"] * len(SAMPLES), [r.reason for r in results]
            yield {"node": node, "http": http_port, "dicom": orthanc_port}
        finally:
            node.stop()


def _rest(port: int, method: str, path: str, body: bytes | None = None, raw: bool = False) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    data = resp.read()
    assert resp.status == 200, (path, resp.status, data[:200])
    return data if raw else json.loads(data)


def _orthanc_file(port: int, sop_uid: str) -> bytes:
    found = [x for x in _rest(port, "POST", "/tools/lookup", sop_uid.encode()) if x["Type"] == "Instance"]
    assert len(found) == 1, sop_uid
    return _rest(port, "GET", f"/instances/{found[0]['ID']}/file", raw=True)  # type: ignore[no-any-return]


def test_move_to_orthanc_sends_the_stored_bytes_and_a_round_trip_keeps_the_count(
        orthanc_pair: dict[str, Any], samples: dict[str, Any]) -> None:
    node: Node = orthanc_pair["node"]
    before = node.archive.stats()["instances"]
    target = scu.Target("127.0.0.1", _port(node), "HILUM", "MODALITY", timeout=60)
    result = scu.move(target, "ORTHANC", "STUDY", {"StudyInstanceUID": samples["study"]})
    assert (result.status, result.completed, result.failed) == (0x0000, len(SAMPLES), 0), result
    assert _rest(orthanc_pair["http"], "GET", "/statistics")["CountInstances"] == len(SAMPLES)
    for row in node.archive.query("IMAGE", {"StudyInstanceUID": samples["study"]}):
        stored = pydicom.dcmread(io.BytesIO(node.archive.read(row["SOPInstanceUID"])))
        got = pydicom.dcmread(io.BytesIO(_orthanc_file(orthanc_pair["http"], row["SOPInstanceUID"])))
        # Orthanc takes every stored syntax, so each went as stored: the very bytes of its pixels.
        assert str(got.file_meta.TransferSyntaxUID) == row["TransferSyntaxUID"], row["SOPInstanceUID"]
        assert got.SOPInstanceUID == stored.SOPInstanceUID
        if "PixelData" in stored:
            assert got.PixelData == stored.PixelData, row["SOPInstanceUID"]
    # ... and back: Orthanc moves the study to Hilum, which holds every one of them already.
    orthanc = scu.Target("127.0.0.1", orthanc_pair["dicom"], "ORTHANC", "HILUM", timeout=60)
    back = scu.move(orthanc, "HILUM", "STUDY", {"StudyInstanceUID": samples["study"]})
    assert (back.status, back.completed, back.failed) == (0x0000, len(SAMPLES), 0), back
    assert node.archive.stats()["instances"] == before == len(SAMPLES)
    assert _rest(orthanc_pair["http"], "GET", "/statistics")["CountInstances"] == len(SAMPLES)


# ------------------------------------------------------------------ hilum send and bad files


def test_send_reports_truncated_files_and_sends_the_rest(tmp_path: Path, pydicom_files: Path,
                                                         storescp: tuple[int, Path, str]) -> None:
    """A truncated file once ended ``hilum send`` with pynetdicom's UnboundLocalError (exit 1, no
    summary), and another was "sent" cut short: each is now reported and the rest go."""
    port, out, _ = storescp
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"):
        shutil.copy(pydicom_files / name, folder / name)
    rle = (pydicom_files / "MR_small_RLE.dcm").read_bytes()
    (folder / "cut_rle.dcm").write_bytes(rle[:3000])  # cut inside the encapsulated pixel data
    ct = (pydicom_files / "CT_small.dcm").read_bytes()
    (folder / "cut_ct.dcm").write_bytes(ct[: len(ct) - 1000])  # cut inside the native pixel data
    (folder / "zz_notes.txt").write_text("not DICOM")
    proc = hilum("send", "-aec", "STORESCP", "--json", "127.0.0.1", port, folder)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # the documented "some failed" code
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["files"], summary["sent"], summary["failed"]) == (6, 3, 3)
    failures = {Path(f["path"]).name: f["error"] for f in summary["failures"]}
    assert set(failures) == {"cut_rle.dcm", "cut_ct.dcm", "zz_notes.txt"}
    assert "truncated" in failures["cut_rle.dcm"] and "truncated" in failures["cut_ct.dcm"]
    received = {str(pydicom.dcmread(f).SOPInstanceUID) for f in out.iterdir()}
    assert received == {str(pydicom.dcmread(folder / n).SOPInstanceUID)
                        for n in ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm")}


# ------------------------------------------------------------------ every outgoing path reads through read_outgoing


CORRECTED = "Corrected^Today"


@pytest.fixture
def corrected(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``Archive.read_outgoing`` made to correct the patient name (as the archive does after an HL7
    ADT update, issue 13 item 5), recording what it was asked for: what leaves must show it."""
    calls: list[str] = []
    plain = Archive.read_outgoing

    def read_outgoing(self: Archive, row: Mapping[str, Any]) -> bytes:
        calls.append(str(row["SOPInstanceUID"]))
        ds = pydicom.dcmread(io.BytesIO(plain(self, row)))
        ds.PatientName = CORRECTED
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    monkeypatch.setattr(Archive, "read_outgoing", read_outgoing)
    return calls


def test_every_outgoing_path_reads_through_read_outgoing(tmp_path: Path, samples: dict[str, Any],
                                                         corrected: list[str]) -> None:
    from hilum.archive.users import UserStore
    from hilum.cli import main as cli_main
    from hilum.dicomweb import multipart
    from hilum.dicomweb.service import DicomWebService

    out = tmp_path / "scp"
    out.mkdir()
    scp_port = free_port()
    scp = subprocess.Popen([str(BIN / "storescp"), "+xa", "-aet", "STORESCP", "-od", str(out), str(scp_port)],
                           env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = Config(data_dir=tmp_path / "data", aet="HILUM", dicom_port=free_port(), web_port=0,
                 peers={"scp": Peer(aet="STORESCP", host="127.0.0.1", port=scp_port)})
    archive = Archive(cfg.data_dir)
    UserStore.of(archive).add("vic", "viewer", "correct horse")
    names = ["CT_small.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm"]
    for name in names:
        assert archive.ingest(samples["folder"] / name).status == "stored"
    rows = archive.query("IMAGE", {})
    uids = {r["SOPInstanceUID"] for r in rows}
    web = DicomWebService(cfg, archive)
    try:
        wait_port(scp_port)
        with Node(cfg, archive, only=["dimse"]) as n:
            web.start()
            # C-MOVE
            target = scu.Target("127.0.0.1", _port(n), "HILUM", "MODALITY", timeout=60)
            assert scu.move(target, "STORESCP", "STUDY", {"StudyInstanceUID": samples["study"]}).completed == 3
            assert {str(pydicom.dcmread(f).PatientName) for f in out.iterdir()} == {CORRECTED}
            assert sorted(corrected) == sorted(uids)
            # C-GET
            got = tmp_path / "got"
            got.mkdir()
            subprocess.run([str(BIN / "getscu"), "-S", "-aet", "MODALITY", "-aec", "HILUM", "-od", str(got),
                            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={samples['study']}",
                            "127.0.0.1", str(_port(n))], capture_output=True, timeout=120, env=ENV, check=True)
            assert {str(pydicom.dcmread(f).PatientName) for f in got.iterdir()} == {CORRECTED}
            assert len(corrected) == 6
            # WADO-RS instances (as stored and converted), metadata; WADO-URI
            import requests

            auth = ("vic", "correct horse")
            for accept in ('multipart/related; type="application/dicom"; transfer-syntax=*',
                           'multipart/related; type="application/dicom"'):
                r = requests.get(f"{web.url}/studies/{samples['study']}", headers={"Accept": accept}, auth=auth,
                                 timeout=60)
                parts = multipart.decode(r.content, multipart.boundary_of(r.headers["content-type"]))
                got_uids = set()
                for _headers, body in parts:
                    ds = pydicom.dcmread(io.BytesIO(body))
                    assert str(ds.PatientName) == CORRECTED
                    got_uids.add(str(ds.SOPInstanceUID))
                assert got_uids == uids  # converted or not, the same instances
            meta = requests.get(f"{web.url}/studies/{samples['study']}/metadata", auth=auth, timeout=60).json()
            assert {m["00100010"]["Value"][0]["Alphabetic"] for m in meta} == {CORRECTED}
            row = rows[0]
            r = requests.get(web.url.replace("/dicom-web", "/wado"), auth=auth, timeout=60, params={
                "requestType": "WADO", "studyUID": row["StudyInstanceUID"], "seriesUID": row["SeriesInstanceUID"],
                "objectUID": row["SOPInstanceUID"], "contentType": "application/dicom", "transferSyntax": "*"})
            assert str(pydicom.dcmread(io.BytesIO(r.content)).PatientName) == CORRECTED
            calls = len(corrected)
            # hilum export of a series from the archive
            series = next(r["SeriesInstanceUID"] for r in rows if r["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2")
            members = [r for r in rows if r["SeriesInstanceUID"] == series]
            assert cli_main(["export", "--series", series, "--data", str(cfg.data_dir), "-o",
                             str(tmp_path / "cine.gif")]) == 0
            assert len(corrected) == calls + len(members) and (tmp_path / "cine.gif").stat().st_size > 0
    finally:
        web.stop()
        archive.close()
        scp.terminate()
        scp.wait(10)


# ------------------------------------------------------------------ contexts and DICOMweb conversions


def test_each_stored_syntax_is_proposed_alone_beside_the_uncompressed_context() -> None:
    from hilum.dimse import contexts as cx

    got = cx.contexts_for_class("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.2",
                                                              "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.1"])
    assert [list(map(str, c.transfer_syntax)) for c in got] == [
        ["1.2.840.10008.1.2.4.90"], ["1.2.840.10008.1.2.2"], ["1.2.840.10008.1.2.1"],
        ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]]
    # cut to fit: the uncompressed context stays
    assert [list(map(str, c.transfer_syntax)) for c in cx.contexts_for_class(
        "1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"], limit=2)] == [
        ["1.2.840.10008.1.2.4.90"], ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]]
    # per instance: the stored syntax when accepted, else uncompressed (explicit first), never another codec
    assert cx.choose_syntax(["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.90"], "1.2.840.10008.1.2.4.90") == \
        "1.2.840.10008.1.2.4.90"
    assert cx.choose_syntax(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"], "1.2.840.10008.1.2.5") == \
        "1.2.840.10008.1.2.1"
    assert cx.choose_syntax(["1.2.840.10008.1.2.4.91"], "1.2.840.10008.1.2.4.90") is None


def test_wado_converts_losslessly_keeping_uids_and_never_makes_a_lossy_instance(
        tmp_path: Path, samples: dict[str, Any], pydicom_files: Path) -> None:
    import requests

    from hilum.archive.users import UserStore
    from hilum.dicomweb import multipart
    from hilum.dicomweb.service import DicomWebService

    archive = Archive(tmp_path / "web")
    UserStore.of(archive).add("vic", "viewer", "correct horse")
    for name in ("MR_small_RLE.dcm", "SC_rgb_dcmtk_+eb+cr.dcm", "MR_small_bigendian.dcm"):
        assert archive.ingest(samples["folder"] / name).status == "stored"
    by_ts = {r["TransferSyntaxUID"]: r for r in archive.query("IMAGE", {})}
    service = DicomWebService(Config(data_dir=tmp_path / "web", web_port=0), archive)
    service.start()
    auth = ("vic", "correct horse")

    def instance(row: dict[str, Any], ts: str) -> requests.Response:
        url = f"{service.url}/studies/{row['StudyInstanceUID']}/series/{row['SeriesInstanceUID']}" \
              f"/instances/{row['SOPInstanceUID']}"
        return requests.get(url, auth=auth, timeout=60,
                            headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={ts}'})

    def one(r: requests.Response) -> pydicom.Dataset:
        assert r.status_code == 200, r.text
        [(_h, body)] = multipart.decode(r.content, multipart.boundary_of(r.headers["content-type"]))
        return pydicom.dcmread(io.BytesIO(body))

    try:
        rle, jpeg, be = by_ts["1.2.840.10008.1.2.5"], by_ts["1.2.840.10008.1.2.4.50"], by_ts["1.2.840.10008.1.2.2"]
        # lossless conversions keep every UID
        j2k = one(instance(rle, "1.2.840.10008.1.2.4.90"))
        assert j2k.SOPInstanceUID == rle["SOPInstanceUID"] and j2k.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
        assert np.array_equal(j2k.pixel_array, pydicom.dcmread(samples["folder"] / "MR_small_RLE.dcm").pixel_array)
        little = one(instance(be, "1.2.840.10008.1.2.1"))
        assert little.SOPInstanceUID == be["SOPInstanceUID"]
        assert little.PixelData == pydicom.dcmread(pydicom_files / "MR_small.dcm").PixelData  # its little-endian twin
        # a lossy syntax is never made out of a lossless instance (it would be another instance) ...
        assert instance(rle, "1.2.840.10008.1.2.4.50").status_code == 406
        assert instance(rle, "1.2.840.10008.1.2.4.91").status_code == 406
        # ... but a lossy instance goes as stored, and decoded it says it was lossy
        stored = archive.read(jpeg["SOPInstanceUID"])
        assert one(instance(jpeg, "1.2.840.10008.1.2.4.50")).PixelData == pydicom.dcmread(io.BytesIO(stored)).PixelData
        decoded = one(instance(jpeg, "1.2.840.10008.1.2.1"))
        assert decoded.SOPInstanceUID == jpeg["SOPInstanceUID"] and decoded.LossyImageCompression == "01"
    finally:
        service.stop()
        archive.close()
