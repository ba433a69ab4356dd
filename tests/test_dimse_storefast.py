"""The direct C-STORE path (hilum.dimse.storefast): the same bytes, statuses and guarantees as
pynetdicom's path, from DCMTK's storescu and from hand-built PDUs on a real association.

The node runs the engine ``[dimse] engine`` / ``HILUM_DIMSE_ENGINE`` says; with
``pynetdicom`` the same tests hold pynetdicom's own path to the same bytes and
statuses (and nothing takes the direct path)."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode, encode_file_meta
from pynetdicom.pdu import P_DATA_TF

from conftest import free_port
from hilum.config import Config
from hilum.dimse.storefast import StoreRequest, decode_command, p_data_tf, part10_header, store_response
from hilum.node import Node

BIN = Path("/usr/bin")
ROOT = "1.2.826.0.1.3680043.10.999."
ENV = {**os.environ, "TCP_NODELAY": "1"}


def _ct(n: int = 1, size: int = 64) -> list[Dataset]:
    study, series = generate_uid(ROOT), generate_uid(ROOT)
    out = []
    for i in range(n):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid(ROOT)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.Modality = "Direct^Path", "DIRECT", "20240102", "CT"
        ds.InstanceNumber = i + 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = os.urandom(size * size * 2)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.append(ds)
    return out


def _node(tmp: Path, **kw: Any) -> Node:
    return Node(Config(data_dir=tmp / "data", aet="HILUM", dicom_port=free_port(), **kw), only=["dimse"])


def _port(n: Node) -> int:
    return n.service("dimse").port  # type: ignore[attr-defined, no-any-return]


def _direct(n: Node) -> int:
    return n.service("dimse").direct_stores  # type: ignore[attr-defined, no-any-return]


def _fast(n: Node) -> bool:
    return n.service("dimse").fast  # type: ignore[attr-defined, no-any-return]


def _directly(n: Node, count: int) -> int:
    """How many C-STOREs the direct path should have taken: ``count`` on the fast engine, else none."""
    return count if _fast(n) else 0


# ------------------------------------------------------------------ encodings


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.4.90"])
@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45"])  # odd and even lengths (padding)
def test_part10_header_is_pynetdicoms(ts: str, instance: str) -> None:
    meta = create_file_meta(sop_class_uid=CTImageStorage, sop_instance_uid=instance, transfer_syntax=ts)
    assert part10_header(CTImageStorage, instance, ts) == b"\0" * 128 + b"DICM" + encode_file_meta(meta)


@pytest.mark.parametrize("status, comment", [(0x0000, ""), (0xA900, "SOP Class UID 1.2 does not match"),
                                             (0xC000, "x" * 80)])
def test_store_response_is_pynetdicoms(status: int, comment: str) -> None:
    request = StoreRequest(5, 17, CTImageStorage, "1.2.826.0.1.3680043.10.999.123", ExplicitVRLittleEndian)
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 17
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = request.sop_instance_uid
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment[:64]
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    [pdata] = list(msg.encode_msg(5, 16384))
    pdu = P_DATA_TF()
    pdu.from_primitive(pdata)
    assert p_data_tf(5, 0x03, store_response(request, status, comment)) == pdu.encode()


def test_decode_command_refuses_garbage() -> None:
    assert decode_command(b"\x00\x00\x00\x00\x04\x00\x00\x00\x02\x00\x00\x00") == {0: b"\x02\x00\x00\x00"}
    assert decode_command(b"\x08\x00\x00\x00\x04\x00\x00\x00abcd") is None  # not group 0000
    assert decode_command(b"\x00\x00\x00\x00\x40\x00\x00\x00ab") is None  # longer than what is there
    assert decode_command(b"\x00\x00\x00") is None


# ------------------------------------------------------------------ from DCMTK


@pytest.mark.skipif(not (BIN / "storescu").exists(), reason="DCMTK (Debian package dcmtk) is needed")
@pytest.mark.parametrize("max_pdu", [0, 4096])  # 1 MiB PDUs, or each instance in ~70 PDUs
def test_storescu_files_are_stored_byte_for_byte(tmp_path: Path, max_pdu: int) -> None:
    files = []
    for i, ds in enumerate(_ct(5, size=128)):
        path = tmp_path / f"ct{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    with _node(tmp_path, max_pdu_size=max_pdu) as n:
        subprocess.run([str(BIN / "storescu"), "-aet", "MODALITY", "-aec", "HILUM", "127.0.0.1", str(_port(n)),
                        *map(str, files)], check=True, env=ENV, capture_output=True, timeout=60)
        assert _direct(n) == _directly(n, 5)
        for path in files:
            sent = pydicom.dcmread(path)
            stored = n.archive.read(str(sent.SOPInstanceUID))
            dataset = encode(pydicom.dcmread(path), False, True)  # the data set as it travelled
            assert dataset is not None
            header = part10_header(CTImageStorage, str(sent.SOPInstanceUID), ExplicitVRLittleEndian)
            assert stored == header + dataset
        assert n.archive.check().clean
        assert not list((tmp_path / "data" / "blobs" / "tmp").iterdir())


# ------------------------------------------------------------------ hand-built PDUs


def _associate(n: Node, max_pdu: int = 16382) -> Any:
    ae = AE("MODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", _port(n), ae_title="HILUM", max_pdu=max_pdu)
    assert assoc.is_established
    return ae, assoc


def _pdvs(ds: Dataset, context_id: int, message_id: int) -> list[bytes]:
    """The PDV items (length, context, control header, fragment) of one C-STORE-RQ."""
    prim = C_STORE()
    prim.MessageID = message_id
    prim.AffectedSOPClassUID, prim.AffectedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    prim.Priority = 0
    prim.DataSet = BytesIO(encode(ds, False, True))
    msg = C_STORE_RQ()
    msg.primitive_to_message(prim)
    items = []
    for pdata in msg.encode_msg(context_id, 8192):
        for cx_id, data in pdata.presentation_data_value_list:
            items.append(struct.pack(">IB", len(data) + 1, cx_id) + data)
    return items


def _pdu(items: list[bytes]) -> bytes:
    body = b"".join(items)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def _wait_instances(n: Node, count: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (got := n.archive.stats()["instances"]) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return got


def test_two_requests_in_one_pdu_are_both_stored(tmp_path: Path) -> None:
    # PS3.8 lets one P-DATA-TF carry the end of one message and the start of the next.
    first, second = _ct(2)
    with _node(tmp_path) as n:
        if not _fast(n):
            pytest.skip("pynetdicom 3.0 drops a second message in the same P-DATA-TF (dimse/UPSTREAM.md)")
        ae, assoc = _associate(n)
        cx_id = assoc.accepted_contexts[0].context_id
        raw = assoc.dul.socket.socket
        raw.sendall(_pdu(_pdvs(first, cx_id, 1) + _pdvs(second, cx_id, 2)))
        assert _wait_instances(n, 2) == 2
        assoc.release()
        ae.shutdown()
        assert _direct(n) == 2


def test_data_set_interrupted_by_a_command_aborts_and_stores_nothing(tmp_path: Path) -> None:
    first, second = _ct(2, size=256)
    with _node(tmp_path) as n:
        ae, assoc = _associate(n)
        cx_id = assoc.accepted_contexts[0].context_id
        one, two = _pdvs(first, cx_id, 1), _pdvs(second, cx_id, 2)
        raw = assoc.dul.socket.socket
        raw.sendall(_pdu(one[:3]))  # the command and two fragments of the data set...
        raw.sendall(_pdu(two[:1]))  # ...then another command
        if _fast(n):
            deadline = time.monotonic() + 10
            while assoc.is_established and time.monotonic() < deadline:
                time.sleep(0.02)
            assert assoc.is_aborted
        else:  # pynetdicom does not notice (its decoder starts the new message): end it ourselves
            assoc.abort()
        ae.shutdown()
        deadline = time.monotonic() + 10
        while n.service("dimse").ae.active_associations and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.02)
        assert n.archive.stats()["instances"] == 0
        assert n.archive.check(verify_checksums=False).clean
        assert not list((tmp_path / "data" / "blobs" / "tmp").iterdir())


def test_unwritable_blob_folder_is_a700_and_the_node_recovers(tmp_path: Path) -> None:
    [ds] = _ct(1)
    with _node(tmp_path) as n:
        tmp = tmp_path / "data" / "blobs" / "tmp"
        shutil.rmtree(tmp)
        tmp.write_bytes(b"not a folder")  # every temporary blob fails, even for root
        ae, assoc = _associate(n)
        status = assoc.send_c_store(ds)
        assert status.Status == 0xA700, status
        assert "cannot write" in status.ErrorComment
        tmp.unlink()
        status = assoc.send_c_store(ds)
        assert status.Status == 0x0000
        assoc.release()
        ae.shutdown()
        assert n.archive.stats()["instances"] == 1
        assert _direct(n) == _directly(n, 2)


def test_a_peer_that_may_not_store_is_refused_by_pynetdicoms_path(tmp_path: Path) -> None:
    from hilum.config import Peer

    [ds] = _ct(1)
    peers = {"m": Peer(aet="MODALITY", host="127.0.0.1", port=free_port(), may_store=False)}
    with _node(tmp_path, peers=peers) as n:
        ae, assoc = _associate(n)
        status = assoc.send_c_store(ds)
        assoc.release()
        ae.shutdown()
        assert status.Status == 0x0124
        assert _direct(n) == 0
        assert n.archive.stats()["instances"] == 0


def test_connection_reset_mid_data_set_leaves_no_temporary(tmp_path: Path) -> None:
    [ds] = _ct(1, size=512)
    with _node(tmp_path) as n:
        ae, assoc = _associate(n)
        cx_id = assoc.accepted_contexts[0].context_id
        items = _pdvs(ds, cx_id, 1)
        raw = assoc.dul.socket.socket
        for item in items[: len(items) // 2]:
            raw.sendall(_pdu([item]))
        time.sleep(0.2)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
        raw.close()
        assoc.kill()
        ae.shutdown()
        deadline = time.monotonic() + 10
        while list((tmp_path / "data" / "blobs" / "tmp").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not list((tmp_path / "data" / "blobs" / "tmp").iterdir())
        assert n.archive.stats()["instances"] == 0


def test_response_to_a_peer_with_tiny_pdus_is_fragmented(tmp_path: Path) -> None:
    """A C-STORE-RSP longer than the peer's maximum PDU goes out through pynetdicom, in fragments."""
    [ds] = _ct(1)
    with _node(tmp_path) as n:
        ae, assoc = _associate(n, max_pdu=64)
        status = assoc.send_c_store(ds)
        assoc.release()
        ae.shutdown()
        assert status.Status == 0x0000
        assert _direct(n) == _directly(n, 1)
        assert n.archive.stats()["instances"] == 1


def test_a_store_that_arrives_before_pynetdicom_marks_the_association_established_is_answered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sets ``is_established`` only after the EVT_ACCEPTED handlers have run; the
    peer's first C-STORE may be in and stored by then, and must still get its response."""
    from hilum.dimse.scp import DimseService

    slow = DimseService._on_accepted

    def slow_accepted(self: DimseService, event: Any) -> None:
        time.sleep(1.0)  # widen the window (it was microseconds, and lost one store in ~30 runs)
        slow(self, event)

    monkeypatch.setattr(DimseService, "_on_accepted", slow_accepted)
    [ds] = _ct(1)
    with _node(tmp_path) as n:
        ae = AE("MODALITY")
        ae.dimse_timeout = 10
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", _port(n), ae_title="HILUM")
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
        ae.shutdown()
        assert status and status.Status == 0x0000
        assert n.archive.stats()["instances"] == 1
